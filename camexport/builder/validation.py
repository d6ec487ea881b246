"""Validation: the graph in onnxruntime against the eager reference, output by output.

Every case uses inputs that were not the tracing example and a batch size other than the tracing batch.

A float output passes when ``max |graph − reference| <= rtol · max|reference|`` (the heatmap, being in
[0, 1], uses an absolute tolerance). Gradients get one allowance: a network of ReLUs and max-pools is
piecewise linear, so its gradient jumps where a pre-activation sits exactly at a kink, and float32 rounding
in onnxruntime can put an element on the other side of it than PyTorch does. Such isolated flips are
accepted when at most 0.1% of the elements are over tolerance and the relative L2 error stays below 1e-2;
a systematic error (a wrong border, channel or sign) fails both. At an inner layer one flip further up moves
a whole footprint of the gradient (a ReLU of resnet18's layer4 moves a 3x3 window of all 256 layer3
channels, ~1% of the elements), which the next rule judges.

Where an explanation is ill-conditioned at an input (real photos have flat regions whose pre-activations
sit at a kink together; Grad-CAM++'s α has poles where a channel's activation sum is negative), the
gradient-derived outputs (``gradients``, ``cam``, ``heatmap``) are also compared with the reference's own
sensitivity: the reference is re-run on the input perturbed by relative noise of 1e-5 (three draws, and three
more, up to nine, while the graph is still outside), and the graph passes when its relative L2 error is at most
3× the largest change that perturbation caused. (A float32 rounding difference flips a ReLU whose input lies
within ~1e-5 of zero; a draw of noise flips such a kink in the reference only about half the time, so three
draws alone miss it about once in eight.) The report
records that spread, so an ill-conditioned explanation is visible, not hidden. ``class_index`` must match exactly,
except where two logits tie within the logits tolerance (then the reference is re-run on the graph's
choice, so the maps are still compared).

A segmentation graph's ``segmentation`` (each pixel's argmax) may differ from the reference's at near-ties of
two logits: at most 0.1% of its pixels may. Where the explained region is the predicted pixels (negative region
weights), such a flip moves a pixel in or out of the explained score, so the reference is then re-run on the
graph's own predicted region (as on the graph's class at a tie), and the maps are compared on the same pixels.
Its cases add a region drawn as a rectangle for a given class and an empty region (whose heatmap must be all
zero).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from torch import nn

from camexport.builder.layouts import CHANNELS_FIRST, Layout
from camexport.builder.reference import reference_explain, reference_reciprocam
from camexport.contract import CLASS_MAPS, PER_METHOD_OUTPUTS, RECIPROCAM, Preprocessing
from camexport.errors import NonFiniteOutputError, ValidationError
from camexport.runtime.preprocess import normalise
from camexport.runtime.session import CamSession

# Relative tolerances, as a fraction of the reference's largest magnitude (heatmap: absolute, it is in [0, 1]).
TOLERANCES = {
    "logits": 1e-4,
    "activations": 1e-4,
    "gradients": 1e-3,
    "cam": 2e-3,
    "heatmap": 4e-3,
    "class_maps": 2e-3,
}
# Fraction of a segmentation's pixels whose argmax may differ (near-ties of two logits).
SEGMENTATION_FLIPS = 1e-3
# Outputs allowed isolated kink flips (see the module docstring): fraction of elements, relative L2 error.
FLIP_ALLOWANCE = {"gradients": (1e-3, 1e-2)}
# Outputs that derive from the gradient and so may be compared with the reference's sensitivity.
GRADIENT_OUTPUTS = ("gradients", "cam", "heatmap")
PERTURBATION = 1e-5
PERTURBATIONS = 3  # draws per round of the sensitivity check
PERTURBATION_ROUNDS = 3  # rounds at most, while the graph is outside SPREAD_FACTOR × the spread
SPREAD_FACTOR = 3.0


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
    """Inputs of one validation case."""

    description: str
    image: np.ndarray
    target_class: np.ndarray | None
    reference_image: np.ndarray | None = None
    region: np.ndarray | None = None

    @property
    def reference_input(self) -> np.ndarray:
        """What the eager reference takes: the normalised float32 [N, 3, H, W] form of ``image``."""
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


def compare_outputs(graph: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[OutputCheck]:
    """Compares every output of the reference (:data:`OUTPUT_NAMES`, and ``heatmap_<method>``/``cam_<method>``
    for a graph of several methods, checked like ``heatmap`` and ``cam``)."""
    checks = []
    for name in reference:
        got, want = np.asarray(graph[name]), np.asarray(reference[name])
        if got.shape != want.shape:
            checks.append(OutputCheck(name, float("inf"), 0.0, 0.0, False))
            continue
        if name == "class_index":
            diff = float(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
            checks.append(OutputCheck(name, diff, float(np.abs(want).max(initial=0)), 0.0, diff == 0))
            continue
        if name == "segmentation":
            flips = float((got != want).mean()) if want.size else 0.0
            checks.append(OutputCheck(name, flips, 0.0, SEGMENTATION_FLIPS, flips <= SEGMENTATION_FLIPS, flips))
            continue
        kind = name.split("_")[0] if _per_method(name) else name
        scale = float(np.abs(want).max(initial=0.0))
        tolerance = TOLERANCES[kind] * (1.0 if kind == "heatmap" else max(scale, 1e-6))
        delta = np.abs(got.astype(np.float64) - want.astype(np.float64))
        diff = float(delta.max(initial=0.0))
        over = float((delta > tolerance).mean()) if delta.size else 0.0
        rel_l2 = _relative_l2(got, want)
        passed = diff <= tolerance
        if not passed and name in FLIP_ALLOWANCE:
            max_fraction, max_l2 = FLIP_ALLOWANCE[name]
            passed = over <= max_fraction and rel_l2 <= max_l2
        passed = passed and bool(np.isfinite(got).all())
        checks.append(OutputCheck(name, diff, scale, tolerance, passed, over, rel_l2))
    return checks


def _relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    delta = np.linalg.norm(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))
    norm = float(np.linalg.norm(want))
    return float(delta / norm) if norm > 0 else float(delta)


def reference_spread(
    explained: Explained, case: Case, reference: dict[str, np.ndarray], seed: int = 0
) -> dict[str, float]:
    """How much the reference's gradient-derived outputs move under a 1e-5 relative input perturbation.

    Returns:
        For each of :data:`GRADIENT_OUTPUTS`, the largest relative L2 change over the perturbations.
    """
    rng = np.random.default_rng(seed)
    spread = {name: 0.0 for name in reference if _derived(name)}
    for _ in range(PERTURBATIONS):
        noise = rng.standard_normal(case.reference_input.shape).astype(np.float32)
        nudged = case.reference_input * (1.0 + PERTURBATION * noise)
        moved = explained.outputs(nudged, reference["class_index"], case.region)
        for name in spread:
            spread[name] = max(spread[name], _relative_l2(moved[name], reference[name]))
    return spread


def _derived(name: str) -> bool:
    """Outputs computed from the gradient (compared with the reference's own sensitivity when they differ)."""
    return name in GRADIENT_OUTPUTS or _per_method(name)


def _per_method(name: str) -> bool:
    return name.startswith(tuple(f"{kind}_" for kind in PER_METHOD_OUTPUTS))


@dataclass(frozen=True)
class Explained:
    """What a graph explains, for the eager reference to explain alike.

    Attributes:
        model: the network in eval mode.
        layer: the explained layer's dotted name.
        methods: the graph's methods, the first being the plain ``heatmap``/``cam``.
        layout: how the layer's output is read as a map.
        background: a segmentation model's background class.
        masked_block: the module whose input ReciproCAM masks too (:attr:`GraphInfo.masked_block`).
        class_maps: the graph outputs ReciproCAM's map of every class.
    """

    model: nn.Module
    layer: str
    methods: tuple[str, ...]
    layout: Layout = CHANNELS_FIRST
    background: int | None = None
    masked_block: str | None = None
    class_maps: bool = False

    def outputs(
        self, image: np.ndarray, target_class: np.ndarray | None, region: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The eager reference's outputs: the first method's, plus ``heatmap_<m>``/``cam_<m>`` of each when there
        are several, and ``class_maps`` when the graph has them."""
        reference = self._one(self.methods[0], image, target_class, region)
        for name in self.methods if len(self.methods) > 1 else ():
            other = reference if name == self.methods[0] else self._one(name, image, target_class, region, reference)
            reference[f"heatmap_{name}"], reference[f"cam_{name}"] = other["heatmap"], other["cam"]
            if CLASS_MAPS in other:
                reference[CLASS_MAPS] = other[CLASS_MAPS]
        if not self.class_maps:
            reference.pop(CLASS_MAPS, None)
        return reference

    def _one(
        self,
        method: str,
        image: np.ndarray,
        target_class: np.ndarray | None,
        region: np.ndarray | None,
        base: dict[str, np.ndarray] | None = None,
    ):
        """One method's reference outputs. ReciproCAM's logits, class, A and g are a gradient method's (``base``,
        the first method's when it is one, so that its backward pass is not run again)."""
        args = (self.model, self.layer)
        if method != RECIPROCAM:
            return reference_explain(*args, method, image, target_class, self.layout, region, self.background)
        if base is None:
            base = reference_explain(*args, "gradcam", image, target_class, self.layout, region, self.background)
        classes = base["class_index"]
        recipro = reference_reciprocam(*args, image, classes, self.layout, self.masked_block)
        return base | {"cam": recipro.cam, "heatmap": recipro.heatmap, CLASS_MAPS: recipro.probabilities}


def _tie_tolerant_classes(graph: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray | None:
    """The graph's classes if every disagreement with the reference is a near-tie of logits, else None."""
    got, want = graph["class_index"], reference["class_index"]
    if np.array_equal(got, want) or reference["logits"].ndim != 2:  # segmentation: counts of pixels, no logit tie
        return None
    logits = reference["logits"]
    tolerance = TOLERANCES["logits"] * max(float(np.abs(logits).max()), 1e-6)
    rows = np.arange(len(got))
    gaps = logits[rows, want] - logits[rows, got]
    return got if bool((gaps <= tolerance).all()) else None


def check_outputs(graph: dict[str, np.ndarray], explained: Explained, case: Case) -> CaseResult:
    """Judges a graph's outputs on ``case`` against the eager reference by the rules of this module's
    docstring (tolerances, isolated kink flips, the reference's own sensitivity)."""
    image, region = case.reference_input, case.region
    reference = explained.outputs(image, case.target_class, region)
    tie_break = _tie_tolerant_classes(graph, reference)
    if tie_break is not None:
        reference = explained.outputs(image, tie_break, region)
    resolved = _graph_region(graph, reference, region)
    if resolved is not None:
        case = replace(case, region=resolved)
        again = explained.outputs(image, reference["class_index"], resolved)
        reference |= {k: v for k, v in again.items() if k not in ("segmentation", "class_index")}
    checks = compare_outputs(graph, reference)
    if any(not c.passed and _derived(c.name) for c in checks) and all(c.passed for c in checks if not _derived(c.name)):
        _judge_by_spread(graph, checks, explained, case, reference)
    return CaseResult(
        description=case.description,
        batch=int(case.image.shape[0]),
        with_target_class=case.target_class is not None,
        class_index=[int(c) for c in graph["class_index"]],
        checks=checks,
    )


def other_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Sizes unlike the traced one for a ``--dynamic-size`` graph: taller and narrower, then shorter and wider,
    neither a multiple of the usual strides (so the convolution backward's skipped rows vary)."""
    h, w = image_size
    return [(h + 24, max(w - 40, 8)), (max(h - 56, 8), w + 8)]


def random_cases(
    image_size: tuple[int, int],
    num_classes: int,
    seed: int = 1234,
    sizes: list[tuple[int, int]] = (),
    pixels: Preprocessing | None = None,
    channels: int = 3,
) -> list[Case]:
    """Fresh random inputs at batch sizes 3 and 1 (tracing used 2), with ``target_class`` [-1] (top-1) and given
    classes; then a batch of 2 at each of ``sizes`` (for a graph with a dynamic image size).

    The images have ``channels`` channels. With ``pixels`` (a ``--input uint8`` graph), the inputs are random
    uint8 [N, H, W, C] pixels and the reference gets them normalised with ``pixels``' mean and std
    (:func:`camexport.runtime.preprocess.normalise`).
    """
    rng = np.random.default_rng(seed)

    def draw(batch: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        if pixels is None:
            return rng.standard_normal((batch, channels, h, w)).astype(np.float32), None
        image = rng.integers(0, 256, size=(batch, h, w, channels), dtype=np.uint8)
        return image, normalise(image, pixels)

    batch3 = draw(3, *image_size)
    targets = np.array([-1, int(rng.integers(num_classes)), int(rng.integers(num_classes))], dtype=np.int64)
    cases = [
        Case("random batch of 3, top-1 class (target_class [-1])", batch3[0], None, batch3[1]),
        Case("random batch of 3, target_class [-1, c1, c2]", batch3[0], targets, batch3[1]),
    ]
    single = draw(1, *image_size)
    cases.append(Case("random batch of 1, target_class [c]", single[0], targets[1:2], single[1]))
    for sh, sw in sizes:
        drawn = draw(2, sh, sw)
        cases.append(Case(f"random batch of 2 at {sh}x{sw}, target_class [-1, c1]", drawn[0], targets[:2], drawn[1]))
    return cases


def _graph_region(
    graph: dict[str, np.ndarray], reference: dict[str, np.ndarray], region: np.ndarray | None
) -> np.ndarray | None:
    """For a segmentation whose region is (partly) the predicted pixels: that region as the graph predicted it,
    when the graph's segmentation differs from the reference's only at near-ties; else None (nothing to
    resolve, or a difference the ``segmentation`` check fails anyway)."""
    if "segmentation" not in graph or not np.array_equal(graph["class_index"], reference["class_index"]):
        return None
    flips = graph["segmentation"] != reference["segmentation"]
    if not flips.any() or flips.mean() > SEGMENTATION_FLIPS:
        return None
    chosen = (graph["segmentation"] == graph["class_index"][:, None, None]).astype(np.float32)
    return chosen if region is None else np.where(region < 0, chosen, region).astype(np.float32)


def _judge_by_spread(
    graph: dict[str, np.ndarray],
    checks: list[OutputCheck],
    explained: Explained,
    case: Case,
    reference: dict[str, np.ndarray],
) -> None:
    """The gradient-derived checks judged by the reference's own sensitivity, in up to
    :data:`PERTURBATION_ROUNDS` rounds of draws (each round's spread is the largest so far)."""
    derived = [c for c in checks if _derived(c.name)]
    failing = [c for c in derived if not c.passed and bool(np.isfinite(graph[c.name]).all())]
    spread = dict.fromkeys((c.name for c in derived), 0.0)
    for round_ in range(PERTURBATION_ROUNDS):
        drawn = reference_spread(explained, case, reference, seed=round_)
        spread = {name: max(value, drawn[name]) for name, value in spread.items()}
        if all(c.relative_l2 <= SPREAD_FACTOR * spread[c.name] for c in failing):
            break
    for check in derived:
        check.reference_spread = spread[check.name]
        if check in failing:
            check.passed = check.relative_l2 <= SPREAD_FACTOR * spread[check.name]


def region_cases(base: Case, image_size: tuple[int, int], num_classes: int, seed: int = 4321) -> list[Case]:
    """For a segmentation graph, on ``base``'s images: a given class explained over a rectangle (a region the
    prediction does not draw), and over an empty region (a zero score: the heatmap must be all zero)."""
    rng = np.random.default_rng(seed)
    n, (h, w) = len(base.image), image_size
    rectangle = np.zeros((n, h, w), dtype=np.float32)
    for i in range(n):
        top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        rectangle[i, top : top + h // 3 + 1, left : left + w // 3 + 1] = 1.0
    classes = rng.integers(num_classes, size=n).astype(np.int64)
    return [
        Case("region: a rectangle, given classes", base.image, classes, base.reference_image, rectangle),
        Case("region: empty", base.image, classes, base.reference_image, np.zeros((n, h, w), np.float32)),
    ]


def validate(session: CamSession, explained: Explained, cases: list[Case]) -> list[CaseResult]:
    """Runs all cases.

    Raises:
        ValidationError: any output of any case is over tolerance; the message names the worst one.
    """
    results = [check_outputs(_run(session, case), explained, case) for case in cases]
    failures = [(r, c) for r in results for c in r.checks if not c.passed]
    if failures:
        result, check = max(failures, key=lambda rc: rc[1].max_abs_diff / max(rc[1].tolerance, 1e-12))
        raise ValidationError(
            f"graph output '{check.name}' differs from the eager reference by {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}, {check.over_tolerance_fraction:.2%} of elements over it) "
            f"on '{result.description}' ({len(failures)} output check(s) failed); the graph was not written"
        )
    return results


def _run(session: CamSession, case: Case) -> dict[str, np.ndarray]:
    try:
        return session.run(case.image, case.target_class, case.region)
    except NonFiniteOutputError as exc:  # on validation inputs this is the graph's fault, not the user's
        raise ValidationError(f"on '{case.description}': {exc}; the graph was not written") from None


def results_as_dict(results: list[CaseResult]) -> list[dict]:
    """JSON-ready form for the build report."""
    return [{**asdict(r), "passed": r.passed} for r in results]
