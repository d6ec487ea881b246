"""``camexport explain``: a folder of photos through a graph, in batches, to overlays and JSON Lines.

Each file is read and preprocessed on its own, so a bad file costs one line and the rest go on; good
files are run in batches of ``batch_size``. Every output is written atomically (a hidden temporary,
then a rename), so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from camexport._util import removing_new_folders, write_atomically
from camexport.errors import CamExportError, UserError
from camexport.runtime.session import CamSession, Explanation, random_weights_note
from camexport.runtime.visualize import check_style, overlay

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ExplainSummary:
    """What :func:`explain_paths` did.

    Attributes:
        written: every file written (overlays, heatmaps), in order.
        failures: one line per file that failed, naming it and the problem.
        predictions: the JSON Lines file (one record per explained image).
        explained: how many images were explained.
        skipped: files in the given folders that are not images (by suffix), left alone.
        seconds: wall time of the whole run.
    """

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    predictions: Path | None = None
    explained: int = 0
    skipped: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Explained images per second of wall time."""
        return self.explained / self.seconds if self.seconds > 0 else 0.0


def collect_images(sources: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expands folders (non-recursively, sorted) into image files; files are taken as given.

    Returns:
        (images, skipped): the files to explain, and the folders' other files (by suffix).
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for child in sorted(p for p in path.iterdir() if p.is_file()):
                (found if child.suffix.lower() in IMAGE_SUFFIXES else skipped).append(child)
        else:
            found.append(path)
    return found, skipped


def _record(path: Path, picture: Path | None, result: Explanation) -> dict:
    return {
        "image": str(path),
        "overlay": None if picture is None else str(picture),
        "class_index": result.class_index,
        "label": result.label,
        "probability": round(result.probability, 6),
        "top": [{"index": i, "label": name, "probability": round(p, 6)} for i, name, p in result.top],
    }


# Overlay file formats: (Pillow format, file suffix, save options). JPEG is the default: measured on a
# 12-megapixel overlay, JPEG (quality 90) encodes in 0.02 s and 0.95 MB, WebP in 0.14 s and 0.3 MB, PNG in
# 2.2 s and 7.6 MB (benchmarks/overlay_formats.md, python benchmarks/overlay_formats.py).
OVERLAY_FORMATS = {
    "jpg": ("JPEG", ".jpg", {"quality": 90}),
    "png": ("PNG", ".png", {}),
    "webp": ("WEBP", ".webp", {"quality": 80, "method": 0}),
}
DEFAULT_FORMAT = "jpg"


@dataclass(frozen=True)
class ExplainStyle:
    """What each explained image becomes: the class, how many predictions, the overlay, the saved heatmap.

    Attributes:
        overlay_format: a key of :data:`OVERLAY_FORMATS`, or None for no overlays.
        overlay_max_side: downscale overlays whose longer side exceeds this (None: the photo's own size).
    """

    target: int = -1
    top_k: int = 5
    alpha: float = 0.5
    colormap: str = "jet"
    save_heatmap: bool = False
    overlay_format: str | None = DEFAULT_FORMAT
    overlay_max_side: int | None = None

    def check(self) -> None:
        """Raises UserError for a bad option."""
        if self.top_k < 1:
            raise UserError(f"top_k={self.top_k}: use 1 or more")
        check_style(self.alpha, self.colormap)
        if self.overlay_format is not None and self.overlay_format not in OVERLAY_FORMATS:
            raise UserError(f"overlay_format={self.overlay_format!r}: use one of {', '.join(OVERLAY_FORMATS)}")
        if self.overlay_max_side is not None and self.overlay_max_side < 1:
            raise UserError(f"overlay_max_side={self.overlay_max_side}: use a positive number of pixels")


def explain_paths(
    session: CamSession,
    sources: Iterable[str | Path],
    out_dir: str | Path,
    target: str | int | None = None,
    top_k: int = 5,
    alpha: float = 0.5,
    colormap: str = "jet",
    save_heatmap: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overlay_format: str | None = DEFAULT_FORMAT,
    overlay_max_side: int | None = None,
) -> ExplainSummary:
    """Explains every image; writes ``<stem>_cam.<format>`` overlays (``overlay_format`` None: none) and
    ``predictions.jsonl`` to ``out_dir``.

    A file that fails gets one line in ``failures``; the others are still processed. With ``progress``
    and more than one image, a progress bar runs on stderr.

    Raises:
        UserError: a bad argument (class, top-k, batch size, alpha, colormap, output folder) or no images.
    """
    started = time.perf_counter()
    style = ExplainStyle(
        session.class_index(target), top_k, alpha, colormap, save_heatmap, overlay_format, overlay_max_side
    )
    style.check()
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: use 1 or more")
    paths, skipped = collect_images(sources)
    if not paths:
        raise UserError("no images found; pass image files or folders that hold .png/.jpg files")
    if session.info.random_weights:
        print(f"note: {random_weights_note(session)}", file=sys.stderr)
    with removing_new_folders(Path(out_dir)):  # a run that explains nothing leaves no new folder behind
        out = _output_folder(out_dir)
        run = _Run(session, out, style, ExplainSummary(skipped=skipped), log)
        bar = tqdm(total=len(paths), unit="img", disable=not progress or len(paths) < 2, leave=False)
        try:
            run.all(paths, batch_size, bar)
        finally:
            bar.close()
        if not run.records:  # every image failed: an earlier run's predictions stay as they were
            raise NothingExplained(run.summary)
    predictions = out / "predictions.jsonl"
    write_atomically(predictions, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in run.records)))
    run.summary.predictions = predictions
    run.summary.seconds = time.perf_counter() - started
    return run.summary


