"""Routing: which device × model runs a task. ``route`` is pure; see hub/router/route.py."""
