"""Faithfulness metrics of a heatmap, computed by running the graph itself on masked inputs.

All masking happens on the network's input crop in pixel space (uint8 [H, W, C], before normalisation),
and every probability is the softmax of the graph's ``logits`` for the explained class ``c``. For a
segmentation graph it is the mean, over the explained region (the pixels predicted as ``c`` on the unmasked
image; all pixels if there are none), of each pixel's softmax probability of ``c``: the score Seg-Grad-CAM
explains, made a probability.

* **Average Drop %** (Chattopadhyay et al., WACV 2018, sec. 6.1): ``100 · mean_i max(0, Y_i − O_i) / Y_i``,
  with ``Y_i`` the probability of ``c`` on the image and ``O_i`` on the explanation map
  ``E_i = image_i ⊙ heatmap_i`` (each pixel scaled by the heatmap). Lower is better.
* **Increase in Confidence %** (same paper): ``100 · mean_i [Y_i < O_i]``. Higher is better.
* **Win %** (same paper, for several methods): the share of images on which a method's drop
  ``max(0, Y − O)/Y`` is the lowest of all methods compared (ties shared: drops within 1e-6 of each other, and
  methods whose maps agree to 1e-5 on that image, e.g. two methods equal by their formulas there).
* **Deletion / insertion AUC** (Petsiuk et al., BMVC 2018, RISE, sec. 4.2): pixels are removed from the image
  (deletion: set to 0) or revealed on a blurred copy (insertion) in order of decreasing heatmap value, in
  ``steps`` equal chunks; the area under the probability curve over the fraction of pixels changed
  (trapezoid rule on [0, 1]). Deletion: lower is better; insertion: higher is better.

* **ADCC** (Poppi et al., CVPRW 2021, "Revisiting the evaluation of class activation mapping for
  explainability", eq. 5): per image, the harmonic mean ``3 / (1/Coherency + 1/(1 − Complexity) +
  1/(1 − AverageDrop))`` of: *Coherency* ``(1 + PCC(L(x), L(x ⊙ L(x))))/2``, the Pearson correlation of the
  heatmap with the heatmap the graph gives the explanation map itself (0 when either is constant); *Complexity*
  ``mean |L(x)|``, the heatmap's L1 norm per pixel; and the image's drop ``max(0, Y − O)/Y``. 0 where a term
  is 0. Averaged over images, in %. Higher is better. It needs the graph that made the maps (one run more
  per image and method).

For boxes of the explained object, :func:`pointing_game` is Zhang et al.'s pointing game (ECCV 2016, "Top-down
neural attention by excitation backprop", sec. 5.1): a hit when the heatmap's maximum lies in a box, 15 pixels
of tolerance.

For images with several instances of the class and known boxes, :func:`instance_spread` says how a heatmap's mass
divides over the instances (the share inside the boxes is the energy-based pointing game of Wang et al., CVPRW
2020, Score-CAM, sec. 5.2).

A detection graph is scored by where each detection's heatmap lies (:func:`evaluate_detections`): the energy-based
pointing game on its own box (the share of the heatmap's sum inside it), and, for two detections of one class in one
image, whether each one's heatmap has more of its energy in its own box than in the other's (the several-instances
test: ODAM's claim, Zhao et al., ICLR 2023, that instance-specific maps tell apart neighbouring objects of a class).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from camexport._util import removing_new_folders, write_atomically
from camexport.errors import UserError
from camexport.runtime.options import MAP_METRICS, Scoring
from camexport.runtime.outputs import collect_images
from camexport.runtime.preprocess import normalise, to_pixels
from camexport.runtime.session import CamSession, as_photo
from camexport.runtime.tasks import batch_regions, softmax

# Deletion/insertion frames held at once (each a float64 copy of the input crop).
FRAMES_AT_ONCE = 32
EVERY_METRIC = Scoring()  # for the graph's own heatmaps
ANY_MAPS = Scoring(metrics=MAP_METRICS)  # for maps from anywhere (ADCC needs the graph that made them)


@dataclass
class Faithfulness:
    """One method's scores over a set of images (and per image, for Win % and the JSON); None: not asked for."""

    method: str
    average_drop: float | None = None
    increase_in_confidence: float | None = None
    deletion_auc: float | None = None
    insertion_auc: float | None = None
    drops: list[float] | None = None
    deletions: list[float] | None = None
    insertions: list[float] | None = None
    win: float | None = None
    adcc: float | None = None
    adccs: list[float] | None = None
    coherency: float | None = None
    complexity: float | None = None


