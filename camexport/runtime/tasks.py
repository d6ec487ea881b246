"""The tasks on the run side: what a task's graph takes besides the image and the class, how its classes are ranked,
and which pixels an explanation outlines.

A task's contract record (:data:`camexport.contract.TASKS`) declares its inputs and outputs; its build side is
:mod:`camexport.builder.tasks`. Here one :class:`RunTask` per task in :data:`REGISTRY`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from camexport import checks
from camexport.contract import (
    CLASSIFICATION,
    DETECTION_TASK,
    LABELS,
    REGION,
    SCORES,
    SEGMENTATION,
    SEGMENTATION_TASK,
    GraphSpec,
    TaskSpec,
)
from camexport.errors import UserError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities [N, classes, ...] of a graph's ``logits``, in float64 (max subtracted first)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(shifted - shifted.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class RunTask(Protocol):
    """A task's run side."""

    spec: TaskSpec

    def feeds(self, spec: GraphSpec, region: np.ndarray | None, batch: int) -> dict[str, np.ndarray]:
        """The task's inputs for a batch, from what the caller gave (:meth:`CamSession.run`'s ``region``).

        Raises:
            UserError: an input this task does not take, or one of the wrong shape or values.
        """

    def ranking(self, outputs: dict[str, np.ndarray], i: int) -> np.ndarray:
        """Image ``i``'s score of every class [K], by which its top classes are ranked (a probability or a share)."""

    def region(self, outputs: dict[str, np.ndarray], i: int) -> np.ndarray | None:
        """Bool [H, W]: the pixels image ``i``'s explanation is about, at the network input's size; None: the whole
        image."""


class Classification:
    """Classes ranked by their softmax probability; the explanation is about the whole image."""

    spec = CLASSIFICATION

    def feeds(self, spec, region, batch):
        if region is not None:
            raise UserError("this graph explains a classifier, not a segmentation model; leave `region` out")
        return {}

    def ranking(self, outputs, i):
        return softmax(outputs["logits"][i : i + 1])[0]

    def region(self, outputs, i):
        return None


class Segmentation:
    """Classes ranked by their share of the predicted pixels; the explanation is about the pixels predicted as the
    explained class (what the graph explains by default)."""

    spec = SEGMENTATION_TASK

    def feeds(self, spec, region, batch):
        """float32 [batch, H, W]: −1 everywhere for None, a [H, W] region repeated for every image."""
        height, width = spec.preprocessing.image_size
        if region is None:
            return {REGION.name: np.full((batch, height, width), -1.0, dtype=np.float32)}
        region = checks.array("region", region, np.float32, "pass float pixel weights [H, W] or [N, H, W]")
        region = np.broadcast_to(region, (batch, *region.shape)) if region.ndim == 2 else region
        if region.shape != (batch, height, width):
            raise UserError(
                f"region has shape {list(region.shape)}; the graph takes [{height}, {width}] or [{batch}, {height}, "
                f"{width}] pixel weights (1 inside, 0 outside, -1 where predicted)"
            )
        if not np.isfinite(region).all():
            raise UserError("region holds NaN or Inf values; pass finite pixel weights")
        return {REGION.name: np.ascontiguousarray(region)}

    def ranking(self, outputs, i):
        predicted = outputs[SEGMENTATION.name][i]
        return np.bincount(predicted.ravel(), minlength=outputs["logits"].shape[1]) / max(predicted.size, 1)

    def region(self, outputs, i):
        return outputs[SEGMENTATION.name][i] == outputs["class_index"][i]


class Detection:
    """Classes ranked by their best detection's score; each detection is explained in its own map (``heatmap``
    [N, M, H, W]), about its own box."""

    spec = DETECTION_TASK

    def feeds(self, spec, region, batch):
        if region is not None:
            raise UserError("this graph explains a detector, not a segmentation model; leave `region` out")
        return {}

    def ranking(self, outputs, i):
        best = np.zeros(int(outputs[LABELS.name][i].max(initial=-1)) + 1)
        for label, score in zip(outputs[LABELS.name][i], outputs[SCORES.name][i], strict=True):
            if label >= 0:
                best[label] = max(best[label], score)
        return best

    def region(self, outputs, i):
        return None


REGISTRY: dict[str, RunTask] = {task.spec.name: task for task in (Classification(), Segmentation(), Detection())}


def batch_regions(task: RunTask, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Bool [N, H, W]: each image's :meth:`RunTask.region` of a batch's outputs; None: the whole images."""
    found = [task.region(outputs, i) for i in range(len(outputs["class_index"]))]
    return None if any(r is None for r in found) else np.stack(found)
