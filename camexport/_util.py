"""Small helpers shared by several modules: SIGTERM as an interrupt, quieting third-party code, error lines, atomic
writes and their sweeping, digests, bounded work in order."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM (how Slurm, Kubernetes, Ray and ``kill`` stop a job), raised in the main thread where Ctrl-C raises
    KeyboardInterrupt, so that both take the same path: the work in hand finished or undone, temporaries removed,
    one line, exit status 143 (128 + 15) where Ctrl-C's is 130."""


class _Stops:
    """The main thread's stop signals: how deep it is in :func:`signals_held` blocks, and the stop that arrived
    there (raised when the outermost block ends)."""

    depth = 0
    pending: KeyboardInterrupt | None = None


def _stop(exc: KeyboardInterrupt) -> None:
    if _Stops.depth:
        _Stops.pending = _Stops.pending or exc
        return
    raise exc


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread and Ctrl-C KeyboardInterrupt, both
    held back while a :func:`signals_held` block runs (once: a second SIGTERM while the first unwinds is ignored,
    so that the cleanup finishes). Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(Terminated())

    def on_int(_signum: int, _frame: object) -> None:
        _stop(KeyboardInterrupt())

    interruptible = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not where a shell ignores it
    previous = signal.signal(signal.SIGTERM, on_term), signal.getsignal(signal.SIGINT)
    if interruptible:
        signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, a stop signal (under :func:`sigterm_as_interrupt`) waits and is raised as the block ends:
    for steps that must finish once begun, such as a record's line and its log line (third-party code such as
    tqdm's write lock breaks when an exception lands between its lock and its ``try``). Blocks nest; outside the
    main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Stops.depth += 1
    try:
        yield
    finally:
        _Stops.depth -= 1
        if not _Stops.depth and _Stops.pending is not None:
            exc, _Stops.pending = _Stops.pending, None
            raise exc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences third-party progress prints, warnings and logging (the exporter, the hub client)."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    """The root cause's first line, without terminal colour codes."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = ANSI.sub("", str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:240]


def write_atomically(path: Path, writer: Callable[[Path], None]) -> list[Path]:
    """Calls ``writer`` on ``path``'s name in a hidden folder beside it, then moves what it wrote into place.

    Files the writer puts next to the staged one (an ONNX graph's external ``.data``) move first, the
    file at ``path`` last. On any failure nothing of this call is left at the destination.

    Returns:
        The final paths, ``path`` last.
    """
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    moved: list[Path] = []
    try:
        staged = folder / path.name
        writer(staged)
        for companion in sorted(f for f in folder.iterdir() if f != staged):
            os.replace(companion, path.parent / companion.name)
            moved.append(path.parent / companion.name)
        os.replace(staged, path)
        moved.append(path)
        return moved
    except BaseException:
        for done in moved:
            done.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# write_atomically's staging folders: tempfile.mkdtemp(prefix=".NAME.") adds 8 characters of [a-z0-9_].
_STAGED = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}$")


def sweep_staged(folder: Path, name: str | None = None) -> list[Path]:
    """Removes the staging folders :func:`write_atomically` left in ``folder`` when its process was killed (SIGKILL
    gives no chance to clean up): hidden folders named ``.NAME.XXXXXXXX`` that hold nothing or a file ``NAME``
    (only those of ``name``, if given). Returns what was removed."""
    swept = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = _STAGED.match(entry.name)
        if not match or not entry.is_dir() or (name is not None and match["name"] != name):
            continue
        if not any(entry.iterdir()) or (entry / match["name"]).exists():
            shutil.rmtree(entry, ignore_errors=True)
            swept.append(entry)
    return swept


def sha256_of(files: list[Path]) -> str:
    """One digest over the files, in order, read in chunks (a graph's external data can be gigabytes)."""
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def removing_new_folders(folder: Path) -> Iterator[None]:
    """On failure, removes the folders up to ``folder`` that the body created and left empty (so that a failed
    run leaves nothing behind); folders that existed before, or hold anything, stay."""
    new = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        new.append(candidate)
    try:
        yield
    except BaseException:
        for created in new:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


def in_order(pool: Executor, work: Callable, items: Iterable, ahead: int) -> Iterator[Future]:
    """The futures of ``work(item)`` for each item, submitted to ``pool`` up to ``ahead`` items ahead, in order."""
    queued: deque[Future] = deque()
    for item in items:
        queued.append(pool.submit(work, item))
        if len(queued) >= ahead:
            yield queued.popleft()
    yield from queued
