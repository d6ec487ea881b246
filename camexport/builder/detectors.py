"""Object detectors as camexport traces them: every anchor's box and class scores from the detector's own modules
(:class:`DenseDetector`), and the detector's own post-processing written with fixed shapes (:func:`select`).

torchvision's detectors post-process with shapes that depend on the data: boxes under the score threshold dropped,
the top-k candidates of what is left, per-class non-maximum suppression, then the best ``detections_per_img``. A
graph that returns, for each detection, its own heatmap needs fixed shapes: here every candidate keeps its place and
carries a ``valid`` flag, NMS runs as one ONNX ``NonMaxSuppression`` over the batch and the classes
(:func:`batched_nms`, a custom op the exporter lowers to it), and the M best survivors fill M slots (an empty slot
has score 0 and label −1). The selection is made on detached values; each detection's score is then read from the
dense scores through one-hot masks, so its gradient is a product with the mask (a gather's backward would be a
scatter-add: order-dependent in onnxruntime).

One family record per kind of detector (:data:`FAMILIES`): how its head's outputs become scores, and how it takes
its candidates (per class over every anchor for SSD; per feature level over anchors and classes for RetinaNet and
FCOS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from camexport.builder import nanodet
from camexport.contract import Detection


@torch.library.custom_op("camexport::batched_nms", mutates_args=())
def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float
) -> torch.Tensor:
    """ONNX ``NonMaxSuppression``'s semantics: ``boxes`` [N, B, 4] (x1, y1, x2, y2), ``scores`` [N, K, B]; per image
    and class, boxes whose score exceeds ``score_threshold``, greedily by score, a box dropped where its IoU with a
    kept one exceeds ``iou_threshold``. Returns the kept (image, class, box) triples [S, 3], int64."""
    from torchvision.ops import nms

    kept = []
    for n in range(boxes.shape[0]):
        for k in range(scores.shape[1]):
            candidates = torch.nonzero(scores[n, k] > score_threshold)[:, 0]
            chosen = candidates[nms(boxes[n, candidates], scores[n, k, candidates], iou_threshold)]
            kept.append(torch.stack([torch.full_like(chosen, n), torch.full_like(chosen, k), chosen], dim=1))
    return torch.cat(kept) if kept else torch.zeros((0, 3), dtype=torch.int64)


@batched_nms.register_fake
def _(boxes, scores, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def nms_to_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    """The exporter's translation of :func:`batched_nms`: one ONNX ``NonMaxSuppression``."""
    from onnxscript import opset18 as op

    every = op.Constant(value_ints=[2**62])
    iou = op.Constant(value_floats=[iou_threshold])
    score = op.Constant(value_floats=[score_threshold])
    return op.NonMaxSuppression(boxes, scores, every, iou, score)


@dataclass(frozen=True)
class Family:
    """One kind of torchvision detector.

    Attributes:
        kind: its torchvision class's name (``SSD``, ``RetinaNet``, ``FCOS``): a model of this class, a builder's
            or a factory's, is of this family.
        names: the torchvision builders of this kind.
        scores: the head's outputs → class scores [N, A, K] as the detector's post-processing computes them.
        per_class: candidates are taken per class over every anchor (SSD, background class 0 left out); else per
            feature level over anchors × classes (RetinaNet, FCOS).
        decode: (the detector, box regression [N, A, 4], anchors [A, 4]) → boxes [N, A, 4].
        default_layer: (the dense detector) → the layer a build explains when none is named; None: found by the
            torchvision detectors' structure (:func:`camexport.builder.detection.default_detection_layer`).
        two_stage: a region proposal network and RoI heads (:mod:`camexport.builder.two_stage`), whose own
            post-processing replaces ``scores``, ``per_class`` and ``decode``.
    """

    kind: str
    names: tuple[str, ...]
    scores: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None
    per_class: bool
    decode: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None
    default_layer: Callable[[nn.Module], str] | None = None
    two_stage: bool = False


