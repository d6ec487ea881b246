"""The run side's fixture graphs, made by camexport build from torch networks with tests/fixtures.py's weights.

Regenerate them (from the repository root) after a change of the contract or of what a graph computes::

    .venv/bin/python tests/builder/fixture_graphs.py

and commit tests/runtime/graphs/. ``test_fixture_graphs.py`` builds them afresh and fails where the committed ones
differ (metadata, inputs and outputs, or outputs on fresh inputs beyond float32 rounding). The factories below are
what ``build`` imports (``tests/builder/fixture_graphs.py:linear`` and so on, relative to the repository root, so
that no machine's path enters a graph's metadata).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/fixtures.py, also when build imports this file by its path

import fixtures  # noqa: E402

from camexport import contract  # noqa: E402
from camexport.builder.pipeline import BuildOptions, build  # noqa: E402
from camexport.builder.sources import ModelOverrides  # noqa: E402

HERE = "tests/builder/fixture_graphs.py"  # the factories, relative to the repository root
GRAPHS = ROOT / "tests" / "runtime" / "graphs"


class Linear(nn.Module):
    """``logits = Σ W[c]·feat(x) + b``, ``feat`` a 2x2 average pool (see tests/fixtures.py)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        net = fixtures.net("linear", channels)
        self.feat = nn.AvgPool2d(2)
        self.weight = nn.Parameter(torch.tensor(net.weight), requires_grad=False)
        self.bias = nn.Parameter(torch.tensor(net.bias), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x).flatten(1) @ self.weight.flatten(1).T + self.bias


class Pooled(nn.Module):
    """``logits = W · mean_yx(feat(x)) + b``: any image size."""

    def __init__(self) -> None:
        super().__init__()
        net = fixtures.net("pooled")
        self.feat = nn.AvgPool2d(2)
        self.weight = nn.Parameter(torch.tensor(net.weight), requires_grad=False)
        self.bias = nn.Parameter(torch.tensor(net.bias), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x).mean(dim=(2, 3)) @ self.weight.T + self.bias


class Segmenter(nn.Module):
    """A 1x1 convolution of ``feat(x)``, upsampled bilinearly to the image: logits [N, K, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        net = fixtures.net("segmenter")
        self.feat = nn.AvgPool2d(2)
        self.weight = nn.Parameter(torch.tensor(net.weight)[:, :, None, None], requires_grad=False)
        self.bias = nn.Parameter(torch.tensor(net.bias), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.conv2d(self.feat(x), self.weight, self.bias)
        return F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)


def linear() -> nn.Module:
    return Linear(3)


def gray() -> nn.Module:
    return Linear(1)


def bands() -> nn.Module:
    return Linear(4)


def pooled() -> nn.Module:
    return Pooled()


def segmenter() -> nn.Module:
    return Segmenter()


def red() -> nn.Module:
    """Class 1 (``red``) scores ``8 · mean(ReLU(R − 0.5))``: only saturated red counts (tests/fixtures.py)."""
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1))
        model[0].bias.fill_(-fixtures.RED_THRESHOLD)
        model[4].weight.copy_(torch.tensor([[0.0], [fixtures.RED_GAIN]]))
        model[4].bias.zero_()
    return model


class ProbeSegmenter(nn.Module):
    """logits = W·x per pixel (tests/fixtures.py's PROBE_WEIGHT): the gradient over a region is W[c] · region."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Conv2d(3, 4, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(fixtures.PROBE_WEIGHT)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x))


def probe_segmenter() -> nn.Module:
    return ProbeSegmenter()


class Redness(nn.Module):
    """A detector's backbone that sees red: ``max(0, R − (G + B)/2)`` averaged over 4x4 patches ([N, 2, H/4, W/4],
    channel 1 a constant 1), and over 8x8 ([N, 2, H/8, W/8])."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 2, 4, stride=4)
        with torch.no_grad():
            self.patches.weight.zero_()
            self.patches.weight[0] = torch.tensor([1.0, -0.5, -0.5]).view(3, 1, 1) / 16
            self.patches.bias.copy_(torch.tensor([0.0, 1.0]))
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fine = self.relu(self.patches(x))
        return {"0": fine, "1": self.pool(fine)}


def red_detector() -> nn.Module:
    """A torchvision SSD at 64 x 64 that finds red blobs (classes ``background``, ``red``): each anchor's ``red``
    logit is 8·redness at its place − 3 (its second anchor's 7.9·, so that no two anchors tie), boxes are the default
    boxes (no regression). Each detection's score depends on its own 3 x 3 neighbourhood of the map only, so its
    heatmap lies on its own blob: the several-instances test's known answer."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    anchors = DefaultBoxGenerator([[], []], scales=[0.25, 0.5, 0.75])
    head = SSDHead([2, 2], anchors.num_anchors_per_location(), num_classes=2)
    with torch.no_grad():
        for conv in (*head.classification_head.module_list, *head.regression_head.module_list):
            conv.weight.zero_()
            conv.bias.zero_()
        for conv in head.classification_head.module_list:  # channels: anchor 0 (background, red), anchor 1 (...)
            conv.weight[1, 0, 1, 1], conv.weight[3, 0, 1, 1] = 8.0, 7.9
            conv.bias[1], conv.bias[3] = -3.0, -3.0
    detector = SSD(
        Redness(),
        anchors,
        (64, 64),
        2,
        [0.0] * 3,
        [1.0] * 3,
        head=head,
        score_thresh=0.5,
        nms_thresh=0.1,
        topk_candidates=50,
    )
    return detector.eval()


@dataclass(frozen=True)
class Fixture:
    """One committed graph: its file, its factory, its labels and normalisation, and what else ``build`` is told."""

    file: str
    factory: str
    labels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] = (fixtures.SIZE, fixtures.SIZE)
    layer: str = "feat"
    options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, file: str, factory: str, net: fixtures.Net, **options: object) -> Fixture:
        return cls(file, factory, net.labels, net.mean, net.std, options=options)

    def build_options(self, folder: Path) -> BuildOptions:
        return BuildOptions(
            model=f"{HERE}:{self.factory}",
            layer=self.layer,
            image_size=self.size,
            overrides=ModelOverrides(labels=list(self.labels), mean=self.mean, std=self.std),
            output=folder / self.file,
            **{"weights": "default", **self.options},
        )


