"""Faithfulness metrics of a heatmap, computed by running the graph itself on masked inputs.

All masking happens on the network's input crop in pixel space (uint8 RGB [H, W, 3], before normalisation),
and every probability is the softmax of the graph's ``logits`` for the explained class ``c``.

* **Average Drop %** (Chattopadhyay et al., WACV 2018, sec. 6.1): ``100 · mean_i max(0, Y_i − O_i) / Y_i``,
  with ``Y_i`` the probability of ``c`` on the image and ``O_i`` on the explanation map
  ``E_i = image_i ⊙ heatmap_i`` (each pixel scaled by the heatmap). Lower is better.
* **Increase in Confidence %** (same paper): ``100 · mean_i [Y_i < O_i]``. Higher is better.
* **Win %** (same paper, for several methods): the share of images on which a method's drop
  ``max(0, Y − O)/Y`` is the lowest of all methods compared (ties shared).
* **Deletion / insertion AUC** (Petsiuk et al., BMVC 2018, RISE, sec. 4.2): pixels are removed from the image
  (deletion: set to 0) or revealed on a blurred copy (insertion) in order of decreasing heatmap value, in
  ``steps`` equal chunks; the area under the probability curve over the fraction of pixels changed
  (trapezoid rule on [0, 1]). Deletion: lower is better; insertion: higher is better.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from camexport.errors import UserError
from camexport.preprocess import normalise, to_pixels
from camexport.session import CamSession, as_photo

METRICS = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")


@dataclass
class Faithfulness:
    """One method's scores over a set of images (and per image, for Win % and the JSON)."""

    method: str
    average_drop: float
    increase_in_confidence: float
    deletion_auc: float
    insertion_auc: float
    drops: list[float]
    win: float | None = None


def _feed(session: CamSession, pixels: np.ndarray) -> np.ndarray:
    """uint8-range pixels [N, H, W, 3] (float or uint8) → what the graph's ``image`` input takes."""
    clipped = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return clipped if session.info.takes_pixels else normalise(clipped, session.info.preprocessing)


def class_probabilities(
    session: CamSession, pixels: np.ndarray, classes: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Softmax probability of ``classes[i]`` for each image ``pixels[i]`` (uint8-range [N, H, W, 3])."""
    out = np.empty(len(pixels))
    for start in range(0, len(pixels), batch_size):
        chunk = slice(start, start + batch_size)
        logits = session.run(_feed(session, pixels[chunk]))["logits"].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        out[chunk] = probs[np.arange(len(probs)), classes[chunk]]
    return out


def drop_and_increase(
    session: CamSession, pixels: np.ndarray, heatmaps: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the relative drop ``max(0, Y − O)/Y`` and whether confidence increased (``Y < O``)."""
    full = class_probabilities(session, pixels, classes)
    masked = class_probabilities(session, pixels.astype(np.float64) * heatmaps[..., None], classes)
    drops = np.maximum(full - masked, 0.0) / np.maximum(full, 1e-12)
    return drops, full < masked


def _curve(session: CamSession, start: np.ndarray, end: np.ndarray, order: np.ndarray, cls: int, steps: int) -> float:
    """AUC of the class probability while pixels of ``start`` turn into ``end`` in ``order``, ``steps`` chunks."""
    h, w, _ = start.shape
    frames = []
    current = start.reshape(h * w, 3).astype(np.float64).copy()
    target = end.reshape(h * w, 3).astype(np.float64)
    bounds = np.linspace(0, h * w, steps + 1).round().astype(int)
    frames.append(current.reshape(h, w, 3).copy())
    for lo, hi in itertools.pairwise(bounds):
        current[order[lo:hi]] = target[order[lo:hi]]
        frames.append(current.reshape(h, w, 3).copy())
    probs = class_probabilities(session, np.stack(frames), np.full(len(frames), cls))
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it
    return float(trapezoid(probs, dx=1.0 / steps))


def deletion_insertion(
    session: CamSession, pixels: np.ndarray, heatmap: np.ndarray, cls: int, steps: int = 20, blur: float = 10.0
) -> tuple[float, float]:
    """Deletion and insertion AUC for one image (``pixels`` uint8 [H, W, 3], ``heatmap`` [H, W])."""
    order = np.argsort(-heatmap.reshape(-1), kind="stable")
    blurred = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(blur)))
    deletion = _curve(session, pixels, np.zeros_like(pixels), order, cls, steps)
    insertion = _curve(session, blurred, pixels, order, cls, steps)
    return deletion, insertion


