"""Explaining on Ray Data: a local cluster on 127.0.0.1 gives the single-process run's records and cams, accounts
for every input, and loses or repeats no image when an actor is killed mid-run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from camexport.cli import main
from camexport.runtime.distributed import connect, explain_dataset
from camexport.runtime.explain import explain
from camexport.runtime.options import ExplainStyle, Ray, RunOptions
from camexport.runtime.records import read_predictions
from camexport.runtime.samples import sample_photo

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    connect(None)  # a local Ray on this machine's 2 cores, 127.0.0.1, no dashboard
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def graph(graphs: dict[str, Path]) -> Path:
    return graphs["linear"]


def _photos(folder: Path, count: int, broken: bool = False) -> Path:
    folder.mkdir()
    names = ["chelsea", "coffee", "rocket", "astronaut"]
    for i in range(count):
        sample_photo(names[i % len(names)]).resize((96 + i, 80)).save(folder / f"p{i:03d}.png")
    if broken:
        (folder / "p001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.mark.slow
def test_ray_gives_the_single_process_records_and_cams(cluster, graph: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 9, broken=True)
    local, spread = tmp_path / "local", tmp_path / "ray"
    base = ["explain", str(graph), str(photos), "--batch-size", "1", "--quiet", "--format", "png"]
    assert main([*base, "--out", str(local)]) == 1  # the broken file fails in both
    assert main([*base, "--out", str(spread), "--ray", "--actors", "2", "--actor-cpus", "0.5"]) == 1
    mine, theirs = read_predictions(local / "predictions.jsonl"), read_predictions(spread / "predictions.jsonl")
    strip = [{k: v for k, v in line.items() if k != "overlay"} for line in mine]
    assert strip == [{k: v for k, v in line.items() if k != "overlay"} for line in theirs] and len(mine) == 8
    assert [Path(line["overlay"]).name for line in mine] == [Path(line["overlay"]).name for line in theirs]
    a, b = pq.read_table(local / "cams.parquet"), pq.read_table(spread / "cams.parquet")
    assert a.column("image").to_pylist() == b.column("image").to_pylist()
    cams_a, cams_b = np.array(a.column("cam").to_pylist()), np.array(b.column("cam").to_pylist())
    assert np.abs(cams_a - cams_b).max() <= 1e-6
    for line in mine:  # the overlays are the same pictures
        drawn = np.asarray(Image.open(line["overlay"]), dtype=np.int16)
        assert np.abs(drawn - np.asarray(Image.open(spread / Path(line["overlay"]).name), dtype=np.int16)).max() <= 1


@pytest.mark.slow
def test_ray_gives_a_detection_graphs_rows_per_detection(cluster, graphs: dict[str, Path], tmp_path: Path) -> None:
    """A detection graph on Ray: the same rows (one per detection, none for a photo without) and overlays as in
    one process (tests/runtime/test_detection.py checks those against the graph)."""
    from support import red_blobs as blobs

    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray((blobs(128) * 255).round().astype(np.uint8)).save(photos / "blobs.png")
    Image.new("RGB", (70, 90), (128, 128, 128)).save(photos / "gray.png")
    local, spread = tmp_path / "local", tmp_path / "ray"
    base = ["explain", str(graphs["red-detector"]), str(photos), "--quiet", "--format", "png"]
    assert main([*base, "--out", str(local)]) == 0
    assert main([*base, "--out", str(spread), "--ray", "--actors", "1", "--actor-cpus", "0.5"]) == 0
    mine, theirs = read_predictions(local / "predictions.jsonl"), read_predictions(spread / "predictions.jsonl")
    names = ("overlay", "image_overlay")
    assert [{k: v for k, v in line.items() if k not in names} for line in mine] == [
        {k: v for k, v in line.items() if k not in names} for line in theirs
    ]
    assert [line["detection"] for line in theirs] == [0, 1, None]
    a, b = pq.read_table(local / "cams.parquet"), pq.read_table(spread / "cams.parquet")
    assert a.column("detection").to_pylist() == b.column("detection").to_pylist()
    assert np.abs(np.array(a.column("cam").to_pylist()) - np.array(b.column("cam").to_pylist())).max() <= 1e-6
    for name in ("blobs_cam.png", "blobs_det0_cam.png", "blobs_det1_cam.png"):
        drawn = np.asarray(Image.open(local / name), dtype=np.int16)
        assert np.abs(drawn - np.asarray(Image.open(spread / name), dtype=np.int16)).max() <= 1


@pytest.mark.slow
def test_the_python_api_takes_a_ray_dataset_and_accounts_for_every_input(cluster, graph: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 6)
    images = ray.data.read_images(str(photos), include_paths=True, mode="RGB")
    rows = explain_dataset(graph, images, ExplainStyle(target=2, top_k=3), batch_size=2).take_all()
    assert sorted(Path(r["image"]).name for r in rows) == sorted(p.name for p in photos.iterdir())
    assert all(r["error"] is None and r["class_index"] == 2 and len(r["top"]) == 3 for r in rows)
    style = ExplainStyle(target=2, top_k=3, overlay_format=None)
    summary = explain(_session(graph), [photos], tmp_path / "o", style, RunOptions(log=lambda _: None))
    expected = {Path(r["image"]).name: r for r in pq.read_table(summary.columnar).to_pylist()}
    for row in rows:  # Ray decoded the files itself: the same pixels, so the same cams
        np.testing.assert_allclose(row["cam"], expected[Path(row["image"]).name]["cam"], rtol=1e-5, atol=1e-6)
    missing = explain_dataset(graph, [str(photos / "p000.png"), str(tmp_path / "gone.png")], batch_size=2).take_all()
    assert missing[0]["error"] is None and missing[1]["error"].endswith("gone.png: no such file")


def _session(graph: Path):
    from camexport.runtime.session import CamSession

    return CamSession(graph)


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and b"ray::MapWorker(MapBatches(Explainer))" in title:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_an_actor_killed_midway_is_restarted_and_no_image_is_lost_or_repeated(
    cluster, graph: Path, tmp_path: Path
) -> None:
    photos = sorted(_photos(tmp_path / "in", 48).iterdir())
    dataset = explain_dataset(
        graph, ray.data.from_items([{"path": str(p)} for p in photos], override_num_blocks=24), batch_size=2,
        options=Ray(actors=2, cpus_per_actor=0.5),
    )  # fmt: skip
    rows, killed = [], []
    for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += table.to_pylist()
        if not killed and len(rows) >= 4:
            (victim, *_) = _actor_pids()
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, len(rows)))
    (victim, rows_before), *_ = killed
    assert rows_before < len(photos), "the actor should be killed mid-run"
    assert sorted(r["image"] for r in rows) == sorted(map(str, photos))  # each image once
    assert all(r["error"] is None for r in rows)
