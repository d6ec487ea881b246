"""Small helpers shared by the modules that call into noisy third-party code."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator


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
