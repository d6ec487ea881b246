"""The records of an explain run: appended as batches finish, resumable, one Parquet file at the end.

An output folder holds:

- ``predictions.jsonl``: one JSON line per explained image (path, overlay, explained class, top-k), appended
  and flushed after every batch, so a killed run keeps every finished image and the file stays readable.
- ``cams.parquet``: the same records plus each image's raw low-resolution ``cam`` (float32, row-major, with
  its ``cam_shape``), one row per image, with the graph's ``camexport.*`` metadata in the file's schema
  metadata, so that ``camexport render`` draws overlays later without the graph. Written when a run ends.
- ``.cams/run-NNNN.arrows`` while a run goes: its batches as an Arrow IPC stream, flushed per batch (a
  stream cut short by a kill is read up to its last whole batch); merged into ``cams.parquet`` at the end.

A run's batch goes to its Arrow stream first, then to ``predictions.jsonl``, so every JSON line has its
cam. When the two disagree after a kill, the JSON lines decide: stream rows without a line are dropped at
the merge, and their images are explained again by ``--resume``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from camexport._util import first_line, sweep_staged, write_atomically
from camexport.contract import GraphSpec
from camexport.errors import UserError

if TYPE_CHECKING:
    from camexport.runtime.session import Explanation

PREDICTIONS = "predictions.jsonl"
CAMS = "cams.parquet"
STAGING = ".cams"
ROWS_PER_GROUP = 4096  # rows per Parquet row group: large enough to compress, small enough to stream

TOP = pa.list_(pa.struct([("index", pa.int32()), ("label", pa.string()), ("probability", pa.float64())]))
SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("overlay", pa.string()),
        ("heatmap", pa.string()),
        ("class_index", pa.int32()),
        ("label", pa.string()),
        ("probability", pa.float64()),
        ("top", TOP),
        ("cam_shape", pa.list_(pa.int32())),
        ("cam", pa.list_(pa.float32())),
    ]
)
JSON_FIELDS = ("image", "overlay", "class_index", "label", "probability", "top")
# A detection graph's rows: one per detection (``detection`` its slot, ``box`` on the photo, ``probability`` its
# score, ``overlay`` its own map's overlay and ``image_overlay`` every detection's), or one row with ``detection``
# null for an image without any.
DETECTION_SCHEMA = pa.schema(
    [
        *SCHEMA,
        ("detection", pa.int32()),
        ("box", pa.list_(pa.float64())),
        ("image_overlay", pa.string()),
    ]
)
DETECTION_JSON_FIELDS = ("image", "detection", "box", "class_index", "label", "score", "overlay", "image_overlay")


@dataclass
class Record:
    """One explained image: what both ``predictions.jsonl`` and ``cams.parquet`` hold of it."""

    image: str
    overlay: str | None
    heatmap: str | None
    class_index: int
    label: str
    probability: float
    top: list[dict]
    cam: np.ndarray
    detection: int | None = None
    box: list[float] | None = None
    image_overlay: str | None = None

    @classmethod
    def of(cls, image: str, overlay: Path | str | None, heatmap: Path | str | None, result: Explanation) -> Record:
        """The record of one explanation (probabilities rounded to 6 decimals, as the JSON lines show them)."""
        return cls(
            image=image,
            overlay=None if overlay is None else str(overlay),
            heatmap=None if heatmap is None else str(heatmap),
            class_index=result.class_index,
            label=result.label,
            probability=round(result.probability, 6),
            top=[{"index": i, "label": name, "probability": round(p, 6)} for i, name, p in result.top],
            cam=result.cam,
        )

    @classmethod
    def detections_of(cls, image: str, files: Files, result: Explanation) -> list[Record]:
        """A detection graph's records of one image: one per detection, or one with ``detection`` None."""
        shared = dict(image=image, heatmap=_text(files.heatmap), top=[], image_overlay=_text(files.overlay))
        if not result.detections:
            empty = np.zeros_like(result.cam)
            return [cls(overlay=None, class_index=-1, label="", probability=0.0, cam=empty, **shared)]
        return [
            cls(
                overlay=_text(overlay),
                class_index=found.class_index,
                label=found.label,
                probability=round(found.score, 6),
                cam=found.cam,
                detection=found.slot,
                box=list(found.box),
                **shared,
            )
            for found, overlay in zip(result.detections, files.per_detection, strict=True)
        ]

    @classmethod
    def from_row(cls, row: dict) -> Record:
        """A row of :data:`SCHEMA` or :data:`DETECTION_SCHEMA` (as ``pyarrow`` gives it) → a record."""
        cam = np.asarray(row["cam"], dtype=np.float32).reshape(row["cam_shape"])
        names = {f.name for f in fields(cls)} - {"cam"}
        return cls(**{name: value for name, value in row.items() if name in names}, cam=cam)

    def as_row(self, schema: pa.Schema = SCHEMA) -> dict:
        """The ``schema`` row: the record's fields it has, with the cam flattened and its shape beside it."""
        mine = {f.name for f in fields(self)} - {"cam"}
        row = {name: getattr(self, name) for name in schema.names if name in mine}
        return {**row, "cam_shape": list(self.cam.shape), "cam": np.asarray(self.cam, dtype=np.float32).ravel()}

    def as_json(self) -> dict:
        """The JSON line's fields (``heatmap`` only where a heatmap file was saved); a detection's own fields."""
        if self.image_overlay is not None or self.detection is not None:
            values = {**vars(self), "score": self.probability}
            line = {name: values[name] for name in DETECTION_JSON_FIELDS}
        else:
            line = {name: getattr(self, name) for name in JSON_FIELDS}
        if self.heatmap is not None:
            line["heatmap"] = self.heatmap
        return line


