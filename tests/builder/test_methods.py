"""The graph's formulas (camexport.builder.methods) against the numpy implementation on hand-made tensors."""

from __future__ import annotations

import fixtures
import numpy as np
import numpy_cam
import pytest
import torch

from camexport.builder.layouts import CHANNELS_FIRST
from camexport.builder.methods import (
    REGISTRY,
    LayerPass,
    class_activation_map,
    gradcam_weights,
    gradcampp_weights,
    normalised_heatmap,
)
from camexport.builder.reference import ReferencePass
from camexport.contract import METHODS

GRADIENT_METHODS = tuple(name for name, spec in METHODS.items() if spec.gradient)


def graph_cam(method: str, A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The method's map as the graph computes it, from a pass of ``A`` and ``g`` alone."""
    done = LayerPass(torch.zeros(len(A), dtype=torch.int64), A, g, CHANNELS_FIRST, A, None, rerun=None)
    return REGISTRY[method].graph(done).cam


def reference_cam(method: str, A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The method's map as the eager reference computes it from ``A`` and ``g``."""
    done = ReferencePass(None, None, CHANNELS_FIRST, np.zeros(0), None, np.zeros(len(A), np.int64), A, g)
    return REGISTRY[method].reference(done).cam


def test_every_contract_method_has_one_record_in_contract_order() -> None:
    assert tuple(REGISTRY) == tuple(METHODS)
    assert all(record.spec is METHODS[name] for name, record in REGISTRY.items())


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    A = rng.uniform(0.0, 3.0, size=(2, 4, 3, 5))
    g = rng.normal(0.0, 0.5, size=A.shape)
    pole_A = np.full((1, 2, 2, 2), 1.0)
    pole_A[0, 0] = -0.5  # channel 0 sums to -2 ...
    pole_g = np.full((1, 2, 2, 2), 0.25)
    pole_g[0, 0] = 1.0  # ... and g = 1 there: 2g² + (ΣA)g³ = 2 - 2 = 0, so α must be 0, not inf
    return {
        "random": (A, g),
        "zero gradients": (A, np.zeros_like(A)),
        "negative gradients": (A, -np.abs(g) - 0.1),
        "zero activations": (np.zeros_like(A), g),
        "denominator zero": (pole_A, pole_g),
    }


CASES = _cases()


@pytest.mark.parametrize("case", CASES)
def test_gradcampp_weights_match_numpy(case: str) -> None:
    A, g = CASES[case]
    got = gradcampp_weights(torch.tensor(A, dtype=torch.float64), torch.tensor(g, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, numpy_cam.gradcampp_weights(A, g), rtol=1e-12, atol=1e-12)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("case", CASES)
def test_gradcam_weights_match_numpy(case: str) -> None:
    A, g = CASES[case]
    got = gradcam_weights(torch.tensor(A), torch.tensor(g)).numpy()
    np.testing.assert_allclose(got, numpy_cam.gradcam_weights(A, g), rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["gradcampp", "gradcam"])
def test_cam_and_heatmap_match_numpy(case: str, method: str) -> None:
    A, g = CASES[case]
    weights_np = (numpy_cam.gradcampp_weights if method == "gradcampp" else numpy_cam.gradcam_weights)(A, g)
    weights_fn = gradcampp_weights if method == "gradcampp" else gradcam_weights
    weights = weights_fn(torch.tensor(A), torch.tensor(g))
    cam = class_activation_map(torch.tensor(A), weights)
    np.testing.assert_allclose(cam.numpy(), numpy_cam.cam(A, weights_np), rtol=1e-10, atol=1e-12)
    heat = normalised_heatmap(cam, (7, 11)).numpy()
    expected = numpy_cam.heatmap(numpy_cam.cam(A, weights_np), 7, 11)
    np.testing.assert_allclose(heat, expected, atol=1e-9)
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def test_zero_gradients_give_a_zero_heatmap_not_nan() -> None:
    A, g = CASES["zero gradients"]
    cam = class_activation_map(torch.tensor(A), gradcampp_weights(torch.tensor(A), torch.tensor(g)))
    heat = normalised_heatmap(cam, (6, 10))
    assert torch.equal(heat, torch.zeros_like(heat))


def test_negative_gradients_give_zero_gradcampp_weights() -> None:
    A, g = CASES["negative gradients"]
    assert torch.equal(gradcampp_weights(torch.tensor(A), torch.tensor(g)), torch.zeros(2, 4, dtype=torch.float64))


def test_the_cheap_form_keeps_tiny_gradients_that_the_papers_form_loses_in_float32() -> None:
    """g = 1e-24: g² and g³ underflow to 0 in float32, so eq. 19 term by term divides 0 by 0 and gives α = 0;
    the true α is 1/(2 + S·g) ≈ 1/2 (numpy_cam in float64 agrees), and the graph's form ReLU(g)/(2 + S·g)
    keeps it in float32."""
    A = np.full((1, 2, 2, 2), 1.5)
    g = np.full((1, 2, 2, 2), 1e-24)
    g[0, 1] = 0.3  # an ordinary channel beside it: the same either way
    truth = numpy_cam.gradcampp_weights(A, g)  # float64: no underflow
    ours = gradcampp_weights(torch.tensor(A, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(ours, truth, rtol=1e-6)
    assert ours[0, 0] == pytest.approx(4 * 1e-24 / 2, rel=1e-6)
    g32, A32 = torch.tensor(g, dtype=torch.float32), torch.tensor(A, dtype=torch.float32)
    g2 = g32 * g32
    papers = torch.where(2 * g2 + A32.sum(dim=(2, 3), keepdim=True) * g2 * g32 != 0, 1.0, 0.0)
    assert papers[0, 0].sum() == 0  # term by term in float32, the paper's denominator is 0 there


def test_paper_formula_differs_from_the_minimal_example_variant() -> None:
    """The widely copied Σ(A·g³) denominator is not the paper's (ΣA)·g³: on this input they disagree."""
    A = np.array([[[[1.0, 3.0], [0.5, 2.0]]]])
    g = np.array([[[[0.2, 0.7], [0.4, 0.1]]]])
    ours = gradcampp_weights(torch.tensor(A), torch.tensor(g)).numpy()
    variant = ((g**2 / (2 * g**2 + (A * g**3).sum())) * np.maximum(g, 0)).sum(axis=(2, 3))
    np.testing.assert_allclose(ours, numpy_cam.gradcampp_weights(A, g), rtol=1e-12)
    assert abs(ours[0, 0] - variant[0, 0]) > 1e-2


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_matches_numpy(case: str, method: str) -> None:
    """XGrad-CAM, LayerCAM and HiResCAM too: the graph's torch formulas vs loops written from the papers."""
    A, g = CASES[case]
    got = graph_cam(method, torch.tensor(A), torch.tensor(g)).numpy()
    np.testing.assert_allclose(got, fixtures.cam(method, A, g), rtol=1e-10, atol=1e-12)
    assert np.isfinite(got).all() and got.min() >= 0.0
    # the record's reference, written separately in paper form, gives the same map
    paper = reference_cam(method, torch.tensor(A), torch.tensor(g)).numpy()
    np.testing.assert_allclose(paper, fixtures.cam(method, A, g), rtol=1e-10, atol=1e-12)


def test_methods_differ_where_they_should() -> None:
    """On a map with mixed-sign gradients the methods are not interchangeable; behind a global-average-pooled
    head (a constant gradient per channel), HiResCAM and XGrad-CAM both equal Grad-CAM."""
    A, g = CASES["random"]
    cams = {m: graph_cam(m, torch.tensor(A), torch.tensor(g)).numpy() for m in GRADIENT_METHODS}
    assert not np.allclose(cams["layercam"], cams["hirescam"])
    constant = np.broadcast_to(g.mean(axis=(2, 3), keepdims=True), g.shape).copy()
    hires, grad, xgrad = (
        graph_cam(m, torch.tensor(A), torch.tensor(constant)).numpy() for m in ("hirescam", "gradcam", "xgradcam")
    )
    np.testing.assert_allclose(hires, grad, rtol=1e-10)
    np.testing.assert_allclose(xgrad, grad, rtol=1e-10)
