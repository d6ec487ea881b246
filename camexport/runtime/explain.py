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


def _record(path: Path, picture: Path, result: Explanation) -> dict:
    return {
        "image": str(path),
        "overlay": str(picture),
        "class_index": result.class_index,
        "label": result.label,
        "probability": round(result.probability, 6),
        "top": [{"index": i, "label": name, "probability": round(p, 6)} for i, name, p in result.top],
    }


@dataclass(frozen=True)
class ExplainStyle:
    """What each explained image becomes: the class, how many predictions, the overlay, the saved heatmap."""

    target: int = -1
    top_k: int = 5
    alpha: float = 0.5
    colormap: str = "jet"
    save_heatmap: bool = False


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
) -> ExplainSummary:
    """Explains every image; writes ``<stem>_cam.png`` overlays and ``predictions.jsonl`` to ``out_dir``.

    A file that fails gets one line in ``failures``; the others are still processed. With ``progress``
    and more than one image, a progress bar runs on stderr.

    Raises:
        UserError: a bad argument (class, top-k, batch size, alpha, colormap, output folder) or no images.
    """
    started = time.perf_counter()
    style = ExplainStyle(session.class_index(target), top_k, alpha, colormap, save_heatmap)
    if top_k < 1:
        raise UserError(f"top_k={top_k}: use 1 or more")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: use 1 or more")
    check_style(alpha, colormap)
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
        picture = self.out / f"{stem}_cam.png"
        coloured = overlay(photo, result.heatmap, style.alpha, style.colormap, result.seen)
        write_atomically(picture, lambda p: coloured.save(p, format="PNG"))
        summary.written.append(picture)
        record = _record(path, picture, result)
        if style.save_heatmap:
            array_path = self.out / f"{stem}_heatmap.npy"
            write_atomically(array_path, lambda p: np.save(p, result.heatmap))
            record["heatmap"] = str(array_path)
            summary.written.append(array_path)
        self.records.append(record)
        summary.explained += 1
        best = result.top[0]
        with tqdm.external_write_mode():  # the bar steps aside for the line, then redraws
            self.log(f"{path}: {best[1]} ({best[2]:.2f}); explained '{result.label}' -> {picture}")

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
