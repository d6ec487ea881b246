"""The Node.js example reads the committed 1-channel and 4-band graphs (luma, band by band) as Python does, refuses
a three-band photo for a four-band graph, and decodes the decoding fixtures (tests/image_fixtures.py) to Python's
bytes."""

from __future__ import annotations

import json
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
        (want,) = session.explain([photos / photo])
        run_node(node_example, GRAPHS / f"{graph}.onnx", photos / photo, tmp_path / graph)
        heatmap = np.load(tmp_path / graph / f"{Path(photo).stem}_heatmap.npy")
        assert np.abs(heatmap - want.heatmap).max() < 1e-5, graph
    refused = subprocess.run(
        ["node", "explain.mjs", str(GRAPHS / "bands.onnx"), str(photos / "coffee.png"), "--out", str(tmp_path / "no")],
        cwd=node_example, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 1 and "graph takes 4 channels" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "no" / "coffee_cam.png").exists()


# A script file, not `node -e`: wasm-vips starts its worker threads from the main script's file.
DECODE = """
import fs from "node:fs";
import { decodeImage } from "EXAMPLES/web/decode.mjs";
import { nodeCodecs } from "EXAMPLES/node/codecs.mjs";
const [folder, out] = process.argv.slice(2);
const codecs = await nodeCodecs();
for (const name of fs.readdirSync(folder)) {
  const image = await decodeImage(new Uint8Array(fs.readFileSync(`${folder}/${name}`)), name, codecs);
  fs.writeFileSync(`${out}/${name}.rgba`, image.rgba);
  fs.writeFileSync(`${out}/${name}.json`, JSON.stringify([image.height, image.width]));
}
"""


@pytest.mark.slow
def test_node_decodes_every_fixture_to_pythons_bytes(node_example: Path, tmp_path: Path) -> None:
    from image_fixtures import write_fixtures

    from camexport.runtime.preprocess import open_image

    known = write_fixtures(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "decode.mjs").write_text(DECODE.replace("EXAMPLES", (ROOT / "examples").as_uri()))
    command = ["node", str(tmp_path / "decode.mjs"), str(tmp_path / "in"), str(tmp_path / "out")]
    done = subprocess.run(command, cwd=node_example, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    for name in sorted(known):
        height, width = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        rgba = np.fromfile(tmp_path / "out" / f"{name}.rgba", np.uint8).reshape(height, width, 4)
        assert np.array_equal(rgba[..., :3], np.asarray(open_image(tmp_path / "in" / name))), name


@pytest.mark.slow
def test_node_explains_a_rotated_jpeg_as_python_does(node_example: Path, tmp_path: Path) -> None:
    """End to end on a JPEG whose EXIF turns it upright (Node read PNG alone before): the same heatmap."""
    from image_fixtures import write_fixtures

    write_fixtures(tmp_path / "in")
    session = CamSession(GRAPHS / "linear.onnx")
    photo = tmp_path / "in" / "exif-6.jpg"
    (want,) = session.explain([photo])
    run_node(node_example, GRAPHS / "linear.onnx", photo, tmp_path / "rotated")
    assert np.abs(np.load(tmp_path / "rotated" / "exif-6_heatmap.npy") - want.heatmap).max() < 1e-5
