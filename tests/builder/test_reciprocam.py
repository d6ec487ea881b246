"""ReciproCAM and ViT-ReciproCAM in the graph: closed forms on models with a linear tail (a convolutional map,
tokens, and each behind a skip connection whose block input is masked too), every class's map, batches,
combination with gradient methods, a real Vision Transformer block validated against the reference, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from camexport.builder.methods import RECIPRO_KERNEL
from camexport.cli import main
from camexport.runtime.session import CamSession

# ``feat`` is the image itself; the tail averages it over space and applies W: logits = W · mean_yx(A).
NETS = """
import torch
from torch import nn

class PooledLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(3, 5, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(WEIGHT))

    def forward(self, x):
        return self.fc(self.feat(x).mean(dim=(2, 3)))

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc((self.conv(x) + x).mean(dim=(2, 3)))

# The explained layer inside a block: a copy (nn.Identity would hand back the block's input itself).
class Copy(nn.Module):
    def forward(self, x):
        return x.clone()

# A residual block: x + V inner(x), inner a copy (the explained layer, which the skip goes around).
class Mixer(nn.Module):
    def __init__(self, channels_last):
        super().__init__()
        self.inner = Copy()
        self.mix = nn.Linear(3, 3, bias=False)
        self.channels_last = channels_last
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor(MIX))

    def forward(self, x):
        if self.channels_last:
            return x + self.mix(self.inner(x))
        return x + self.mix(self.inner(x).movedim(1, -1)).movedim(-1, 1)

# logits = W mean(map); tokens: W (mean of the patch tokens + the class token).
class Pooled(nn.Module):
    def __init__(self, tokens, block):
        super().__init__()
        self.tokens = tokens
        self.cls = nn.Parameter(torch.tensor(CLS).reshape(1, 1, 3))
        self.feat = Mixer(tokens) if block else nn.Identity()
        self.fc = nn.Linear(3, 5, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(WEIGHT))

    def forward(self, x):
        if not self.tokens:
            return self.fc(self.feat(x).mean(dim=(2, 3)))
        t = torch.cat([self.cls.expand(x.shape[0], 1, 3), x.flatten(2).transpose(1, 2)], dim=1)
        t = self.feat(t)
        return self.fc(t[:, 1:].mean(dim=1) + t[:, 0])

def pooled():
    return PooledLinear()

def tokens():
    return Pooled(tokens=True, block=False)

def tokens_block():
    return Pooled(tokens=True, block=True)

def map_block():
    return Pooled(tokens=False, block=True)

def tiny_vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return model

def residual():
    return Residual()
"""
WEIGHT = [[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [-1.0, 0.3, 2.0], [2.0, 2.0, -1.0], [0.5, -0.5, 0.0]]
MIX = [[0.5, 0.0, -1.0], [0.2, -0.3, 0.0], [0.0, 1.0, 0.4]]
CLS = [0.3, -0.2, 0.1]
SIZE = (6, 5)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reciprocam")
    source = NETS.replace("WEIGHT", repr(WEIGHT)).replace("MIX", repr(MIX)).replace("CLS", repr(CLS))
    (folder / "nets.py").write_text(source)
    for methods in ("reciprocam", "gradcampp", "gradcampp,reciprocam"):
        out = folder / f"{methods.replace(',', '+')}.onnx"
        args = ["build", f"{folder / 'nets.py'}:pooled", "--layer", "feat", "--method", methods]
        assert main([*args, "--image-size", *map(str, SIZE), "--output", str(out)]) == 0
    return folder


def _gaussian(i: int, j: int, h: int, w: int) -> np.ndarray:
    """The 3x3 kernel centred at (i, j) on an h x w grid, cut at the border."""
    padded = np.zeros((h + 2, w + 2))
    padded[i : i + 3, j : j + 3] = np.asarray(RECIPRO_KERNEL)
    return padded[1:-1, 1:-1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _every_class(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ReciproCAM on ``logits = weight · mean_yx(A)``: the vector at (i, j) spread by the Gaussian, whose mass
    s_ij inside the map survives the mean: P[n, :, i, j] = softmax(weight · A[n, :, i, j] · s_ij / (h·w))."""
    _, _, h, w = image.shape
    mass = np.array([[_gaussian(i, j, h, w).sum() for j in range(w)] for i in range(h)])
    return _softmax(np.einsum("kc,nchw->nkhw", weight, image) * mass / (h * w))


