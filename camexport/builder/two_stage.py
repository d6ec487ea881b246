"""Two-stage detectors (torchvision's Faster R-CNN) with fixed shapes, and RoIAlign as separable matrices.

The detector runs in two parts. **Selection** (no gradient, as torchvision's: proposals are detached): the region
proposal network's best anchors per level, per-level NMS, the best P proposals (:meth:`TwoStage.propose`); every
proposal's RoIAlign features (torchvision's ``roi_align``, exported as ONNX ``RoiAlign``), box head and class scores
(:meth:`TwoStage.classify`); per-class NMS over every (proposal, class) pair and the best M
(:func:`camexport.builder.detectors.keep_best`). **Explanation**: each detection's score as a function of the
feature maps — its proposal's features pooled by :func:`roi_align_separable`, the box head, the softmax at its
class — whose backward pass is matrix products, deterministic (a scatter-add's order would not be).

RoIAlign (He et al., Mask R-CNN, ICCV 2017; torchvision's ``aligned=False`` and fixed ``sampling_ratio``) averages
bilinear samples on a grid that is a product of a grid along y and one along x, and a bilinear weight is a product
of a weight along y and one along x; so the pooled map of a box is ``Wy · F · Wxᵀ`` with ``Wy`` [7, H] and ``Wx``
[7, W] built from the box alone (:func:`axis_weights`), and its gradient with respect to F is ``Wyᵀ · G · Wx``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from camexport.builder.detectors import Selection, batched_nms, clip_boxes, keep_best
from camexport.contract import Detection


def axis_weights(start: torch.Tensor, end: torch.Tensor, pooled: int, size: int, ratio: int) -> torch.Tensor:
    """RoIAlign's weights along one axis [R, pooled, size] for boxes from ``start`` to ``end`` [R] (feature-map
    pixels, after the spatial scale): per output bin, the mean over ``ratio`` samples of each sample's bilinear
    weights, zero for a sample outside [-1, size] (torchvision's ``roi_align_kernel``, ``aligned=False``)."""
    length = (end - start).clamp(min=1.0)
    step = length / pooled
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device).view(1, -1, 1)
    samples = torch.arange(ratio, dtype=start.dtype, device=start.device).view(1, 1, -1) + 0.5
    step = step.view(-1, 1, 1)
    position = start.view(-1, 1, 1) + bins * step + samples * step / ratio  # [R, pooled, ratio], as the kernel sums
    inside = (position >= -1.0) & (position <= size)
    position = position.clamp(min=0.0)
    low = position.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    fraction = torch.where(at_edge, torch.zeros_like(position), position - low)
    grid = torch.arange(size, dtype=start.dtype, device=start.device)
    weights = (1 - fraction)[..., None] * (grid == low[..., None]) + fraction[..., None] * (grid == high[..., None])
    return (weights * inside[..., None]).mean(dim=2)


def roi_align_separable(
    features: torch.Tensor, boxes: torch.Tensor, pooled: int, scale: float, ratio: int
) -> torch.Tensor:
    """RoIAlign of one box per image: ``features`` [R, C, H, W], ``boxes`` [R, 4] (image pixels) → [R, C, pooled,
    pooled], as ``torchvision.ops.roi_align(features, boxes with batch index r, pooled, scale, ratio)``."""
    h, w = features.shape[-2:]
    scaled = boxes * scale
    wy = axis_weights(scaled[:, 1], scaled[:, 3], pooled, int(h), ratio)
    wx = axis_weights(scaled[:, 0], scaled[:, 2], pooled, int(w), ratio)
    return torch.einsum("rih,rchw,rjw->rcij", wy, features, wx)


def proposal_candidates(objectness: torch.Tensor, sizes: tuple[int, ...], top: int):
    """The RPN's best anchors per level before NMS (torchvision's ``_get_top_n_idx``): (anchor ids, level ids,
    objectness), each [N, B]."""
    ids, levels, start = [], [], 0
    for level, size in enumerate(sizes):
        _, best = objectness[:, start : start + size].topk(min(top, size), dim=1)
        ids.append(best + start)
        levels.append(torch.full_like(best, level))
        start += size
    anchor, level = torch.cat(ids, 1), torch.cat(levels, 1)
    return anchor, level, torch.gather(objectness, 1, anchor)


