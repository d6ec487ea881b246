"""Small helpers shared by several modules: quieting third-party code, error lines, atomic writes."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path


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


def write_atomically(path: Path, writer: Callable[[Path], None]) -> None:
    """Calls ``writer`` on a hidden temporary file beside ``path``, then renames it into place.

    The temporary keeps ``path``'s suffix (``np.save`` would otherwise append ``.npy``). On any failure it
    is removed, so nothing partial is ever left at ``path``.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        writer(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
