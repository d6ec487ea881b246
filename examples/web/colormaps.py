"""Writes colormaps.mjs: matplotlib colormaps as camexport's 256-entry palettes, for the page and the Node CLI.

Each palette is :func:`camexport.runtime.visualize.palette` (entry ``q`` is the colour a heatmap value ``h`` with
``floor(256·h) = q`` gets), so an overlay drawn in JavaScript has the colours ``camexport explain`` gives.
tests/e2e/test_web.py fails when the file differs from what this script writes::

    python examples/web/colormaps.py
"""

from __future__ import annotations

from pathlib import Path

from camexport.runtime.visualize import palette

NAMES = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "gray")
FILE = Path(__file__).resolve().parent / "colormaps.mjs"


def module() -> str:
    """The JavaScript module: ``COLORMAPS[name]``, a Uint8Array of 256 RGB triples."""
    lines = [
        "// matplotlib colormaps as camexport's 256-entry RGB palettes (camexport.runtime.visualize.palette).",
        "// Written by colormaps.py; do not edit.",
        "const hex = (text) => Uint8Array.from(text.match(/../g), (pair) => parseInt(pair, 16));",
        "export const COLORMAPS = {",
    ]
    lines += [f'  {name}: hex("{palette(name).hex()}"),' for name in NAMES]
    return "\n".join([*lines, "};", ""])


if __name__ == "__main__":
    FILE.write_text(module(), encoding="utf-8")
