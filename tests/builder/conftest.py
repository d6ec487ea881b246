"""The build side's tests (torch): graphs built once per session, and the eager reference (tests/building.py)."""

from pathlib import Path

import pytest
from building import efficientnet_graph, resnet18_random  # noqa: F401 - fixtures for this folder
from support import nanodet_weights, node_example  # noqa: F401


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files as teams hold them (tests/builder/onnx_files.py), written once per session."""
    from onnx_files import write_files

    return write_files(tmp_path_factory.mktemp("onnx_files"))
