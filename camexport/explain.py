"""Explaining photos with a built graph: predictions, heatmaps at the photo's resolution, overlays."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camexport._util import write_atomically
from camexport.errors import CamExportError, UserError
from camexport.preprocess import open_image, to_input
from camexport.session import CamSession
from camexport.visualize import heatmap_to_original, overlay, seen_mask

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Explanation:
    """One photo's explanation.

    Attributes:
        top: the top-k classes as (index, label, probability).
        class_index: the class the heatmap explains.
        label: its name.
        heatmap: float32 [height, width] in [0, 1] at the photo's resolution.
    """

    top: list[tuple[int, str, float]]
    class_index: int
    label: str
    heatmap: np.ndarray


def resolve_class(session: CamSession, wanted: str | int | None) -> int:
    """A class given as an index or a label name → its index (−1 for None: the top-1 class).

    Raises:
        UserError: an index out of range or a name not among the labels.
    """
    if wanted is None:
        return -1
    labels = session.info.labels
    text = str(wanted).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(labels):
            raise UserError(f"--class {index}: out of range; the graph has classes 0..{len(labels) - 1}")
        return index
    matches = [i for i, name in enumerate(labels) if name.lower() == text.lower()]
    if not matches:
        import difflib

        close = difflib.get_close_matches(text, labels, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "pass an index instead"
        raise UserError(f"--class {text!r}: not a label of this graph; {hint}")
    return matches[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def explain_image(session: CamSession, image: Image.Image, target: int = -1, top_k: int = 5) -> Explanation:
    """Runs one photo through the graph."""
    prep = session.info.preprocessing
    outputs = session.run(to_input(image, prep)[None], np.array([target], dtype=np.int64))
    probs = _softmax(outputs["logits"][0].astype(np.float64))
    order = np.argsort(-probs)[: max(1, top_k)]
    labels = session.info.labels
    top = [(int(i), labels[int(i)], float(probs[i])) for i in order]
    index = int(outputs["class_index"][0])
    heatmap = heatmap_to_original(outputs["heatmap"][0], prep, *image.size)
    return Explanation(top=top, class_index=index, label=labels[index], heatmap=heatmap)


def collect_images(sources: Iterable[str | Path]) -> list[Path]:
    """Expands folders (non-recursively, sorted) into image files; files are taken as given."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


@dataclass
class ExplainSummary:
    """What ``explain_paths`` did."""

    written: list[Path]
    failures: list[str]
    predictions: Path


def explain_paths(
    session: CamSession,
    sources: Iterable[str | Path],
    out_dir: str | Path,
    target: str | int | None = None,
    top_k: int = 5,
    alpha: float = 0.5,
    colormap: str = "jet",
    save_heatmap: bool = False,
    log: Callable[[str], None] = print,
) -> ExplainSummary:
    """Explains every image; writes ``<stem>_cam.png`` overlays and ``predictions.jsonl`` to ``out_dir``.

    A file that fails gets one line in ``failures``; the others are still processed.
    """
    target_index = resolve_class(session, target)
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: use 1 or more")
    overlay(Image.new("RGB", (1, 1)), np.zeros((1, 1), np.float32), alpha, colormap)  # validates alpha/colormap
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    paths = collect_images(sources)
    if not paths:
        raise UserError("no images found; pass image files or folders that hold .png/.jpg files")
    written: list[Path] = []
    failures: list[str] = []
    records: list[dict] = []
    for path in paths:
        try:
            image = open_image(path)
            result = explain_image(session, image, target_index, top_k)
            picture = out / f"{path.stem}_cam.png"
            mask = seen_mask(session.info.preprocessing, *image.size)
            coloured = overlay(image, result.heatmap, alpha, colormap, mask)
            write_atomically(picture, lambda p, c=coloured: c.save(p, format="PNG"))
            written.append(picture)
            record = {
                "image": str(path),
                "overlay": str(picture),
                "class_index": result.class_index,
                "label": result.label,
                "top": [{"index": i, "label": name, "probability": round(p, 6)} for i, name, p in result.top],
            }
            if save_heatmap:
                array_path = out / f"{path.stem}_heatmap.npy"
                write_atomically(array_path, lambda p, h=result.heatmap: np.save(p, h))
                record["heatmap"] = str(array_path)
                written.append(array_path)
            records.append(record)
            best = result.top[0]
            log(f"{path}: {best[1]} ({best[2]:.2f}); explained '{result.label}' -> {picture}")
        except CamExportError as exc:
            message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            failures.append(message)
            log(f"error: {message}")
    predictions = out / "predictions.jsonl"
    write_atomically(predictions, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)))
    return ExplainSummary(written=written, failures=failures, predictions=predictions)
