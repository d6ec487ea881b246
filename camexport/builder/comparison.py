"""The comparison rules: how one output of the graph is judged against the eager reference's.

A float output passes when ``max |graph − reference| <= rtol · max|reference|`` (the heatmap, being in
[0, 1], uses an absolute tolerance). Gradients get one allowance: a network of ReLUs and max-pools is
piecewise linear, so its gradient jumps where a pre-activation sits exactly at a kink, and float32 rounding
in onnxruntime can put an element on the other side of it than PyTorch does. Such isolated flips are
accepted when at most 0.1% of the elements are over tolerance and the relative L2 error stays below 1e-2;
a systematic error (a wrong border, channel or sign) fails both. ``class_index`` must match exactly. A task's
own outputs follow its rule (:meth:`camexport.builder.tasks.BuildTask.compare`). What is done when a check
fails on an ill-conditioned input is :mod:`camexport.builder.validation`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from camexport.contract import PER_METHOD

# Relative tolerances, as a fraction of the reference's largest magnitude (heatmap: absolute, it is in [0, 1]).
TOLERANCES = {
    "logits": 1e-4,
    "activations": 1e-4,
    "gradients": 1e-3,
    "cam": 2e-3,
    "heatmap": 4e-3,
    "class_maps": 2e-3,
}
# Outputs allowed isolated kink flips (see the module docstring): fraction of elements, relative L2 error.
FLIP_ALLOWANCE = {"gradients": (1e-3, 1e-2)}
# Outputs that derive from the gradient (or from a map) and so may be compared with the reference's sensitivity.
GRADIENT_OUTPUTS = ("gradients", "cam", "heatmap")


@dataclass
class OutputCheck:
    """One output of one case."""

    name: str
    max_abs_diff: float
    reference_max_abs: float
    tolerance: float
    passed: bool
    over_tolerance_fraction: float = 0.0
    relative_l2: float = 0.0
    reference_spread: float | None = None


@dataclass
class Case:
    """Inputs of one validation case.

    Attributes:
        description: what the case tries, for the log and the report.
        image: the graph's input (normalised float32 [N, C, H, W], or uint8 pixels for a ``uint8`` graph).
        target_class: the classes asked for, or None (each image's default).
        reference_image: what the eager reference takes when ``image`` is pixels: the same, normalised.
        region: a segmentation graph's region input, or None (the predicted pixels).
    """

    description: str
    image: np.ndarray
    target_class: np.ndarray | None
    reference_image: np.ndarray | None = None
    region: np.ndarray | None = None

    @property
    def reference_input(self) -> np.ndarray:
        """What the eager reference takes: the normalised float32 [N, C, H, W] form of ``image``."""
        return self.image if self.reference_image is None else self.reference_image


@dataclass
class CaseResult:
    """The outcome of one case."""

    description: str
    batch: int
    with_target_class: bool
    class_index: list[int]
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every output is within tolerance."""
        return all(check.passed for check in self.checks)

    def failures(self) -> str:
        """The failed checks, one per line (for an assertion message)."""
        return "\n".join(f"{self.description}: {c}" for c in self.checks if not c.passed)


# A task's rule for its own outputs: (name, graph's, reference's) → the check, or None for the general rules.
OwnRule = Callable[[str, np.ndarray, np.ndarray], "OutputCheck | None"]


def compare_outputs(
    graph: dict[str, np.ndarray], reference: dict[str, np.ndarray], own: OwnRule = lambda *_: None
) -> list[OutputCheck]:
    """Compares every output of the reference (``heatmap_<m>``/``cam_<m>`` of a graph of several methods are
    checked like ``heatmap`` and ``cam``; ``own`` judges the task's outputs)."""
    checks = []
    for name in reference:
        got, want = np.asarray(graph[name]), np.asarray(reference[name])
        if got.shape != want.shape:
            checks.append(OutputCheck(name, float("inf"), 0.0, 0.0, False))
        elif (check := own(name, got, want)) is not None:
            checks.append(check)
        elif name == "class_index":
            diff = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
            checks.append(OutputCheck(name, diff, float(np.abs(want).max(initial=0)), 0.0, diff == 0))
        else:
            checks.append(_float_check(name, got, want))
    return checks


def _float_check(name: str, got: np.ndarray, want: np.ndarray) -> OutputCheck:
    kind = name.split("_")[0] if per_method(name) else name
    scale = float(np.abs(want).max(initial=0.0))
    tolerance = TOLERANCES[kind] * (1.0 if kind == "heatmap" else max(scale, 1e-6))
    delta = np.abs(got.astype(np.float64) - want.astype(np.float64))
    diff = float(delta.max(initial=0.0))
    over = float((delta > tolerance).mean()) if delta.size else 0.0
    rel_l2 = relative_l2(got, want)
    passed = diff <= tolerance
    if not passed and name in FLIP_ALLOWANCE:
        max_fraction, max_l2 = FLIP_ALLOWANCE[name]
        passed = over <= max_fraction and rel_l2 <= max_l2
    passed = passed and bool(np.isfinite(got).all())
    return OutputCheck(name, diff, scale, tolerance, passed, over, rel_l2)


def relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    """``‖got − want‖ / ‖want‖`` in float64 (the absolute norm where ``want`` is all zero)."""
    delta = np.linalg.norm(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    norm = float(np.linalg.norm(want))
    return float(delta / norm) if norm > 0 else float(delta)


def derived(name: str) -> bool:
    """Outputs computed from the gradient (compared with the reference's own sensitivity when they differ)."""
    return name in GRADIENT_OUTPUTS or per_method(name)


def per_method(name: str) -> bool:
    """``heatmap_<m>`` or ``cam_<m>``."""
    return name.startswith(tuple(f"{kind}_" for kind in PER_METHOD))


def results_as_dict(results: list[CaseResult]) -> list[dict]:
    """JSON-ready form for the build report."""
    return [{**asdict(r), "passed": r.passed} for r in results]
