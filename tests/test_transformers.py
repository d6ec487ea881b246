"""Vision Transformer: token outputs read as a patch grid (class token dropped), in the graph and the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from camexport.build import BuildOptions, build
from camexport.layers import token_grid
from camexport.reference import reference_explain
from camexport.registry import load_model
from camexport.session import CamSession


@pytest.mark.parametrize(
    ("shape", "size", "grid"),
    [
        ((1, 197, 768), (224, 224), (1, 14, 14)),
        ((1, 196, 768), (224, 224), (0, 14, 14)),
        ((1, 50, 32), (224, 224), (1, 7, 7)),
        ((1, 33, 8), (64, 128), (1, 4, 8)),
        ((1, 7, 8), (224, 224), None),
        ((1, 512, 7, 7), (224, 224), None),
    ],
)
def test_token_grid(shape, size, grid) -> None:
    assert token_grid(shape, size) == grid


@pytest.mark.slow
def test_vit_graph_matches_reference(tmp_path: Path) -> None:
    # torchvision zero-initialises ViT's head, which would make every gradient zero: give it weights.
    module = load_model("vit_b_16", "random").module
    torch.manual_seed(0)
    torch.nn.init.normal_(module.heads.head.weight, std=0.05)
    checkpoint = tmp_path / "vit.pt"
    torch.save(module.state_dict(), checkpoint)
    out = tmp_path / "vit.onnx"
    build(BuildOptions(model="vit_b_16", weights=str(checkpoint), output=out), log=lambda _: None)
    session = CamSession(out)
    assert session.info.layer == "encoder.layers.encoder_layer_11.ln_1"
    image = np.random.default_rng(8).standard_normal((2, 3, 224, 224)).astype(np.float32)
    target = np.array([-1, 17])
    graph = session.run(image, target)
    ref = reference_explain(module, session.info.layer, "gradcampp", image, target, layout=("tokens", 1, 14, 14))
    assert graph["activations"].shape == (2, 768, 14, 14) and graph["heatmap"].shape == (2, 224, 224)
    assert np.abs(ref["gradients"]).max() > 0
    assert graph["class_index"].tolist() == ref["class_index"].tolist()
    assert np.abs(graph["activations"] - ref["activations"]).max() <= 1e-4 * np.abs(ref["activations"]).max()
    assert np.linalg.norm(graph["gradients"] - ref["gradients"]) <= 1e-2 * np.linalg.norm(ref["gradients"])
    assert np.abs(graph["heatmap"] - ref["heatmap"]).max() <= 1e-2


@pytest.mark.slow
def test_swin_reads_channels_last_norms(tmp_path: Path) -> None:
    out = tmp_path / "swin.onnx"
    build(BuildOptions(model="swin_t", weights="random", output=out), log=lambda _: None)
    session = CamSession(out)
    assert session.info.layer == "features.7.1.norm1"
    module = load_model("swin_t", "random").module
    image = np.random.default_rng(9).standard_normal((2, 3, 224, 224)).astype(np.float32)
    graph = session.run(image, [-1, 3])
    ref = reference_explain(module, session.info.layer, "gradcampp", image, [-1, 3], layout=("nhwc",))
    assert graph["activations"].shape == (2, 768, 7, 7)
    assert np.abs(ref["gradients"]).max() > 0
    assert np.abs(graph["activations"] - ref["activations"]).max() <= 1e-4 * np.abs(ref["activations"]).max()
    assert np.linalg.norm(graph["gradients"] - ref["gradients"]) <= 1e-2 * np.linalg.norm(ref["gradients"])
    assert np.abs(graph["heatmap"] - ref["heatmap"]).max() <= 1e-2
