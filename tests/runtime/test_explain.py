"""camexport explain: folders in, overlays and JSON Lines out; bad files named one line each; no partial files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from matplotlib import colormaps
from PIL import Image
from support import start

from camexport.cli import main
from camexport.runtime.explain import explain
from camexport.runtime.options import ExplainStyle, RunOptions
from camexport.runtime.records import read_predictions
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import heatmap_from_cam

QUIET = lambda _line: None  # noqa: E731


@pytest.fixture(scope="module")
def graph(graphs: dict[str, Path]) -> Path:
    """The committed uint8 graph, built with random weights (so runs say so once)."""
    return graphs["linear-uint8"]


@pytest.fixture(scope="module")
def session(graph: Path) -> CamSession:
    return CamSession(graph)


def _mixed_folder(folder: Path) -> None:
    """Photos in every mode a user meets, plus files that are not images or are broken."""
    folder.mkdir()
    coffee = sample_photo("coffee")
    coffee.save(folder / "rgb.jpg")
    coffee.convert("L").save(folder / "grey.png")
    coffee.convert("RGBA").save(folder / "rgba.png")
    coffee.convert("P").save(folder / "palette.png")
    grey16 = (np.asarray(coffee.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "deep16.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "tiny.png")
    coffee.resize((3000, 2000)).save(folder / "large.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")


def test_a_mixed_folder(session: CamSession, tmp_path: Path) -> None:
    _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    summary = explain(
        session, [tmp_path / "in"], out, ExplainStyle(save_heatmap=True), RunOptions(batch_size=3, log=QUIET)
    )
    assert sorted(Path(f.split(":")[0]).name for f in summary.failures) == ["broken.png", "empty.jpg"]
    assert all("not a readable image" in f for f in summary.failures)
    assert [p.name for p in summary.skipped] == ["notes.txt"]
    records = {Path(r["image"]).name: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert sorted(records) == ["deep16.png", "grey.png", "large.jpg", "palette.png", "rgb.jpg", "rgba.png", "tiny.png"]
    assert summary.explained == 7 and summary.images_per_second > 0
    sizes = {"large.jpg": (3000, 2000), "tiny.png": (1, 1)}
    for name, record in records.items():
        width, height = sizes.get(name, (600, 400))
        heat = np.load(record["heatmap"])
        assert heat.shape == (height, width) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1
        assert Image.open(record["overlay"]).size == (width, height)
        assert len(record["top"]) == 4 and record["label"] == record["top"][0]["label"]
    # the photo as RGBA is explained as the RGB photo itself (alpha dropped)
    (direct,) = session.explain(sample_photo("coffee"))
    assert records["rgba.png"]["class_index"] == direct.class_index
    assert np.abs(np.load(records["rgba.png"]["heatmap"]) - direct.heatmap).max() <= 1e-6
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporaries left


def test_overlay_pixels_are_the_blend_of_photo_and_colormap(session: CamSession, tmp_path: Path) -> None:
    photo = sample_photo("chelsea")
    photo.save(tmp_path / "cat.png")
    style = ExplainStyle(alpha=0.3, colormap="viridis", save_heatmap=True, overlay_format="png")
    explain(session, [tmp_path / "cat.png"], tmp_path / "o", style)
    heat = np.load(tmp_path / "o" / "cat_heatmap.npy")
    written = np.asarray(Image.open(tmp_path / "o" / "cat_cam.png"), dtype=np.float64)
    original = np.asarray(photo, dtype=np.float64)
    expected = 0.7 * original + 0.3 * colormaps["viridis"](heat)[..., :3] * 255.0
    with pytest.warns(UserWarning, match="built with random weights.*labels mean nothing"):
        (result,) = session.explain(photo)
    expected = np.where(result.seen[..., None], expected, original)
    assert np.abs(written - np.round(expected)).max() <= 1.0
    # where the network did not look (left and right of the centre crop) the photo is untouched
    assert not result.seen[:, 0].any() and np.array_equal(written[:, 0], original[:, 0])


def test_progress_bar_summary_and_exit_codes(graph: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        sample_photo("rocket").resize((200 + i, 150)).save(folder / f"r{i}.png")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert main(["explain", str(graph), str(folder), "--out", str(tmp_path / "o"), "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    assert "0/3 [" in err and "2/3 [" in err  # tqdm's bar on stderr, cleared at the end
    assert err.count("was built with random weights") == 1 and "labels mean nothing" in err  # said once
    assert "explained 3 image(s) in" in out and "images/s), 0 failed" in out
    (folder / "bad.jpg").write_text("no")
    assert main(["explain", str(graph), str(folder), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "explained 3 image(s)" in out and "1 failed" in out and out.count("\n") == 1
    assert "bad.jpg: not a readable image" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--class", "unicorn"], "--class unicorn: not a label of this graph"),
        (["--class", "4"], "--class 4: out of range; the graph has classes 0..3"),
        (["--batch-size", "0"], "--batch-size 0: use 1 or more"),
        (["--alpha", "1.5"], "--alpha 1.5: use a value between 0 and 1"),
        (["--colormap", "nope"], "--colormap nope: not a matplotlib colormap"),
    ],
)
def test_bad_arguments_are_one_line(graph: Path, tmp_path: Path, capsys, argv, message) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a.png")
    out = tmp_path / "o"
    assert main(["explain", str(graph), str(tmp_path / "a.png"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_same_stem_in_two_folders_gets_two_overlays(session: CamSession, tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        sample_photo("coffee").save(tmp_path / folder / "photo.png")
    summary = explain(session, [tmp_path / "a", tmp_path / "b"], tmp_path / "o", options=RunOptions(log=QUIET))
    assert [p.name for p in summary.written] == ["photo_cam.jpg", "photo-2_cam.jpg"]


def test_a_graph_of_a_newer_contract_is_refused(graphs: dict[str, Path], tmp_path: Path, capsys) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    newer = graphs["contract5"]
    assert main(["explain", str(newer), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "follows camexport graph contract '5', this camexport reads contracts 1, 2, 3 and 4" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_stems_that_collide_get_distinct_overlays(session: CamSession, tmp_path: Path) -> None:
    """a.png, a.jpg and a-2.png in one folder: three overlays, three records, none overwritten."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "a.jpg", "a-2.png"):
        sample_photo("rocket").resize((64, 48)).save(folder / name)
    summary = explain(session, [folder], tmp_path / "o", options=RunOptions(progress=False, log=QUIET))
    records = [json.loads(line) for line in summary.predictions.read_text().splitlines()]
    overlays = [r["overlay"] for r in records]
    assert summary.explained == 3 and len(set(overlays)) == 3 and all(Path(o).is_file() for o in overlays)
    assert sorted(p.name for p in (tmp_path / "o").glob("*_cam.*")) == ["a-2_cam.jpg", "a-3_cam.jpg", "a_cam.jpg"]


