"""The eager reference against the numpy formulas (hand-made tensors) and against pytorch-grad-cam."""

from __future__ import annotations

import copy

import numpy as np
import numpy_cam
import pytest
import torch
from building import ProbeModel, reference
from torch import nn


def probe_inputs(A: np.ndarray, g: np.ndarray) -> tuple[ProbeModel, np.ndarray]:
    """A probe model whose class 1 has gradient g at layer 'feat' (an AvgPool2d(2)) and an input giving A."""
    model = ProbeModel(torch.stack([torch.zeros_like(torch.tensor(g[0])), torch.tensor(g[0])]).float()).eval()
    model.feat = nn.AvgPool2d(2)
    image = np.repeat(np.repeat(A, 2, axis=2), 2, axis=3).astype(np.float32)
    return model, image


@pytest.mark.parametrize("method", ["gradcampp", "gradcam"])
@pytest.mark.parametrize("kind", ["random", "zero gradients", "negative gradients", "denominator zero"])
def test_reference_matches_numpy_on_hand_made_tensors(method: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    A = rng.uniform(0.0, 2.0, size=(1, 3, 4, 5))
    g = {
        "random": rng.normal(0, 1, size=A.shape),
        "zero gradients": np.zeros(A.shape),
        "negative gradients": -rng.uniform(0.1, 1.0, size=A.shape),
        "denominator zero": np.ones(A.shape),
    }[kind]
    if kind == "denominator zero":
        A[0, 0] = -2.0 / A[0, 0].size  # channel sum -2 with g = 1: the denominator vanishes
    A = A.astype(np.float32).astype(np.float64)
    g = g.astype(np.float32).astype(np.float64)
    model, image = probe_inputs(A, g)
    out = reference(model, "feat", method, image, [1])
    np.testing.assert_allclose(out["activations"], A, rtol=1e-6)
    np.testing.assert_allclose(out["gradients"], g, rtol=1e-6)
    weights = (numpy_cam.gradcampp_weights if method == "gradcampp" else numpy_cam.gradcam_weights)(A, g)
    expected_cam = numpy_cam.cam(A, weights)
    np.testing.assert_allclose(out["cam"], expected_cam, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(out["heatmap"], numpy_cam.heatmap(expected_cam, 8, 10), atol=1e-6)
    assert np.isfinite(out["heatmap"]).all()


def test_reference_keeps_activations_before_an_inplace_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 36, 5))
    model.eval()
    image = torch.randn(2, 3, 6, 6)
    out = reference(model, "0", "gradcam", image.numpy())
    np.testing.assert_allclose(out["activations"], model[0](image).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert (out["activations"] < 0).any()


def test_reference_top1_and_explicit_class() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 6)).eval()
    image = torch.randn(3, 3, 6, 6)
    logits = model(image).detach().numpy()
    out = reference(model, "0", "gradcampp", image.numpy(), [-1, 2, -1])
    assert out["class_index"].tolist() == [int(logits[0].argmax()), 2, int(logits[2].argmax())]


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_reference_agrees_with_pytorch_grad_cam(resnet18_random: nn.Module, layer: str) -> None:
    """pytorch-grad-cam adds eps to the denominator and min-max scales before resizing: correlation > 0.99."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    rng = np.random.default_rng(11)
    image = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    classes = [3, 500]
    ours = reference(resnet18_random, layer, "gradcampp", image, classes)["heatmap"]
    model = copy.deepcopy(resnet18_random).requires_grad_(True)  # pytorch-grad-cam needs a backward graph
    with GradCAMPlusPlus(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        theirs = cam(input_tensor=torch.from_numpy(image), targets=[ClassifierOutputTarget(c) for c in classes])
    for a, b in zip(ours, theirs, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
