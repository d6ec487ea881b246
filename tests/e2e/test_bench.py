"""The benchmark harness runs end to end on a tiny model and writes the documented JSON schema.

Timings themselves are not asserted (speed is proven by committed benchmark results, not by tests).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.harness.bench import bench_model
from benchmarks.harness.contenders import NAMES
from benchmarks.harness.timing import BenchConfig, peak_memory_mb
from benchmarks.speed.__main__ import main
from camexport.errors import UserError

TINY = """
from torch import nn


def factory(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
    )
"""

ROW_KEYS = {"contender", "batch", "median_ms", "iqr_ms", "images_per_s", "peak_mb", "runs", "skipped"}
TOP_KEYS = {
    "model", "layer", "method", "image_size", "threads", "provider", "runs", "warmup", "batch_sizes", "graph",
    "graph_mb", "build_s", "machine", "timings", "flops", "targets",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.py").write_text(TINY)
    return f"{folder / 'tiny.py'}:factory"


@pytest.mark.slow
def test_harness_writes_the_documented_schema(tiny: str, tmp_path: Path) -> None:
    config = BenchConfig(batch_sizes=(1, 2), runs=3, warmup=1, threads=1, memory=False)
    result, json_path, md_path = bench_model(tiny, "2", ("gradcampp",), "random", config, tmp_path, log=lambda _: None)
    stored = json.loads(json_path.read_text())
    assert stored == json.loads(json.dumps(result)) and set(stored) == TOP_KEYS
    assert stored["layer"] == "2" and stored["threads"] == 1 and stored["batch_sizes"] == [1, 2]
    rows, ideal = stored["timings"], stored["flops"]["ratio"]
    assert [(r["contender"], r["batch"]) for r in rows] == [(c, b) for b in (1, 2) for c in NAMES]
    for row in rows:
        assert set(row) == ROW_KEYS and row["skipped"] == "" and row["runs"] == 3
        assert row["median_ms"] > 0 and row["iqr_ms"] >= 0 and row["images_per_s"] > 0 and row["peak_mb"] is None
        assert math.isclose(row["images_per_s"], row["batch"] / (row["median_ms"] / 1e3), rel_tol=0.01)
    assert {t["target"] for t in stored["targets"]} == {
        "(f) ÷ (e) ≤ 1.05",
        "(c) ÷ (f) ≥ 6",
        "(b) ÷ (f) ≥ 2",
        "(h) ÷ (g) ≤ 1.05",
        f"(f) ÷ (e) ≤ {round(1.05 * ideal, 3):g} (1.05 × FLOP-ideal {ideal:.3f})",  # layer "2": an inner layer
    }
    assert all(isinstance(t["met"], bool) and t["ratio"] > 0 for t in stored["targets"])
    assert (
        stored["flops"]["forward_macs"] > stored["flops"]["gradient_macs"] > 0 and "FLOP-ideal" in md_path.read_text()
    )
    table = md_path.read_text()
    assert "| OpenVINO, camexport graph (heatmap) | 2 |" in table and "| target | batch | measured | met |" in table


@pytest.mark.slow
def test_peak_memory_runs_in_its_own_process(tiny: str, tmp_path: Path) -> None:
    config = BenchConfig(batch_sizes=(2,), runs=3, warmup=0, threads=1, contenders=("a_eager",))
    result, _, _ = bench_model(tiny, None, ("gradcam",), "random", config, tmp_path, log=lambda _: None)
    (row,) = result["timings"]
    assert row["peak_mb"] is not None and row["peak_mb"] >= 0
    assert math.isnan(peak_memory_mb({"model": "no-such-model"}))


def test_bad_settings_are_user_errors(capsys) -> None:
    with pytest.raises(UserError, match="runs=1"):
        BenchConfig(runs=1).check()
    with pytest.raises(UserError, match="contenders='z_magic': unknown"):
        BenchConfig(contenders=("z_magic",)).check()
    assert main(["resnet18", "--batch-sizes", "0"]) == 2
    assert "--batch-sizes [0]" in capsys.readouterr().err