METHODS = tuple(contract.METHODS)  # every method, in one graph
FIXTURES = (
    Fixture.of("linear.onnx", "linear", fixtures.net("linear")),
    Fixture.of("linear-methods.onnx", "linear", fixtures.net("linear"), methods=METHODS, class_maps=True),
    Fixture.of("linear-uint8.onnx", "linear", fixtures.net("linear"), input="uint8", weights="random"),
    Fixture.of("gray.onnx", "gray", fixtures.net("linear", 1)),
    Fixture.of("gray-uint8.onnx", "gray", fixtures.net("linear", 1), input="uint8"),
    Fixture.of("bands.onnx", "bands", fixtures.net("linear", 4)),
    Fixture.of("pooled-dynamic.onnx", "pooled", fixtures.net("pooled"), dynamic_size=True),
    Fixture.of("segmenter.onnx", "segmenter", fixtures.net("segmenter")),
    Fixture("red.onnx", "red", ("other", "red"), (0.0,) * 3, (1.0,) * 3, size=(32, 32), layer="1"),
    Fixture(
        "red-detector.onnx",
        "red_detector",
        ("background", "red"),
        (0.0,) * 3,
        (1.0,) * 3,
        size=(64, 64),
        layer="backbone.patches",
        options={"methods": ("gradcampp", "hirescam"), "max_detections": 4},
    ),
    Fixture(
        "probe-segmenter.onnx",
        "probe_segmenter",
        ("class_0", "class_1", "class_2", "class_3"),
        (0.0,) * 3,
        (1.0,) * 3,
        size=fixtures.PROBE_SIZE,
    ),
)


def make(folder: Path) -> list[Path]:
    """Builds every fixture graph into ``folder``, then the damaged and foreign ones made from them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [build(fixture.build_options(folder), log=lambda _line: None).graph for fixture in FIXTURES]
    for path in written:
        path.with_suffix(".json").unlink()  # the build report: machine paths and timings, nothing a test reads
    return written + _variants(folder / "linear.onnx", folder)


def _variants(source: Path, folder: Path) -> list[Path]:
    """From linear.onnx: a contract 1 graph (``target_class`` with a default initializer [-1]), one of an unknown
    contract, one whose labels do not match its logits, and an ONNX file camexport did not write."""
    model = onnx.load(str(source))
    props = {p.key: p for p in model.metadata_props}
    written = []
    old = onnx.ModelProto.FromString(model.SerializeToString())
    old.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "target_class"))
    next(p for p in old.metadata_props if p.key == "camexport.contract").value = "1"
    written.append(_save(old, folder / "contract1.onnx"))
    props["camexport.contract"].value = "5"
    written.append(_save(model, folder / "contract5.onnx"))
    props["camexport.contract"].value = "2"
    props["camexport.labels"].value = json.dumps(list(fixtures.LABELS[:1]))
    written.append(_save(model, folder / "short-labels.onnx"))
    del model.metadata_props[:]
    written.append(_save(model, folder / "plain.onnx"))
    return written


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    for graph in make(GRAPHS):
        print(graph.relative_to(ROOT))
