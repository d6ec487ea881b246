"""Graph rewrites of the export step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from camexport.builder.export import drop_unused_initializers, fold_broadcast_matmuls, fold_weight_transposes


def _fold_and_compare(
    nodes: list, weight: np.ndarray, shape: list[int], expected_ops: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Runs a graph y = f(x, w) before and after folding; returns y and x."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 5])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape"),
        ],
    )
    x = np.random.default_rng(1).standard_normal((3, 2, 4)).astype(np.float32)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert fold_broadcast_matmuls(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == expected_ops
    onnx.checker.check_model(model, full_check=True)
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6)
    return after, x


def test_matmul_with_an_expanded_weight_uses_broadcasting() -> None:
    weight = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Expand", ["w", "shape"], ["w3"]),
        helper.make_node("MatMul", ["x", "w3"], ["y"]),
    ]
    after, x = _fold_and_compare(nodes, weight, [3, 4, 5], ["MatMul"])
    np.testing.assert_allclose(after, x @ weight, rtol=1e-5)


def test_matmul_with_a_transposed_expanded_weight_uses_broadcasting() -> None:
    """The backward of a sequence-first linear layer: MatMul(x, Transpose(Expand(W), [0, 2, 1]))."""
    weight = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Expand", ["w", "shape"], ["w3"]),
        helper.make_node("Transpose", ["w3"], ["w3t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "w3t"], ["y"]),
    ]
    after, x = _fold_and_compare(nodes, weight, [3, 5, 4], ["Transpose", "MatMul"])
    np.testing.assert_allclose(after, x @ weight.T, rtol=1e-5)


def test_large_weights_go_to_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the threshold (2 GB protobuf limit in practice; lowered here), weights live in <graph>.onnx.data."""
    from building import reference
    from test_dynamic_size import STRIDED_NET

    import camexport.builder.export
    from camexport.builder.pipeline import BuildOptions, build
    from camexport.builder.sources import load_model
    from camexport.runtime.session import CamSession

    (tmp_path / "net.py").write_text(STRIDED_NET)
    spec = f"{tmp_path / 'net.py'}:factory"
    out = tmp_path / "graphs" / "net.onnx"
    options = BuildOptions(model=spec, weights="random", image_size=(48, 48), output=out)
    monkeypatch.setattr(camexport.builder.export, "EXTERNAL_DATA_BYTES", 1000)
    result = build(options, log=lambda _: None)
    data = out.with_name("net.onnx.data")
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.json", "net.onnx", "net.onnx.data"]
    assert result.summary["external_data"] == str(data)
    stored = onnx.load(str(out), load_external_data=False).graph.initializer
    outside = [t for t in stored if t.data_location == TensorProto.EXTERNAL]
    inside = [t for t in stored if t.data_location != TensorProto.EXTERNAL]
    assert {t.name for t in outside} >= {"3_weight", "6_weight"}  # the two larger convolutions' weights
    assert all(len(t.raw_data) < 1024 for t in inside)  # everything from 1 KB up lives in the data file
    assert data.stat().st_size >= sum(4 * np.prod(t.dims) for t in outside)
    onnx.checker.check_model(str(out), full_check=True)
    image = np.random.default_rng(5).standard_normal((2, 3, 48, 48)).astype(np.float32)
    graph = CamSession(out).run(image, [-1, 2])
    ref = reference(load_model(spec, "random").module, result.layer, "gradcampp", image, [-1, 2])
    assert np.abs(graph["heatmap"] - ref["heatmap"]).max() <= 4e-3 and ref["heatmap"].max() > 0

    monkeypatch.setattr(camexport.builder.export, "EXTERNAL_DATA_BYTES", 10**12)
    build(options, log=lambda _: None)  # rebuilt small: one file, the stale data file removed
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.json", "net.onnx"]


def test_atomic_write_moves_companions_or_nothing(tmp_path: Path) -> None:
    from camexport._util import write_atomically

    target = tmp_path / "g.onnx"

    def two_files(path: Path) -> None:
        path.write_text("graph")
        path.with_name(path.name + ".data").write_text("weights")

    assert write_atomically(target, two_files) == [tmp_path / "g.onnx.data", target]
    assert target.read_text() == "graph" and (tmp_path / "g.onnx.data").read_text() == "weights"

    def fails_after_writing(path: Path) -> None:
        two_files(path)
        raise RuntimeError("validation failed")

    other = tmp_path / "h.onnx"
    with pytest.raises(RuntimeError):
        write_atomically(other, fails_after_writing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]


