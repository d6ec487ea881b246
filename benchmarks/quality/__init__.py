"""Explanation quality of the CAM methods, measured through the graph."""
