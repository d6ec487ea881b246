"""The run side's bad-input matrix: every kind of user mistake across explain, render, evaluate and samples ends in
one line naming the problem (``camexport: error: ...``), the right exit status (2 for a bad argument or input, 1 for
a run in which no image could be explained), no traceback, and no new file (the build side's matrix:
tests/builder/test_bad_build_inputs.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support import assert_one_line

from camexport.errors import UserError
from camexport.runtime.explain import explain
from camexport.runtime.records import Record, RecordLog
from camexport.runtime.render import render
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import overlay


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, graphs: dict[str, Path]) -> dict[str, Path]:
    """The committed graphs, photos and broken files, made once."""
    root = tmp_path_factory.mktemp("kit")
    copies = (
        ("graph", "linear"),
        ("foreign", "plain"),
        ("newer", "contract5"),
        ("short", "short-labels"),
        ("seg", "segmenter"),
    )
    for name, source in copies:
        shutil.copy(graphs[source], root / f"{name}.onnx")
    (root / "photos").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "photos" / "red.png")
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("1", (12000, 12000)).save(root / "bomb.png")
    (root / "afile").write_text("a file, not a folder")
    (root / "text.onnx").write_text("not a graph")
    (root / "earlier").mkdir()
    (root / "earlier" / "predictions.jsonl").write_text('{"image": "x.png"}\n')
    other = RecordLog(root / "empty", dataclasses.replace(CamSession(root / "graph.onnx").spec, layer="other"))
    other.append([Record("x.png", None, None, 0, "cat", 1.0, [], np.zeros((2, 2), np.float32))])
    other.finish()
    (root / "othergraph").mkdir()
    for name in ("predictions.jsonl", "cams.parquet"):  # a finished run of another graph
        (root / "empty" / name).rename(root / "othergraph" / name)
    (root / "notparquet").mkdir()
    (root / "notparquet" / "cams.parquet").write_text("not parquet")
    _damaged_runs(root)
    return {"root": root, "graph": root / "graph.onnx"}


def _damaged_runs(root: Path) -> None:
    """An explain run's folder (``run``) and copies damaged as a disk, a kill or a hand edit damages them."""
    from camexport.runtime.options import RunOptions

    explain(CamSession(root / "graph.onnx"), root / "photos", root / "run", options=RunOptions(log=lambda _: None))
    table = pq.read_table(root / "run" / "cams.parquet")
    shape = table.schema.get_field_index("cam_shape")
    kind = table.schema.field(shape).type
    damaged = {
        "noshape": table.drop_columns(["cam_shape"]),
        "mismatch": pa.concat_tables(
            [table, table.set_column(shape, "cam_shape", pa.array([[3, 3]] * len(table), kind))]
        ),
        "foreignparquet": pa.table({"image": ["x.png"], "score": [0.5]}),
    }
    for name, damage in damaged.items():
        (root / name).mkdir()
        pq.write_table(damage, root / name / "cams.parquet")
    for name in ("badjson", "truncated"):
        shutil.copytree(root / "run", root / name)
    with (root / "badjson" / "predictions.jsonl").open("a") as file:
        file.write("{not json\n")
    whole = (root / "truncated" / "cams.parquet").read_bytes()
    (root / "truncated" / "cams.parquet").write_bytes(whole[: len(whole) // 2])


# (id, argv with {root} and {graph} to fill in, exit status, a fragment of the one error line)
EXPLAIN = [
    ("graph-missing", "explain {root}/none.onnx {root}/photos", 2, "none.onnx: no such graph"),
    ("graph-text", "explain {root}/text.onnx {root}/photos", 2, "onnxruntime cannot load it"),
    ("graph-foreign", "explain {root}/foreign.onnx {root}/photos", 2, "not a graph built by camexport"),
    ("graph-newer", "explain {root}/newer.onnx {root}/photos", 2, "graph contract '5'"),
    ("graph-short-labels", "explain {root}/short.onnx {root}/photos", 2, "has 4 classes where the metadata says 1"),
    ("class-name", "explain {graph} {root}/photos --class cow", 2, "--class cow: not a label of this graph"),
    ("class-index", "explain {graph} {root}/photos --class 4", 2, "--class 4: out of range"),
    ("class-negative", "explain {graph} {root}/photos --class -2", 2, "--class -2: out of range"),
    ("top-k", "explain {graph} {root}/photos --top-k 0", 2, "--top-k 0: use 1 or more"),
    ("batch-size", "explain {graph} {root}/photos --batch-size 0", 2, "--batch-size 0: use 1 or more"),
    ("threads", "explain {graph} {root}/photos --threads -1", 2, "--threads -1: use 0"),
    ("alpha", "explain {graph} {root}/photos --alpha 1.5", 2, "--alpha 1.5: use a value between 0 and 1"),
    ("colormap", "explain {graph} {root}/photos --colormap nope", 2, "--colormap nope: not a matplotlib colormap"),
    ("format", "explain {graph} {root}/photos --format gif", 2, "--format gif: use one of jpg, png, webp"),
    ("max-side", "explain {graph} {root}/photos --overlay-max-side 0", 2, "--overlay-max-side 0: use a positive"),
    ("provider-unknown", "explain {graph} {root}/photos --provider tpu", 2, "--provider tpu: unknown"),
    ("out-under-a-file", "explain {graph} {root}/photos --out {root}/afile/o", 2, "cannot create it"),
    ("folder-empty", "explain {graph} {root}/empty", 2, "no images found"),
    ("folder-no-images", "explain {graph} {root}/notes", 2, "no images found"),
    ("image-missing", "explain {graph} {root}/none.png", 1, "none of the 1 image(s) could be explained"),
    ("image-broken", "explain {graph} {root}/broken.png", 1, "none of the 1 image(s) could be explained"),
    ("image-bomb", "explain {graph} {root}/bomb.png", 1, "none of the 1 image(s) could be explained"),
    ("no-images-given", "explain {graph}", 2, "the following arguments are required: images"),
    ("resume-and-overwrite", "explain {graph} {root}/photos --resume --overwrite", 2, "not allowed with argument"),
    ("earlier-run", "explain {graph} {root}/photos --out {root}/earlier", 2, "an earlier run's output; pass --resume"),
    ("resume-other-graph", "explain {graph} {root}/photos --out {root}/othergraph --resume", 2, "of another graph"),
    ("ray-actors", "explain {graph} {root}/photos --ray --actors 0", 2, "--actors 0: use 1 or more"),
    ("ray-actor-cpus", "explain {graph} {root}/photos --ray --actor-cpus 0", 2, "--actor-cpus 0.0: use a positive"),
    ("render-nothing", "render {root}/empty", 2, "cams.parquet: no such file"),
    ("render-not-parquet", "render {root}/notparquet", 2, "not a cams.parquet written by 'camexport explain'"),
    ("render-format", "render {root}/othergraph --format gif", 2, "--format gif: use one of jpg, png, webp"),
    ("render-alpha", "render {root}/othergraph --alpha -1", 2, "--alpha -1.0: use a value between 0 and 1"),
    ("render-no-cam-shape", "render {root}/noshape", 2, "damaged: no cam_shape column; run 'camexport explain'"),
    (
        "render-cam-shape-mismatch",
        "render {root}/mismatch",
        2,
        "damaged: row 1 ({root}/photos/red.png) holds 64 cam values for a cam_shape of [3, 3]",
    ),
    ("render-foreign-parquet", "render {root}/foreignparquet", 2, "a Parquet file without camexport's metadata"),
    ("render-truncated", "render {root}/truncated", 2, "(unreadable as Parquet: "),
    ("resume-bad-json", "explain {graph} {root}/photos --out {root}/badjson --resume", 2, "line 2 is not a record"),
    ("resume-truncated-parquet", "explain {graph} {root}/photos --out {root}/truncated --resume", 2, "damaged ("),
]
OTHERS = [
    ("evaluate-steps", "evaluate {graph} {root}/photos --steps 1", 2, "--steps 1: use 2 or more"),
    ("evaluate-metric", "evaluate {graph} {root}/photos --metrics iou", 2, "--metrics iou: 'iou' is not a metric"),
    ("evaluate-metric-empty", "evaluate {graph} {root}/photos --metrics ,", 2, "no metric named"),
    ("evaluate-out-folder", "evaluate {graph} {root}/photos --out {root}", 2, "is a directory"),
    ("evaluate-out-under-file", "evaluate {graph} {root}/photos --out {root}/afile/s.json", 2, "cannot write it"),
    ("evaluate-no-images", "evaluate {graph} {root}/empty", 2, "no images found"),
    ("evaluate-class", "evaluate {graph} {root}/photos --class cow", 2, "--class cow: not a label"),
    ("evaluate-graph", "evaluate {root}/foreign.onnx {root}/photos", 2, "not a graph built by camexport"),
    ("samples-into-a-file", "samples {root}/afile", 2, "cannot write the sample photos"),
    ("unknown-command", "frobnicate", 2, "invalid choice: 'frobnicate'"),
    ("explain-draft-seg", "explain {root}/seg.onnx {root}/photos --jpeg-draft", 2, "--jpeg-draft: for classifier"),
]
MATRIX = EXPLAIN + OTHERS


def test_the_matrix_holds_forty_kinds_or_more() -> None:
    assert len(MATRIX) >= 40 and len({case[0] for case in MATRIX}) == len(MATRIX)


@pytest.mark.parametrize(("argv", "code", "fragment"), [case[1:] for case in MATRIX], ids=[c[0] for c in MATRIX])
def test_a_bad_input_is_one_line(kit, tmp_path: Path, monkeypatch, capsys, argv: str, code: int, fragment: str):
    monkeypatch.chdir(tmp_path)  # default outputs (explained/) would land here
    before = {p: p.read_bytes() for p in kit["root"].rglob("*") if p.is_file()}
    assert_one_line(
        argv.replace("{root}/photos/red.png", str(kit["root"] / "photos" / "red.png")),
        code,
        fragment.format(**kit),
        kit,
        tmp_path,
        capsys,
    )
    assert {p: p.read_bytes() for p in kit["root"].rglob("*") if p.is_file()} == before  # nothing earlier lost


# The Python API's counterpart: (id, a call on the committed graphs, a fragment of the UserError's one line). Each
# argument is checked before any work (no graph run, no folder made).
API = [
    ("session-none", lambda k: CamSession(None), "path=None: pass the path of a graph"),
    ("session-int", lambda k: CamSession(123), "path=123: pass the path of a graph"),
    ("threads-str", lambda k: CamSession(k["graph"], threads="2"), "threads='2': use a whole number"),
    ("threads-float", lambda k: CamSession(k["graph"], threads=1.5), "threads=1.5: use a whole number"),
    ("spin-str", lambda k: CamSession(k["graph"], spin="no"), "spin='no': use True or False"),
    ("top-k-str", lambda k: CamSession(k["graph"]).explain(k["photo"], top_k="3"), "top_k='3': use a whole number"),
    ("top-k-none", lambda k: CamSession(k["graph"]).explain(k["photo"], top_k=None), "top_k=None: use a whole"),
    ("top-k-float", lambda k: CamSession(k["graph"]).explain(k["photo"], top_k=2.5), "top_k=2.5: use a whole"),
    ("batch-float", lambda k: CamSession(k["graph"]).explain(k["photo"], batch_size=2.5), "batch_size=2.5: use a"),
    ("batch-str", lambda k: CamSession(k["graph"]).explain(k["photo"], batch_size="8"), "batch_size='8': use a"),
    ("target-float", lambda k: CamSession(k["graph"]).explain(k["photo"], target=1.5), "target=1.5: pass a class"),
    ("region-str", lambda k: CamSession(k["seg"]).run(np.zeros((1, 3, 16, 16), np.float32), region="all"), "region="),
    ("alpha-str", lambda k: overlay(k["image"], np.zeros((30, 40)), alpha="0.5"), "alpha='0.5': use a number"),
    ("overlay-no-image", lambda k: overlay(None, np.zeros((30, 40))), "image=NoneType: pass a PIL image"),
    ("overlay-size", lambda k: overlay(k["image"], np.zeros((3, 4))), "heatmap is 4x3, image 40x30; pass the"),
    ("explain-out-none", lambda k: explain(CamSession(k["graph"]), k["photo"], None), "out=None: pass the path"),
    ("explain-sources-int", lambda k: explain(CamSession(k["graph"]), 3, k["root"] / "o"), "sources=3: pass an"),
    ("render-none", lambda k: render(None), "source=None: pass the path of an explain output folder"),
    ("render-out-int", lambda k: render(k["root"] / "run", out_dir=3), "out_dir=3: pass the path"),
    ("heatmap-at-str", lambda k: CamSession(k["graph"]).explain(k["photo"])[0].heatmap_at("3", 4), "width='3'"),
]


@pytest.mark.parametrize(("call", "fragment"), [case[1:] for case in API], ids=[case[0] for case in API])
def test_a_bad_api_argument_is_one_user_error(kit, tmp_path: Path, monkeypatch, call, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    fill = {**kit, "seg": kit["root"] / "seg.onnx", "photo": kit["root"] / "photos" / "red.png"}
    fill["image"] = Image.open(fill["photo"])
    before = sorted(kit["root"].rglob("*"))
    with pytest.raises(UserError) as caught:
        call(fill)
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    assert sorted(kit["root"].rglob("*")) == before and list(tmp_path.iterdir()) == []


def test_a_string_source_is_one_path_not_its_characters(kit, tmp_path: Path) -> None:
    from camexport.runtime.options import RunOptions

    summary = explain(
        CamSession(kit["graph"]), str(kit["root"] / "photos" / "red.png"), tmp_path / "o", options=RunOptions(log=print)
    )
    assert summary.explained == 1 and summary.failures == []
