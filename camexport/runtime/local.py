"""The local executor: one run explained in this process, its stages overlapped on threads.

Reader threads decode and preprocess (Pillow releases the GIL), the calling thread runs the graph (so does
onnxruntime), drawing threads colour, encode and write each image's files; the calling thread then records each
batch, in order. Bounded: the readers run at most two batches ahead and :data:`PIXELS_IN_FLIGHT` of photos, and at
most :data:`BATCHES_DRAWING` batches wait for their drawings. Each file is read and preprocessed on its own, so a bad
file costs one line and the rest go on.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from camexport._util import first_line, in_order
from camexport.errors import CamExportError, UserError
from camexport.runtime.outputs import failure_line, unique_stem, write_files
from camexport.runtime.preprocess import open_unread
from camexport.runtime.records import Files, records_for
from camexport.runtime.run import ExplainRun
from camexport.runtime.session import Explanation


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
    error: str | None = None  # why the graph failed on the whole batch


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
class Stages:
    """The local executor's stages for one run (see the module docstring); ``run`` is what they report into."""

    run: ExplainRun
    budget: PixelBudget = field(default_factory=lambda: PixelBudget(PIXELS_IN_FLIGHT))

    def all(self, paths: list[Path], batch_size: int, bar: tqdm) -> None:
        """Explains ``paths`` in batches of ``batch_size``, reporting each into the run; on any exception (Ctrl-C)
        the reading and drawing stop, and what was recorded stays."""
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
                drawing.append(self.explain(batch, drawer))
                batch = []
            item = future.result()
            if isinstance(item, str):
                self.run.fail(item, bar)
                continue
            batch.append(item)
            if len(batch) == batch_size:
                drawing.append(self.explain(batch, drawer))
                batch = []
            while len(drawing) > BATCHES_DRAWING or (drawing and _all_done(drawing[0])):
                self.record(drawing.popleft(), bar)
        if batch:
            drawing.append(self.explain(batch, drawer))
        while drawing:
            self.record(drawing.popleft(), bar)

    def prepare(self, numbered: tuple[int, Path]) -> _Prepared | str:
        """Reads and preprocesses one file (in a reader thread); a failure becomes its error line."""
        turn, path = numbered
        try:
            pixels = _pixels_of(path)
            self.budget.take(pixels, turn)
            try:
                photo, array = self.run.session.prepare(path, str(path), self.run.style.jpeg_draft)
            except BaseException:
                self.budget.give(pixels)
                raise
            return _Prepared(path, photo, array, pixels)
        except CamExportError as exc:
            return failure_line(path, exc)

    def explain(self, batch: list[_Prepared], drawer: ThreadPoolExecutor) -> _Batch:
        """The graph on one batch; each image's files are then drawn in the drawing thread."""
        session, style = self.run.session, self.run.style
        try:
            results = session.explain_prepared([(item.photo, item.array) for item in batch], style.target, style.top_k)
        except CamExportError as exc:
            for item in batch:
                self.budget.give(item.pixels)
            return _Batch(batch, [], [], error=str(exc))
        drawn = []
        for item, result in zip(batch, results, strict=True):
            item.array = None  # the graph has it; only the photo is still needed
            drawn.append(drawer.submit(self.draw, item, result, unique_stem(item.path, self.run.stems)))
        return _Batch(batch, results, drawn)

    def draw(self, item: _Prepared, result: Explanation, stem: str) -> Files:
        """Writes one image's overlay and heatmap file (in the drawing thread); returns their paths."""
        try:
            return write_files(self.run.out, stem, item.photo, result, self.run.style)
        finally:
            item.photo = None
            self.budget.give(item.pixels)

    def record(self, batch: _Batch, bar: tqdm) -> None:
        """Appends one batch's records (in order), once its files are written."""
        for item in batch.items if batch.error else []:
            self.run.fail(f"{item.path}: {batch.error}", bar)
        records = []
        for item, result, drawn in zip(batch.items, batch.results, batch.drawn, strict=True):
            try:
                files = drawn.result()
            except (OSError, ValueError) as exc:  # a full disk; a photo too large for the format (WebP: 16383 px)
                why = getattr(exc, "strerror", None) or first_line(exc)
                self.run.fail(f"{item.path}: cannot write its files ({why})", bar)
                continue
            records.append(records_for(str(item.path), files, result))
        self.run.report(records, bar)


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
