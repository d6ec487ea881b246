"""``camexport explain``: a folder of photos through a graph, in batches, to overlays and JSON Lines.

Each file is read and preprocessed on its own, so a bad file costs one line and the rest go on; good
files are run in batches of ``batch_size``. Every output is written atomically (a hidden temporary,
then a rename), so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from camexport._util import first_line, in_order, removing_new_folders, write_atomically
from camexport.contract import Preprocessing
from camexport.errors import CamExportError, UserError
from camexport.runtime.preprocess import open_unread
from camexport.runtime.records import Record, RecordLog
from camexport.runtime.session import CamSession, Explanation, random_weights_note
from camexport.runtime.visualize import check_style, overlay_on_photo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ExplainSummary:
    """What :func:`explain_paths` did.

    Attributes:
        written: every file written (overlays, heatmaps), in order.
        failures: one line per file that failed, naming it and the problem.
        predictions: the JSON Lines file (one record per explained image, this run's and a resumed one's).
        columnar: ``cams.parquet``, the records with each image's raw cam.
        explained: how many images this run explained.
        already_done: how many of the given images a resumed earlier run had recorded (skipped).
        skipped: files in the given folders that are not images (by suffix), left alone.
        seconds: wall time of the whole run.
    """

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    predictions: Path | None = None
    columnar: Path | None = None
    explained: int = 0
    already_done: int = 0
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
    resume: bool = False,
    overwrite: bool = False,
) -> ExplainSummary:
    """Explains every image; writes ``<stem>_cam.<format>`` overlays (``overlay_format`` None: none),
    ``predictions.jsonl`` and ``cams.parquet`` to ``out_dir`` (see :mod:`camexport.runtime.records`).

    Reading, the graph, and drawing run at once (:class:`ExplainRun`); records are appended as batches finish,
    in the order of the images. A file that fails gets one line in ``failures``; the others go on. With
    ``resume``, images the folder's earlier run recorded are skipped; with ``overwrite``, its records are
    replaced once this run records its first batch. With ``progress`` and more than one image, a progress
    bar runs on stderr. Ctrl-C stops after the batch in hand: what was recorded stays, and ``resume`` goes on.

    Raises:
        UserError: a bad argument, no images, or an earlier run in ``out_dir`` without ``resume``/``overwrite``.
        NothingExplained: every image failed (an earlier run's records are left as they were).
        KeyboardInterrupt: after the records of the finished batches are written and merged.
    """
    style = ExplainStyle(
        session.class_index(target), top_k, alpha, colormap, save_heatmap, overlay_format, overlay_max_side
    )
    return explain_files(
        session,
        sources,
        out_dir,
        style,
        batch_size,
        progress,
        log,
        resume,
        overwrite,
        work=lambda run, todo, bar: run.all(todo, batch_size, bar),
    )


def explain_files(
    session: CamSession,
    sources: Iterable[str | Path],
    out_dir: str | Path,
    style: ExplainStyle,
    batch_size: int,
    progress: bool,
    log: Callable[[str], None],
    resume: bool,
    overwrite: bool,
    work: Callable[[ExplainRun, list[Path], tqdm], None],
) -> ExplainSummary:
    """What every explain run does around ``work(run, images_to_do, progress_bar)``: checks, finding the
    images, the output folder and its :class:`RecordLog` (skipping what a resumed run recorded), the progress
    bar, and the end (merging the records; Ctrl-C; nothing explained). ``work`` explains the images and reports
    them with ``run.report``/``run.fail``: in this process (:meth:`ExplainRun.all`) or on Ray
    (:func:`camexport.runtime.distributed.explain_with_ray`)."""
    started = time.perf_counter()
    style.check()
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: use 1 or more")
    paths, skipped = collect_images(sources)
    if not paths:
        raise UserError("no images found; pass image files or folders that hold .png/.jpg files")
    if session.info.random_weights:
        print(f"note: {random_weights_note(session)}", file=sys.stderr)
    with removing_new_folders(Path(out_dir)):  # a run that explains nothing leaves no new folder behind
        out = output_folder(out_dir)
        records = RecordLog(out, session.info, resume=resume, overwrite=overwrite)
        run = ExplainRun(session, out, style, ExplainSummary(skipped=skipped), log, records)
        run.stems.update(_stem_of(name) for name in records.earlier_files)
        todo = [path for path in paths if str(path) not in records.done]
        run.summary.already_done = len(paths) - len(todo)
        bar = tqdm(total=len(todo), unit="img", disable=not progress or len(todo) < 2, leave=False)
        interrupted = False
        try:
            work(run, todo, bar)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            run.summary.columnar = records.finish()
        if interrupted:
            raise Interrupted(run.summary, records.predictions)
        if todo and not run.summary.explained:  # every image failed: an earlier run's records stay as they were
            raise NothingExplained(run.summary)
    run.summary.predictions = records.predictions if records.predictions.exists() else None
    run.summary.seconds = time.perf_counter() - started
    return run.summary


class Interrupted(CamExportError):
    """Ctrl-C (SIGINT) stopped a run; the finished batches are recorded and merged."""

    exit_code = 130

    def __init__(self, summary: ExplainSummary, predictions: Path) -> None:
        super().__init__(
            f"interrupted after {summary.explained} image(s); the records are in {predictions}: run the same "
            "command with `resume` to finish"
        )
        self.summary = summary


class NothingExplained(CamExportError):
    """Every image of a run failed (each already reported); nothing was written."""

    def __init__(self, summary: ExplainSummary) -> None:
        super().__init__(f"none of the {len(summary.failures)} image(s) could be explained; nothing was written")
        self.summary = summary


def output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out_dir={str(out)!r}: cannot create it ({exc.strerror or exc})") from None
    return out


@dataclass
class _Prepared:
    path: Path
    photo: Image.Image
    array: np.ndarray
    pixels: int  # held in the pixel budget until the image's files are written


@dataclass
class _Batch:
    items: list[_Prepared]
    results: list[Explanation]
    drawn: list[Future]  # each: (overlay path, heatmap path), or an exception


class PixelBudget:
    """Bounds the decoded photo pixels in flight (read, waiting for the graph, or being drawn), so that memory
    stays flat whatever the photos' sizes; one photo larger than the whole budget still goes, alone.

    Photos take pixels in the order of the files (``turn`` 0, 1, 2, ...), whichever reader thread reads them:
    a later photo never holds pixels that an earlier one, which the batch must have first, is waiting for.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.held, self.turn = limit, 0, 0
        self.waiting = 0  # readers waiting for pixels to be given back (or for an earlier photo's turn)
        self._changed = threading.Condition()

    def take(self, pixels: int, turn: int) -> None:
        with self._changed:
            self.waiting += 1
            self._changed.wait_for(lambda: self.turn >= turn and (self.held == 0 or self.held + pixels <= self.limit))
            self.waiting -= 1
            self.held += pixels
            self.turn = max(self.turn, turn + 1)
            self._changed.notify_all()

    def give(self, pixels: int) -> None:
        with self._changed:
            self.held -= pixels
            self._changed.notify_all()

    def open(self) -> None:
        """No limit and no turns from now on (a stopping run lets every waiting reader go)."""
        with self._changed:
            self.limit, self.turn = 1 << 62, 1 << 62
            self._changed.notify_all()


READERS, DRAWERS, BATCHES_DRAWING = 2, 2, 3  # threads, and batches drawn at once: measured on 2 cores
# 48 megapixels of decoded photos in flight: 4 twelve-megapixel photos, or hundreds of small ones.
PIXELS_IN_FLIGHT = 48_000_000


@dataclass
class ExplainRun:
    """One ``explain`` run. In this process (:meth:`all`) it is three overlapping stages: reader threads decode
    and preprocess (Pillow releases the GIL), the calling thread runs the graph (so does onnxruntime), drawing
    threads colour, encode and write each image's files; the calling thread then records each batch, in order.
    Bounded: the readers run at most two batches ahead and :data:`PIXELS_IN_FLIGHT` of photos, and at most
    :data:`BATCHES_DRAWING` batches wait for their drawings."""

    session: CamSession
    out: Path
    style: ExplainStyle
    summary: ExplainSummary
    log: Callable[[str], None]
    records: RecordLog
    stems: set[str] = field(default_factory=set)
    budget: PixelBudget = field(default_factory=lambda: PixelBudget(PIXELS_IN_FLIGHT))

    def all(self, paths: list[Path], batch_size: int, bar: tqdm) -> None:
        reader, drawer = ThreadPoolExecutor(READERS, "camexport-read"), ThreadPoolExecutor(DRAWERS, "camexport-draw")
        try:
            with _switching_often():
                self.stream(paths, batch_size, bar, reader, drawer)
        except BaseException:  # Ctrl-C, or a bug: stop reading and drawing; what was recorded stays
            self.budget.open()
            for pool in (reader, drawer):
                pool.shutdown(wait=True, cancel_futures=True)
            raise
        for pool in (reader, drawer):
            pool.shutdown()

    def stream(
        self, paths: list[Path], batch_size: int, bar: tqdm, reader: ThreadPoolExecutor, drawer: ThreadPoolExecutor
    ) -> None:
        """Reads ahead in ``reader``, runs full batches, draws in ``drawer``, records finished batches in order."""
        drawing: deque[_Batch] = deque()
        batch: list[_Prepared] = []
        for future in in_order(reader, self.prepare, enumerate(paths), ahead=2 * batch_size):
            while not _wait(future) and batch and self.budget.waiting:  # the batch holds the budget: run it
                drawing.append(self.run(batch, drawer))
                batch = []
            item = future.result()
            if isinstance(item, str):
                self.fail(item)
                bar.update(1)
                continue
            batch.append(item)
            if len(batch) == batch_size:
                drawing.append(self.run(batch, drawer))
                batch = []
            while len(drawing) > BATCHES_DRAWING or (drawing and _all_done(drawing[0])):
                self.record(drawing.popleft(), bar)
        if batch:
            drawing.append(self.run(batch, drawer))
        while drawing:
            self.record(drawing.popleft(), bar)

    def prepare(self, numbered: tuple[int, Path]) -> _Prepared | str:
        """Reads and preprocesses one file (in a reader thread); a failure becomes its error line."""
        turn, path = numbered
        try:
            pixels = _pixels_of(path)
            self.budget.take(pixels, turn)
            try:
                photo, array = self.session.prepare(path, str(path))
            except BaseException:
                self.budget.give(pixels)
                raise
            return _Prepared(path, photo, array, pixels)
        except CamExportError as exc:
            return failure_line(path, exc)

    def run(self, batch: list[_Prepared], drawer: ThreadPoolExecutor) -> _Batch:
        """The graph on one batch; each image's files are then drawn in the drawing thread."""
        try:
            prepared = [(item.photo, item.array) for item in batch]
            results = self.session.explain_prepared(prepared, self.style.target, self.style.top_k)
        except CamExportError as exc:
            for item in batch:
                self.fail(f"{item.path}: {exc}")
                self.budget.give(item.pixels)
            return _Batch(batch, [], [])
        drawn = []
        for item, result in zip(batch, results, strict=True):
            item.array = None  # the graph has it; only the photo is still needed
            drawn.append(drawer.submit(self.draw, item, result, unique_stem(item.path, self.stems)))
        return _Batch(batch, results, drawn)

    def draw(self, item: _Prepared, result: Explanation, stem: str) -> tuple[Path | None, Path | None]:
        """Writes one image's overlay and heatmap file (in the drawing thread); returns their paths."""
        try:
            return write_files(self.out, stem, item.photo, result, self.style)
        finally:
            item.photo = None
            self.budget.give(item.pixels)

    def record(self, batch: _Batch, bar: tqdm) -> None:
        """Appends one batch's records (in order), once its files are written."""
        records = []
        for item, result, drawn in zip(batch.items, batch.results, batch.drawn, strict=True):
            try:
                picture, heatmap = drawn.result()
            except (OSError, ValueError) as exc:  # a full disk; a photo too large for the format (WebP: 16383 px)
                self.fail(f"{item.path}: cannot write its files ({getattr(exc, 'strerror', None) or first_line(exc)})")
                continue
            records.append(Record.of(str(item.path), picture, heatmap, result))
        self.report(records, bar)
        bar.update(len(batch.items) - len(records))

    def report(self, records: list[Record], bar: tqdm) -> None:
        """Records explained images (appended and flushed), counts them, and logs one line each."""
        self.records.append(records)
        for record in records:
            self.summary.written += [Path(w) for w in (record.overlay, record.heatmap) if w]
            self.summary.explained += 1
            best = record.top[0]
            where = f" -> {record.overlay}" if record.overlay else ""
            with tqdm.external_write_mode():  # the bar steps aside for the line, then redraws
                self.log(
                    f"{record.image}: {best['label']} ({best['probability']:.2f}); explained '{record.label}'{where}"
                )
        bar.update(len(records))

    def fail(self, message: str) -> None:
        self.summary.failures.append(message)
        with tqdm.external_write_mode(file=sys.stderr):
            print(f"error: {message}", file=sys.stderr)


def failure_line(path: str | Path, exc: Exception) -> str:
    """The one line reporting a file that failed: the error's own, when it names the file already."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


def write_files(
    out: Path, stem: str, photo: Image.Image, result: Explanation, style: ExplainStyle
) -> tuple[Path | None, Path | None]:
    """Writes the files the style asks for into ``out``: ``<stem>_cam.<format>`` and ``<stem>_heatmap.npy``.

    Returns:
        (overlay path, heatmap path), None for a file not asked for.
    """
    overlay_path = heatmap_path = None
    if style.overlay_format:
        overlay_path = out / f"{stem}_cam{OVERLAY_FORMATS[style.overlay_format][1]}"
        write_overlay(overlay_path, photo, result.input_heatmap, result.preprocessing, style, result.region)
    if style.save_heatmap:
        heatmap_path = out / f"{stem}_heatmap.npy"
        write_atomically(heatmap_path, lambda p: np.save(p, result.heatmap))
    return overlay_path, heatmap_path


def write_overlay(
    path: Path,
    photo: Image.Image,
    input_heatmap: np.ndarray,
    preprocessing: Preprocessing,
    style: ExplainStyle,
    region: np.ndarray | None = None,
) -> None:
    """Writes ``photo`` with the graph's ``input_heatmap`` placed back on it (downscaled to the style's
    ``overlay_max_side`` if asked) in the style's format, atomically; a segmentation's explained ``region`` is
    outlined."""
    pillow_format, _, options = OVERLAY_FORMATS[style.overlay_format or DEFAULT_FORMAT]
    coloured = overlay_on_photo(
        photo, input_heatmap, preprocessing, style.alpha, style.colormap, style.overlay_max_side, region
    )
    write_atomically(path, lambda p: coloured.save(p, format=pillow_format, **options))


def _wait(future: Future, seconds: float = 0.05) -> bool:
    """Waits up to ``seconds`` for ``future``; True if it is done."""
    return bool(wait([future], timeout=seconds).done)


@contextlib.contextmanager
def _switching_often(seconds: float = 0.001) -> Iterator[None]:
    """Python hands the GIL between threads every ``seconds`` (5 ms by default) while the stages run: a stage back
    from Pillow or onnxruntime waits less for a thread running Python (measured: 9 % more images/s with overlays)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _all_done(batch: _Batch) -> bool:
    return all(future.done() for future in batch.drawn)


def _pixels_of(path: Path) -> int:
    """Width x height from the file's header (nothing decoded); 0 when unreadable (the read reports it)."""
    try:
        with open_unread(path) as image:
            return image.width * image.height
    except UserError:  # preparing it reports the reason
        return 0


def _stem_of(file_name: str) -> str:
    """The stem an earlier run gave a file: ``photo-2`` of ``photo-2_cam.jpg`` or ``photo-2_heatmap.npy``."""
    return Path(file_name).name.rsplit("_", 1)[0]


def unique_stem(path: Path, taken: set[str]) -> str:
    """``photo`` for the first ``photo.jpg``, then ``photo-2``, ``photo-3``, ... for more files of that stem (e.g.
    ``photo.png``, or one in another folder), skipping any stem already taken (a file named ``photo-2.png``)."""
    stem, count = path.stem, 1
    while stem in taken:
        count += 1
        stem = f"{path.stem}-{count}"
    taken.add(stem)
    return stem