def _feed(session: CamSession, pixels: np.ndarray) -> np.ndarray:
    """uint8-range pixels [N, H, W, C] (float or uint8) → what the graph's ``image`` input takes."""
    clipped = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return clipped if session.spec.takes_pixels else normalise(clipped, session.spec.preprocessing)


def class_probabilities(
    session: CamSession,
    pixels: np.ndarray,
    classes: np.ndarray,
    batch_size: int = 16,
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax probability of ``classes[i]`` for each image ``pixels[i]`` (uint8-range [N, H, W, C]); for a
    segmentation graph, its mean over ``regions[i]`` (bool [N, H, W]; see the module docstring)."""
    out = np.empty(len(pixels))
    for start in range(0, len(pixels), batch_size):
        chunk = slice(start, start + batch_size)
        probs = softmax(session.logits(_feed(session, pixels[chunk])))
        picked = probs[np.arange(len(probs)), classes[chunk]]
        if picked.ndim == 3:  # segmentation: [n, H, W] per-pixel probabilities, averaged over each region
            where = regions[chunk] if regions is not None else np.ones(picked.shape, bool)
            where = np.where(where.reshape(len(picked), -1).any(1)[:, None, None], where, True)
            picked = (picked * where).sum(axis=(1, 2)) / where.sum(axis=(1, 2))
        out[chunk] = picked
    return out


def drop_and_increase(
    session: CamSession,
    pixels: np.ndarray,
    heatmaps: np.ndarray,
    classes: np.ndarray,
    regions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the relative drop ``max(0, Y − O)/Y`` and whether confidence increased (``Y < O``)."""
    full = class_probabilities(session, pixels, classes, regions=regions)
    explained = pixels.astype(np.float64) * heatmaps[..., None]
    masked = class_probabilities(session, explained, classes, regions=regions)
    drops = np.maximum(full - masked, 0.0) / np.maximum(full, 1e-12)
    return drops, full < masked


def _curve(
    session: CamSession,
    start: np.ndarray,
    end: np.ndarray,
    order: np.ndarray,
    cls: int,
    steps: int,
    region: np.ndarray | None = None,
) -> float:
    """AUC of the class probability while pixels of ``start`` turn into ``end`` in ``order``, ``steps`` chunks
    (``region``: a segmentation's explained pixels, fixed from the unmasked image)."""
    h, w, c = start.shape
    current = start.reshape(h * w, c).astype(np.float64).copy()
    target = end.reshape(h * w, c).astype(np.float64)
    bounds = np.linspace(0, h * w, steps + 1).round().astype(int)
    frames, probs = [current.reshape(h, w, c).copy()], []
    for lo, hi in itertools.pairwise(bounds):
        current[order[lo:hi]] = target[order[lo:hi]]
        frames.append(current.reshape(h, w, c).copy())
        if len(frames) == FRAMES_AT_ONCE:  # memory stays flat for any number of steps
            probs.append(_frame_probabilities(session, frames, cls, region))
            frames = []
    if frames:
        probs.append(_frame_probabilities(session, frames, cls, region))
    probs = np.concatenate(probs)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it
    return float(trapezoid(probs, dx=1.0 / steps))


def _frame_probabilities(
    session: CamSession, frames: list[np.ndarray], cls: int, region: np.ndarray | None
) -> np.ndarray:
    regions = None if region is None else np.broadcast_to(region, (len(frames), *region.shape))
    return class_probabilities(session, np.stack(frames), np.full(len(frames), cls), regions=regions)


def deletion_insertion(
    session: CamSession,
    pixels: np.ndarray,
    heatmap: np.ndarray,
    cls: int,
    steps: int = Scoring.steps,
    blur: float = Scoring.blur,
) -> tuple[float, float]:
    """Deletion and insertion AUC for one image (``pixels`` uint8 [H, W, C], ``heatmap`` [H, W])."""
    order = np.argsort(-heatmap.reshape(-1), kind="stable")
    blurred = blurred_pixels(pixels, blur)
    deletion = _curve(session, pixels, np.zeros_like(pixels), order, cls, steps)
    insertion = _curve(session, blurred, pixels, order, cls, steps)
    return deletion, insertion


def blurred_pixels(pixels: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur (Pillow's) of uint8 [H, W, C], channel by channel (any C; no alpha premultiplied)."""
    blur = ImageFilter.GaussianBlur(radius)
    bands = [Image.fromarray(np.ascontiguousarray(pixels[..., i])).filter(blur) for i in range(pixels.shape[-1])]
    return np.stack([np.asarray(band) for band in bands], axis=-1)


def evaluate_maps(
    session: CamSession,
    pixels: np.ndarray,
    heatmaps: dict[str, np.ndarray],
    classes: np.ndarray,
    scoring: Scoring = ANY_MAPS,
    regions: np.ndarray | None = None,
) -> list[Faithfulness]:
    """``scoring``'s metrics for every method's heatmaps ([N, H, W] at the input size); Win % across the methods.

    Raises:
        UserError: a bad ``scoring``, or heatmaps of another shape than the pixels.
    """
    scoring.check()
    blurred = None
    if "insertion" in scoring.metrics:
        blurred = [blurred_pixels(p, scoring.blur) for p in pixels]
    results = []
    for method, maps in heatmaps.items():
        if maps.shape != pixels.shape[:3]:
            raise UserError(f"{method}: heatmaps {list(maps.shape)} do not match images {list(pixels.shape[:3])}")
        results.append(_score(session, method, pixels, maps, classes, scoring, blurred, regions))
    if "win" in scoring.metrics and len(results) > 1:
        _share_wins(results, list(heatmaps.values()), len(pixels))
    return results


def _score(
    session: CamSession,
    method: str,
    pixels: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    scoring: Scoring,
    blurred: list[np.ndarray] | None,
    regions: np.ndarray | None = None,
) -> Faithfulness:
    """One method's scores (see :func:`evaluate_maps`)."""
    metrics, steps = scoring.metrics, scoring.steps
    result = Faithfulness(method=method)
    each = list(regions) if regions is not None else [None] * len(pixels)
    if {"average_drop", "increase_in_confidence", "win", "adcc"} & set(metrics):
        drops, increased = drop_and_increase(session, pixels, maps, classes, regions)
        if "adcc" in metrics:
            _adcc(result, session, method, pixels, maps, classes, drops, regions)
        result.drops = [float(d) for d in drops]
        if "average_drop" in metrics:
            result.average_drop = float(100.0 * drops.mean())
        if "increase_in_confidence" in metrics:
            result.increase_in_confidence = float(100.0 * increased.mean())
    orders = (
        [np.argsort(-m.reshape(-1), kind="stable") for m in maps] if {"deletion", "insertion"} & set(metrics) else []
    )
    if "deletion" in metrics:
        result.deletions = [
            _curve(session, p, np.zeros_like(p), order, int(c), steps, r)
            for p, order, c, r in zip(pixels, orders, classes, each, strict=True)
        ]
        result.deletion_auc = float(np.mean(result.deletions))
    if "insertion" in metrics:
        result.insertions = [
            _curve(session, b, p, order, int(c), steps, r)
            for p, b, order, c, r in zip(pixels, blurred, orders, classes, each, strict=True)
        ]
        result.insertion_auc = float(np.mean(result.insertions))
    return result


def _adcc(
    result: Faithfulness,
    session: CamSession,
    method: str,
    pixels: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    drops: np.ndarray,
    regions: np.ndarray | None,
    batch_size: int = 16,
) -> None:
    """ADCC and its coherency and complexity (see the module docstring), into ``result``."""
    if method not in session.spec.methods:
        raise UserError(f"adcc: {method!r} is not a method of {session.path}; ADCC needs the graph that made the maps")
    name = session.spec.heatmap_of(method)
    again = []
    for start in range(0, len(pixels), batch_size):
        chunk = slice(start, start + batch_size)
        explained = _feed(session, pixels[chunk].astype(np.float64) * maps[chunk][..., None])
        region = None if regions is None else regions[chunk].astype(np.float32)
        again.append(session.run(explained, classes[chunk], region)[name])
    coherency = np.array([_pearson(a, b) for a, b in zip(maps, np.concatenate(again), strict=True)])
    coherency = (1.0 + coherency) / 2.0
    complexity = np.abs(maps).reshape(len(maps), -1).mean(axis=1)
    terms = np.stack([coherency, 1.0 - complexity, 1.0 - drops])
    scores = np.where((terms > 0).all(axis=0), 3.0 / np.sum(1.0 / np.maximum(terms, 1e-12), axis=0), 0.0)
    result.adccs = [float(v) for v in scores]
    result.adcc = float(100.0 * scores.mean())
    result.coherency = float(100.0 * coherency.mean())
    result.complexity = float(100.0 * complexity.mean())


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two maps; −1 (coherency 0) when either is constant."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else -1.0


def pointing_game(heatmap: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], tolerance: int = 15) -> bool:
    """Zhang et al.'s pointing game: True when the heatmap's maximum (the first, in row-major order) lies in one of
    ``boxes`` (left, top, right, bottom; right and bottom exclusive) grown by ``tolerance`` pixels.

    Raises:
        UserError: no boxes, or a heatmap that is not finite.
    """
    if not boxes:
        raise UserError("pointing_game needs at least one box")
    if not np.all(np.isfinite(heatmap)):
        raise UserError("pointing_game needs a finite heatmap")
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return any(
        left - tolerance <= x < right + tolerance and top - tolerance <= y < bottom + tolerance
        for left, top, right, bottom in boxes
    )


def _share_wins(results: list[Faithfulness], stacks: list[np.ndarray], images: int) -> None:
    """Win %: per image, the method(s) with the lowest drop share the win."""
    table = np.array([r.drops for r in results])
    # Maps that agree to 1e-5 (e.g. Grad-CAM and HiResCAM before global pooling) share one outcome: the
    # masked images are rounded to uint8, so float32 noise in the maps would otherwise break their tie.
    for later in range(1, len(stacks)):
        for earlier in range(later):
            same = np.abs(stacks[later] - stacks[earlier]).reshape(images, -1).max(axis=1) <= 1e-5
            table[later, same] = table[earlier, same]
    best = table.min(axis=0)
    winners = np.isclose(table, best[None], rtol=0, atol=1e-6)
    share = winners / winners.sum(axis=0, keepdims=True)
    for result, wins in zip(results, share, strict=True):
        result.win = float(100.0 * wins.mean())


@dataclass
class InstanceSpread:
    """How one heatmap's mass divides over the boxes of several instances of the explained class.

    Attributes:
        shares: per box, the heatmap's mass inside it over its total mass.
        inside: the mass inside the union of the boxes over the total (energy-based pointing game).
        peaks: per box, the heatmap's highest value inside it over its highest value anywhere.
        found: per box, whether that peak reaches ``threshold`` (the instance is lit at all).
        evenness: normalised entropy of the shares among the instances, ``H(p)/log(k)`` with
            ``p_i = shares_i / Σ shares``: 1 when every instance gets the same mass, 0 when one gets it all.
    """

    shares: list[float]
    inside: float
    peaks: list[float]
    found: list[bool]
    evenness: float


def instance_spread(
    heatmap: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], threshold: float = 0.5
) -> InstanceSpread:
    """Splits ``heatmap`` ([H, W], non-negative) over instance ``boxes`` given as ``(left, top, right, bottom)``
    pixel bounds (right and bottom exclusive). An all-zero heatmap gives zero shares and peaks, never NaN.

    Raises:
        UserError: no boxes, a box that is empty or leaves the heatmap, or a negative or non-finite heatmap.
    """
    h, w = heatmap.shape
    if not boxes:
        raise UserError("instance_spread needs at least one box")
    if not np.all(np.isfinite(heatmap)) or heatmap.min() < 0:
        raise UserError("instance_spread needs a finite, non-negative heatmap")
    union = np.zeros((h, w), bool)
    masses, peaks = [], []
    for left, top, right, bottom in boxes:
        if not (0 <= left < right <= w and 0 <= top < bottom <= h):
            raise UserError(f"box {(left, top, right, bottom)} is empty or outside the {w}x{h} heatmap")
        region = heatmap[top:bottom, left:right]
        union[top:bottom, left:right] = True
        masses.append(float(region.sum(dtype=np.float64)))
        peaks.append(float(region.max()))
    total = float(heatmap.sum(dtype=np.float64))
    highest = float(heatmap.max())
    shares = [m / total if total > 0 else 0.0 for m in masses]
    relative_peaks = [p / highest if highest > 0 else 0.0 for p in peaks]
    among = np.array(masses) / sum(masses) if sum(masses) > 0 else np.zeros(len(masses))
    entropy = -sum(p * np.log(p) for p in among if p > 0)
    return InstanceSpread(
        shares=shares,
        inside=float(heatmap[union].sum(dtype=np.float64)) / total if total > 0 else 0.0,
        peaks=relative_peaks,
        found=[bool(p >= threshold) and highest > 0 for p in relative_peaks],
        evenness=float(entropy / np.log(len(boxes))) if len(boxes) > 1 else 1.0,
    )


def evaluate_images(
    session: CamSession, images: Sequence[object], target: str | int | None = None, scoring: Scoring = EVERY_METRIC
) -> list[Faithfulness]:
    """Runs the graph on photos (anything :meth:`CamSession.prepare` takes) and scores each of its methods."""
    # The crops only: prepare() would also normalise each one, and the masks are applied to pixels.
    prep = session.spec.preprocessing
    pixels = np.stack([to_pixels(as_photo(image, str(image), prep.image_mode or "RGB"), prep) for image in images])
    outputs = session.run(_feed(session, pixels), np.array([session.class_index(target)]))
    maps = {m: outputs[session.spec.heatmap_of(m)] for m in session.spec.methods}
    classes = outputs["class_index"].astype(np.int64)
    return evaluate_maps(session, pixels, maps, classes, scoring, batch_regions(session.task, outputs))


@dataclass
class Localisation:
    """How one method's per-detection heatmaps lie on a detection graph's detections.

    Attributes:
        method: the method.
        detections: the detections scored.
        energy_in_box: the mean share of a detection's heatmap inside its own box, in % (None: no detection).
        pairs: the pairs of detections of one class in one image.
        apart: the share of those pairs whose two heatmaps each hold more energy in their own box than in the
            other's, in % (None: no pair).
    """

    method: str
    detections: int
    energy_in_box: float | None
    pairs: int
    apart: float | None


def evaluate_detections(
    session: CamSession, images: Sequence[object], target: str | int | None = None
) -> list[Localisation]:
    """Runs a detection graph on photos and scores each method's per-detection heatmaps (see the module)."""
    prep = session.spec.preprocessing
    pixels = np.stack([to_pixels(as_photo(image, str(image), prep.image_mode or "RGB"), prep) for image in images])
    outputs = session.run(_feed(session, pixels), np.array([session.class_index(target)]))
    height, width = prep.image_size
    boxes = [[_pixel_box(box, width, height) for box in image] for image in outputs["boxes"]]
    return [
        _localisation(method, outputs[session.spec.heatmap_of(method)], boxes, outputs["labels"])
        for method in session.spec.methods
    ]


def _pixel_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A box (x1, y1, x2, y2) as whole pixels it covers, inside the image; None if it covers none."""
    left, top = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    right, bottom = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    return (left, top, right, bottom) if left < right and top < bottom else None


def _localisation(method: str, heatmaps: np.ndarray, boxes: list, labels: np.ndarray) -> Localisation:
    shares, apart = [], []
    for n, d in zip(*np.nonzero(labels >= 0), strict=True):
        if boxes[n][d] is not None:
            shares.append(instance_spread(heatmaps[n, d], [boxes[n][d]]).shares[0])
    for n in range(len(labels)):
        filled = [d for d in range(labels.shape[1]) if labels[n, d] >= 0 and boxes[n][d] is not None]
        for d, e in itertools.combinations(filled, 2):
            if labels[n, d] == labels[n, e]:
                mine = instance_spread(heatmaps[n, d], [boxes[n][d], boxes[n][e]]).shares
                theirs = instance_spread(heatmaps[n, e], [boxes[n][e], boxes[n][d]]).shares
                apart.append(mine[0] > mine[1] and theirs[0] > theirs[1])
    energy = 100 * float(np.mean(shares)) if shares else None
    return Localisation(method, len(shares), energy, len(apart), 100 * float(np.mean(apart)) if apart else None)


def localisation_table(results: list[Localisation], images: int) -> str:
    """The terminal table of :func:`evaluate_detections`' results, one row per method (``-``: nothing to score)."""
    first = results[0]
    lines = [
        f"{images} image(s), {first.detections} detection(s), {first.pairs} pair(s) of one class in one image "
        "(arrows: which way is better)",
        f"{'method':12} {'Energy in own box % ↑':>22} {'Pairs apart % ↑':>16}",
    ]
    for r in results:
        energy = "-" if r.energy_in_box is None else f"{r.energy_in_box:.1f}"
        apart = "-" if r.apart is None else f"{r.apart:.1f}"
        lines.append(f"{r.method:12} {energy:>22} {apart:>16}")
    return "\n".join(lines)


def summary_table(results: list[Faithfulness], images: int, steps: int) -> str:
    """The terminal table of :func:`evaluate_maps`' results, one row per method (``-``: not computed)."""

    def cell(value: float | None, width: int, digits: int) -> str:
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    header = ["method", "Avg Drop % ↓", "Incr Conf % ↑", "Win % ↑", "Deletion ↓", "Insertion ↑", "ADCC % ↑"]
    curves = any(r.deletion_auc is not None or r.insertion_auc is not None for r in results)
    steps_note = f", {steps} deletion/insertion steps" if curves else ""
    lines = [
        f"{images} image(s){steps_note} (arrows: which way is better)",
        f"{header[0]:12} {header[1]:>13} {header[2]:>14} {header[3]:>8} {header[4]:>11} {header[5]:>12} {header[6]:>9}",
    ]
    for r in results:
        lines.append(
            f"{r.method:12} {cell(r.average_drop, 13, 2)} {cell(r.increase_in_confidence, 14, 1)} {cell(r.win, 8, 1)} "
            f"{cell(r.deletion_auc, 11, 4)} {cell(r.insertion_auc, 12, 4)} {cell(r.adcc, 9, 1)}"
        )
    return "\n".join(lines)


def evaluate_paths(
    session: CamSession,
    sources: Sequence[str | Path],
    out: Path | None = None,
    target: str | int | None = None,
    scoring: Scoring = EVERY_METRIC,
) -> str:
    """``camexport evaluate``: scores every method of the graph on the images in ``sources`` (files or
    folders), optionally writes them as JSON to ``out``, and returns the table (plus where the JSON went). A
    detection graph's methods are scored by where their maps lie (:func:`evaluate_detections`; ``scoring`` does
    not apply)."""
    scoring.check()
    if out is not None and Path(out).is_dir():
        raise UserError(f"out={str(out)!r}: is a directory; give a file name such as {Path(out) / 'scores.json'}")
    paths, _ = collect_images(sources)
    if not paths:
        raise UserError("no images found; pass image files or folders that hold .png/.jpg files")
    record: dict = {"graph": str(session.path), "images": [str(p) for p in paths]}
    if session.spec.detection is not None:
        results = evaluate_detections(session, paths, target)
        table = localisation_table(results, len(paths))
    else:
        results = evaluate_images(session, paths, target, scoring)
        table = summary_table(results, len(paths), scoring.steps)
        record |= {"steps": scoring.steps, "metrics": list(scoring.metrics)}
    if out is not None:
        record["methods"] = [asdict(r) for r in results]
        out = Path(out)
        try:
            with removing_new_folders(out.parent):
                out.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(out, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
        except OSError as exc:
            raise UserError(
                f"out={str(out)!r}: cannot write it ({exc.strerror or exc}); choose a writable path"
            ) from None
        table += f"\nwrote {out}"
    return table
