"""The records of an explain run: appended per batch, readable after a kill, resumed, merged to one Parquet file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from camexport.contract import GraphSpec, Preprocessing, Provenance
from camexport.errors import UserError
from camexport.runtime.records import (
    CAMS,
    PREDICTIONS,
    STAGING,
    Record,
    RecordLog,
    read_predictions,
    read_stream,
    to_batch,
)

INFO = GraphSpec(
    task="classification",
    layer="features",
    methods=("gradcampp",),
    labels=("cat", "dog", "fox"),
    preprocessing=Preprocessing(
        mean=(0.5,) * 3, std=(0.5,) * 3, image_size=(8, 8), resize_size=8, interpolation="bilinear"
    ),
    provenance=Provenance("toy", version="test"),
)


def _record(name: str, seed: int) -> Record:
    cam = np.random.default_rng(seed).random((2, 3)).astype(np.float32)
    top = [{"index": seed % 3, "label": INFO.labels[seed % 3], "probability": 0.5}]
    return Record(name, f"{name}_cam.jpg", None, seed % 3, INFO.labels[seed % 3], 0.5, top, cam)


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / CAMS).to_pylist()


def test_records_are_appended_per_batch_and_merged_once(tmp_path: Path) -> None:
    log = RecordLog(tmp_path, INFO)
    log.append([_record("a", 0), _record("b", 1)])
    assert [line["image"] for line in read_predictions(tmp_path / PREDICTIONS)] == ["a", "b"]  # flushed already
    (stream,) = (tmp_path / STAGING).iterdir()
    assert sum(batch.num_rows for batch in read_stream(stream)) == 2
    log.append([_record("c", 2)])
    assert log.finish() == tmp_path / CAMS
    rows = _rows(tmp_path)
    assert [r["image"] for r in rows] == ["a", "b", "c"] and not (tmp_path / STAGING).exists()
    np.testing.assert_array_equal(np.reshape(rows[2]["cam"], rows[2]["cam_shape"]), _record("c", 2).cam)
    assert rows[1]["top"] == _record("b", 1).top and rows[0]["overlay"] == "a_cam.jpg"
    stored = pq.ParquetFile(tmp_path / CAMS).schema_arrow.metadata
    assert GraphSpec.from_props({k.decode(): v.decode() for k, v in stored.items()}) == INFO


def test_an_earlier_run_is_kept_unless_resume_or_overwrite_is_asked(tmp_path: Path) -> None:
    first = RecordLog(tmp_path, INFO)
    first.append([_record("a", 0)])
    first.finish()
    with pytest.raises(UserError, match=r"an earlier run.s output; pass `resume` .* `overwrite`"):
        RecordLog(tmp_path, INFO)
    with pytest.raises(UserError, match="exclude each other"):
        RecordLog(tmp_path, INFO, resume=True, overwrite=True)
    RecordLog(tmp_path, INFO, overwrite=True).finish()  # recorded nothing: the earlier run stays whole
    assert [r["image"] for r in _rows(tmp_path)] == ["a"] and len(read_predictions(tmp_path / PREDICTIONS)) == 1
    replacing = RecordLog(tmp_path, INFO, overwrite=True)
    replacing.append([_record("z", 5)])
    assert [line["image"] for line in read_predictions(tmp_path / PREDICTIONS)] == ["z"]
    replacing.finish()
    assert [r["image"] for r in _rows(tmp_path)] == ["z"]


def test_resume_adds_to_a_finished_run_and_knows_what_is_done(tmp_path: Path) -> None:
    first = RecordLog(tmp_path, INFO)
    first.append([_record("a", 0), _record("b", 1)])
    first.finish()
    again = RecordLog(tmp_path, INFO, resume=True)
    assert again.done == {"a", "b"} and again.earlier_files == ["a_cam.jpg", "b_cam.jpg"]
    again.append([_record("c", 2)])
    again.finish()
    assert [r["image"] for r in _rows(tmp_path)] == ["a", "b", "c"]
    assert [line["image"] for line in read_predictions(tmp_path / PREDICTIONS)] == ["a", "b", "c"]


def test_what_a_kill_leaves_is_read_and_resumed_without_loss_or_repeats(tmp_path: Path) -> None:
    """A kill can cut the Arrow stream mid-batch, leave a stream batch whose JSON lines were never written,
    and leave half a JSON line: the JSON lines decide, each image ends up in cams.parquet once."""
    killed = RecordLog(tmp_path, INFO)
    killed.append([_record("a", 0), _record("b", 1)])
    killed._stream.write_batch(to_batch([_record("c", 2)], killed.schema))
    killed._sink.flush()  # "c" reached the stream; the kill came before its JSON line
    (stream,) = (tmp_path / STAGING).iterdir()
    whole = stream.stat().st_size
    killed._stream.write_batch(to_batch([_record("e", 4)], killed.schema))
    killed._sink.flush()
    with stream.open("r+b") as cut:  # the kill came halfway through writing "e"
        cut.truncate(whole + (stream.stat().st_size - whole) // 2)
    with (tmp_path / PREDICTIONS).open("a") as jsonl:
        jsonl.write('{"image": "d", "overl')  # and half a JSON line
    assert sum(b.num_rows for b in read_stream(stream)) == 3
    assert [line["image"] for line in read_predictions(tmp_path / PREDICTIONS)] == ["a", "b"]

    resumed = RecordLog(tmp_path, INFO, resume=True)
    assert resumed.done == {"a", "b"}
    resumed.append([_record("c", 2), _record("d", 3)])
    resumed.finish()
    lines = (tmp_path / PREDICTIONS).read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == ["a", "b", "c", "d"]  # the half line is gone
    assert [r["image"] for r in _rows(tmp_path)] == ["a", "b", "c", "d"]


def test_a_folder_of_another_graph_is_not_resumed(tmp_path: Path) -> None:
    first = RecordLog(tmp_path, INFO)
    first.append([_record("a", 0)])
    first.finish()
    other = dataclasses.replace(INFO, layer="other")
    with pytest.raises(UserError, match=r"holds a run of another graph \(toy at features\)"):
        RecordLog(tmp_path, other, resume=True)


def test_resume_sweeps_what_a_killed_run_was_writing_and_nothing_else(tmp_path: Path) -> None:
    """A SIGKILL mid-write leaves write_atomically's hidden staging folders (an overlay's, cams.parquet's) and an
    overwrite's fresh predictions file; resume and overwrite remove those, and leave anything else hidden alone."""
    import tempfile

    log = RecordLog(tmp_path, INFO)
    log.append([_record("a.png", 1)])
    log.finish()
    overlay = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".p024_cam.jpg."))
    (overlay / "p024_cam.jpg").write_bytes(b"half a jpeg")
    empty = Path(tempfile.mkdtemp(dir=tmp_path, prefix=".cams.parquet."))
    (tmp_path / ".predictions.jsonl.new").write_text("")
    kept = [tmp_path / ".git", tmp_path / ".notes.abcdefgh", tmp_path / ".config.12345678"]
    kept[0].mkdir()
    kept[1].mkdir()
    (kept[1] / "mine.txt").write_text("not a staged file")
    kept[2].write_text("a file, not a staging folder")
    RecordLog(tmp_path, INFO, resume=True)
    assert not overlay.exists() and not empty.exists() and not (tmp_path / ".predictions.jsonl.new").exists()
    assert all(path.exists() for path in kept)