def filter_proposals(rpn: nn.Module, proposals, objectness, sizes, image_size, levels: int):
    """torchvision's ``RegionProposalNetwork.filter_proposals`` with fixed shapes: ``proposals`` [N, A, 4] and
    ``objectness`` [N, A] (detached) → the best P proposals [N, P, 4] and whether each slot holds one [N, P]."""
    anchor, level, logits = proposal_candidates(objectness, sizes, rpn.pre_nms_top_n())
    boxes = clip_boxes(torch.gather(proposals, 1, anchor[..., None].expand(-1, -1, 4)), image_size)
    score = torch.sigmoid(logits)
    big = ((boxes[..., 2] - boxes[..., 0]) >= rpn.min_size) & ((boxes[..., 3] - boxes[..., 1]) >= rpn.min_size)
    valid = big & (score >= rpn.score_thresh)
    by_level = (torch.arange(levels, device=score.device).view(1, -1, 1) == level[:, None, :]).to(score.dtype)
    kept = batched_nms(boxes, by_level * torch.where(valid, score, 0.0)[:, None, :], rpn.nms_thresh, 0.0)
    survives = torch.zeros_like(valid).index_put(
        (kept[:, 0], kept[:, 2]), torch.ones_like(kept[:, 0], dtype=torch.bool)
    )
    best, place = torch.where(survives & valid, score, -1.0).topk(min(rpn.post_nms_top_n(), score.shape[1]), dim=1)
    return torch.gather(boxes, 1, place[..., None].expand(-1, -1, 4)), best > -1.0


