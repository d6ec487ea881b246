"""Object detection on the build side: the fixed-shape post-processing against torchvision's own, the graph's
detections and per-detection maps against the detector's forward pass and float64 references, determinism, and the
refusals of bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from building import built_graph
from support import ROOT, assert_one_line

from camexport.builder.comparison import Case
from camexport.builder.detection import EagerDetector, check_case, detection_parts
from camexport.builder.detectors import Postprocess, batched_nms, family_of, select
from camexport.builder.sources import load_model
from camexport.contract import Detection
from camexport.runtime.session import CamSession

SSD = "ssdlite320_mobilenet_v3_large"
RED_FACTORY = "tests/builder/fixture_graphs.py:red_detector"


@pytest.fixture(scope="module")
def ssd_graph(graph_dir: Path) -> Path:
    return built_graph(graph_dir, SSD, None, "gradcampp,hirescam", max_detections=5)


def test_batched_nms_is_torchvision_per_image_and_class() -> None:
    """The custom op (eager form) keeps what torchvision's ``batched_nms`` keeps, image by image, over the threshold."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 60, 2, generator=generator) * 80
    boxes = torch.cat([corners, corners + 5 + torch.rand(2, 60, 2, generator=generator) * 30], dim=2)
    label = torch.randint(0, 3, (2, 60), generator=generator)
    score = torch.rand(2, 60, generator=generator)
    by_class = (torch.arange(3).view(1, 3, 1) == label[:, None]).float() * score[:, None]
    kept = batched_nms(boxes, by_class, 0.4, 0.2)
    for n in range(2):
        over = torch.nonzero(score[n] > 0.2)[:, 0]
        want = over[torchvision.ops.batched_nms(boxes[n, over], score[n, over], label[n, over], 0.4)]
        got = kept[kept[:, 0] == n]
        assert sorted(got[:, 2].tolist()) == sorted(want.tolist())
        assert (got[:, 1] == label[n, got[:, 2]]).all()


@pytest.mark.parametrize("per_class", [True, False])
def test_select_equals_the_detectors_postprocessing(per_class: bool) -> None:
    """The fixed-shape selection on random dense outputs gives torchvision's post-processing's first M detections:
    SSD's (per class over every anchor) and RetinaNet's (per level over anchors x classes)."""
    name = SSD if per_class else "retinanet_resnet50_fpn_v2"
    detector = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
    generator = torch.Generator().manual_seed(1)
    levels = (40, 24, 16) if not per_class else (80,)
    anchors = sum(levels)
    corners = torch.rand(anchors, 2, generator=generator) * 200
    anchor_boxes = torch.cat([corners, corners + 20 + torch.rand(anchors, 2, generator=generator) * 60], 1)
    regression = torch.randn(2, anchors, 4, generator=generator) * 0.3
    logits = torch.randn(2, anchors, 91, generator=generator) * 2 - (0 if per_class else 3)
    post = Postprocess(50, Detection(7, 0.05, 0.5), levels, per_class)
    detector.score_thresh, detector.nms_thresh, detector.topk_candidates = 0.05, 0.5, 50
    head = {"cls_logits": logits, "bbox_regression": regression}
    family = family_of(detector)
    boxes = family.decode(detector, regression, anchor_boxes).clamp(0, 320)
    chosen = select(boxes, family.scores(head), torch.tensor([-1, -1]), post)
    if per_class:
        want = detector.postprocess_detections(head, [anchor_boxes] * 2, [(320, 320)] * 2)
    else:
        split = {k: list(v.split(list(levels), dim=1)) for k, v in head.items()}
        want = detector.postprocess_detections(split, [list(anchor_boxes.split(list(levels)))] * 2, [(320, 320)] * 2)
    for n in range(2):
        k = int(chosen.filled[n].sum())
        assert k == min(7, len(want[n]["scores"])) and k > 0
        assert chosen.label[n, :k].tolist() == want[n]["labels"][:k].tolist()
        assert torch.allclose(chosen.score[n, :k], want[n]["scores"][:k])
        assert torch.allclose(boxes[n, chosen.anchor[n, :k]], want[n]["boxes"][:k])
        assert (chosen.label[n, k:] == -1).all() and (chosen.score[n, k:] == 0).all()


@pytest.mark.slow
def test_ssd_graph_detects_and_explains_each_detection_as_the_references(ssd_graph: Path) -> None:
    """On a fresh batch (not the build's): the detector's own boxes, scores and labels; each detection's gradient
    against float64 autograd and finite differences; both methods' maps against the float64 formulas."""
    session = CamSession(ssd_graph)
    spec = session.spec
    assert spec.task == "detection" and spec.detection.max_detections == 5 and spec.layer == "backbone.features.0"
    assert spec.contract == 4 and spec.labels[1] == "person"
    loaded = load_model(SSD, "random")
    dense, _ = detection_parts(loaded, None, 5, None)
    image = np.random.default_rng(7).standard_normal((2, 3, 320, 320)).astype(np.float32)
    graph = session.run(image)
    assert graph["heatmap"].shape == (2, 5, 320, 320) and graph["gradients"].shape == (2, 5, 672, 20, 20)
    result = check_case(graph, loaded.module, EagerDetector(dense, spec), Case("fresh", image, None), 3)
    assert result.passed, result.failures()
    assert (graph["labels"] >= 0).all() and graph["heatmap"].max() > 0.99
    # Each detection has its own map: two detections' gradients differ.
    assert not np.allclose(graph["gradients"][0, 0], graph["gradients"][0, 1])


