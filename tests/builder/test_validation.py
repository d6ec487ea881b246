"""The comparison rules: exact-enough passes, systematic errors fail, isolated kink flips are tolerated."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from building import spec_of

from camexport.builder.comparison import Case, compare_outputs


def _outputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "logits": rng.normal(0, 3, (2, 10)),
        "class_index": np.array([3, 7]),
        "heatmap": rng.uniform(0, 1, (2, 32, 32)),
        "cam": rng.uniform(0, 5, (2, 8, 8)),
        "activations": rng.uniform(0, 4, (2, 16, 8, 8)),
        "gradients": rng.normal(0, 1e-3, (2, 16, 8, 8)),
    }


def _checks(graph: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, bool]:
    return {c.name: c.passed for c in compare_outputs(graph, ref)}


def test_identical_outputs_pass() -> None:
    ref = _outputs()
    assert all(_checks({k: v.copy() for k, v in ref.items()}, ref).values())


def test_rounding_noise_passes() -> None:
    ref = _outputs()
    rng = np.random.default_rng(1)
    noisy = {k: (v * (1 + 1e-6 * rng.standard_normal(v.shape)) if v.dtype.kind == "f" else v) for k, v in ref.items()}
    assert all(_checks(noisy, ref).values())


def test_a_wrong_border_row_of_gradients_fails() -> None:
    ref = _outputs()
    graph = {k: v.copy() for k, v in ref.items()}
    graph["gradients"][:, :, -1, :] = 0.0  # what a missing output_padding looks like
    assert _checks(graph, ref)["gradients"] is False


def test_an_isolated_kink_flip_in_gradients_passes() -> None:
    ref = _outputs()
    ref["gradients"] = np.random.default_rng(2).normal(0, 1e-3, (2, 64, 28, 28))
    graph = {k: v.copy() for k, v in ref.items()}
    graph["gradients"][0, 5, 3, 4] = 0.0  # one element on the other side of a ReLU
    assert _checks(graph, ref)["gradients"] is True


def test_wrong_class_or_nan_fails() -> None:
    ref = _outputs()
    graph = {k: v.copy() for k, v in ref.items()}
    graph["class_index"] = np.array([3, 8])
    graph["heatmap"][0, 0, 0] = np.nan
    checks = _checks(graph, ref)
    assert checks["class_index"] is False and checks["heatmap"] is False


def test_shape_mismatch_fails() -> None:
    ref = _outputs()
    graph = {k: v.copy() for k, v in ref.items()}
    graph["cam"] = graph["cam"][:, :7]
    assert _checks(graph, ref)["cam"] is False


@pytest.fixture(scope="module")
def inner_case():
    """resnet18 (random) at layer3 on 64x64 inputs: the reference, and a graph stand-in to tamper with."""
    from camexport.builder.sources import load_model
    from camexport.builder.validation import Explained

    model = load_model("resnet18", "random").module
    image = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    explained = Explained(model, spec_of("layer3", ("gradcam",), (64, 64), classes=1000))
    case = Case("inner", image, np.array([-1, 7]))
    return explained, case, {k: v.astype(np.float32) for k, v in explained.outputs(case).items()}


def _judged(inner_case, tamper) -> bool:
    from camexport.builder.validation import check_outputs

    explained, case, reference = inner_case
    graph = {k: v.copy() for k, v in reference.items()}
    tamper(graph)
    return check_outputs(graph, explained, case).passed


def test_the_reference_nudged_below_rounding_passes(inner_case) -> None:
    """Outputs of the same network at an input moved by 1e-6 (kinks may flip anywhere above the layer)."""
    explained, case, _ = inner_case
    nudged = case.image * (1 + 1e-6 * np.random.default_rng(5).standard_normal(case.image.shape)).astype(np.float32)
    moved = explained.outputs(replace(case, image=nudged))

    def swap(graph):
        graph.update({k: v.astype(np.float32) for k, v in moved.items()})

    assert _judged(inner_case, swap)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda g: g["gradients"].__setitem__((slice(None), slice(None), -1), 0.0),  # a wrong border row
        lambda g: g["gradients"].__setitem__((slice(None), 3), -g["gradients"][:, 3]),  # one channel's sign
        lambda g: g["gradients"].__setitem__((slice(None), slice(None)), g["gradients"][:, ::-1]),  # channels swapped
        lambda g: g["heatmap"].__setitem__((slice(None), slice(0, 8)), 0.0),  # a heatmap border
    ],
    ids=["border", "sign", "channels", "heatmap-border"],
)
def test_systematic_errors_fail_the_same_rules(inner_case, tamper) -> None:
    assert not _judged(inner_case, tamper)
