"""Other runtimes than onnxruntime-python: Node.js (onnxruntime-node) and ONNX's own ReferenceEvaluator."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from building import built_graph
from PIL import Image
from support import ROOT, run_node

from camexport.builder.pipeline import BuildOptions, build
from camexport.runtime.preprocess import normalise, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession


@pytest.mark.slow
@pytest.mark.parametrize("input_kind", ["uint8", "float32"])
def test_node_heatmap_equals_python(
    node_example: Path, graph_dir: Path, tmp_path: Path, efficientnet_graph: Path, input_kind: str
) -> None:
    """The real-weights model on coffee(): the same top-1 label and heatmap from Node.js as from Python (the photo
    resized and cropped by examples/web/camexport.mjs, byte for byte as by Pillow)."""
    if input_kind == "uint8":
        graph = built_graph(graph_dir, "efficientnet_lite0", None, "gradcampp", weights="default", input="uint8")
    else:
        graph = efficientnet_graph
    session = CamSession(graph)
    sample_photo("coffee").save(tmp_path / "coffee.png")  # 600 x 400: resized and cropped in JavaScript as by Pillow
    pixels = to_pixels(sample_photo("coffee"), session.spec.preprocessing)
    result = run_node(node_example, graph, tmp_path / "coffee.png", tmp_path / "node" / "coffee")
    feed = pixels[None] if session.spec.takes_pixels else normalise(pixels[None], session.spec.preprocessing)
    python = session.run(feed)
    heatmap = np.load(tmp_path / "node" / "coffee.npy")
    assert heatmap.shape == (224, 224) and heatmap.max() == pytest.approx(1.0, abs=1e-4)
    assert np.abs(heatmap - python["heatmap"][0]).max() <= 1e-4
    assert result["label"] == "espresso" == session.spec.labels[int(python["logits"][0].argmax())]
    assert result["explained"] == "espresso" and result["probability"] > 0.9
    grey = np.asarray(Image.open(tmp_path / "node" / "coffee.png").convert("L"), dtype=np.float64)
    assert np.abs(grey / 255.0 - heatmap).max() <= 0.5 / 255 + 1e-6


@pytest.mark.slow
def test_node_resizes_a_full_photo_and_refuses_bad_files(
    node_example: Path, efficientnet_graph: Path, tmp_path: Path
) -> None:
    sample_photo("coffee").save(tmp_path / "coffee.png")  # 600 x 400: resized and cropped in JavaScript
    assert run_node(node_example, efficientnet_graph, tmp_path / "coffee.png", tmp_path / "full")["label"] == "espresso"
    (tmp_path / "bad.png").write_text("not a png")
    newer = onnx.load(str(efficientnet_graph))
    next(p for p in newer.metadata_props if p.key == "camexport.contract").value = "9"
    onnx.save(newer, str(tmp_path / "newer.onnx"))
    segmenter = onnx.load(str(efficientnet_graph))  # its task changed: a graph of a task Node does not explain
    next(p for p in segmenter.metadata_props if p.key == "camexport.task").value = "segmentation"
    onnx.save(segmenter, str(tmp_path / "segmenter.onnx"))
    refused = [
        (efficientnet_graph, "bad.png", "bad.png: not a PNG or JPEG file; pass a PNG or JPEG photo"),
        (tmp_path / "newer.onnx", "coffee.png", "contract '9', this program reads classification contracts 1 and 2"),
        (
            tmp_path / "segmenter.onnx",
            "coffee.png",
            "a segmentation graph; this program explains classifier and detector graphs",
        ),
    ]
    for i, (graph, photo, message) in enumerate(refused):
        prefix = tmp_path / f"refused{i}"
        result = subprocess.run(
            ["node", "explain.mjs", str(graph), str(tmp_path / photo), str(prefix)],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not prefix.with_suffix(".npy").exists()


def test_node_explains_each_detection_as_python(node_example: Path, tmp_path: Path) -> None:
    """The committed red-blob detector on two red blobs (a 128-pixel photo, resized to the graph's 64 in JavaScript
    as by Pillow): the same detections as the Python session's (boxes on the photo, labels, scores), each
    detection's heatmap, and the overlays: each box outlined in its slot's tab10 colour."""
    from support import red_blobs

    graph = ROOT / "tests" / "runtime" / "graphs" / "red-detector.onnx"
    photo = Image.fromarray((red_blobs(128) * 255).round().astype(np.uint8))
    photo.save(tmp_path / "blobs.png")
    result = run_node(node_example, graph, tmp_path / "blobs.png", tmp_path / "node" / "blobs")
    session = CamSession(graph)
    (python,) = session.explain([photo])
    assert [(d["slot"], d["label"]) for d in result["detections"]] == [(d.slot, d.label) for d in python.detections]
    assert len(python.detections) == 2
    heatmaps = np.load(tmp_path / "node" / "blobs.npy")
    for mine, theirs, heatmap in zip(result["detections"], python.detections, heatmaps, strict=True):
        assert mine["score"] == pytest.approx(theirs.score, abs=1e-6)
        assert np.allclose(mine["box"], theirs.box, atol=0.011)  # both rounded to 0.01 pixel
        assert np.abs(heatmap - theirs.input_heatmap).max() <= 1e-5
        overlay = np.asarray(Image.open(tmp_path / "node" / f"blobs_det{mine['slot']}.png"))
        x1, y1 = (round(v / 2) for v in mine["box"][:2])  # the photo is twice the graph's size
        assert overlay[y1 + 5, x1].tolist() == [[31, 119, 180], [255, 127, 14]][mine["slot"]]
    both = np.asarray(Image.open(tmp_path / "node" / "blobs.png"))
    assert both.shape == (64, 64, 3) and heatmaps.shape == (2, 64, 64)


SMALL_NET = """
from torch import nn


