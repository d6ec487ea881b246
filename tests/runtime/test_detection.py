"""Detection graphs on the run side, on the committed red-blob detector (tests/builder/fixture_graphs.py:red_detector:
a torchvision SSD whose ``red`` score at an anchor is the redness of the anchor's own neighbourhood): each detection's
map on its own instance, explain's rows and overlays per detection, render, resume and serve."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support import red_blobs as blobs

from camexport.cli import main
from camexport.runtime.session import CamSession


def _share_in(heatmap: np.ndarray, box: np.ndarray) -> float:
    """The share of a heatmap's sum inside a box (x1, y1, x2, y2): the energy-based pointing game's measure."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    return float(heatmap[y1:y2, x1:x2].sum() / heatmap.sum())


@pytest.fixture(scope="module")
def detector(graphs: dict[str, Path]) -> CamSession:
    return CamSession(graphs["red-detector"])


def test_each_detection_is_explained_on_its_own_instance(detector: CamSession) -> None:
    """Two red blobs, two detections, one per blob. HiResCAM's element-wise map (ODAM's) puts each detection's
    heatmap on its own blob (all of its energy in its own box, none in the other's); Grad-CAM++'s channel weights
    are global, so both detections get the same map, over both blobs: the known answer of either formula."""
    out = detector.run(blobs().transpose(2, 0, 1)[None].astype(np.float32))
    assert out["labels"][0].tolist() == [1, 1, -1, -1]
    centres = [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in out["boxes"][0, :2]]
    assert sorted(centres) == [(18.0, 18.0), (46.0, 46.0)]  # the 4-pixel cells nearest each blob's centre
    boxes = out["boxes"][0, :2]
    for d in range(2):
        own = out["heatmap_hirescam"][0, d]
        assert _share_in(own, boxes[d]) > 0.99 and _share_in(own, boxes[1 - d]) < 0.01
    assert np.array_equal(out["heatmap_gradcampp"][0, 0], out["heatmap_gradcampp"][0, 1])
    assert not out["boxes"][0, 2:].any() and not out["heatmap_hirescam"][0, 2:].any()


def test_a_class_filter_and_an_empty_photo(detector: CamSession) -> None:
    """``target_class`` 0 (background, never detected): every slot empty; a gray photo: no detection, zero maps."""
    image = blobs().transpose(2, 0, 1)[None].astype(np.float32)
    assert (detector.run(image, np.array([0]))["labels"] == -1).all()
    gray = np.full((1, 3, 64, 64), 0.5, np.float32)
    out = detector.run(gray)
    assert (out["labels"] == -1).all() and not out["heatmap"].any() and not out["gradients"].any()


def _photos(folder: Path) -> Path:
    folder.mkdir()
    Image.fromarray((blobs(128) * 255).round().astype(np.uint8)).save(folder / "blobs.png")
    Image.new("RGB", (80, 80), (128, 128, 128)).save(folder / "gray.png")
    return folder


def test_explain_writes_a_row_and_an_overlay_per_detection(detector: CamSession, tmp_path: Path, capsys) -> None:
    """predictions.jsonl and cams.parquet hold a row per detection (boxes on the 128-pixel photo: twice the graph's),
    and a row without one for a photo with none; each detection has its own overlay beside the photo's."""
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(["explain", str(detector.path), str(photos), "--out", str(out)]) == 0
    assert "blobs.png: red 0.98, red 0.98 -> " in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    blob_rows = [line for line in lines if line["image"].endswith("blobs.png")]
    assert [row["detection"] for row in blob_rows] == [0, 1]
    assert sorted(tuple(row["box"]) for row in blob_rows) == [(20.0, 20.0, 52.0, 52.0), (76.0, 76.0, 108.0, 108.0)]
    assert {row["label"] for row in blob_rows} == {"red"} and all(row["score"] > 0.9 for row in blob_rows)
    (gray,) = [line for line in lines if line["image"].endswith("gray.png")]
    assert gray["detection"] is None and gray["overlay"] is None and gray["image_overlay"].endswith("gray_cam.jpg")
    for row in blob_rows:
        assert Path(row["overlay"]).name == f"blobs_det{row['detection']}_cam.jpg" and Path(row["overlay"]).is_file()
    table = pq.read_table(out / "cams.parquet").to_pylist()
    assert [(r["image"].rsplit("/", 1)[-1], r["detection"]) for r in table] == [
        ("blobs.png", 0),
        ("blobs.png", 1),
        ("gray.png", None),
    ]
    assert table[0]["cam_shape"] == [16, 16] and table[2]["class_index"] == -1


