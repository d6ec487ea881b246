"""Shared fixtures: a hand-made probe model, and graphs built once per test session."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

from camexport.builder.layouts import CHANNELS_FIRST, Layout
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.validation import Case, Explained, check_outputs
from camexport.contract import parse_methods


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


@contextlib.contextmanager
def script_module(path: Path, name: str) -> Iterator[ModuleType]:
    """A script of benchmarks/ imported as a module for the time of a test module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture(scope="session")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("graphs")


_BUILT: dict[tuple[str, str | None, str, str, str], Path] = {}


def built_graph(
    folder: Path, model: str, layer: str | None, method: str, weights: str = "random", input: str = "float32"
) -> Path:
    """Builds (once per session) and returns the graph's path."""
    key = (model, layer, method, weights, input)
    if key not in _BUILT:
        name = f"{model}-{(layer or 'default').replace('.', '_')}-{method}-{weights}-{input}.onnx"
        options = BuildOptions(model=model, layer=layer, methods=parse_methods(method), weights=weights, input=input)
        result = build(replace(options, output=folder / name), log=lambda _line: None)
        _BUILT[key] = result.graph
    return _BUILT[key]


NODE_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"


@pytest.fixture(scope="session")
def node_example() -> Path:
    """The Node.js example with its npm dependencies installed (``npm ci``, from the lock file)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    if not (NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_EXAMPLE, check=True, timeout=600)
    return NODE_EXAMPLE


def run_node(example: Path, graph: Path, photo: Path, prefix: Path) -> dict:
    """``node explain.mjs GRAPH PHOTO PREFIX``: must succeed silently; returns its JSON."""
    result = subprocess.run(
        ["node", "explain.mjs", str(graph), str(photo), str(prefix)],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(prefix.with_suffix(".json").read_text())


@pytest.fixture(scope="session")
def resnet18_random() -> nn.Module:
    from camexport.builder.registry import load_model

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
    explained = Explained(model, layer, parse_methods(method), layout)
    result = check_outputs(graph, explained, Case("test", image, target))
    assert result.passed, result.failures()
    assert np.isfinite(graph["heatmap"]).all()
    assert graph["heatmap"].min() >= 0.0 and graph["heatmap"].max() <= 1.0
    return graph
