"""``camexport build`` on resnet18 (random weights): the graph against the eager reference on unseen inputs,
the ONNX contract, the report, and the all-or-nothing write."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from building import assert_matches_reference, built_graph, reference

from camexport.builder.pipeline import BuildOptions, build
from camexport.errors import ValidationError
from camexport.runtime.session import CamSession

LAYERS = ["layer4", "layer3", "layer4.1.conv2"]
METHODS = ["gradcampp", "gradcam"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", LAYERS)
def test_graph_matches_reference_on_unseen_inputs(graph_dir: Path, resnet18_random, layer: str, method: str) -> None:
    session = CamSession(built_graph(graph_dir, "resnet18", layer, method))
    rng = np.random.default_rng(2024)  # not the tracing example, not build's validation inputs
    for batch in (1, 4):
        image = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        targets = rng.integers(0, 1000, size=batch).astype(np.int64)
        targets[0] = -1
        for target in (None, targets):
            graph = assert_matches_reference(session.run(image, target), resnet18_random, layer, method, image, target)
            if target is not None:
                assert graph["class_index"][1:].tolist() == targets[1:].tolist()


@pytest.mark.slow
def test_logits_equal_the_plain_model(graph_dir: Path, resnet18_random) -> None:
    session = CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))
    image = np.random.default_rng(9).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        plain = resnet18_random(torch.from_numpy(image)).numpy()
    got = session.run(image)["logits"]
    assert np.abs(got - plain).max() <= 1e-4 * np.abs(plain).max()
    assert session.run(image)["class_index"].tolist() == plain.argmax(1).tolist()


@pytest.mark.slow
def test_graph_contract(graph_dir: Path) -> None:
    path = built_graph(graph_dir, "resnet18", "layer4", "gradcampp")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    local = {f.domain for f in model.functions}
    assert all(domain in ("", "ai.onnx") or domain in local for domain, _ in ops)
    assert not any(op in ("Gradient",) for _, op in ops)
    assert not any(domain.startswith("ai.onnx.preview.training") for domain, _ in ops)

    def dims(vi: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    inputs = {vi.name: vi for vi in model.graph.input}
    outputs = {vi.name: vi for vi in model.graph.output}
    assert dims(inputs["image"]) == ["batch", 3, 224, 224]
    assert inputs["image"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inputs["target_class"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o for o in outputs] == ["logits", "class_index", "heatmap", "cam", "activations", "gradients"]
    assert dims(outputs["logits"]) == ["batch", 1000]
    assert dims(outputs["heatmap"]) == ["batch", 224, 224]
    assert dims(outputs["cam"]) == ["batch", 7, 7]
    assert dims(outputs["activations"]) == dims(outputs["gradients"]) == ["batch", 512, 7, 7]
    assert outputs["class_index"].type.tensor_type.elem_type == onnx.TensorProto.INT64

    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["camexport.model"] == "resnet18"
    assert meta["camexport.layer"] == "layer4"
    assert meta["camexport.method"] == "gradcampp"
    labels = json.loads(meta["camexport.labels"])
    assert len(labels) == 1000 and labels[0] == "tench"
    assert json.loads(meta["camexport.mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["camexport.std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert json.loads(meta["camexport.image_size"]) == [224, 224]
    assert meta["camexport.version"]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "target_class"]  # both required (contract 2)
    assert session.get_overridable_initializers() == [] and meta["camexport.contract"] == "2"


@pytest.mark.slow
def test_report_next_to_the_graph(graph_dir: Path) -> None:
    path = built_graph(graph_dir, "resnet18", "layer4", "gradcampp")
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["layer"] == "layer4" and report["layer_default"] is False
    assert report["method"] == "gradcampp"
    assert set(report["timings_s"]) == {"load", "trace", "export", "validate"}
    assert all(case["passed"] for case in report["validation"]["cases"])
    batches = {case["batch"] for case in report["validation"]["cases"]}
    assert 2 not in batches and batches == {1, 3}
    assert {c["name"] for c in report["validation"]["cases"][0]["checks"]} == {
        "logits",
        "class_index",
        "heatmap",
        "cam",
        "activations",
        "gradients",
    }
    assert report["versions"]["torch"] and report["versions"]["onnxruntime"]
    assert report["graph_bytes"] == path.stat().st_size


@pytest.mark.slow
def test_failed_validation_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from camexport.builder import comparison

    monkeypatch.setitem(comparison.TOLERANCES, "logits", 0.0)
    output = tmp_path / "out" / "r.onnx"
    with pytest.raises(ValidationError, match="logits"):
        build(BuildOptions(model="resnet18", weights="random", image_size=(64, 64), output=output), log=lambda _: None)
    assert not (tmp_path / "out").exists()  # neither a file nor the folder the build made


@pytest.mark.slow
@pytest.mark.parametrize("method", ["xgradcam", "layercam", "hirescam"])
def test_more_methods_match_the_reference(graph_dir: Path, resnet18_random, method: str) -> None:
    """XGrad-CAM, LayerCAM, HiResCAM graphs at layer3 (gradients vary across positions there) on unseen inputs."""
    session = CamSession(built_graph(graph_dir, "resnet18", "layer3", method))
    assert session.spec.methods == (method,)
    image = np.random.default_rng(99).standard_normal((4, 3, 224, 224)).astype(np.float32)
    targets = np.array([-1, 3, 500, 999])
    assert_matches_reference(session.run(image, targets), resnet18_random, "layer3", method, image, targets)
    ref = reference(resnet18_random, "layer3", method, image, targets)
    assert ref["heatmap"].max() > 0
    # not secretly Grad-CAM: the maps differ from Grad-CAM's on the same inputs
    gradcam = reference(resnet18_random, "layer3", "gradcam", image, targets)
    assert np.abs(ref["cam"] / ref["cam"].max() - gradcam["cam"] / gradcam["cam"].max()).max() > 0.05


@pytest.mark.slow
def test_several_methods_share_one_graph(graph_dir: Path, resnet18_random) -> None:
    """--method gradcampp,layercam,hirescam: one pass, a heatmap and cam per method, the first also as heatmap."""
    methods = ["gradcampp", "layercam", "hirescam"]
    session = CamSession(built_graph(graph_dir, "resnet18", "layer3", ",".join(methods)))
    assert session.spec.methods == tuple(methods)
    extra = [f"{kind}_{m}" for m in methods for kind in ("heatmap", "cam")]
    assert session.output_names == ["logits", "class_index", "heatmap", "cam", "activations", "gradients", *extra]
    image = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    graph = session.run(image, [-1, 42])
    np.testing.assert_array_equal(graph["heatmap"], graph["heatmap_gradcampp"])
    for method in methods:
        ref = reference(resnet18_random, "layer3", method, image, [-1, 42])
        assert np.abs(graph[f"heatmap_{method}"] - ref["heatmap"]).max() <= 4e-3, method
        assert np.abs(graph[f"cam_{method}"] - ref["cam"]).max() <= 2e-3 * np.abs(ref["cam"]).max(), method
    assert np.abs(graph["heatmap_layercam"] - graph["heatmap_hirescam"]).max() > 0.05  # really different maps


def test_unknown_or_repeated_methods_are_refused(tmp_path: Path) -> None:
    from camexport.errors import UserError

    for spec, message in (("gradcam,nope", "unknown method"), ("gradcam,gradcam", "named twice"), ("", "unknown")):
        with pytest.raises(UserError, match=message):
            options = BuildOptions(model="resnet18", methods=tuple(spec.split(",")), weights="random")
            build(replace(options, output=tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_a_failed_build_leaves_no_new_folder(tmp_path: Path) -> None:
    from camexport.errors import UnknownLayerError

    out = tmp_path / "new" / "graphs" / "g.onnx"
    with pytest.raises(UnknownLayerError):
        build(BuildOptions(model="resnet18", layer="nope", weights="random", output=out), log=lambda _: None)
    assert not (tmp_path / "new").exists()