def _decode_single(detector: nn.Module, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    n = regression.shape[0]
    flat = detector.box_coder.decode_single(regression.reshape(-1, 4), anchors.repeat(n, 1))
    return flat.reshape(n, -1, 4)


def _decode_linear(detector: nn.Module, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    return detector.box_coder.decode(regression, anchors[None])


FAMILIES = (
    Family(
        "SSD",
        ("ssdlite320_mobilenet_v3_large", "ssd300_vgg16"),
        lambda head: torch.softmax(head["cls_logits"], dim=-1),
        per_class=True,
        decode=_decode_single,
    ),
    Family(
        "RetinaNet",
        ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"),
        lambda head: torch.sigmoid(head["cls_logits"]),
        per_class=False,
        decode=_decode_single,
    ),
    Family(
        "FCOS",
        ("fcos_resnet50_fpn",),
        lambda head: torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"])),
        per_class=False,
        decode=_decode_linear,
    ),
    Family(
        "FasterRCNN",
        ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn_v2"),
        None,
        per_class=True,
        decode=None,
        two_stage=True,
    ),
    Family(
        "NanoDet",
        (nanodet.NAME,),
        lambda head: head["cls_scores"],
        per_class=False,
        decode=nanodet.decode,
        default_layer=nanodet.default_layer,
    ),
)
DETECTORS = tuple(name for family in FAMILIES for name in family.names)
TORCHVISION_DETECTORS = tuple(name for name in DETECTORS if name != nanodet.NAME)


def family_of(detector: nn.Module) -> Family | None:
    """The family of a torchvision detector (of its class or a subclass: a Mask R-CNN is a Faster R-CNN, refused at
    build) or of :class:`nanodet.NanoDet`, or None."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    classes = {"SSD": SSD, "RetinaNet": RetinaNet, "FCOS": FCOS, "FasterRCNN": FasterRCNN, "NanoDet": nanodet.NanoDet}
    return next((f for f in FAMILIES if isinstance(detector, classes[f.kind])), None)


def is_detector(module: nn.Module) -> bool:
    """True for a detector camexport explains (:data:`FAMILIES`)."""
    return family_of(module) is not None


class DenseDetector(nn.Module):
    """A torchvision detector without its transform and post-processing: a normalised image [N, C, H, W] → every
    anchor's box [N, A, 4] (x1, y1, x2, y2, clipped to the image) and class scores [N, A, K].

    The backbone and the head are the detector's own modules under their own names (``backbone.features.0``), so a
    layer is named as in the detector; the anchors of the one image size are computed once, here.
    """

    def __init__(self, detector: nn.Module, family: Family, image_size: tuple[int, int]) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.head = detector.backbone, detector.head
        object.__setattr__(self, "detector", detector)  # its box coder; not a submodule (no second set of names)
        self.family, self.image_size = family, image_size
        with torch.no_grad():
            probe = torch.zeros(1, 3, *image_size)
            features = self._features(probe)
            anchors = detector.anchor_generator(ImageList(probe, [image_size]), features)[0]
            self.classes = int(family.scores(self.head(features)).shape[-1])
        self.register_buffer("anchors", anchors, persistent=False)
        self.level_sizes = _level_sizes(features, len(anchors))

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(image).values())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.head(self._features(image))
        boxes = self.family.decode(self.detector, head["bbox_regression"], self.anchors.to(image.dtype))
        return clip_boxes(boxes, self.image_size), self.family.scores(head)


def clip_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Boxes [..., 4] (x1, y1, x2, y2) clipped to an image of ``image_size`` (height, width)."""
    height, width = image_size
    x, y = boxes[..., 0::2].clamp(0, width), boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _level_sizes(features: list[torch.Tensor], anchors: int) -> tuple[int, ...]:
    """The anchors of each feature level, in order (the head's outputs concatenate the levels)."""
    places = [f.shape[2] * f.shape[3] for f in features]
    per_place = anchors // sum(places)
    return tuple(p * per_place for p in places)


@dataclass(frozen=True)
class Selection:
    """The detections of a batch, M slots per image: the anchor and class of each (0 in an empty slot), its score
    (0 in an empty slot) and label (−1 in an empty slot), and whether the slot is filled."""

    anchor: torch.Tensor
    label: torch.Tensor
    score: torch.Tensor
    filled: torch.Tensor


@dataclass(frozen=True)
class Postprocess:
    """The detector's post-processing parameters."""

    topk_candidates: int
    detection: Detection
    level_sizes: tuple[int, ...]
    per_class: bool

    def candidates(self, classes: int) -> int:
        """How many candidates the top-k keeps for NMS (:func:`_candidates`): the most detections there can be."""
        if self.per_class:
            return (classes - 1) * min(self.topk_candidates, sum(self.level_sizes))
        return sum(min(self.topk_candidates, size * classes) for size in self.level_sizes)


def _candidates(scores: torch.Tensor, post: Postprocess) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k candidates as the detector takes them: (score, anchor, class), each [N, B]."""
    n, anchors, classes = scores.shape
    if post.per_class:  # SSD: per class (background 0 left out), the best anchors
        per = min(post.topk_candidates, anchors)
        top, anchor = scores[:, :, 1:].transpose(1, 2).topk(per, dim=2)
        label = torch.arange(1, classes, device=scores.device).view(1, -1, 1).expand(n, -1, per)
        return top.reshape(n, -1), anchor.reshape(n, -1), label.reshape(n, -1)
    tops, anchor_ids, labels, start = [], [], [], 0
    for size in post.level_sizes:  # RetinaNet, FCOS: per level, the best (anchor, class) pairs
        level = scores[:, start : start + size].reshape(n, size * classes)
        top, flat = level.topk(min(post.topk_candidates, size * classes), dim=1)
        tops.append(top)
        anchor_ids.append(start + torch.div(flat, classes, rounding_mode="floor"))
        labels.append(flat % classes)
        start += size
    return torch.cat(tops, 1), torch.cat(anchor_ids, 1), torch.cat(labels, 1)


def select(boxes: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, post: Postprocess) -> Selection:
    """The detector's post-processing with fixed shapes, on detached ``boxes`` [N, A, 4] and ``scores`` [N, A, K]:
    candidates over the threshold (and of the ``target`` class where it is not negative), per-class NMS, the best
    M. Equal to the detector's own up to ties of scores."""
    top, anchor, label = _candidates(scores, post)
    candidate_boxes = torch.gather(boxes, 1, anchor[..., None].expand(-1, -1, 4))
    everywhere = torch.ones_like(top, dtype=torch.bool)
    return keep_best(candidate_boxes, top, anchor, label, everywhere, scores.shape[2], target, post.detection)


def keep_best(boxes, top, anchor, label, valid, classes: int, target: torch.Tensor, detection: Detection) -> Selection:
    """Of the candidates (``boxes`` [N, B, 4], score, anchor, class and validity [N, B]; ``classes`` the number of
    classes), those over the threshold (of the ``target`` class where it is not negative) that per-class NMS keeps,
    the best M."""
    valid = valid & (top > detection.score_threshold) & ((target[:, None] < 0) | (label == target[:, None]))
    top = torch.where(valid, top, 0.0)
    by_class = (torch.arange(classes, device=top.device).view(1, -1, 1) == label[:, None, :]).to(top.dtype)
    kept = batched_nms(boxes, by_class * top[:, None, :], detection.iou_threshold, detection.score_threshold)
    survives = torch.zeros_like(top, dtype=torch.bool).index_put(
        (kept[:, 0], kept[:, 2]), torch.ones_like(kept[:, 0], dtype=torch.bool)
    )
    score, place = torch.where(survives & valid, top, 0.0).topk(detection.max_detections, dim=1)
    filled = score > 0
    chosen_label = torch.where(filled, torch.gather(label, 1, place), -1)
    return Selection(torch.gather(anchor, 1, place), chosen_label, score, filled)


def one_hots(selection: Selection, anchors: int, classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, M, A] and [N, M, K]: 1 at each detection's anchor and at its class (all 0 for an empty slot)."""
    ids = torch.arange(anchors, device=selection.anchor.device).view(1, 1, -1)
    at_anchor = (ids == selection.anchor[..., None]) & selection.filled[..., None]
    at_class = torch.arange(classes, device=selection.label.device).view(1, 1, -1) == selection.label[..., None]
    return at_anchor.to(dtype), at_class.to(dtype)


# The spread of a random detector's class logits over the anchors of a random image: torchvision initialises the
# last classification convolutions so that every class scores alike (SSD: each 1/K; RetinaNet and FCOS: each
# 0.01, under their thresholds), and ties of scores would decide which box NMS keeps.
RANDOM_LOGIT_SPREAD = 2.0


def spread_scores(detector: nn.Module, family: Family, preprocessing, seed: int) -> None:
    """``weights="random"``: the last classification convolutions scaled so that their logits spread by
    :data:`RANDOM_LOGIT_SPREAD` (standard deviation, biases aside) on a seeded random image."""
    convolutions = _classification_convolutions(detector)
    logits: list[torch.Tensor] = []  # without the bias; a head shared by the levels runs once per level
    handles = [
        conv.register_forward_hook(lambda m, _i, out: logits.append(out - m.bias.view(1, -1, 1, 1)))
        for conv in convolutions
    ]
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, preprocessing.channels, *preprocessing.image_size, generator=generator)
    try:
        with torch.no_grad():
            DenseDetector(detector, family, preprocessing.image_size)(image)
    finally:
        for handle in handles:
            handle.remove()
    spread = torch.cat([out.flatten() for out in logits])
    factor = RANDOM_LOGIT_SPREAD / max(float(spread.std()), 1e-12)
    with torch.no_grad():
        for conv in convolutions:
            conv.weight.mul_(factor)


def _classification_convolutions(detector: nn.Module) -> list[nn.Conv2d]:
    head = detector.head.classification_head
    blocks = list(head.module_list) if hasattr(head, "module_list") else [head.cls_logits]  # SSD: one per level
    return [[m for m in block.modules() if isinstance(m, nn.Conv2d)][-1] for block in blocks]
