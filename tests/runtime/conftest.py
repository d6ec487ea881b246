"""The run side's tests: no torch anywhere on their path. They run the small camexport graphs committed in
tests/runtime/graphs/ (made by tests/builder/fixture_graphs.py; their known answers are tests/fixtures.py's), so
they pass on ``pip install .`` with pytest and no extras (serve and Ray tests skip without their extras)."""

from __future__ import annotations

from pathlib import Path

import pytest

GRAPHS = Path(__file__).resolve().parent / "graphs"


@pytest.fixture(scope="session")
def graphs() -> dict[str, Path]:
    """The committed graphs by name (tests/builder/fixture_graphs.py says how each is made): ``linear``,
    ``linear-methods``, ``linear-uint8``, ``gray``, ``gray-uint8``, ``bands``, ``pooled-dynamic``, ``segmenter``,
    ``probe-segmenter``, ``red``; ``contract1``, ``contract5``, ``short-labels`` and ``plain`` (not camexport's)."""
    return {path.stem: path for path in sorted(GRAPHS.glob("*.onnx"))}