def evaluate_maps(
    session: CamSession,
    pixels: np.ndarray,
    heatmaps: dict[str, np.ndarray],
    classes: np.ndarray,
    steps: int = 20,
) -> list[Faithfulness]:
    """Every metric for every method's heatmaps ([N, H, W] at the input size), Win % across the methods.

    Raises:
        UserError: ``steps`` below 2, or heatmaps of another shape than the pixels.
    """
    if steps < 2:
        raise UserError(f"--steps {steps}: use 2 or more")
    results = []
    for method, maps in heatmaps.items():
        if maps.shape != pixels.shape[:3]:
            raise UserError(f"{method}: heatmaps {list(maps.shape)} do not match images {list(pixels.shape[:3])}")
        drops, increased = drop_and_increase(session, pixels, maps, classes)
        curves = [
            deletion_insertion(session, p, m, int(c), steps) for p, m, c in zip(pixels, maps, classes, strict=True)
        ]
        results.append(
            Faithfulness(
                method=method,
                average_drop=float(100.0 * drops.mean()),
                increase_in_confidence=float(100.0 * increased.mean()),
                deletion_auc=float(np.mean([d for d, _ in curves])),
                insertion_auc=float(np.mean([i for _, i in curves])),
                drops=[float(d) for d in drops],
            )
        )
    if len(results) > 1:
        table = np.array([r.drops for r in results])
        best = table.min(axis=0)
        winners = np.isclose(table, best[None], rtol=0, atol=1e-12)
        share = winners / winners.sum(axis=0, keepdims=True)
        for result, wins in zip(results, share, strict=True):
            result.win = float(100.0 * wins.mean())
    return results


def evaluate_images(
    session: CamSession, images: Sequence[object], steps: int = 20, target: str | int | None = None
) -> list[Faithfulness]:
    """Runs the graph on photos (anything :meth:`CamSession.prepare` takes) and scores each of its methods."""
    # The crops only: prepare() would also normalise each one, and the masks are applied to pixels.
    pixels = np.stack([to_pixels(as_photo(image, str(image)), session.info.preprocessing) for image in images])
    outputs = session.run(_feed(session, pixels), np.array([session.class_index(target)]))
    methods = session.info.methods
    names = {m: f"heatmap_{m}" if len(methods) > 1 else "heatmap" for m in methods}
    maps = {m: outputs[name] for m, name in names.items()}
    return evaluate_maps(session, pixels, maps, outputs["class_index"].astype(np.int64), steps)


def summary_table(results: list[Faithfulness], images: int, steps: int) -> str:
    """The terminal table of :func:`evaluate_maps`' results, one row per method."""
    header = ["method", "Avg Drop % ↓", "Incr Conf % ↑", "Win % ↑", "Deletion ↓", "Insertion ↑"]
    lines = [
        f"{images} image(s), {steps} deletion/insertion steps (arrows: which way is better)",
        f"{header[0]:12} {header[1]:>13} {header[2]:>14} {header[3]:>8} {header[4]:>11} {header[5]:>12}",
    ]
    for r in results:
        win = "-" if r.win is None else f"{r.win:.1f}"
        lines.append(
            f"{r.method:12} {r.average_drop:>13.2f} {r.increase_in_confidence:>14.1f} {win:>8} "
            f"{r.deletion_auc:>11.4f} {r.insertion_auc:>12.4f}"
        )
    return "\n".join(lines)


def evaluate_paths(
    session: CamSession,
    sources: Sequence[str | Path],
    steps: int = 20,
    target: str | int | None = None,
    out: Path | None = None,
) -> str:
    """``camexport evaluate``: scores every method of the graph on the images in ``sources`` (files or
    folders), optionally writes them as JSON to ``out``, and returns the table (plus where the JSON went)."""
    from camexport._util import write_atomically
    from camexport.explain import collect_images

    paths, _ = collect_images(sources)
    if not paths:
        raise UserError("no images found; pass image files or folders that hold .png/.jpg files")
    results = evaluate_images(session, paths, steps=steps, target=target)
    table = summary_table(results, len(paths), steps)
    if out is not None:
        record = {"graph": str(session.path), "images": [str(p) for p in paths], "steps": steps}
        record["methods"] = [asdict(r) for r in results]
        write_atomically(Path(out), lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
        table += f"\nwrote {out}"
    return table
