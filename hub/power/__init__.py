"""Power states: the planner (pure), the manager that carries it out, and the wake signals."""
