"""ReciproCAM in the graph: a closed form on a model with a linear tail, batches, combination, refusals."""

from __future__ import annotations

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

def pooled():
    return PooledLinear()

def residual():
    return Residual()
"""
WEIGHT = [[1.0, -2.0, 0.5], [0.0, 1.0, 1.0], [-1.0, 0.3, 2.0], [2.0, 2.0, -1.0], [0.5, -0.5, 0.0]]
SIZE = (6, 5)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reciprocam")
    (folder / "nets.py").write_text(NETS.replace("WEIGHT", repr(WEIGHT)))
    for methods in ("reciprocam", "gradcampp", "gradcampp,reciprocam"):
        out = folder / f"{methods.replace(',', '+')}.onnx"
        args = ["build", f"{folder / 'nets.py'}:pooled", "--layer", "feat", "--method", methods]
        assert main([*args, "--image-size", *map(str, SIZE), "--output", str(out)]) == 0
    return folder


def _closed_form(image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """cam[n, i, j] = softmax(W · A[n, :, i, j] · s_ij / (h·w))_c, s_ij the Gaussian's mass inside the map."""
    n, _, h, w = image.shape
    kernel = np.asarray(RECIPRO_KERNEL)
    mass = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            mass[i, j] = kernel[max(0, 1 - i) : 3 - max(0, i + 2 - h), max(0, 1 - j) : 3 - max(0, j + 2 - w)].sum()
    logits = np.einsum("kc,nchw->nkhw", np.asarray(WEIGHT), image) * mass / (h * w)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs[np.arange(n), classes]


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
    assert both.info.methods == ("gradcampp", "reciprocam")
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
