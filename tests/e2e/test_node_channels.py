"""The Node.js example reads the committed 1-channel and 4-band graphs (luma, band by band) as Python does, and
refuses a three-band photo for a four-band graph."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import ROOT, channel_photos, run_node

from camexport.runtime.session import CamSession

GRAPHS = ROOT / "tests" / "runtime" / "graphs"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return channel_photos(tmp_path_factory.mktemp("channels"))


@pytest.mark.slow
def test_node_example_reads_gray_and_four_band_graphs(photos: Path, node_example: Path, tmp_path: Path) -> None:
    for graph, photo in [("gray", "coffee.png"), ("gray-uint8", "gray.png"), ("bands", "rgbn.png")]:
        session = CamSession(GRAPHS / f"{graph}.onnx")
        want = session.run(session.prepare(photos / photo)[1][None])["heatmap"][0]
        run_node(node_example, GRAPHS / f"{graph}.onnx", photos / photo, tmp_path / graph)
        assert np.abs(np.load(tmp_path / f"{graph}.npy") - want).max() < 1e-5, graph
    refused = subprocess.run(
        ["node", "explain.mjs", str(GRAPHS / "bands.onnx"), str(photos / "coffee.png"), str(tmp_path / "no")],
        cwd=node_example, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and "graph takes 4 channels" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.npy").exists()
