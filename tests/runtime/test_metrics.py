"""Faithfulness metrics on a case with a known answer: a map on exactly the object vs one on the background."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from support import start

from camexport.errors import UserError
from camexport.runtime.metrics import (
    deletion_insertion,
    drop_and_increase,
    evaluate_images,
    evaluate_maps,
    instance_spread,
)
from camexport.runtime.options import MAP_METRICS, Scoring, parse_metrics
from camexport.runtime.session import CamSession


@pytest.fixture(scope="module")
def detector(graphs: dict[str, Path]) -> CamSession:
    """The committed red detector (tests/fixtures.py): class 1's logit is 8 · mean(ReLU(R − 0.5)), so only
    saturated red counts and a blurred object does not."""
    return CamSession(graphs["red"])


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red 12x12 square on black; the map on exactly the square, and the map on everything else."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[4:16, 10:22, 0] = 255
    on_object = np.zeros((32, 32), np.float32)
    on_object[4:16, 10:22] = 1.0
    return pixels, on_object, 1.0 - on_object


def test_average_drop_and_increase(detector: CamSession) -> None:
    pixels, on_object, on_background = _scene()
    images = np.stack([pixels, pixels])
    drops, increased = drop_and_increase(detector, images, np.stack([on_object, on_background]), np.array([1, 1]))
    y = 1 / (1 + np.exp(-8 * 0.5 * 144 / 1024))  # p(red) on the image: the square is 144 of 1024 pixels
    assert drops[0] == pytest.approx(0.0, abs=1e-6)  # the object map keeps everything the model uses
    assert drops[1] == pytest.approx((y - 0.5) / y, rel=1e-4)  # the background map removes it: p = 0.5
    assert not increased.any()


def test_deletion_and_insertion_rank_the_maps(detector: CamSession) -> None:
    pixels, on_object, on_background = _scene()
    object_deletion, object_insertion = deletion_insertion(detector, pixels, on_object, 1, steps=16)
    background_deletion, background_insertion = deletion_insertion(detector, pixels, on_background, 1, steps=16)
    assert object_deletion < background_deletion - 0.05  # deleting the object first drops p at once
    assert object_insertion > background_insertion + 0.05  # revealing it first raises p at once
    assert 0.5 <= object_deletion and background_insertion >= 0.5 - 1e-6  # p never falls below 0.5 here


def test_win_and_the_summary(detector: CamSession) -> None:
    pixels, on_object, on_background = _scene()
    images = np.stack([pixels] * 3)
    maps = {"object": np.stack([on_object] * 3), "background": np.stack([on_background] * 3)}
    results = {
        r.method: r for r in evaluate_maps(detector, images, maps, np.array([1, 1, 1]), Scoring(MAP_METRICS, steps=8))
    }
    assert results["object"].win == 100.0 and results["background"].win == 0.0
    assert results["object"].average_drop < 1e-4 < results["background"].average_drop
    assert len(results["object"].deletions) == 3 and results["object"].deletions[0] < results["background"].deletions[0]
    assert results["object"].insertions[0] > results["background"].insertions[0]
    with pytest.raises(UserError, match="steps=1"):
        evaluate_maps(detector, images, maps, np.array([1, 1, 1]), Scoring(MAP_METRICS, steps=1))


def test_evaluate_images_uses_the_graphs_own_heatmaps(detector: CamSession, tmp_path: Path) -> None:
    from PIL import Image

    pixels, _, _ = _scene()
    Image.fromarray(pixels).save(tmp_path / "red.png")
    (result,) = evaluate_images(detector, [tmp_path / "red.png"], scoring=Scoring(steps=4))
    assert result.method == "gradcampp" and result.average_drop < 1.0  # its map sits on the square


def test_cli_evaluate_prints_a_table_and_writes_json(detector: CamSession, tmp_path: Path, capsys) -> None:
    import json

    from PIL import Image

    from camexport.cli import main

    pixels, _, _ = _scene()
    Image.fromarray(pixels).save(tmp_path / "red.png")
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(detector.path), str(tmp_path), "--steps", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Avg Drop %" in printed and "gradcampp" in printed
    stored = json.loads(out.read_text())
    assert stored["steps"] == 4 and stored["methods"][0]["method"] == "gradcampp"
    assert main(["evaluate", str(detector.path), str(tmp_path), "--steps", "1"]) == 2


def test_instance_spread_on_hand_made_maps() -> None:
    boxes = [(0, 0, 4, 4), (6, 0, 8, 2), (0, 6, 2, 8)]  # 16, 4 and 4 pixels of an 8x8 map
    even = np.zeros((8, 8))
    even[0:2, 0:2] = 1.0  # 4 pixels of the first box, the whole second box, half of the third, one outside
    even[0:2, 6:8] = 1.0
    even[6:8, 0:1] = 2.0
    even[7, 7] = 4.0
    spread = instance_spread(even, boxes)
    assert spread.shares == pytest.approx([4 / 16, 4 / 16, 4 / 16])
    assert spread.inside == pytest.approx(12 / 16)
    assert spread.peaks == pytest.approx([0.25, 0.25, 0.5])
    assert spread.found == [False, False, True]
    assert spread.evenness == pytest.approx(1.0)

    one = np.zeros((8, 8))
    one[1, 1] = 3.0
    single = instance_spread(one, boxes)
    assert single.shares == [1.0, 0.0, 0.0] and single.evenness == pytest.approx(0.0)
    assert single.found == [True, False, False]
    halves = one.copy()
    halves[0, 7] = 3.0
    assert instance_spread(halves, boxes).evenness == pytest.approx(np.log(2) / np.log(3))

    blank = instance_spread(np.zeros((8, 8)), boxes)  # an all-zero map: zeros, not NaN
    assert blank.shares == [0.0, 0.0, 0.0] and blank.inside == 0.0
    assert blank.found == [False] * 3 and blank.evenness == 0.0


@pytest.mark.parametrize(
    ("heatmap", "boxes", "message"),
    [
        (np.ones((4, 4)), [], "at least one box"),
        (np.ones((4, 4)), [(0, 0, 5, 2)], "outside the 4x4"),
        (np.ones((4, 4)), [(2, 0, 2, 2)], "empty"),
        (-np.ones((4, 4)), [(0, 0, 2, 2)], "non-negative"),
        (np.full((4, 4), np.nan), [(0, 0, 2, 2)], "finite"),
    ],
)
def test_instance_spread_refuses_bad_boxes_and_maps(heatmap: np.ndarray, boxes: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        instance_spread(heatmap, boxes)


def test_a_subset_of_metrics_skips_the_others(detector: CamSession) -> None:
    pixels, on_object, on_background = _scene()
    maps = {"object": on_object[None], "background": on_background[None]}
    (obj, background) = evaluate_maps(detector, pixels[None], maps, np.array([1]), Scoring(("deletion",), steps=4))
    assert obj.average_drop is None and obj.win is None and obj.insertion_auc is None and obj.drops is None
    assert obj.deletion_auc < background.deletion_auc
    everything = evaluate_maps(detector, pixels[None], maps, np.array([1]), Scoring(MAP_METRICS, steps=4))
    assert everything[0].deletion_auc == pytest.approx(obj.deletion_auc)  # the same curve either way
    assert parse_metrics("insertion, average_drop,insertion") == ("average_drop", "insertion")
    for bad in ("", "dropp", "average_drop,auc"):
        with pytest.raises(UserError, match="choose from average_drop, increase_in_confidence, win"):
            parse_metrics(bad)


def test_cli_evaluate_metrics_option(detector: CamSession, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from camexport.cli import main

    pixels, _, _ = _scene()
    Image.fromarray(pixels).save(tmp_path / "red.png")
    assert main(["evaluate", str(detector.path), str(tmp_path), "--metrics", "average_drop"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("gradcampp"))
    assert row.split()[2:] == ["-"] * 5  # only Average Drop was computed
    assert main(["evaluate", str(detector.path), str(tmp_path), "--metrics", "iou"]) == 2
    assert "'iou' is not a metric" in capsys.readouterr().err


def test_methods_with_the_same_map_share_their_wins(detector: CamSession) -> None:
    pixels, on_object, on_background = _scene()
    # Float32 noise on the same map flips the uint8 rounding of the masked image on some pixels.
    noisy = np.clip(on_object * 0.5 + np.random.default_rng(0).uniform(-5e-6, 5e-6, on_object.shape), 0, 1)
    maps = {
        "half": (on_object * 0.5)[None],
        "half_noisy": noisy[None].astype(np.float32),
        "background": on_background[None],
    }
    results = {
        r.method: r for r in evaluate_maps(detector, pixels[None], maps, np.array([1]), Scoring(MAP_METRICS, steps=2))
    }
    assert results["half"].win == results["half_noisy"].win == 50.0 and results["background"].win == 0.0


def test_many_steps_give_the_same_curve_in_chunks(detector: CamSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames go through the graph FRAMES_AT_ONCE at a time (flat memory for any --steps): same AUC as all at once."""
    from camexport.runtime import metrics

    pixels, on_object, _ = _scene()
    chunked = deletion_insertion(detector, pixels, on_object, 1, steps=40)
    monkeypatch.setattr(metrics, "FRAMES_AT_ONCE", 10_000)
    assert deletion_insertion(detector, pixels, on_object, 1, steps=40) == pytest.approx(chunked, abs=1e-12)


