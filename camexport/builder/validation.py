"""Validation: the graph in onnxruntime against the eager reference, output by output.

Every case uses inputs that were not the tracing example and a batch size other than the tracing batch. Each
output is judged by :mod:`camexport.builder.comparison`'s rules (tolerances, isolated kink flips at ReLUs and
max-pools; at an inner layer one flip further up moves a whole footprint of the gradient: a ReLU of resnet18's
layer4 moves a 3x3 window of all 256 layer3 channels, ~1% of the elements, which the next rule judges).

Where an explanation is ill-conditioned at an input (real photos have flat regions whose pre-activations
sit at a kink together; Grad-CAM++'s α has poles where a channel's activation sum is negative), the
gradient-derived outputs (``gradients``, ``cam``, ``heatmap``) are also compared with the reference's own
sensitivity: the reference is re-run on the input perturbed by relative noise of 1e-5 (three draws, and three
more, up to nine, while the graph is still outside), and the graph passes when its relative L2 error is at most
3× the largest change that perturbation caused. (A float32 rounding difference flips a ReLU whose input lies
within ~1e-5 of zero; a draw of noise flips such a kink in the reference only about half the time, so three
draws alone miss it about once in eight.) The report records that spread, so an ill-conditioned explanation is
visible, not hidden.

Where the graph decides a near-tie otherwise than the reference (two logits within the logits' tolerance; a
segmentation's pixel between two classes, which moves it in or out of the explained region), the reference is
re-run on the graph's choice (:meth:`camexport.builder.tasks.BuildTask.reconcile`), so that the maps are compared
on the same class and the same pixels. A task adds its own cases (segmentation: a region drawn as a rectangle for
a given class, and an empty region whose heatmap must be all zero) and judges its own outputs (segmentation: at
most 0.1% of the pixels' predicted classes may differ, at near-ties).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from camexport.builder import reference
from camexport.builder.comparison import Case, CaseResult, OutputCheck, compare_outputs, derived, relative_l2
from camexport.builder.layouts import CHANNELS_FIRST, Layout
from camexport.builder.methods import REGISTRY as METHODS
from camexport.builder.tasks import REGISTRY as TASKS
from camexport.contract import CLASS_MAPS, GraphSpec
from camexport.errors import NonFiniteOutputError, ValidationError
from camexport.runtime.preprocess import normalise
from camexport.runtime.session import CamSession

PERTURBATION = 1e-5
PERTURBATIONS = 3  # draws per round of the sensitivity check
PERTURBATION_ROUNDS = 3  # rounds at most, while the graph is outside SPREAD_FACTOR × the spread
SPREAD_FACTOR = 3.0


@dataclass(frozen=True)
class Explained:
    """A graph's spec explained by the eager reference, for its outputs to be compared with the graph's.

    Attributes:
        model: the network in eval mode.
        spec: the graph's spec (layer, methods, task, masked block, class maps).
        layout: how the layer's output is read as a map.
    """

    model: nn.Module
    spec: GraphSpec
    layout: Layout = CHANNELS_FIRST

    def outputs(self, case: Case) -> dict[str, np.ndarray]:
        """The reference's outputs for ``case``, named as the graph's (:attr:`GraphSpec.output_names`): one
        gradient pass, then each method's reference maps from it."""
        spec, task = self.spec, TASKS[self.spec.task]
        image = case.reference_input
        done = reference.gradient_pass(
            self.model, spec, self.layout, image, case.target_class, task.reference_score(spec, case)
        )
        maps = {name: METHODS[name].reference(done) for name in spec.methods}
        size = (int(image.shape[-2]), int(image.shape[-1]))
        first = maps[spec.methods[0]]
        outputs = {
            "logits": done.logits.numpy(),
            "class_index": done.class_index,
            "heatmap": reference.heatmap(first.cam, size),
            "cam": first.cam.numpy(),
            "activations": done.activations.numpy(),
            "gradients": done.gradients.numpy(),
        }
        for name in spec.methods if len(spec.methods) > 1 else ():
            outputs[spec.heatmap_of(name)] = reference.heatmap(maps[name].cam, size)
            outputs[spec.cam_of(name)] = maps[name].cam.numpy()
        if spec.class_maps:
            outputs[CLASS_MAPS.name] = next(m.every_class for m in maps.values() if m.every_class is not None).numpy()
        return outputs | task.reference_outputs(done.logits)


