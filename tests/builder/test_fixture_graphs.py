"""The run side's committed fixture graphs are what the builder makes today: the same metadata (but the
camexport version), the same inputs and outputs, the same outputs on fresh inputs. Where this fails, the contract or
what a graph computes has changed: regenerate them (tests/builder/fixture_graphs.py) and commit them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixture_graphs import GRAPHS, make


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props if p.key != "camexport.version"}


def _outputs(path: Path) -> dict[str, np.ndarray]:
    """The graph's outputs on seeded inputs of batch 2 (−1 for the class and the region)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [2 if not isinstance(d, int) else d for d in value.shape]
        if value.type == "tensor(uint8)":
            feeds[value.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif value.type == "tensor(int64)":
            feeds[value.name] = np.full(shape, -1, np.int64)
        elif value.name == "region":
            feeds[value.name] = np.full(shape, -1.0, np.float32)
        else:
            feeds[value.name] = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.slow
def test_the_committed_fixture_graphs_are_what_the_builder_makes(tmp_path: Path) -> None:
    fresh = make(tmp_path)
    assert sorted(p.name for p in fresh) == sorted(p.name for p in GRAPHS.glob("*.onnx"))
    for path in fresh:
        committed = GRAPHS / path.name
        if committed.read_bytes() == path.read_bytes():
            continue
        mine, theirs = onnx.load(str(path)), onnx.load(str(committed))
        assert _props(mine) == _props(theirs), path.name
        assert [str(v) for v in mine.graph.input] == [str(v) for v in theirs.graph.input], path.name
        assert [str(v) for v in mine.graph.output] == [str(v) for v in theirs.graph.output], path.name
        got, want = _outputs(path), _outputs(committed)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=f"{path.name}: {name}")