def test_evaluate_out_is_checked_before_the_work(detector: CamSession, tmp_path: Path, capsys) -> None:
    import json

    from PIL import Image

    from camexport.cli import main

    Image.fromarray(_scene()[0]).save(tmp_path / "red.png")
    assert main(["evaluate", str(detector.path), str(tmp_path / "red.png"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path}: is a directory" in err
    deep = tmp_path / "new" / "deeper" / "scores.json"
    argv = ["evaluate", str(detector.path), str(tmp_path / "red.png"), "--metrics", "average_drop", "--out", str(deep)]
    assert main(argv) == 0 and json.loads(deep.read_text())["metrics"] == ["average_drop"]
    (tmp_path / "afile").write_text("x")
    argv[-1] = str(tmp_path / "afile" / "scores.json")
    assert main(argv) == 2 and "cannot write it" in capsys.readouterr().err


def test_adcc_is_the_harmonic_mean_of_its_three_parts(detector: CamSession) -> None:
    """ADCC (Poppi et al. 2021) recomputed here from the graph's own outputs with scipy's Pearson correlation."""
    from scipy.stats import pearsonr

    pixels, on_object, _ = _scene()
    soft = np.clip(on_object + 0.25 * np.linspace(0, 1, 32)[None, :], 0, 1).astype(np.float32)
    batch, maps, classes = np.stack([pixels, pixels]), np.stack([on_object, soft]), np.array([1, 1])
    (result,) = evaluate_maps(detector, batch, {"gradcampp": maps}, classes, Scoring(("adcc",)))
    drops, _ = drop_and_increase(detector, batch, maps, classes)
    explained = (batch.astype(np.float64) * maps[..., None]).round().clip(0, 255).astype(np.uint8) / 255.0
    again = detector.run(explained.transpose(0, 3, 1, 2).astype(np.float32), classes)["heatmap"]
    want = []
    for m, a, d in zip(maps, again, drops, strict=True):
        coherency = (1 + pearsonr(m.ravel(), a.ravel())[0]) / 2
        complexity = np.abs(m).mean()
        want.append(3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - d)))
    np.testing.assert_allclose(result.adccs, want, rtol=1e-5)
    assert result.adcc == pytest.approx(100 * np.mean(want), rel=1e-6)
    assert result.average_drop is None  # asked for ADCC only