def reference_spread(explained: Explained, case: Case, want: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """How much the reference's gradient-derived outputs move under a 1e-5 relative input perturbation.

    Returns:
        For each derived output, the largest relative L2 change over the perturbations.
    """
    rng = np.random.default_rng(seed)
    spread = {name: 0.0 for name in want if derived(name)}
    for _ in range(PERTURBATIONS):
        noise = rng.standard_normal(case.reference_input.shape).astype(np.float32)
        nudged = case.reference_input * (1.0 + PERTURBATION * noise)
        moved = explained.outputs(replace(case, reference_image=nudged, target_class=want["class_index"]))
        for name in spread:
            spread[name] = max(spread[name], relative_l2(moved[name], want[name]))
    return spread


def check_outputs(graph: dict[str, np.ndarray], explained: Explained, case: Case) -> CaseResult:
    """Judges a graph's outputs on ``case`` against the eager reference by the rules of this module's
    docstring (tolerances, isolated kink flips, near-ties, the reference's own sensitivity)."""
    task = TASKS[explained.spec.task]
    want = explained.outputs(case)
    judged = case  # the case as asked; the reference may explain the graph's choice at a near-tie
    again = task.reconcile(graph, want, case)
    if again is not None:
        judged, want = again, explained.outputs(again)
    checks = compare_outputs(graph, want, task.compare)
    if any(not c.passed and derived(c.name) for c in checks) and all(c.passed for c in checks if not derived(c.name)):
        _judge_by_spread(graph, checks, explained, judged, want)
    return CaseResult(
        description=case.description,
        batch=int(case.image.shape[0]),
        with_target_class=case.target_class is not None,
        class_index=[int(c) for c in graph["class_index"]],
        checks=checks,
    )


def _judge_by_spread(
    graph: dict[str, np.ndarray],
    checks: list[OutputCheck],
    explained: Explained,
    case: Case,
    want: dict[str, np.ndarray],
) -> None:
    """The gradient-derived checks judged by the reference's own sensitivity, in up to
    :data:`PERTURBATION_ROUNDS` rounds of draws (each round's spread is the largest so far)."""
    gradient_derived = [c for c in checks if derived(c.name)]
    failing = [c for c in gradient_derived if not c.passed and bool(np.isfinite(graph[c.name]).all())]
    spread = dict.fromkeys((c.name for c in gradient_derived), 0.0)
    for round_ in range(PERTURBATION_ROUNDS):
        drawn = reference_spread(explained, case, want, seed=round_)
        spread = {name: max(value, drawn[name]) for name, value in spread.items()}
        if all(c.relative_l2 <= SPREAD_FACTOR * spread[c.name] for c in failing):
            break
    for check in gradient_derived:
        check.reference_spread = spread[check.name]
        if check in failing:
            check.passed = check.relative_l2 <= SPREAD_FACTOR * spread[check.name]


def other_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Sizes unlike the traced one for a ``--dynamic-size`` graph: taller and narrower, then shorter and wider,
    neither a multiple of the usual strides (so the convolution backward's skipped rows vary)."""
    h, w = image_size
    return [(h + 24, max(w - 40, 8)), (max(h - 56, 8), w + 8)]


def random_cases(spec: GraphSpec, seed: int = 1234) -> list[Case]:
    """Fresh random inputs at batch sizes 3 and 1 (tracing used 2), with ``target_class`` [-1] (the default class)
    and given classes; then a batch of 2 at each of :func:`other_sizes` for a graph of any image size.

    The images have the spec's channel count. A ``uint8`` graph gets random uint8 [N, H, W, C] pixels, and the
    reference the same normalised with the spec's mean and std (:func:`camexport.runtime.preprocess.normalise`).
    """
    rng = np.random.default_rng(seed)
    prep, classes = spec.preprocessing, len(spec.labels)

    def case(description: str, batch: int, size: tuple[int, int], target: np.ndarray | None) -> Case:
        if not spec.takes_pixels:
            return Case(description, rng.standard_normal((batch, prep.channels, *size)).astype(np.float32), target)
        image = rng.integers(0, 256, size=(batch, *size, prep.channels), dtype=np.uint8)
        return Case(description, image, target, normalise(image, prep))

    first = case("random batch of 3, top-1 class (target_class [-1])", 3, prep.image_size, None)
    targets = np.array([-1, int(rng.integers(classes)), int(rng.integers(classes))], dtype=np.int64)
    cases = [first, replace(first, description="random batch of 3, target_class [-1, c1, c2]", target_class=targets)]
    cases.append(case("random batch of 1, target_class [c]", 1, prep.image_size, targets[1:2]))
    for h, w in other_sizes(prep.image_size) if spec.dynamic_size else ():
        cases.append(case(f"random batch of 2 at {h}x{w}, target_class [-1, c1]", 2, (h, w), targets[:2]))
    return cases


def validate(session: CamSession, explained: Explained, cases: list[Case]) -> list[CaseResult]:
    """Runs all cases.

    Raises:
        ValidationError: any output of any case is over tolerance; the message names the worst one.
    """
    results = [check_outputs(_run(session, case), explained, case) for case in cases]
    raise_worst(results)
    return results


def raise_worst(results: list[CaseResult]) -> None:
    """Raises ValidationError naming the worst failed check of ``results`` (by its difference over its tolerance),
    if any failed."""
    failures = [(r, c) for r in results for c in r.checks if not c.passed]
    if failures:
        result, check = max(failures, key=lambda rc: rc[1].max_abs_diff / max(rc[1].tolerance, 1e-12))
        raise ValidationError(
            f"graph output '{check.name}' differs from the eager reference by {check.max_abs_diff:.3g} "
            f"(tolerance {check.tolerance:.3g}, {check.over_tolerance_fraction:.2%} of elements over it) "
            f"on '{result.description}' ({len(failures)} output check(s) failed); the graph was not written"
        )


def _run(session: CamSession, case: Case) -> dict[str, np.ndarray]:
    try:
        return session.run(case.image, case.target_class, case.region)
    except NonFiniteOutputError as exc:  # on validation inputs this is the graph's fault, not the user's
        raise ValidationError(f"on '{case.description}': {exc}; the graph was not written") from None