def _every_class_tokens(image: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ViT-ReciproCAM on ``logits = weight · (mean of the patch tokens + class token)``: each token keeps its own
    vector times the Gaussian of (i, j) at its cell: P[n, :, i, j] = softmax(weight · (Σ_yx G_ij A[n, :, y, x] /
    (h·w) + cls))."""
    _, _, h, w = image.shape
    stamps = np.array([[_gaussian(i, j, h, w) for j in range(w)] for i in range(h)])  # [h, w, h, w]
    pooled = np.einsum("ijyx,ncyx->ncij", stamps, image) / (h * w) + np.asarray(CLS)[None, :, None, None]
    return _softmax(np.einsum("kc,nchw->nkhw", weight, pooled))


def _closed_form(image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return _every_class(image, np.asarray(WEIGHT))[np.arange(len(image)), classes]


def test_cam_is_the_closed_form_of_a_linear_tail(kit: Path) -> None:
    session = CamSession(kit / "reciprocam.onnx")
    image = np.random.default_rng(0).standard_normal((3, 3, *SIZE)).astype(np.float32)
    out = session.run(image, np.array([-1, 2, 4]))
    classes = out["class_index"]
    assert classes[1:].tolist() == [2, 4]
    np.testing.assert_allclose(out["cam"], _closed_form(image.astype(np.float64), classes), rtol=1e-5, atol=1e-7)
    assert np.isfinite(out["heatmap"]).all() and out["heatmap"].max(axis=(1, 2)) == pytest.approx([1, 1, 1])


def test_batches_are_per_image(kit: Path) -> None:
    """Each image's map and its min-max scaling are its own: a batch equals its images run one by one."""
    session = CamSession(kit / "reciprocam.onnx")
    image = np.random.default_rng(1).standard_normal((4, 3, *SIZE)).astype(np.float32)
    image[2] *= 50.0  # a very different scale in one image must not change the others' heatmaps
    together = session.run(image)
    for i in range(4):
        alone = session.run(image[i : i + 1])
        np.testing.assert_allclose(together["cam"][i], alone["cam"][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(together["heatmap"][i], alone["heatmap"][0], atol=1e-5)


def test_combined_with_a_gradient_method_in_one_graph(kit: Path) -> None:
    both, recipro, grad = (CamSession(kit / f"{m}.onnx") for m in ("gradcampp+reciprocam", "reciprocam", "gradcampp"))
    assert both.spec.methods == ("gradcampp", "reciprocam")
    image = np.random.default_rng(2).standard_normal((2, 3, *SIZE)).astype(np.float32)
    out = both.run(image)
    np.testing.assert_allclose(out["heatmap_reciprocam"], recipro.run(image)["heatmap"], atol=1e-5)
    np.testing.assert_allclose(out["heatmap_gradcampp"], grad.run(image)["heatmap"], atol=1e-5)
    np.testing.assert_array_equal(out["heatmap"], out["heatmap_gradcampp"])


def test_a_layer_bypassed_by_a_skip_connection_is_refused(kit: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.onnx"
    args = ["build", f"{kit / 'nets.py'}:residual", "--layer", "conv", "--method", "reciprocam", "--weights", "random"]
    assert main([*args, "--image-size", "8", "8", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a skip connection goes around the layer" in err and not out.exists()


def _build(kit: Path, factory: str, layer: str, out: Path, *extra: str) -> None:
    args = ["build", f"{kit / 'nets.py'}:{factory}", "--layer", layer, "--method", "reciprocam", *extra]
    assert main([*args, "--image-size", *map(str, SIZE), "--output", str(out)]) == 0


@pytest.mark.parametrize(
    ("factory", "layer", "block", "every_class"),
    [
        ("pooled", "feat", None, _every_class),
        ("tokens", "feat", None, _every_class_tokens),
        ("map_block", "feat.inner", "feat", _every_class),
        ("tokens_block", "feat.inner", "feat", _every_class_tokens),
    ],
)
def test_every_class_map_is_the_closed_form(kit: Path, tmp_path: Path, factory, layer, block, every_class) -> None:
    """Each class's map in one pass, for a convolutional map (ReciproCAM) and tokens (ViT-ReciproCAM), alone and
    inside a residual block whose input is masked too (else the skip would carry the unmasked map, and the
    closed form through (I + V) would not hold)."""
    out = tmp_path / f"{factory}.onnx"
    _build(kit, factory, layer, out, "--class-maps")
    session = CamSession(out)
    assert session.spec.class_maps and session.spec.masked_block == block
    image = np.random.default_rng(3).standard_normal((2, 3, *SIZE)).astype(np.float32)
    got = session.run(image, np.array([1, 3]))
    weight = np.asarray(WEIGHT) @ (np.eye(3) + np.asarray(MIX)) if block else np.asarray(WEIGHT)
    want = every_class(image.astype(np.float64), weight)
    np.testing.assert_allclose(got["class_maps"], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["cam"], want[[0, 1], [1, 3]], rtol=1e-5, atol=1e-7)


def test_a_vision_transformer_block_is_validated(kit: Path, tmp_path: Path) -> None:
    """torchvision's ViT at its default layer (the last block's first LayerNorm, which the block's skip goes
    around): the build masks the block's input too and validates every output against the eager reference."""
    out = tmp_path / "vit.onnx"
    args = ["build", f"{kit / 'nets.py'}:tiny_vit", "--method", "gradcampp,reciprocam", "--class-maps"]
    assert main([*args, "--image-size", "32", "32", "--output", str(out)]) == 0
    info = CamSession(out).spec
    assert info.layer == "encoder.layers.encoder_layer_1.ln_1" and info.masked_block == "encoder.layers.encoder_layer_1"
    report = json.loads(out.with_suffix(".json").read_text())
    checked = {c["name"] for case in report["validation"]["cases"] for c in case["checks"]}
    assert {"class_maps", "cam_reciprocam", "heatmap_reciprocam", "heatmap_gradcampp"} <= checked


def test_class_maps_need_reciprocam(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.onnx"
    assert main(["build", "resnet18", "--weights", "random", "--class-maps", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--class-maps" in err and "reciprocam" in err and not out.exists()
