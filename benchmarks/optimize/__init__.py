"""Optimised graphs (offline optimisation, simplifiers, float16, int8) against the graph as shipped."""