def test_adcc_needs_the_graph_that_made_the_maps(detector: CamSession) -> None:
    pixels, on_object, _ = _scene()
    with pytest.raises(UserError, match="ADCC needs the graph that made the maps"):
        evaluate_maps(detector, pixels[None], {"someone": on_object[None]}, np.array([1]), Scoring(("adcc",)))


def test_pointing_game_hits_within_the_tolerance() -> None:
    from camexport.runtime.metrics import pointing_game

    heatmap = np.zeros((40, 60))
    heatmap[10, 30] = 1.0
    assert pointing_game(heatmap, [(0, 0, 20, 20)])  # 30 < 20 + 15
    assert not pointing_game(heatmap, [(0, 0, 20, 20)], tolerance=0)
    assert pointing_game(heatmap, [(50, 30, 60, 40), (25, 5, 35, 15)], tolerance=0)
    with pytest.raises(UserError, match="at least one box"):
        pointing_game(heatmap, [])


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_an_evaluation_stopped_midway_says_so_and_writes_no_scores(
    graphs: dict[str, Path], tmp_path: Path, stop: str
) -> None:
    """SIGTERM as Ctrl-C: one line, exit 143 (130), and no scores file (half an evaluation is no score)."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    (tmp_path / "in").mkdir()
    first = tmp_path / "in" / "p000.jpg"
    Image.effect_noise((2400, 1800), 60).convert("RGB").save(first)  # tens of milliseconds to decode, each
    for i in range(1, 400):
        shutil.copyfile(first, tmp_path / "in" / f"p{i:03d}.jpg")
    out = tmp_path / "scores.json"
    argv = [sys.executable, "-m", "camexport.cli", "evaluate", str(graphs["linear"]), str(tmp_path / "in")]
    process = start([*argv, "--steps", "50", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _reads_from(process.pid, tmp_path / "in") and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)  # until the evaluation is under way: it has a photo open (400 such photos take seconds)
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(getattr(signal, stop))
    _, err = process.communicate(timeout=60)
    expected = (143, "camexport: terminated (SIGTERM)\n") if stop == "SIGTERM" else (130, "camexport: interrupted\n")
    assert (process.returncode, err.splitlines(keepends=True)[-1]) == expected and "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in"]


def _reads_from(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` has a file of ``folder`` open (Linux's /proc)."""
    try:
        return any(os.readlink(fd).startswith(str(folder)) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # a descriptor closed while we looked
        return False
