"""What the builder and end-to-end tests share (torch): a hand-made probe model, graphs built once per session,
the eager reference for one method, and the fixtures conftest.py files hand on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from camexport.builder.comparison import Case
from camexport.builder.layouts import CHANNELS_FIRST, Layout
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.validation import Explained, check_outputs
from camexport.contract import GraphSpec, Preprocessing, Provenance, parse_methods


class ProbeModel(nn.Module):
    """``logits[n, c] = Σ_khw W[c, k, h, w] · A[n, k, h, w]`` with ``A = feat(x) = x``.

    So at the layer ``feat``, the activations are the input itself and the gradient of class c is
    exactly ``W[c]``: hand-made tensors go straight into the formulas.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.feat(x)
        return (a[:, None] * self.weight[None]).flatten(2).sum(-1)


_BUILT: dict[tuple, Path] = {}


def built_graph(
    folder: Path,
    model: str,
    layer: str | None,
    method: str,
    weights: str = "random",
    input: str = "float32",
    **options: object,
) -> Path:
    """Builds (once per session) and returns the graph's path; ``options`` as BuildOptions' (``image_size``...)."""
    key = (model, layer, method, weights, input, *sorted(options.items()))
    if key not in _BUILT:
        extra = "".join(f"-{k}={v}" for k, v in sorted(options.items())).replace(" ", "").replace(":", "_")
        name = f"{model.replace(':', '_')}-{(layer or 'default').replace('.', '_')}-{method}-{weights}-{input}{extra}"
        fields = dict(model=model, layer=layer, methods=parse_methods(method), weights=weights, input=input)
        options = BuildOptions(**fields, **options)  # type: ignore[arg-type]
        result = build(replace(options, output=folder / f"{name}.onnx"), log=lambda _line: None)
        _BUILT[key] = result.graph
    return _BUILT[key]


@pytest.fixture(scope="session")
def resnet18_random() -> nn.Module:
    from camexport.builder.sources import load_model

    return load_model("resnet18", "random", seed=0).module


@pytest.fixture(scope="session")
def efficientnet_graph(graph_dir: Path) -> Path:
    return built_graph(graph_dir, "efficientnet_lite0", None, "gradcampp", weights="default")


def assert_matches_reference(
    graph: dict[str, np.ndarray],
    model: nn.Module,
    layer: str,
    method: str,
    image: np.ndarray,
    target: np.ndarray | None,
    layout: Layout = CHANNELS_FIRST,
) -> dict[str, np.ndarray]:
    """The graph's outputs judged by the validation's own documented rules (camexport.builder.validation):
    tolerances, isolated kink flips, and the reference's own sensitivity to a 1e-5 input perturbation, so
    that the suite holds on any CPU's kernels while a wrong border, channel or sign still fails. Returns the
    graph's outputs for further checks."""
    explained = Explained(model, spec_of(layer, parse_methods(method), image.shape[-2:]), layout)
    result = check_outputs(graph, explained, Case("test", image, target))
    assert result.passed, result.failures()
    assert np.isfinite(graph["heatmap"]).all()
    assert graph["heatmap"].min() >= 0.0 and graph["heatmap"].max() <= 1.0
    return graph


def spec_of(
    layer: str,
    methods: tuple[str, ...] = ("gradcampp",),
    image_size: tuple[int, ...] = (8, 8),
    classes: int = 2,
    **fields: object,
) -> GraphSpec:
    """A spec for hand-made tests: ``layer`` explained by ``methods``; ``fields`` as GraphSpec's (``task``, ...)."""
    size = (int(image_size[0]), int(image_size[1]))
    return GraphSpec(
        task=fields.pop("task", "classification"),
        layer=layer,
        methods=tuple(methods),
        labels=tuple(f"c{i}" for i in range(classes)),
        preprocessing=Preprocessing((0.0,) * 3, (1.0,) * 3, size, max(size), "bilinear"),
        provenance=Provenance("test", "hand-made", version="test"),
        **fields,
    )


def reference(
    model: nn.Module,
    layer: str,
    method: str,
    image: np.ndarray,
    target: object = None,
    layout: Layout = CHANNELS_FIRST,
    **fields: object,
) -> dict[str, np.ndarray]:
    """The eager reference's outputs for one method (``fields``: the spec's ``task``, ``background``, and the case's
    ``region``)."""
    region = fields.pop("region", None)
    image = np.asarray(image, dtype=np.float32)
    explained = Explained(model, spec_of(layer, (method,), image.shape[-2:], **fields), layout)
    return explained.outputs(Case("reference", image, None if target is None else np.asarray(target), None, region))
