"""CamSession: metadata, input checks and provider errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import built_graph
from onnx import TensorProto, helper

from camexport.errors import UserError
from camexport.session import CamSession, resolve_providers


def test_a_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(UserError, match="not a graph built by camexport"):
        CamSession(path)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such graph"):
        CamSession(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="onnxruntime cannot load it"):
        CamSession(junk)


def test_unknown_or_missing_provider() -> None:
    with pytest.raises(UserError, match="unknown"):
        resolve_providers("tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="onnxruntime-gpu"):
            resolve_providers("cuda")


@pytest.mark.slow
def test_run_checks_its_inputs(graph_dir: Path) -> None:
    session = CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))
    assert session.info.model == "resnet18" and session.num_classes == 1000
    good = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(UserError, match="shape"):
        session.run(np.zeros((1, 3, 100, 100), np.float32))
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or Inf"):
        session.run(bad)
    with pytest.raises(UserError, match="out of range"):
        session.run(good, [1000])
    assert session.run(good, 7)["class_index"].tolist() == [7]