class TwoStage(nn.Module):
    """A torchvision Faster R-CNN without its transform, at one image size: :meth:`forward` gives the M best
    detections of a normalised image and, per detection copy, its score (see the module).

    The backbone, the RPN and the RoI heads are the detector's own modules under their own names
    (``backbone.body.layer2``); the anchors and the pooler's scales of the one size are computed once, here.
    """

    def __init__(self, detector: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone, self.rpn, self.roi_heads = detector.backbone, detector.rpn, detector.roi_heads
        self.image_size = tuple(image_size)
        pool = self.roi_heads.box_roi_pool
        with torch.no_grad():
            probe = torch.zeros(1, 3, *image_size)
            features = self.backbone(probe)
            anchors = self.rpn.anchor_generator(ImageList(probe, [self.image_size]), list(features.values()))[0]
            objectness, _ = self.rpn.head(list(features.values()))
            pool(features, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], [self.image_size])  # sets its scales
        self.register_buffer("anchors", anchors, persistent=False)
        self.level_sizes = tuple(int(o[0].numel()) for o in objectness)
        self.classes = int(self.roi_heads.box_predictor.cls_score.out_features)
        self.pooled = tuple(pool.output_size)
        self.names = [name for name in pool.featmap_names if name in features]  # the maps the pooler takes
        self.scales, self.ratio = list(pool.scales), int(pool.sampling_ratio)

    def forward(
        self, image: torch.Tensor, target: torch.Tensor | None = None, detection: Detection | None = None, n=None
    ):
        """The feature maps of a normalised image (the backbone's), or with ``target`` and ``detection``: the M best
        detections of the first ``n`` images (all of ``image`` where None) and their copies' scores (the maps from
        the explained layer on are M copies, copy-major: [M·N]; from the image on where ``image`` is its copies).

        Returns:
            (boxes [N, M, 4], scores [N, M], labels [N, M], the explained scores' sum): copy d's score is detection
            d's, at its proposal and class (0 for an empty slot).
        """
        features = self.backbone(image)
        if target is None:
            return features
        n = image.shape[0] if n is None else n
        first = OrderedDict((name, f[:n].detach()) for name, f in features.items())
        proposals, valid = self.propose(list(first.values()))
        scores, boxes = self.classify(first, proposals)
        chosen, found = select_pairs(scores, boxes, valid, target, detection)
        rois = torch.gather(proposals, 1, chosen.anchor[..., None].expand(-1, -1, 4)).transpose(0, 1).reshape(-1, 4)
        at_class = (torch.arange(self.classes, device=image.device) == chosen.label[..., None]) & chosen.filled[
            ..., None
        ]
        explained = (self.scores_at(features, rois) * at_class.transpose(0, 1).reshape(-1, self.classes)).sum()
        return found, chosen.score, chosen.label, explained

    def propose(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The best P proposals [N, P, 4] and their slots' validity [N, P] (no gradient)."""
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        n = features[0].shape[0]
        objectness, deltas = concat_box_prediction_layers(*self.rpn.head(features))
        boxes = self.rpn.box_coder.decode_single(deltas.detach(), self.anchors.repeat(n, 1)).reshape(n, -1, 4)
        objectness = objectness.detach().reshape(n, -1)
        return filter_proposals(self.rpn, boxes, objectness, self.level_sizes, self.image_size, len(self.level_sizes))

    def _pooled(self, boxes: torch.Tensor, align) -> torch.Tensor:
        """Multi-scale RoIAlign with fixed shapes: ``align(map name, scale)`` pools every box at that level, and
        each box keeps its own level's (the pooler's FPN rule)."""
        levels = self.roi_heads.box_roi_pool.map_levels([boxes])
        return sum(
            (levels == i).to(boxes.dtype).view(-1, 1, 1, 1) * align(name, scale)
            for i, (name, scale) in enumerate(zip(self.names, self.scales, strict=True))
        )

    def classify(self, features: dict[str, torch.Tensor], proposals: torch.Tensor):
        """Every proposal's class scores [N, P, K] (softmax) and class boxes [N, P, K, 4], clipped (no gradient:
        torchvision's ``roi_align``, the pooler's level per box)."""
        from torchvision.ops import roi_align

        n, p = proposals.shape[:2]
        flat = proposals.reshape(-1, 4)
        index = torch.arange(n, device=flat.device, dtype=flat.dtype).repeat_interleave(p)[:, None]
        rois = torch.cat([index, flat], 1)
        pooled = self._pooled(flat, lambda name, scale: roi_align(features[name], rois, self.pooled, scale, self.ratio))
        logits, regression = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        boxes = self.roi_heads.box_coder.decode(regression, [flat]).reshape(n, p, -1, 4)
        return torch.softmax(logits, -1).reshape(n, p, -1), clip_boxes(boxes, self.image_size)

    def scores_at(self, features: dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """Class scores [R, K] of one box per feature row (``boxes`` [R, 4]): RoIAlign by separable matrices."""
        pooled = self._pooled(
            boxes, lambda name, scale: roi_align_separable(features[name], boxes, self.pooled[0], scale, self.ratio)
        )
        logits, _ = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        return torch.softmax(logits, -1)


def select_pairs(scores, boxes, valid, target: torch.Tensor, detection: Detection) -> tuple[Selection, torch.Tensor]:
    """torchvision's ``RoIHeads.postprocess_detections`` with fixed shapes: every (proposal, class) pair but the
    background's over the threshold, with a box of at least 0.01 pixel, per-class NMS, the best M. Returns the
    selection (its ``anchor`` the proposal) and the detections' boxes [N, M, 4]."""
    n, p, k = scores.shape
    top = scores[:, :, 1:].reshape(n, -1)
    label = torch.arange(1, k, device=top.device).repeat(p).view(1, -1).expand(n, -1)
    proposal = torch.arange(p, device=top.device).repeat_interleave(k - 1).view(1, -1).expand(n, -1)
    pair_boxes = boxes[:, :, 1:].reshape(n, -1, 4)
    big = ((pair_boxes[..., 2] - pair_boxes[..., 0]) >= 1e-2) & ((pair_boxes[..., 3] - pair_boxes[..., 1]) >= 1e-2)
    ok = valid.repeat_interleave(k - 1, dim=1) & big
    chosen = keep_best(pair_boxes, top, proposal, label, ok, k, target, detection)
    pair = chosen.anchor * (k - 1) + chosen.label.clamp(min=1) - 1
    found = torch.gather(pair_boxes, 1, pair[..., None].expand(-1, -1, 4))
    return chosen, found * chosen.filled[..., None].to(found.dtype)  # an empty slot's box: zeros


def spread_classes(detector: nn.Module, image_size: tuple[int, int], seed: int, spread: float) -> None:
    """``weights="random"``: the class logits' layer scaled so that the logits of a seeded random normalised image's
    proposals spread by ``spread`` (standard deviation, bias aside)."""
    dense = TwoStage(detector, image_size)
    layer = detector.roi_heads.box_predictor.cls_score
    logits: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, _i, out: logits.append(out - m.bias))
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            features = dense.backbone(torch.randn(1, 3, *image_size, generator=generator))
            proposals, _ = dense.propose(list(features.values()))
            dense.classify(features, proposals)
    finally:
        handle.remove()
    with torch.no_grad():
        layer.weight.mul_(spread / max(float(logits[0].std()), 1e-12))


def calibrate_norms(detector: nn.Module, image_size: tuple[int, int], seed: int) -> None:
    """``weights="random"``: each batch norm's running statistics set to those of a seeded batch of random
    normalised images (standard normal: what the validation feeds; torchvision's
    random MobileNetV3 Faster R-CNN otherwise gives maps of 1e-8 and every proposal the same scores)."""
    norms = [m for m in detector.modules() if isinstance(m, nn.BatchNorm2d)]
    generator = torch.Generator().manual_seed(seed)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: the one batch's statistics
        norm.train()
    try:
        with torch.no_grad():
            detector.backbone(torch.randn(2, 3, *image_size, generator=generator))
    finally:
        for norm in norms:
            norm.eval()


class EagerTwoStage:
    """The references of a two-stage detector's graph (the one-stage :class:`camexport.builder.detection.
    EagerDetector`'s interface): its detections identified among torchvision's own proposals (its RPN and box head,
    float32), and each one's score in float64 as a function of the layer's output ``A`` with torchvision's own
    multi-scale ``roi_align`` at that proposal (the proposals held fixed, as torchvision detaches them). Slot d's
    "anchor" is d: :meth:`scores` gives the identified proposals' scores [N, M, K], slot by slot."""

    def __init__(self, dense: TwoStage, spec) -> None:
        self.float32, self.dense = dense, copy.deepcopy(dense).double()
        self.layer = self.dense.get_submodule(spec.layer)
        self.spec = spec
        self.rois: list[torch.Tensor] = []

    def _features(self, dense: TwoStage, image: torch.Tensor, A: torch.Tensor | None):
        handle = dense.get_submodule(self.spec.layer).register_forward_hook(lambda _m, _i, out: out if A is None else A)
        try:
            return dense.backbone(image)
        finally:
            handle.remove()

    def layer_output(self, image: np.ndarray) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        try:
            with torch.no_grad():
                self.dense.backbone(torch.from_numpy(image).double())
        finally:
            handle.remove()
        return captured[0]

    def identify(self, image: np.ndarray, A: torch.Tensor, graph: dict[str, np.ndarray]) -> np.ndarray:
        """Each filled slot's proposal among torchvision's (its RPN's, on A): the one whose box and score in the
        slot's class are nearest the graph's; returns each slot's index (−1 for an empty slot)."""
        from torchvision.models.detection.image_list import ImageList

        dense, size = self.float32, self.spec.preprocessing.image_size
        with torch.no_grad():
            pixels = torch.from_numpy(image)
            features = self._features(dense, pixels, A.float())
            proposals, _ = dense.rpn(ImageList(pixels, [tuple(size)] * len(image)), features)
            pooled = dense.roi_heads.box_roi_pool(features, proposals, [tuple(size)] * len(image))
            logits, regression = dense.roi_heads.box_predictor(dense.roi_heads.box_head(pooled))
            boxes = dense.roi_heads.box_coder.decode(regression, proposals).split([len(p) for p in proposals])
            scores = torch.softmax(logits, -1).split([len(p) for p in proposals])
        slots = np.full(graph["labels"].shape, -1, np.int64)
        self.rois = [torch.zeros(graph["labels"].shape[1], 4, dtype=torch.float64) for _ in image]
        for n, d in zip(*np.nonzero(graph["labels"] >= 0), strict=True):
            k = graph["labels"][n, d]
            clipped = clip_boxes(boxes[n][:, k], size).numpy()
            distance = np.abs(clipped - graph["boxes"][n, d]).sum(1) + 1e3 * np.abs(
                scores[n][:, k].numpy() - graph["scores"][n, d]
            )
            self.rois[n][d] = proposals[n][int(distance.argmin())].double()
            slots[n, d] = d
        return slots

    def scores(self, image: np.ndarray, A: torch.Tensor) -> tuple[None, torch.Tensor]:
        """Each slot's class scores [N, M, K] in float64 with the layer's output replaced by ``A``."""
        size = [tuple(self.spec.preprocessing.image_size)] * len(image)
        heads = self.dense.roi_heads
        features = self._features(self.dense, torch.from_numpy(image).double(), A)
        logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, self.rois, size)))
        return None, torch.softmax(logits, -1).reshape(len(image), -1, logits.shape[-1])
