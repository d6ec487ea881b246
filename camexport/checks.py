"""Argument checks that the public functions run first, each raising :class:`~camexport.errors.UserError` with one
line that names the argument, what it is, and what to pass instead (``top_k='3': use a whole number (1 or more)``).

A wrong type is caught here rather than deep inside numpy, Pillow or onnxruntime, where it would surface as a bare
``TypeError`` after work has been done (a graph run, a folder made).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from camexport.errors import UserError


def _hint(hint: str) -> str:
    return hint[4:] if hint.startswith("use ") else hint


def whole(name: str, value: object, least: int, hint: str) -> None:
    """Raises UserError unless ``value`` is an int (not a bool) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name}={value!r}: use a whole number ({_hint(hint)})")
    if value < least:
        raise UserError(f"{name}={value}: {hint}")


def number(name: str, value: object, low: float, high: float | None, hint: str, shown: str = "") -> None:
    """Raises UserError unless ``value`` is a real number in [low, high] (``shown``: its format in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"{name}={value!r}: use a number ({_hint(hint)})")
    if not low <= value <= (high if high is not None else float("inf")):
        raise UserError(f"{name}={value:{shown}}: {hint}")


def flag(name: str, value: object) -> None:
    """Raises UserError unless ``value`` is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise UserError(f"{name}={value!r}: use True or False")


def path(name: str, value: object, what: str) -> Path:
    """``value`` as a Path; UserError unless it is a str or os.PathLike (``what``: what the path should name)."""
    if isinstance(value, str) and value:
        return Path(value)
    if isinstance(value, Path):
        return value
    if hasattr(value, "__fspath__"):
        return Path(value)  # type: ignore[arg-type]
    raise UserError(f"{name}={value!r}: pass the path of {what} (a str or pathlib.Path)")


def array(name: str, value: object, dtype: type, hint: str) -> np.ndarray:
    """``value`` as an array of ``dtype``; UserError where numpy cannot make one (strings, ragged lists)."""
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        raise UserError(f"{name}={shown}: {hint}") from None


def colormap(name: str, value: object) -> None:
    """Raises UserError unless ``value`` names a matplotlib colormap (matplotlib is imported on the first check)."""
    from matplotlib import colormaps

    if not isinstance(value, str) or value not in colormaps:
        raise UserError(f"{name}={value!r}: not a matplotlib colormap; try jet, viridis, inferno or turbo")


def style(alpha: object, colormap_name: object) -> None:
    """Raises UserError for an overlay's alpha outside [0, 1] or a colormap matplotlib does not know."""
    number("alpha", alpha, 0.0, 1.0, "use a value between 0 and 1")
    colormap("colormap", colormap_name)
