"""Explaining photos with a built graph: class resolution, per-file failures, written outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import built_graph
from PIL import Image

from camexport.cli import main
from camexport.errors import UserError
from camexport.explain import explain_paths, resolve_class
from camexport.session import CamSession


@pytest.fixture(scope="module")
def session(graph_dir: Path) -> CamSession:
    return CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))


@pytest.mark.slow
def test_resolve_class(session: CamSession) -> None:
    assert resolve_class(session, None) == -1
    assert resolve_class(session, "281") == 281
    assert resolve_class(session, "Tabby") == 281
    with pytest.raises(UserError, match="did you mean 'tabby'"):
        resolve_class(session, "tabbby")
    with pytest.raises(UserError, match="out of range"):
        resolve_class(session, 1000)


@pytest.mark.slow
def test_good_files_survive_bad_ones(session: CamSession, tmp_path: Path) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    Image.new("RGB", (300, 200), (90, 140, 30)).save(photos / "green.png")
    Image.new("L", (50, 80), 128).save(photos / "grey.jpg")
    (photos / "broken.png").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    summary = explain_paths(session, [photos], out, target="tabby", save_heatmap=True, log=lambda _: None)
    assert len(summary.failures) == 1 and "broken.png" in summary.failures[0]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["green.png", "grey.jpg"]
    assert all(r["class_index"] == 281 and r["label"] == "tabby" for r in records)
    heat = np.load(out / "green_heatmap.npy")
    assert heat.shape == (200, 300) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1
    assert Image.open(out / "green_cam.png").size == (300, 200)
    assert not any(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.slow
def test_cli_explain_exit_codes(graph_dir: Path, tmp_path: Path, capsys) -> None:
    graph = built_graph(graph_dir, "resnet18", "layer4", "gradcampp")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a.png")
    assert main(["explain", str(graph), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 0
    assert main(["explain", str(graph), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o2")]) == 1
    assert main(["explain", str(graph), str(tmp_path / "a.png"), "--class", "unicorn"]) == 2
    err = capsys.readouterr().err
    assert "--class 'unicorn': not a label" in err and "Traceback" not in err
