"""The tasks on the build side: what score a graph explains, the inputs and outputs a task adds, how validation
tries and compares them.

A task's contract record (:data:`camexport.contract.TASKS`) declares its inputs and outputs; its record here
(:class:`BuildTask`, one per task in :data:`REGISTRY`) computes them in the graph, names its eager reference (in
:mod:`camexport.builder.reference`, written separately), adds its validation cases and judges its own outputs.
The run side's part (how an explanation ranks classes and draws the region) is :mod:`camexport.runtime.tasks`.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Protocol

import numpy as np
import torch

from camexport.builder import reference
from camexport.builder.comparison import TOLERANCES, Case, OutputCheck
from camexport.contract import CLASSIFICATION, SEGMENTATION, SEGMENTATION_TASK, GraphSpec, TaskSpec

# Fraction of a segmentation's pixels whose argmax may differ from the reference's (near-ties of two logits).
SEGMENTATION_FLIPS = 1e-3


class BuildTask(Protocol):
    """A task's build side.

    Attributes:
        spec: its contract record.
        dynamic_size: its graphs can take any image size.
    """

    spec: TaskSpec
    dynamic_size: bool

    def score(
        self, logits: torch.Tensor, target_class: torch.Tensor, extras: tuple[torch.Tensor, ...], background: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In the graph: the explained class of each image and the scores' sum, whose gradient is taken."""

    def outputs(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """In the graph: the task's outputs (:attr:`TaskSpec.outputs`)."""

    def examples(self, batch: int, image_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """Example values of the task's inputs for tracing."""

    def reference_score(self, spec: GraphSpec, case: Case) -> reference.Score:
        """The eager reference's score for ``case``."""

    def reference_outputs(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """The eager reference's task outputs."""

    def cases(self, base: Case, spec: GraphSpec, seed: int) -> list[Case]:
        """Validation cases of its own, on ``base``'s images."""

    def compare(self, name: str, got: np.ndarray, want: np.ndarray) -> OutputCheck | None:
        """Its rule for one of its outputs; None for the general rules."""

    def reconcile(self, graph: dict[str, np.ndarray], want: dict[str, np.ndarray], case: Case) -> Case | None:
        """Where the graph decided a near-tie otherwise than the reference: ``case`` as the graph decided it, for
        the reference to explain again (so that the maps are compared on the same choice); else None."""


class Classification:
    """Logits [N, K]: the explained score is the class's pre-softmax logit; −1 explains the top-1 class."""

    spec = CLASSIFICATION
    dynamic_size = True

    def score(self, logits, target_class, extras, background):
        del extras, background
        class_index = torch.where(target_class < 0, logits.argmax(dim=1), target_class)
        return class_index, (logits * one_hot(class_index, logits)).sum()

    def outputs(self, logits):
        return ()

    def examples(self, batch, image_size):
        return ()

    def reference_score(self, spec, case):
        return reference.class_scores

    def reference_outputs(self, logits):
        return {}

    def cases(self, base, spec, seed):
        return []

    def compare(self, name, got, want):
        return None

    def reconcile(self, graph, want, case):
        """Where the classes differ only at near-ties of two logits (within the logits' tolerance), the graph's."""
        got, expected = graph["class_index"], want["class_index"]
        if np.array_equal(got, expected):
            return None
        logits = want["logits"]
        tolerance = TOLERANCES["logits"] * max(float(np.abs(logits).max()), 1e-6)
        rows = np.arange(len(got))
        tied = bool((logits[rows, expected] - logits[rows, got] <= tolerance).all())
        return replace(case, target_class=got) if tied else None


class Segmentation:
    """Logits [N, K, H, W] (Seg-Grad-CAM, Vinogradova et al., AAAI 2020): the explained score is the class's logits
    summed over a region; the graph takes the ``region`` and returns each pixel's predicted class."""

    spec = SEGMENTATION_TASK
    dynamic_size = False

    def score(self, logits, target_class, extras, background):
        (region,) = extras
        return segmentation_score(logits, target_class, region, background)

    def outputs(self, logits):
        return (logits.argmax(dim=1),)

    def examples(self, batch, image_size):
        return (torch.full((batch, *image_size), -1.0),)  # the predicted pixels

    def reference_score(self, spec, case):
        return partial(reference.region_scores, region=case.region, background=spec.background)

    def reference_outputs(self, logits):
        return {SEGMENTATION.name: logits.argmax(1).numpy()}

    def cases(self, base, spec, seed):
        return region_cases(base, spec.preprocessing.image_size, len(spec.labels), seed)

    def compare(self, name, got, want):
        if name != SEGMENTATION.name:
            return None
        flips = float((got != want).mean()) if want.size else 0.0
        return OutputCheck(name, flips, 0.0, SEGMENTATION_FLIPS, flips <= SEGMENTATION_FLIPS, flips)

    def reconcile(self, graph, want, case):
        """Where the explained region is (partly) the predicted pixels and the graph's segmentation differs from the
        reference's only at near-ties: the region as the graph predicted it, for the same class."""
        if not np.array_equal(graph["class_index"], want["class_index"]):
            return None
        flips = graph[SEGMENTATION.name] != want[SEGMENTATION.name]
        if not flips.any() or flips.mean() > SEGMENTATION_FLIPS:
            return None
        chosen = (graph[SEGMENTATION.name] == graph["class_index"][:, None, None]).astype(np.float32)
        region = chosen if case.region is None else np.where(case.region < 0, chosen, case.region)
        return replace(case, target_class=want["class_index"], region=region.astype(np.float32))


def segmentation_score(
    logits: torch.Tensor, target_class: torch.Tensor, region: torch.Tensor, background: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seg-Grad-CAM's explained score (Vinogradova et al., AAAI 2020, eq. 1): ``y_c = Σ_(i,j)∈M logits[c, i, j]``.

    ``M`` is weighted per pixel by ``region`` [N, H, W]: a pixel with a negative weight counts 1 where the
    predicted class (argmax over K) is ``c`` and 0 elsewhere, so a region of −1 everywhere is the paper's
    default, the pixels predicted as ``c``. An empty region gives a zero score, a zero gradient and a zero
    heatmap. A negative ``target_class`` picks the class predicted on the most pixels; the ``background``
    class (if any) is counted at 1e-9 per pixel, so it is chosen only when nothing else is predicted.

    Returns:
        ``class_index`` [N] and the summed score (a scalar: the images' scores are independent).
    """
    classes = logits.shape[1]
    predicted = logits.argmax(dim=1)
    ids = torch.arange(classes, device=logits.device)
    counts = (predicted[:, None] == ids[None, :, None, None]).to(logits.dtype).sum(dim=(2, 3))
    if background is not None:
        counts = counts * torch.where(ids == background, 1e-9, 1.0).to(logits.dtype)
    class_index = torch.where(target_class < 0, counts.argmax(dim=1), target_class)
    chosen = (predicted == class_index[:, None, None]).to(logits.dtype)
    weights = torch.where(region < 0, chosen, region)
    per_pixel = (logits * one_hot(class_index, logits)[:, :, None, None]).sum(dim=1)
    return class_index, (per_pixel * weights).sum()


def one_hot(class_index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[N, K] in the logits' dtype: 1 at each image's class. The score is the logits times this mask, summed, so its
    gradient is the mask itself (a gather's backward is a scatter-add: order-dependent in onnxruntime)."""
    ids = torch.arange(logits.shape[1], device=logits.device)
    return (ids[None, :] == class_index[:, None]).to(logits.dtype)


def region_cases(base: Case, image_size: tuple[int, int], num_classes: int, seed: int) -> list[Case]:
    """On ``base``'s images: a given class explained over a rectangle (a region the prediction does not draw), and
    over an empty region (a zero score: the heatmap must be all zero)."""
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


REGISTRY: dict[str, BuildTask] = {task.spec.name: task for task in (Classification(), Segmentation())}