def test_a_transposed_weight_is_stored_transposed_and_unused_initializers_go() -> None:
    """Forward ``x @ W`` and backward ``g @ Wᵀ`` share W: after folding, Wᵀ is its own initializer (no
    Transpose left for OpenVINO to fuse wrongly), both products are unchanged, and nothing unused remains."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["g", "wt"], ["dx"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", k]) for n, k in (("x", 4), ("g", 6))],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", k]) for n, k in (("y", 6), ("dx", 4))],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(weight[:1], "stale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x, g = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    assert fold_weight_transposes(model.graph) == 1 and drop_unused_initializers(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "MatMul"]
    assert sorted(t.name for t in model.graph.initializer) == ["w", "wt"]
    onnx.checker.check_model(model, full_check=True)
    y, dx = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "g": g})
    np.testing.assert_allclose(y, x @ weight, rtol=1e-5)
    np.testing.assert_allclose(dx, g @ weight.T, rtol=1e-5)


def test_the_exported_io_is_checked_against_the_spec() -> None:
    """A graph whose exporter fixed the batch, or whose outputs are not the spec's, is refused in one line before
    any dimension is named (the committed linear fixture's IO stands in for an export)."""
    import onnx
    from building import spec_of
    from support import ROOT

    from camexport.builder.export import check_io
    from camexport.errors import UnsupportedModelError

    graph = onnx.load(str(ROOT / "tests" / "runtime" / "graphs" / "linear.onnx")).graph
    spec = spec_of("feat", ("gradcampp",), (16, 16), classes=4)
    check_io(graph, spec)  # as written: fine
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # the batch baked in at the tracing example's 2
    with pytest.raises(UnsupportedModelError, match="image's batch is fixed at 2, not dynamic"):
        check_io(graph, spec)
    with pytest.raises(UnsupportedModelError, match="logits has 4 classes where the metadata says 3"):
        check_io(
            onnx.load(str(ROOT / "tests" / "runtime" / "graphs" / "linear.onnx")).graph,
            spec_of("feat", ("gradcampp",), (16, 16), classes=3),
        )


SCATTERING_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = self.feat(x).flatten(2)
        index = (a.argmax(dim=2, keepdim=True) % 3).expand(-1, -1, 5)  # duplicate indices
        summed = a.new_zeros(a.shape[0], a.shape[1], 3).scatter_add(2, index, a[..., :5])
        return self.head(summed.sum(dim=2))


def factory(num_classes=3):
    return Net()
"""


def test_a_scatter_with_a_reduction_is_refused_naming_the_node(tmp_path: Path, capsys) -> None:
    """A network that itself scatter-adds after the layer: build names the node and the reason, writes nothing."""
    from test_cli import run_cli

    (tmp_path / "net.py").write_text(SCATTERING_NET)
    out = tmp_path / "graphs" / "g.onnx"
    code, _, err = run_cli(
        capsys,
        "build",
        f"{tmp_path / 'net.py'}:factory",
        "--weights",
        "random",
        "--layer",
        "feat",
        "--image-size",
        "8",
        "8",
        "--output",
        str(out),
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "ScatterElements node '" in err and "run to run" in err
    assert not out.parent.exists()


@pytest.mark.parametrize("op", ["ScatterND", "ScatterElements", "RandomUniformLike"])
def test_check_deterministic_finds_the_node_in_subgraphs_too(op: str) -> None:
    from camexport.builder.export import check_deterministic
    from camexport.errors import UnsupportedModelError

    inputs = {"ScatterND": ["x", "i", "u"], "ScatterElements": ["x", "i", "u"], "RandomUniformLike": ["x"]}[op]
    reduction = {"reduction": "add"} if op.startswith("Scatter") else {}
    inner = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], name="the_culprit", **reduction)],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "other",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    cond = helper.make_node("If", ["c"], ["out"], then_branch=inner, else_branch=other)
    graph = helper.make_graph(
        [cond],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    with pytest.raises(UnsupportedModelError, match=f"holds {op} node 'the_culprit'"):
        check_deterministic(helper.make_model(graph))
    check_deterministic(helper.make_model(helper.make_graph([], "empty", [], [])))  # nothing to refuse
    if op.startswith("Scatter"):  # without a reduction each index is written once (slice assignment): allowed
        plain = helper.make_node(op, inputs, ["y"], name="assignment", reduction="none")
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        check_deterministic(helper.make_model(helper.make_graph([plain], "g", [], [out])))
