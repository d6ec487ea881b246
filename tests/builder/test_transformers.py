"""Vision Transformer: token outputs read as a patch grid (class token dropped), in the graph and the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from building import built_graph, reference

from camexport.builder.layers import token_grid
from camexport.builder.layouts import ChannelsLast, Layout, Tokens, Windows
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model
from camexport.runtime.session import CamSession


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
    # torchvision zero-initialises ViT's head; --weights random draws it, so gradients are not all zero.
    module = load_model("vit_b_16", "random").module
    assert module.heads.head.weight.abs().min() > 0
    out = tmp_path / "vit.onnx"
    build(BuildOptions(model="vit_b_16", weights="random", output=out), log=lambda _: None)
    session = CamSession(out)
    assert session.spec.layer == "encoder.layers.encoder_layer_11.ln_1"
    image = np.random.default_rng(8).standard_normal((2, 3, 224, 224)).astype(np.float32)
    target = np.array([-1, 17])
    graph = session.run(image, target)
    ref = reference(module, session.spec.layer, "gradcampp", image, target, layout=Tokens(1, 14, 14))
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
    assert session.spec.layer == "features.7.1.norm1"
    module = load_model("swin_t", "random").module
    image = np.random.default_rng(9).standard_normal((2, 3, 224, 224)).astype(np.float32)
    graph = session.run(image, [-1, 3])
    ref = reference(module, session.spec.layer, "gradcampp", image, [-1, 3], layout=ChannelsLast())
    assert graph["activations"].shape == (2, 768, 7, 7)
    assert np.abs(ref["gradients"]).max() > 0
    assert np.abs(graph["activations"] - ref["activations"]).max() <= 1e-4 * np.abs(ref["activations"]).max()
    assert np.linalg.norm(graph["gradients"] - ref["gradients"]) <= 1e-2 * np.linalg.norm(ref["gradients"])
    assert np.abs(graph["heatmap"] - ref["heatmap"]).max() <= 1e-2


TINY_MAXVIT = """
from torchvision.models.maxvit import MaxVit


def factory(num_classes=10):
    return MaxVit(input_size=(64, 64), stem_channels=8, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=num_classes)
"""


@pytest.mark.parametrize(
    ("layer", "layout", "channels"),
    [
        (None, Windows(2, 4, 4, False), 32),  # default: the last block's window-attention norm
        ("blocks.0.layers.0.layers.grid_attention.mlp_layer.1", Windows(8, 2, 2, True), 64),
    ],
)
def test_maxvit_partitioned_tokens(tmp_path: Path, layer, layout, channels) -> None:
    """MaxViT's [N, windows, cells, C] tokens, window and grid partitions, read back as the map they came from."""
    (tmp_path / "tiny_maxvit.py").write_text(TINY_MAXVIT)
    spec = f"{tmp_path / 'tiny_maxvit.py'}:factory"
    out = tmp_path / "maxvit.onnx"
    build(BuildOptions(model=spec, weights="random", image_size=(64, 64), layer=layer, output=out), log=lambda _: None)
    session = CamSession(out)
    module = load_model(spec, "random").module
    if layer is None:
        assert session.spec.layer == "blocks.1.layers.0.layers.window_attention.attn_layer.0"
    size = 8 if layer is None else 16
    image = np.random.default_rng(10).standard_normal((3, 3, 64, 64)).astype(np.float32)
    target = np.array([-1, 2, 7])
    graph = session.run(image, target)
    ref = reference(module, session.spec.layer, "gradcampp", image, target, layout=layout)
    assert graph["activations"].shape == (3, channels, size, size)
    assert np.abs(ref["gradients"]).max() > 0 and ref["heatmap"].max() > 0
    assert np.abs(graph["activations"] - ref["activations"]).max() <= 1e-4 * np.abs(ref["activations"]).max()
    assert np.linalg.norm(graph["gradients"] - ref["gradients"]) <= 1e-3 * np.linalg.norm(ref["gradients"])
    assert np.abs(graph["heatmap"] - ref["heatmap"]).max() <= 4e-3


def test_maxvit_departition_is_torchvisions() -> None:
    """The reference's reading of window tokens is exactly torchvision's own WindowDepartition."""
    from torchvision.models.maxvit import WindowDepartition, WindowPartition

    image = torch.randn(2, 5, 12, 8)
    for p, swap in ((2, False), (4, True)):
        tokens = WindowPartition()(image, p)
        tokens = tokens.swapaxes(1, 2) if swap else tokens
        layout = Windows(p, 12 // p, 8 // p, swap)
        A = _reference_map(tokens, layout)
        undone = WindowDepartition()(tokens.swapaxes(1, 2) if swap else tokens, p, 12 // p, 8 // p)
        assert torch.equal(A, undone) and torch.equal(A, image)


def _reference_map(tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The reference's A for layer output ``tokens``, via a module that returns them."""

    class Emit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = torch.nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.tokens(tokens * x.mean()).mean((1, 2))

    ones = np.ones((1, 3, 4, 4), dtype=np.float32)
    activations = reference(Emit(), "tokens", "gradcam", ones, [0], layout=layout)["activations"]
    return torch.as_tensor(activations).float()


@pytest.mark.slow
def test_timm_vit_tokens(graph_dir: Path) -> None:
    """timm's ViT (fused attention, its own block names): blocks[-1].norm1, class token dropped."""
    session = CamSession(built_graph(graph_dir, "timm:vit_tiny_patch16_224", None, "gradcampp"))
    assert session.spec.layer == "blocks.11.norm1" and session.spec.preprocessing.image_size == (224, 224)
    module = load_model("timm:vit_tiny_patch16_224", "random").module
    image = np.random.default_rng(11).standard_normal((3, 3, 224, 224)).astype(np.float32)
    graph = session.run(image, [-1, 7, 500])
    ref = reference(module, session.spec.layer, "gradcampp", image, [-1, 7, 500], layout=Tokens(1, 14, 14))
    assert graph["activations"].shape == (3, 192, 14, 14) and np.abs(ref["gradients"]).max() > 0
    assert np.linalg.norm(graph["gradients"] - ref["gradients"]) <= 1e-3 * np.linalg.norm(ref["gradients"])
    assert np.abs(graph["heatmap"] - ref["heatmap"]).max() <= 4e-3
