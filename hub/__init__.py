"""Sovereign Hub: an energy-aware edge hub for the compute devices of a home."""

__version__ = "0.1.0"