def test_a_run_that_explains_nothing_keeps_earlier_output(session: CamSession, tmp_path: Path, capsys) -> None:
    graph = str(session.path)
    earlier = tmp_path / "explained"
    earlier.mkdir()
    (earlier / "predictions.jsonl").write_text('{"image": "earlier.png"}\n')
    assert main(["explain", graph, str(tmp_path / "missing.png"), "--out", str(earlier), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "missing.png: no such file" in err and "nothing was written" in err
    assert (earlier / "predictions.jsonl").read_text() == '{"image": "earlier.png"}\n'
    assert main(["explain", graph, str(tmp_path / "missing.png"), "--out", str(tmp_path / "new" / "out")]) == 1
    assert not (tmp_path / "new").exists()  # no empty folder left behind


def test_a_decompression_bomb_is_one_line(session: CamSession, tmp_path: Path, capsys) -> None:
    """12000 x 12000 (144 megapixels, over Pillow's 89-megapixel warning limit): refused before it is decoded."""
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")
    sample_photo("rocket").resize((64, 48)).save(tmp_path / "fine.png")
    assert main(["explain", str(session.path), str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "bomb.png: not a readable image (Image size (144000000 pixels) exceeds limit of 89478485 pixels" in err
    assert "Traceback" not in err and (tmp_path / "o" / "fine_cam.jpg").is_file()


def test_bombs_are_refused_whichever_reader_thread_opens_them(session: CamSession, tmp_path: Path) -> None:
    """Two reader threads open files at once; each bomb is still refused before it is decoded (the warnings
    filter that turns Pillow's warning into a refusal is process-wide, so openers take turns)."""
    bomb = tmp_path / "b0.png"
    Image.new("1", (12000, 12000)).save(bomb)
    for i in range(6):
        (tmp_path / f"b{i + 1}.png").write_bytes(bomb.read_bytes())
        sample_photo("rocket").resize((64, 48)).save(tmp_path / f"f{i}.png")
    summary = explain(session, [tmp_path], tmp_path / "o", options=RunOptions(batch_size=2, log=QUIET))
    assert summary.explained == 6 and len(summary.failures) == 7
    assert all("a decompression bomb?" in failure for failure in summary.failures)


def test_overlay_format_size_and_none(session: CamSession, tmp_path: Path, capsys) -> None:
    """--format webp, --overlay-max-side 300 (aspect kept, same colours as a full-size overlay scaled down),
    --no-overlay (records say so), and bad values as one line."""
    photo = sample_photo("chelsea")  # 451 x 300
    photo.save(tmp_path / "cat.png")
    graph = str(session.path)
    argv = ["explain", graph, str(tmp_path / "cat.png"), "--quiet", "--save-heatmap"]
    assert main([*argv, "--out", str(tmp_path / "w"), "--format", "webp", "--overlay-max-side", "300"]) == 0
    small = Image.open(tmp_path / "w" / "cat_cam.webp")
    assert small.format == "WEBP" and small.size == (300, 200)
    assert main([*argv, "--out", str(tmp_path / "full"), "--format", "png"]) == 0
    full = Image.open(tmp_path / "full" / "cat_cam.png").resize((300, 200), Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(full, np.float64) - np.asarray(small.convert("RGB"), np.float64)).mean() < 6
    assert main([*argv, "--out", str(tmp_path / "none"), "--no-overlay"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "none" / "predictions.jsonl").read_text().splitlines()]
    assert record["overlay"] is None and Path(record["heatmap"]).is_file()
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == [
        "cams.parquet",
        "cat_heatmap.npy",
        "predictions.jsonl",
    ]
    capsys.readouterr()
    for bad, message in ((["--format", "gif"], "--format gif: use one of jpg, png, webp"),
                         (["--overlay-max-side", "0"], "--overlay-max-side 0: use a positive number")):  # fmt: skip
        assert main([*argv, "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_cams_parquet_holds_the_graphs_cams_and_render_redraws_the_overlays(
    session: CamSession, tmp_path: Path
) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        sample_photo(name).save(photos / f"{name}.png")
    out = tmp_path / "o"
    explain(session, [photos], out, ExplainStyle(overlay_format="png"), RunOptions(batch_size=2, log=QUIET))
    rows, lines = pq.read_table(out / "cams.parquet").to_pylist(), read_predictions(out / "predictions.jsonl")
    assert [r["image"] for r in rows] == [line["image"] for line in lines] == sorted(map(str, photos.iterdir()))
    for row, line in zip(rows, lines, strict=True):
        assert {key: row[key] for key in line} == line
        outputs = session.run(session.prepare(row["image"])[1][None])  # the graph on this photo alone
        cam = np.reshape(row["cam"], row["cam_shape"])
        assert row["class_index"] == outputs["class_index"][0]
        np.testing.assert_allclose(cam, outputs["cam"][0], rtol=1e-5, atol=1e-6)  # batch of 2 against 1
        height, width = outputs["heatmap"].shape[1:]
        assert np.abs(heatmap_from_cam(cam, height, width) - outputs["heatmap"][0]).max() <= 1e-5
    assert main(["render", str(out), "--out", str(tmp_path / "r"), "--format", "png"]) == 0
    for line in lines:
        drawn = np.asarray(Image.open(line["overlay"]), dtype=np.int16)
        redrawn = np.asarray(Image.open(tmp_path / "r" / Path(line["overlay"]).name), dtype=np.int16)
        difference = np.abs(drawn - redrawn)  # float rounding moves a rare pixel across a colour step
        assert difference.max() <= 2 and (difference > 0).mean() < 1e-3


def test_render_refuses_what_it_cannot_draw(tmp_path: Path, capsys) -> None:
    assert main(["render", str(tmp_path)]) == 2
    assert "cams.parquet: no such file; pass the folder of a 'camexport explain' run" in capsys.readouterr().err
    (tmp_path / ".cams").mkdir()
    assert main(["render", str(tmp_path)]) == 2
    assert "did not finish; run 'camexport explain' again with --resume" in capsys.readouterr().err
    (tmp_path / "cams.parquet").write_text("not parquet")
    assert main(["render", str(tmp_path / "cams.parquet")]) == 2
    assert "not a cams.parquet written by 'camexport explain'" in capsys.readouterr().err


@pytest.mark.parametrize("budget", [1, 3 * 600 * 400])
def test_records_come_in_order_when_files_fail_and_photos_hold_the_pixel_budget(
    session: CamSession, tmp_path: Path, monkeypatch, budget: int
) -> None:
    """A pixel budget smaller than a batch's photos makes the pipeline run part batches (no deadlock); the
    records still follow the files' order, with the broken ones left out, and match a one-by-one run."""
    monkeypatch.setattr("camexport.runtime.local.PIXELS_IN_FLIGHT", budget)
    _mixed_folder(tmp_path / "in")
    summary = explain(session, [tmp_path / "in"], tmp_path / "o", options=RunOptions(batch_size=4, log=QUIET))
    names = [Path(line["image"]).name for line in read_predictions(tmp_path / "o" / "predictions.jsonl")]
    good = sorted(p.name for p in (tmp_path / "in").iterdir() if p.name not in ("broken.png", "empty.jpg", "notes.txt"))
    assert names == good and summary.explained == len(good) and len(summary.failures) == 2
    alone = explain(session, [tmp_path / "in"], tmp_path / "one", options=RunOptions(batch_size=1, log=QUIET))
    assert alone.explained == len(good)
    together, one = pq.read_table(tmp_path / "o" / "cams.parquet"), pq.read_table(tmp_path / "one" / "cams.parquet")
    assert together.column("class_index").to_pylist() == one.column("class_index").to_pylist()
    np.testing.assert_allclose(
        np.array(together.column("cam").to_pylist()), np.array(one.column("cam").to_pylist()), rtol=1e-5, atol=1e-6
    )


def _many_photos(folder: Path, count: int) -> None:
    folder.mkdir()
    photo = sample_photo("coffee").resize((160, 107))
    for i in range(count):
        photo.rotate(i % 360).save(folder / f"p{i:03d}.jpg")


def _start_and_stop(graph: Path, photos: Path, out: Path, signal_number: int) -> subprocess.CompletedProcess:
    """Starts ``camexport explain`` in its own process and sends it ``signal_number`` once it has recorded
    at least 3 images."""
    argv = [sys.executable, "-m", "camexport.cli", "explain", str(graph), str(photos), "--out", str(out)]
    argv += ["--batch-size", "2", "--quiet"]
    process = start(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "predictions.jsonl").exists() and len(read_predictions(out / "predictions.jsonl")) >= 3:
            break
        time.sleep(0.005)
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, process.returncode, "", err)


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_run_stopped_midway_keeps_what_it_finished_and_resumes(
    session: CamSession, tmp_path: Path, signal_number: int
) -> None:
    _many_photos(tmp_path / "in", 300)
    out = tmp_path / "o"
    stopped = _start_and_stop(session.path, tmp_path / "in", out, signal_number)
    kept = read_predictions(out / "predictions.jsonl")
    assert 3 <= len(kept) < 300, f"the run should be stopped midway: rc {stopped.returncode}, {stopped.stderr[-800:]}"
    for line in kept:  # every recorded image's overlay is whole
        Image.open(line["overlay"]).verify()
    if signal_number != signal.SIGKILL:  # Ctrl-C or SIGTERM: one line, exit 130 or 143, the records merged already
        stopped_by = "interrupted" if signal_number == signal.SIGINT else "terminated (SIGTERM)"
        assert stopped.returncode == 128 + signal_number and "Traceback" not in stopped.stderr, stopped.stderr
        assert stopped.stderr.count("camexport: error: ") == 1 and stopped.stderr.endswith("\n")
        assert f"{stopped_by} after {len(kept)} image(s)" in stopped.stderr and "--resume" in stopped.stderr
        assert pq.read_table(out / "cams.parquet").column("image").to_pylist() == [line["image"] for line in kept]
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left
    else:
        assert stopped.returncode == -signal.SIGKILL
    argv = ["explain", str(session.path), str(tmp_path / "in"), "--out", str(out), "--resume"]
    assert main([*argv, "--quiet"]) == 0
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # a killed run's temporaries swept
    images = [line["image"] for line in read_predictions(out / "predictions.jsonl")]
    assert images == sorted(map(str, (tmp_path / "in").iterdir()))  # each once, in order
    table = pq.read_table(out / "cams.parquet")
    assert table.column("image").to_pylist() == images and not (out / ".cams").exists()
    for row in table.slice(0, 2).to_pylist() + table.slice(298).to_pylist():  # before and after the stop
        outputs = session.run(session.prepare(row["image"])[1][None])
        np.testing.assert_allclose(np.reshape(row["cam"], row["cam_shape"]), outputs["cam"][0], rtol=1e-5, atol=1e-6)
    assert len(list(out.glob("*_cam.jpg"))) == 300