@dataclass(frozen=True)
class Files:
    """The files written for one image: its overlay and heatmap file (None where not asked for); a detection
    graph's overlay shows every detection, and each detection has its own (in the detections' order)."""

    overlay: Path | None = None
    heatmap: Path | None = None
    per_detection: tuple[Path | None, ...] = ()


def records_for(image: str, files: Files, result: Explanation) -> list[Record]:
    """One image's records: one, or a detection graph's one per detection (:meth:`Record.detections_of`)."""
    if result.detections is None:
        return [Record.of(image, files.overlay, files.heatmap, result)]
    return Record.detections_of(image, files, result)


def _text(path: Path | str | None) -> str | None:
    return None if path is None else str(path)


def to_batch(records: Sequence[Record], schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    """Records → one Arrow record batch of ``schema``."""
    return pa.RecordBatch.from_pylist([record.as_row(schema) for record in records], schema=schema)


def schema_for(spec: GraphSpec) -> pa.Schema:
    """:data:`SCHEMA` (:data:`DETECTION_SCHEMA` for a detection graph) carrying the graph's metadata (what
    ``render`` needs to place a cam on its photo)."""
    return (SCHEMA if spec.detection is None else DETECTION_SCHEMA).with_metadata(spec.to_props())


def read_predictions(path: Path) -> list[dict]:
    """The JSON lines of a ``predictions.jsonl``; a last line cut short by a kill is left out.

    Raises:
        UserError: a whole line that is not a JSON record with an ``image`` (the file was edited or damaged).
    """
    lines = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                raise UserError(
                    f"{path}: line {number} is not a record of 'camexport explain' (the file is damaged); delete "
                    "that line to resume without it, or pass `overwrite` to explain every image again"
                )
            lines.append(record)
    return lines


def read_stream(path: Path) -> Iterator[pa.RecordBatch]:
    """The whole batches of an Arrow IPC stream, up to where a killed writer stopped."""
    try:
        with pa.OSFile(str(path)) as file, pa.ipc.open_stream(file) as reader:
            yield from reader
    except (pa.ArrowInvalid, OSError):  # cut short: the batches before the cut have been yielded
        return


class RecordLog:
    """Where one run's records go: an Arrow stream and ``predictions.jsonl``, both appended per batch.

    Args:
        out: the output folder (it exists).
        spec: the graph's spec, kept as metadata in the columnar files.
        resume: continue the folder's earlier run: its images count as done (see :attr:`done`).
        overwrite: replace the folder's earlier run, when this run's first batch is recorded (a run that
            explains nothing leaves it as it was).

    Raises:
        UserError: an earlier run in ``out`` without ``resume`` or ``overwrite``, both given, or an
            earlier run of another graph to resume.
    """

    def __init__(self, out: Path, spec: GraphSpec, resume: bool = False, overwrite: bool = False) -> None:
        if resume and overwrite:
            raise UserError("`resume` and `overwrite` exclude each other: pass one of them")
        self.out, self.schema = out, schema_for(spec)
        self.predictions, self.cams, self.staging = out / PREDICTIONS, out / CAMS, out / STAGING
        earlier = [p for p in (self.predictions, self.cams, self.staging) if p.exists()]
        if earlier and not (resume or overwrite):
            raise UserError(
                f"{earlier[0]}: an earlier run's output; pass `resume` to finish that run, `overwrite` to "
                "replace it, or choose another `out_dir`"
            )
        if resume or overwrite:  # what a killed run was writing when it died
            sweep_staged(out)
            (out / f".{PREDICTIONS}.new").unlink(missing_ok=True)
        self.done: set[str] = set()
        self.earlier_files: list[str] = []
        if resume:
            self._check_same_graph(spec)
            self._read_earlier()
        self._replace = overwrite and bool(earlier)
        self._stream: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink: pa.NativeFile | None = None
        self._jsonl = None

    def _check_same_graph(self, spec: GraphSpec) -> None:
        try:
            stored = next(iter(self._sources()), None)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(
                f"{self.cams}: damaged ({first_line(exc)}); pass `overwrite` to explain every image again"
            ) from None
        if stored is None:
            return
        props = stored.schema.metadata or {}
        theirs = {k.decode(): v.decode() for k, v in props.items()}
        mine = spec.to_props()
        keys = [k for k in mine if k.rsplit(".", 1)[-1] in ("model", "layer", "method", "labels", "image_size")]
        if any(theirs.get(k) != mine[k] for k in keys):
            raise UserError(
                f"{self.out}: holds a run of another graph ({theirs.get('camexport.model')} at "
                f"{theirs.get('camexport.layer')}); resume it with that graph, or choose another `out_dir`"
            )

    def _read_earlier(self) -> None:
        if not self.predictions.exists():
            return
        _cut_torn_line(self.predictions)
        for line in read_predictions(self.predictions):
            self.done.add(line["image"])
            self.earlier_files += [line[k] for k in ("overlay", "heatmap", "image_overlay") if line.get(k)]

    def append(self, records: Sequence[Record]) -> None:
        """Writes one batch's records: to the Arrow stream (flushed), then to ``predictions.jsonl`` (flushed)."""
        if not records:
            return
        if self._stream is None:
            self._open()
        assert self._stream is not None and self._sink is not None and self._jsonl is not None
        self._stream.write_batch(to_batch(records, self.schema))
        self._sink.flush()
        self._jsonl.write("".join(json.dumps(r.as_json()) + "\n" for r in records))
        self._jsonl.flush()
        self.done.update(r.image for r in records)

    def _open(self) -> None:
        if self._replace:  # the earlier run goes now that this one has its first batch
            self.cams.unlink(missing_ok=True)
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(exist_ok=True)
        runs = sorted(self.staging.glob("run-*.arrows"))
        number = int(runs[-1].stem.split("-")[1]) + 1 if runs else 1
        self._sink = pa.OSFile(str(self.staging / f"run-{number:04d}.arrows"), "wb")
        self._stream = pa.ipc.new_stream(self._sink, self.schema)
        if self._replace:  # a fresh file moved over the old one: never an empty predictions.jsonl
            fresh = self.out / f".{PREDICTIONS}.new"
            self._jsonl = fresh.open("w", encoding="utf-8")
            os.replace(fresh, self.predictions)
        else:
            self._jsonl = self.predictions.open("a", encoding="utf-8")

    def finish(self) -> Path | None:
        """Closes the run and merges every stream (and an earlier ``cams.parquet``) into ``cams.parquet``.

        Returns:
            ``cams.parquet``, or None when no run has recorded anything in the folder.
        """
        if self._stream is not None:
            self._stream.close()
            self._sink.close()
            self._jsonl.close()
            self._stream = None
        if not self.staging.exists():
            return self.cams if self.cams.exists() else None
        if not self.done:  # this run recorded nothing (an overwrite whose images all failed): the streams left
            self._read_earlier()  # by the folder's earlier run keep what that run's JSON lines hold
        write_parquet(self.cams, self.schema, self._sources(), keep=self.done)
        shutil.rmtree(self.staging)
        return self.cams

    def _sources(self) -> Iterator[pa.RecordBatch]:
        if self.cams.exists():
            yield from pq.ParquetFile(self.cams).iter_batches(batch_size=ROWS_PER_GROUP)
        if self.staging.exists():
            for stream in sorted(self.staging.glob("run-*.arrows")):
                yield from read_stream(stream)


def write_parquet(path: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch], keep: set[str]) -> None:
    """Writes the rows whose ``image`` is in ``keep``, each once (an image's, or an image's detection's: the first
    row of each), in row groups of :data:`ROWS_PER_GROUP`, atomically (a hidden file, then a
    rename): memory stays at one row group."""

    def write(target: Path) -> None:
        seen: set[tuple] = set()
        pending: list[pa.RecordBatch] = []
        with pq.ParquetWriter(target, schema) as writer:
            for batch in batches:
                wanted = []
                images = batch.column("image").to_pylist()
                slots = batch.column("detection").to_pylist() if "detection" in batch.schema.names else images
                for image, key in zip(images, zip(images, slots, strict=True), strict=True):
                    wanted.append(image in keep and key not in seen)
                    seen.add(key)
                pending.append(batch.filter(pa.array(wanted, pa.bool_())).cast(schema))
                if sum(b.num_rows for b in pending) >= ROWS_PER_GROUP:
                    writer.write_table(pa.Table.from_batches(pending, schema))
                    pending = []
            writer.write_table(pa.Table.from_batches(pending, schema))

    write_atomically(path, write)


def _cut_torn_line(path: Path) -> None:
    """Drops a last line that a killed run left without its newline (half a record), so appends start clean."""
    with path.open("rb+") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(max(0, size - 1))
        if file.read(1) == b"\n":
            return
        end = size
        while end > 0:
            step = min(65536, end)
            file.seek(end - step)
            chunk = file.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                file.truncate(end - step + cut + 1)
                return
            end -= step
        file.truncate(0)
