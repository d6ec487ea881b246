"""The committed fixture graphs run by the session give the known answers of their networks (tests/fixtures.py):
the logits, the class, A, g, every method's map and heatmap, every class's ReciproCAM map, a segmentation's
region and predicted classes, uint8 pixels normalised inside, any channel count, any image size."""

from __future__ import annotations

import fixtures
import numpy as np
import numpy_cam
import pytest

from camexport.runtime.session import CamSession

# float32 graph against float64 closed forms: the logits' rounding is ~1e-6 relative; a heatmap's min-max scaling
# divides by the map's span, so its tolerance is absolute and larger.
RTOL, HEATMAP_ATOL = 1e-5, 1e-4


def _close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    scale = max(float(np.abs(want).max()), 1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def _inputs(seed: int, batch: int, channels: int = 3, size: int = fixtures.SIZE) -> np.ndarray:
    """Positive inputs, so that A's channel sums are positive: Grad-CAM++'s α = 1/(2 + S·g) then has no pole where
    g > 0, and float32 against float64 stays at rounding level (near a pole either would be far from the other)."""
    return np.random.default_rng(seed).uniform(0.05, 1.0, (batch, channels, size, size)).astype(np.float32)


def _check_classifier(outputs: dict, net: fixtures.Net, image: np.ndarray, target: np.ndarray, methods) -> None:
    A = fixtures.activations(image)
    classes = np.where(target < 0, fixtures.default_classes(net, A), target)
    g = fixtures.gradients(net, A, classes)
    _close(outputs["logits"], fixtures.logits(net, A))
    assert outputs["class_index"].tolist() == classes.tolist()
    _close(outputs["activations"], A)
    _close(outputs["gradients"], g)
    for i, method in enumerate(methods):
        cam = fixtures.cam(method, A, g)
        suffix = f"_{method}" if len(methods) > 1 else ""
        _close(outputs[f"cam{suffix}"], cam)
        heat = numpy_cam.heatmap(cam, *image.shape[2:])
        np.testing.assert_allclose(outputs[f"heatmap{suffix}"], heat, atol=HEATMAP_ATOL)
        if i == 0:
            np.testing.assert_array_equal(outputs["heatmap"], outputs[f"heatmap{suffix}"])


@pytest.mark.parametrize(("graph", "channels"), [("linear", 3), ("gray", 1), ("bands", 4)])
def test_a_classifier_graph_gives_its_networks_known_answers(graphs, graph: str, channels: int) -> None:
    session = CamSession(graphs[graph])
    net = fixtures.net("linear", channels)
    for seed, batch, target in ((0, 3, [-1]), (1, 1, [2]), (2, 4, [-1, 0, 3, -1])):
        image = _inputs(seed, batch, channels)
        outputs = session.run(image, np.array(target))
        _check_classifier(outputs, net, image, np.broadcast_to(np.array(target), (batch,)), ("gradcampp",))


def test_every_method_and_every_class_map_of_one_graph(graphs) -> None:
    session = CamSession(graphs["linear-methods"])
    net = fixtures.net("linear")
    assert session.spec.methods == ("gradcampp", "gradcam", "xgradcam", "layercam", "hirescam", "reciprocam")
    image = _inputs(3, 2)
    outputs = session.run(image, np.array([-1, 1]))
    _check_classifier(outputs, net, image, np.array([-1, 1]), session.spec.methods[:-1])
    every = fixtures.reciprocam(net, fixtures.activations(image))
    _close(outputs["class_maps"], every)
    chosen = every[np.arange(2), outputs["class_index"]]
    _close(outputs["cam_reciprocam"], chosen)
    np.testing.assert_allclose(outputs["heatmap_reciprocam"], numpy_cam.heatmap(chosen, 16, 16), atol=HEATMAP_ATOL)


def test_a_uint8_graph_normalises_the_pixels_inside(graphs) -> None:
    session = CamSession(graphs["linear-uint8"])
    assert session.spec.takes_pixels and session.spec.provenance.random_weights
    pixels = np.random.default_rng(4).integers(160, 256, (2, 16, 16, 3), dtype=np.uint8)  # positive once normalised
    outputs = session.run(pixels, np.array([-1]))
    net = fixtures.net("linear")
    _check_classifier(outputs, net, fixtures.normalised(pixels, net), np.array([-1, -1]), ("gradcampp",))


@pytest.mark.parametrize("size", [16, 24, 10])
def test_a_graph_of_any_size_takes_other_sizes(graphs, size: int) -> None:
    session = CamSession(graphs["pooled-dynamic"])
    assert session.spec.dynamic_size
    image = _inputs(5, 2, size=size)
    outputs = session.run(image, np.array([1]))
    _check_classifier(outputs, fixtures.net("pooled"), image, np.array([1, 1]), ("gradcampp",))


def test_a_segmentation_graph_explains_its_region(graphs) -> None:
    session = CamSession(graphs["segmenter"])
    net = fixtures.net("segmenter")
    image = _inputs(6, 3)
    A = fixtures.activations(image)
    rectangle = np.zeros((3, 16, 16), np.float32)
    rectangle[:, 2:9, 5:14] = 1.0
    for target, region in ((None, None), (np.array([0, 1, 2]), rectangle), (np.array([2]), -np.ones((16, 16)))):
        outputs = session.run(image, target, region)
        classes = fixtures.default_classes(net, A) if target is None else np.broadcast_to(target, (3,))
        weights = fixtures.segmentation_region(net, A, classes)
        if region is not None:
            weights = np.where(np.broadcast_to(region, (3, 16, 16)) < 0, weights, region)
        _close(outputs["logits"], fixtures.logits(net, A))
        assert outputs["class_index"].tolist() == list(classes)
        assert (outputs["segmentation"] == fixtures.logits(net, A).argmax(axis=1)).mean() >= 0.999  # near-ties
        g = fixtures.gradients(net, A, classes, weights)
        _close(outputs["gradients"], g)
        _close(outputs["cam"], fixtures.cam("gradcampp", A, g))
