"""End-to-end tests: both wings together and what lies beyond the package (fresh installs, Node.js, the browser,
OpenVINO, the benchmarks' scripts, the docs)."""

from building import efficientnet_graph, resnet18_random  # noqa: F401 - fixtures for this folder
from support import node_example  # noqa: F401