class NothingExplained(CamExportError):
    """Every image of a run failed (each already reported); nothing was written."""

    def __init__(self, summary: ExplainSummary) -> None:
        super().__init__(f"none of the {len(summary.failures)} image(s) could be explained; nothing was written")
        self.summary = summary


def _output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out_dir={str(out)!r}: cannot create it ({exc.strerror or exc})") from None
    return out


Prepared = tuple[Path, Image.Image, np.ndarray]


@dataclass
class _Run:
    """One ``explain`` run: files prepared one by one, run in batches, written as they finish."""

    session: CamSession
    out: Path
    style: ExplainStyle
    summary: ExplainSummary
    log: Callable[[str], None]
    records: list[dict] = field(default_factory=list)
    stems: set[str] = field(default_factory=set)

    def all(self, paths: list[Path], batch_size: int, bar: tqdm) -> None:
        pending: list[Prepared] = []
        for path in paths:
            try:
                photo, array = self.session.prepare(path, str(path))
                pending.append((path, photo, array))
            except CamExportError as exc:
                self.fail(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
                bar.update(1)
            if len(pending) == batch_size:
                self.batch(pending)
                bar.update(len(pending))
                pending = []
        if pending:
            self.batch(pending)
            bar.update(len(pending))

    def batch(self, batch: list[Prepared]) -> None:
        style = self.style
        try:
            prepared = [(photo, array) for _, photo, array in batch]
            results = self.session.explain_prepared(prepared, style.target, style.top_k)
        except CamExportError as exc:
            for path, _, _ in batch:
                self.fail(f"{path}: {exc}")
            return
        for (path, photo, _), result in zip(batch, results, strict=True):
            self.write(path, photo, result)

    def write(self, path: Path, photo: Image.Image, result: Explanation) -> None:
        style, summary = self.style, self.summary
        stem = _unique_stem(path, self.stems)
        picture = self.overlay(stem, photo, result) if style.overlay_format else None
        record = _record(path, picture, result)
        if style.save_heatmap:
            array_path = self.out / f"{stem}_heatmap.npy"
            write_atomically(array_path, lambda p: np.save(p, result.heatmap))
            record["heatmap"] = str(array_path)
            summary.written.append(array_path)
        self.records.append(record)
        summary.explained += 1
        best = result.top[0]
        where = f" -> {picture}" if picture else ""
        with tqdm.external_write_mode():  # the bar steps aside for the line, then redraws
            self.log(f"{path}: {best[1]} ({best[2]:.2f}); explained '{result.label}'{where}")

    def overlay(self, stem: str, photo: Image.Image, result: Explanation) -> Path:
        """Writes the overlay (downscaled to ``overlay_max_side`` if asked) and returns its path."""
        style = self.style
        pillow_format, suffix, options = OVERLAY_FORMATS[style.overlay_format]
        heatmap, seen = result.heatmap, result.seen
        if style.overlay_max_side and max(photo.size) > style.overlay_max_side:
            scale = style.overlay_max_side / max(photo.size)
            size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
            photo = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            heatmap = np.asarray(Image.fromarray(heatmap, mode="F").resize(size, Image.Resampling.BILINEAR))
            seen = np.asarray(Image.fromarray(seen).resize(size, Image.Resampling.NEAREST))
        coloured = overlay(photo, heatmap, style.alpha, style.colormap, seen)
        picture = self.out / f"{stem}_cam{suffix}"
        write_atomically(picture, lambda p: coloured.save(p, format=pillow_format, **options))
        self.summary.written.append(picture)
        return picture

    def fail(self, message: str) -> None:
        self.summary.failures.append(message)
        with tqdm.external_write_mode(file=sys.stderr):
            print(f"error: {message}", file=sys.stderr)


def _unique_stem(path: Path, taken: set[str]) -> str:
    """``photo`` for the first ``photo.jpg``, then ``photo-2``, ``photo-3``, ... for more files of that stem (e.g.
    ``photo.png``, or one in another folder), skipping any stem already taken (a file named ``photo-2.png``)."""
    stem, count = path.stem, 1
    while stem in taken:
        count += 1
        stem = f"{path.stem}-{count}"
    taken.add(stem)
    return stem