def test_render_redraws_the_detections_overlays(detector: CamSession, tmp_path: Path) -> None:
    """``render`` draws from cams.parquet the same overlays as ``explain`` (the maps rebuilt from the cams)."""
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(["explain", str(detector.path), str(photos), "--out", str(out), "--format", "png"]) == 0
    assert main(["render", str(out), "--out", str(tmp_path / "again"), "--format", "png"]) == 0
    for name in ("blobs_cam.png", "blobs_det0_cam.png", "blobs_det1_cam.png", "gray_cam.png"):
        first = np.asarray(Image.open(out / name), dtype=np.int16)
        again = np.asarray(Image.open(tmp_path / "again" / name), dtype=np.int16)
        assert np.abs(first - again).max() <= 2, name
    # The overlays differ: each detection's shows its own box and map.
    one, two = (np.asarray(Image.open(out / f"blobs_det{d}_cam.png"), dtype=np.int16) for d in (0, 1))
    assert np.abs(one - two).max() > 100


def test_resume_keeps_each_detection_once(detector: CamSession, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(["explain", str(detector.path), str(photos / "blobs.png"), "--out", str(out)]) == 0
    assert main(["explain", str(detector.path), str(photos), "--out", str(out), "--resume"]) == 0
    rows = [(r["image"].rsplit("/", 1)[-1], r["detection"]) for r in pq.read_table(out / "cams.parquet").to_pylist()]
    assert sorted(rows, key=str) == sorted([("blobs.png", 0), ("blobs.png", 1), ("gray.png", None)], key=str)


def test_serve_answers_with_every_detection(detector: CamSession) -> None:
    pytest.importorskip("fastapi", reason="camexport serve needs camexport[serve]")
    from starlette.testclient import TestClient

    from camexport.runtime.options import ServeOptions
    from camexport.runtime.serve import create_app

    buffer = io.BytesIO()
    Image.fromarray((blobs(128) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    with TestClient(create_app(detector, ServeOptions(max_batch=2, max_wait_ms=5))) as client:
        answer = client.post("/explain?heatmap=cam", content=buffer.getvalue(), headers={"content-type": "image/png"})
    found = answer.json()["detections"]
    assert [f["slot"] for f in found] == [0, 1] and {f["label"] for f in found} == {"red"}
    assert sorted(tuple(f["box"]) for f in found) == [(20.0, 20.0, 52.0, 52.0), (76.0, 76.0, 108.0, 108.0)]
    assert all(f["cam"]["shape"] == [16, 16] for f in found)


def test_evaluate_scores_where_each_detections_map_lies(detector: CamSession, tmp_path: Path, capsys) -> None:
    """The energy-based pointing game and the several-instances test, with their known answers on two blobs:
    HiResCAM's maps all in their own boxes and apart; Grad-CAM++'s the same map for both, so never apart."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((blobs(128) * 255).round().astype(np.uint8)).save(photos / "blobs.png")
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(detector.path), str(photos), "--out", str(out)]) == 0
    assert "1 image(s), 2 detection(s), 1 pair(s) of one class in one image" in capsys.readouterr().out
    methods = {m["method"]: m for m in json.loads(out.read_text())["methods"]}
    assert methods["hirescam"]["energy_in_box"] > 99.0 and methods["hirescam"]["apart"] == 100.0
    assert methods["gradcampp"]["apart"] == 0.0 and methods["gradcampp"]["energy_in_box"] < 60.0


def test_explain_with_a_class_keeps_that_classs_detections(detector: CamSession, tmp_path: Path) -> None:
    """``--class red``: both blobs; ``--class 0`` (background, never found): one row, no detection."""
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(["explain", str(detector.path), str(photos / "blobs.png"), "--out", str(out), "--class", "red"]) == 0
    assert [line["detection"] for line in map(json.loads, (out / "predictions.jsonl").open())] == [0, 1]
    again = tmp_path / "again"
    assert main(["explain", str(detector.path), str(photos / "blobs.png"), "--out", str(again), "--class", "0"]) == 0
    assert [line["detection"] for line in map(json.loads, (again / "predictions.jsonl").open())] == [None]
