"""Two-stage detectors (Faster R-CNN): RoIAlign as separable matrices against torchvision's ``roi_align`` (values
and gradients), the fixed-shape proposals and post-processing against torchvision's own, and a built graph's
detections, gradients and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from building import built_graph

from camexport.builder.two_stage import filter_proposals, roi_align_separable, select_pairs
from camexport.contract import Detection
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession

MOBILE = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.mark.parametrize("scale", [1.0, 0.25, 1 / 16])
def test_roi_align_as_separable_matrices_is_torchvisions(scale: float) -> None:
    """Boxes inside, across and outside the map's edges, and smaller than a pixel (RoIAlign widens them to one),
    in float64: the pooled maps and their gradients equal torchvision's ``roi_align`` (sampling ratio 2, not
    aligned) to rounding."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 5, 13, 17, generator=generator, dtype=torch.float64)
    side = torch.tensor([17.0, 13.0], dtype=torch.float64) / scale
    corner = torch.rand(6, 2, generator=generator, dtype=torch.float64) * side * 1.2 - 0.1 * side
    boxes = torch.cat([corner, corner + torch.rand(6, 2, generator=generator, dtype=torch.float64) * side / 2], 1)
    boxes[0] = torch.cat([-0.5 * side, 1.5 * side])  # around the whole map
    boxes[1] = boxes[1, :2].repeat(2) + torch.tensor([0, 0, 0.3, 0.2], dtype=torch.float64) / scale  # under a pixel
    mine, theirs = (features.clone().requires_grad_(True) for _ in range(2))
    ours = roi_align_separable(mine, boxes, 7, scale, 2)
    reference = torchvision.ops.roi_align(theirs, [b[None] for b in boxes], 7, scale, 2)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=generator, dtype=torch.float64)
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-12)
    assert mine.grad.abs().sum() > 0


def _detector() -> torch.nn.Module:
    return torchvision.models.get_model(MOBILE, weights=None, weights_backbone=None).eval()


def test_fixed_shape_proposals_are_torchvisions() -> None:
    """Random objectness and boxes over three levels: the same proposals as torchvision's ``filter_proposals``
    (per-level top-k, clipping, small boxes and low scores out, per-level NMS, the best P), image by image, in its
    order; the slots past them marked empty."""
    rpn = _detector().rpn
    generator = torch.Generator().manual_seed(1)
    sizes, size = (300, 120, 40), (160, 200)
    corners = torch.rand(2, sum(sizes), 2, generator=generator) * 220 - 20
    boxes = torch.cat([corners, corners + torch.rand(2, sum(sizes), 2, generator=generator) * 60], 2)
    boxes[:, :20, 2:] = boxes[:, :20, :2] + 1e-4  # small boxes, removed
    objectness = torch.randn(2, sum(sizes), generator=generator) * 3
    rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"] = 100, 90
    got, valid = filter_proposals(rpn, boxes, objectness, sizes, size, len(sizes))
    want, _ = rpn.filter_proposals(boxes, objectness, [size, size], list(sizes))
    for n in range(2):
        assert int(valid[n].sum()) == len(want[n]) <= 90
        torch.testing.assert_close(got[n][valid[n]], want[n])


