"""The suite by wing, each folder with a conftest of its own:

* ``runtime/``: the run side (no torch anywhere on its path): committed graphs, known answers in numpy;
* ``builder/``: the build side (torch): tracing, export, validation, the methods, the model sources;
* ``e2e/``: across both and beyond the package: fresh installs, Node.js and the browser, OpenVINO, benchmarks,
  the docs.

This file makes the torch-free helpers at this level importable (fixtures.py, numpy_cam.py, support.py,
image_fixtures.py) and holds the one fixture every folder shares: ``graph_dir``, where graphs built once per session
live (one folder, so that a graph built by a builder test is found by an e2e test that serves the folder).
building.py, the builder's helpers, imports torch and is imported by the builder and e2e folders alone.
"""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graphs")
