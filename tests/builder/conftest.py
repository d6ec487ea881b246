"""The build side's tests (torch): graphs built once per session, and the eager reference (tests/building.py)."""

from building import efficientnet_graph, resnet18_random  # noqa: F401 - fixtures for this folder