def test_fixed_shape_postprocessing_is_torchvisions() -> None:
    """Random class logits and box regressions of 60 proposals, some slots empty: the first M detections of
    torchvision's ``postprocess_detections`` (every class's boxes, threshold, NMS per class), and a class filter."""
    heads = _detector().roi_heads
    generator = torch.Generator().manual_seed(2)
    p, k, size = 60, 5, (120, 150)
    corner = torch.rand(2, p, 2, generator=generator) * 100
    proposals = torch.cat([corner, corner + 10 + torch.rand(2, p, 2, generator=generator) * 40], 2)
    logits = torch.randn(2 * p, k, generator=generator) * 2
    regression = torch.randn(2 * p, 4 * k, generator=generator) * 0.2
    valid = torch.ones(2, p, dtype=torch.bool)
    valid[1, 40:] = False  # fewer proposals in the second image
    boxes = heads.box_coder.decode(regression, [proposals.reshape(-1, 4)]).reshape(2, p, k, 4)
    x, y = boxes[..., 0::2].clamp(0, size[1]), boxes[..., 1::2].clamp(0, size[0])
    boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)
    scores = torch.softmax(logits, -1).reshape(2, p, k)
    detection = Detection(12, 0.05, 0.5)
    for target in (torch.tensor([-1, -1]), torch.tensor([2, 3])):
        chosen, found = select_pairs(scores, boxes, valid, target, detection)
        kept = [proposals[0], proposals[1, :40]]
        rows = [logits[:p], logits[p : p + 40]]
        regressions = [regression[:p], regression[p : p + 40]]
        for n in range(2):
            want_boxes, want_scores, want_labels = heads.postprocess_detections(
                rows[n], regressions[n], [kept[n]], [size]
            )
            keep = (want_labels[0] == target[n]) | (target[n] < 0)
            m = min(12, int(keep.sum()))
            assert (
                chosen.label[n, :m].tolist() == want_labels[0][keep][:m].tolist() and chosen.label[n, m:].eq(-1).all()
            )
            torch.testing.assert_close(chosen.score[n, :m], want_scores[0][keep][:m])
            torch.testing.assert_close(found[n, :m], want_boxes[0][keep][:m])
            assert found[n, m:].eq(0).all()


@pytest.fixture(scope="module")
def mobile_graph(graph_dir: Path) -> Path:
    return built_graph(graph_dir, MOBILE, None, "hirescam,gradcampp", image_size=(320, 320), max_detections=5)


@pytest.mark.slow
def test_faster_rcnn_graph_is_validated_and_deterministic(mobile_graph: Path) -> None:
    """The build held the graph against torchvision's forward, float64 finite differences and float64 autograd
    through torchvision's own ``roi_align`` (random weights, their batch norms calibrated on random images); on
    two real photos, run after run and at 1, 2 and 4 threads: bit-identical at one thread count, the same labels and
    heatmaps within 1e-5 across them (RoIAlign's backward is matrix products, no scatter-add)."""
    photos = [sample_photo("astronaut"), sample_photo("coffee")]
    outputs = {}
    for threads in (1, 2, 4):
        session = CamSession(mobile_graph, threads=threads)
        batch = np.stack([session.prepare(photo)[1] for photo in photos])
        first, again = session.run(batch), session.run(batch)
        assert all(np.array_equal(first[k], again[k]) for k in first)
        outputs[threads] = first
    assert (outputs[1]["labels"] >= 0).sum() >= 4
    for threads in (2, 4):
        assert np.array_equal(outputs[1]["labels"], outputs[threads]["labels"])
        assert np.abs(outputs[1]["heatmap"] - outputs[threads]["heatmap"]).max() <= 1e-5
    assert session.spec.detection.score_threshold == 0.05 and session.spec.methods == ("hirescam", "gradcampp")


@pytest.mark.slow
def test_a_layer_joined_with_earlier_maps_copies_from_the_image(graph_dir: Path) -> None:
    """The pyramid's first lateral (``backbone.fpn.inner_blocks.0``) is added to the top-down map computed before
    it, so the copies start at the image; the build validates the detections of the first N rows and their
    gradients all the same (the build raises otherwise)."""
    graph = built_graph(
        graph_dir, MOBILE, "backbone.fpn.inner_blocks.0", "hirescam", image_size=(160, 160), max_detections=2
    )
    session = CamSession(graph)
    out = session.run(np.random.default_rng(5).standard_normal((3, 3, 160, 160)).astype(np.float32))
    assert out["gradients"].shape == (3, 2, 256, 5, 5) and out["labels"].shape == (3, 2)  # stride 32 at 160


def test_a_mask_rcnn_is_refused_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """Its masks are not explained; its float64 reference forward would paste a mask for every candidate."""
    from support import assert_one_line

    (tmp_path / "inputs").mkdir()
    factory = tmp_path / "inputs" / "mask.py"
    factory.write_text(
        "import torchvision\n\n\ndef factory():\n"
        "    return torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    argv = f"build {factory}:factory --weights random --image-size 128"
    assert_one_line(
        argv, 2, "Mask R-CNN's masks are not explained (only boxes are)", {"root": tmp_path / "inputs"}, out, capsys
    )