def factory(num_classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.{pool},
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
"""


def _compare_with_reference_evaluator(tmp_path: Path, method: str, pool: str) -> None:
    from onnx.reference import ReferenceEvaluator

    (tmp_path / "net.py").write_text(SMALL_NET.replace("{pool}", pool))
    out = tmp_path / "net.onnx"
    spec = f"{tmp_path / 'net.py'}:factory"
    options = BuildOptions(model=spec, layer="0", methods=(method,), weights="random", image_size=(32, 32), output=out)
    build(options, log=lambda _: None)
    image = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    target = np.array([-1, 2], dtype=np.int64)
    ours = CamSession(out).run(image, target)
    evaluator = ReferenceEvaluator(str(out))
    outputs = evaluator.run(None, {"image": image, "target_class": target})
    theirs = dict(zip(evaluator.output_names, outputs, strict=True))
    assert ours["class_index"].tolist() == theirs["class_index"].tolist()
    assert theirs["heatmap"].max() > 0
    for name in ("logits", "activations", "gradients", "cam", "heatmap"):
        scale = max(float(np.abs(ours[name]).max()), 1e-6)
        assert np.abs(ours[name] - theirs[name]).max() <= 1e-4 * scale, name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcampp", "gradcam"])
def test_reference_evaluator_agrees_with_onnxruntime(tmp_path: Path, method: str) -> None:
    """onnx.reference.ReferenceEvaluator, a second runtime written from the ONNX spec, gives the same outputs
    (strided and padded convolutions and their transposes, average pooling, ReLU masks, Resize, ...)."""
    _compare_with_reference_evaluator(tmp_path, method, "AvgPool2d(2)")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="onnx's ReferenceEvaluator returns per-plane MaxPool indices for a 1x1 kernel (onnxruntime and the "
    "ONNX spec: flat over N*C*H*W; its own 2x2 result is flat too); torch's exporter uses a 1x1 MaxPool to find "
    "each plane's offset, so there the max-pool backward's masks match no window and the gradients are wrong",
)
def test_reference_evaluator_on_max_pooling(tmp_path: Path) -> None:
    _compare_with_reference_evaluator(tmp_path, "gradcampp", "MaxPool2d(2)")


def test_the_reference_evaluator_maxpool_discrepancy_itself() -> None:
    """The root cause of the xfail above, on one MaxPool node: if this starts failing, drop the xfail."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("i", TensorProto.INT64, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    flat = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[1]
    assert flat.ravel().tolist() == list(range(96))  # the spec: indices over N*C*H*W
    per_plane = ReferenceEvaluator(model).run(None, {"x": x})[1]
    assert per_plane[1, 2].ravel().tolist() == list(range(16))


def _openvino_outputs(graph: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph run by OpenVINO's CPU plugin from the .onnx file itself, in float32 (its default on CPUs
    with bfloat16 units is bfloat16, heatmaps then 4e-2 off)."""
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feed)
    return {output.get_any_name(): result[output] for output in compiled.outputs}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "layer", "weights"),
    [
        ("resnet18", "layer4", "random"),
        ("resnet18", "layer3", "random"),
        ("efficientnet_lite0", None, "default"),
        ("vit_b_16", None, "random"),
    ],
)
def test_openvino_agrees_with_onnxruntime(graph_dir: Path, model: str, layer: str | None, weights: str) -> None:
    """Every output of OpenVINO's run equals onnxruntime's, for the top-1 class and for another class (the
    required ``target_class`` of contract 2 stays an input in OpenVINO). The ViT graph caught an OpenVINO
    fusion bug that camexport's export now avoids (see ``fold_weight_transposes``)."""
    graph = built_graph(graph_dir, model, layer, "gradcampp", weights=weights)
    session = CamSession(graph)
    photos = np.stack([to_pixels(sample_photo(name), session.spec.preprocessing) for name in ("coffee", "astronaut")])
    feed = {"image": normalise(photos, session.spec.preprocessing), "target_class": np.array([-1, 5], np.int64)}
    ours = session.run(feed["image"], feed["target_class"])
    theirs = _openvino_outputs(graph, feed)
    assert theirs["class_index"].tolist() == ours["class_index"].tolist() and ours["class_index"][1] == 5
    for name in ("logits", "activations", "gradients", "cam", "heatmap"):
        scale = float(np.abs(ours[name]).max())
        assert np.abs(theirs[name] - ours[name]).max() <= 1e-4 * scale, name
    assert np.abs(theirs["heatmap"] - ours["heatmap"]).max() <= 2e-5