@pytest.mark.slow
def test_a_class_with_no_detection_leaves_empty_slots(ssd_graph: Path) -> None:
    """``target_class`` keeps one class's detections; where it has fewer than M, the rest are empty: score 0,
    label -1, a zero box, a zero gradient and an all-zero heatmap (never NaN)."""
    session = CamSession(ssd_graph)
    image = np.random.default_rng(8).standard_normal((1, 3, 320, 320)).astype(np.float32)
    every = session.run(image)
    absent = next(k for k in range(1, 91) if k not in every["labels"])
    one = session.run(image, np.array([absent]))
    filled = one["labels"][0] >= 0
    assert set(one["labels"][0][filled]) <= {absent}
    empty = ~filled
    assert one["scores"][0][empty].tolist() == [0.0] * int(empty.sum())
    assert not one["boxes"][0][empty].any() and not one["gradients"][0][empty].any()
    assert not one["heatmap"][0][empty].any() and np.isfinite(one["heatmap"]).all()


@pytest.mark.slow
def test_detection_graph_is_deterministic_at_every_thread_count(ssd_graph: Path) -> None:
    """Bit-identical run after run at 1, 2 and 4 threads; across thread counts only float32 reordering."""
    image = np.random.default_rng(9).standard_normal((2, 3, 320, 320)).astype(np.float32)
    first = {}
    for threads in (1, 2, 4):
        session = CamSession(ssd_graph, threads=threads)
        runs = [session.run(image) for _ in range(3)]
        for run in runs[1:]:
            for name, value in run.items():
                assert np.array_equal(value, runs[0][name]), (threads, name)
        first[threads] = runs[0]
    for threads in (2, 4):
        assert np.array_equal(first[threads]["labels"], first[1]["labels"])
        assert np.abs(first[threads]["heatmap"] - first[1]["heatmap"]).max() <= 1e-5


@pytest.mark.slow
def test_the_check_fails_a_wrong_gradient(ssd_graph: Path) -> None:
    """The validation is not blind: a gradient 1% off, or one detection's gradient swapped with another's, fails."""
    session = CamSession(ssd_graph)
    loaded = load_model(SSD, "random")
    dense, _ = detection_parts(loaded, None, 5, None)
    image = np.random.default_rng(10).standard_normal((1, 3, 320, 320)).astype(np.float32)
    graph = session.run(image)
    eager = EagerDetector(dense, session.spec)
    scaled = dict(graph, gradients=graph["gradients"] * 1.01)
    assert not check_case(scaled, loaded.module, eager, Case("scaled", image, None), 0).passed
    swapped = graph["gradients"].copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    assert not check_case(dict(graph, gradients=swapped), loaded.module, eager, Case("swap", image, None), 0).passed


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (f"build {SSD} --weights random --max-detections 0", "max_detections=0: use a whole number from 1 to 100"),
        (f"build {SSD} --weights random --score-threshold 1.5", "score_threshold=1.5"),
        ("build resnet18 --weights random --max-detections 3", "resnet18 is not a detector"),
        (f"build {SSD} --weights random --method reciprocam", "a detection is explained by its score's gradient"),
        (f"build {SSD} --weights random --dynamic-size", "one image size"),
        (f"build {SSD} --weights random --layer backbone.nowhere", "is not a module of the detector"),
        (f"build {SSD} --weights random --layer head", "a detection is explained at a module that gives one map"),
        ("build fcos_resnet50_fpn --weights random --image-size 100", "pads images to multiples of 32"),
        (f"build {ROOT / RED_FACTORY} --image-size 64 --max-detections 60", "keeps at most 50 candidates before NMS"),
    ],
)
def test_bad_detection_options_are_one_line(argv: str, fragment: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line(argv, 2, fragment, {"root": tmp_path}, tmp_path, capsys)


RED = RED_FACTORY


def _build_red(tmp_path: Path, **options: object) -> tuple[Path, list[str]]:
    from camexport.builder.pipeline import BuildOptions, build

    lines: list[str] = []
    fields = dict(model=RED, image_size=(64, 64), output=tmp_path / "red.onnx", max_detections=3)
    result = build(BuildOptions(**{**fields, **options}), log=lines.append)
    return result.graph, lines


def test_a_factorys_detector_builds_with_uint8_pixels(tmp_path: Path) -> None:
    """Your own torchvision SSD from a factory, its transform's normalisation, pixels in: validated on detections
    (the references take the pixels normalised) and explaining red blobs as the float graph does."""
    from support import red_blobs as blobs

    graph, lines = _build_red(tmp_path, input="uint8")
    # uint8 noise holds no red blob over the threshold: the validation takes the photo (its flag's red stripes)
    (first,) = [line for line in lines if line.startswith("  ok: Grace Hopper's photo mirrored and as is")]
    assert "6 detection(s)" in first
    session = CamSession(graph)
    assert session.spec.takes_pixels and session.spec.methods == ("gradcampp",)  # a factory's: the default method
    assert session.spec.labels == ("class_0", "class_1") and session.spec.preprocessing.mean == (0.0, 0.0, 0.0)
    out = session.run((blobs() * 255).round().astype(np.uint8)[None])
    assert out["labels"][0].tolist() == [1, 1, -1]


def test_a_layer_some_detections_do_not_depend_on_is_said_at_build(tmp_path: Path) -> None:
    """The red detector's second level (``backbone.pool``): the first level's detections do not depend on it, so
    their gradients and maps are zero, and the build says so."""
    _, lines = _build_red(tmp_path, layer="backbone.pool", score_threshold=0.3)
    (warning,) = [line for line in lines if "warning:" in line]
    assert "have a zero gradient at backbone.pool" in warning and "leave `layer` out" in warning


def test_layers_lists_a_detectors_modules_with_the_default(capsys) -> None:
    from camexport.cli import main

    assert main(["layers", SSD]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if line.endswith("default")] == ["backbone.features.0"]
    assert any(line.startswith("backbone.extra.0 ") for line in lines)
