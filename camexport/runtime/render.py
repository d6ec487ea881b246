"""``camexport render``: overlays drawn later, from the raw cams an explain run stored in ``cams.parquet``.

The graph is not needed: the file's schema metadata carries the graph's preprocessing, and each row its
``cam``; the heatmap is rebuilt exactly as the graph builds it (:func:`camexport.runtime.visualize.
heatmap_from_cam`) and placed on the photo as ``explain`` places it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from camexport import checks
from camexport._util import first_line, in_order
from camexport.contract import PREFIX, GraphSpec
from camexport.errors import CamExportError, UserError
from camexport.runtime.options import ExplainStyle
from camexport.runtime.outputs import failure_line, output_folder, unique_stem, write_overlay
from camexport.runtime.preprocess import open_image
from camexport.runtime.records import CAMS, STAGING
from camexport.runtime.visualize import heatmap_from_cam


@dataclass
class RenderSummary:
    """What :func:`render` did: the overlays written, and one line per row that failed."""

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    image: str
    cam: np.ndarray
    picture: Path
    detections: tuple[_Detection, ...] = ()


@dataclass(frozen=True)
class _Detection:
    """A detection as ``cams.parquet`` holds it, with the overlay it is drawn to (what :func:`write_overlay` reads
    of a detection: its box, label and score)."""

    slot: int
    box: tuple[float, ...]
    label: str
    score: float
    cam: np.ndarray
    picture: Path


def render(source: str | Path, out_dir: str | Path | None = None, style: ExplainStyle | None = None) -> RenderSummary:
    """Draws an overlay for every row of ``cams.parquet``: ``<stem>_cam.<format>`` in ``out_dir``.

    Args:
        source: an explain output folder, or its ``cams.parquet``.
        out_dir: where the overlays go (default: the folder of ``cams.parquet``).
        style: alpha, colormap, format and ``overlay_max_side`` (its class and top-k are not used).

    Raises:
        UserError: no ``cams.parquet`` there (or an unfinished run), a file that is not one, a bad style.
    """
    source = checks.path("source", source, "an explain output folder or its cams.parquet")
    out_dir = None if out_dir is None else checks.path("out_dir", out_dir, "the folder for the overlays")
    style = style or ExplainStyle()
    if not isinstance(style, ExplainStyle):
        raise UserError(f"style={type(style).__name__}: pass an ExplainStyle")
    style.check()
    cams = _cams_file(source)
    parquet, spec = open_cams(cams)
    out = output_folder(out_dir if out_dir is not None else cams.parent)
    summary = RenderSummary()
    height, width = spec.preprocessing.image_size

    def draw(row: _Row) -> list[Path] | str:
        try:
            photo = open_image(row.image)
            if spec.detection is not None:
                return _draw_detections(row, photo, spec, style)
            write_overlay(row.picture, photo, heatmap_from_cam(row.cam, height, width), spec.preprocessing, style)
            return [row.picture]
        except (CamExportError, OSError, ValueError) as exc:
            return failure_line(row.image, exc)

    rows = _rows(parquet, out, style) if spec.detection is None else _detection_rows(parquet, out, style)
    with ThreadPoolExecutor(2, "camexport-render") as pool:
        for future in in_order(pool, draw, rows, ahead=8):
            done = future.result()
            if isinstance(done, list):
                summary.written += done
            else:
                summary.failures.append(done)
                print(f"error: {done}", file=sys.stderr)
    return summary


def _draw_detections(row: _Row, photo, spec: GraphSpec, style: ExplainStyle) -> list[Path]:
    """A detection graph's image: each detection's overlay (its map, its box), then every detection's over the
    largest of their maps (as ``explain`` draws them)."""
    height, width = spec.preprocessing.image_size
    maps = [heatmap_from_cam(found.cam, height, width) for found in row.detections]
    for found, heatmap in zip(row.detections, maps, strict=True):
        write_overlay(found.picture, photo, heatmap, spec.preprocessing, style, boxes=(found,))
    every = np.max(maps, axis=0) if maps else np.zeros((height, width), np.float32)
    write_overlay(row.picture, photo, every, spec.preprocessing, style, boxes=row.detections)
    return [*(found.picture for found in row.detections), row.picture]


def _cams_file(source: Path) -> Path:
    cams = source / CAMS if source.is_dir() else source
    if not cams.is_file():
        if (cams.parent / STAGING).is_dir():
            raise UserError(
                f"{cams.parent}: its explain run did not finish; run 'camexport explain' again with --resume"
            )
        raise UserError(f"{cams}: no such file; pass the folder of a 'camexport explain' run, or its cams.parquet")
    return cams


_REWRITE = "run 'camexport explain' on its photos again with --overwrite to write it anew"


def open_cams(cams: Path) -> tuple[pq.ParquetFile, GraphSpec]:
    """``cams.parquet`` opened and checked whole before anything is drawn: camexport's metadata in its schema, the
    columns ``render`` reads, and each row's ``cam`` as long as its ``cam_shape`` says.

    Raises:
        UserError: not Parquet, not written by ``camexport explain``, or damaged (named by row).
    """
    try:
        parquet = pq.ParquetFile(cams)
        props = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    except (pa.ArrowException, OSError) as exc:
        raise UserError(
            f"{cams}: not a cams.parquet written by 'camexport explain' (unreadable as Parquet: {first_line(exc)}); "
            f"pass the cams.parquet of an explain run's folder, or {_REWRITE}"
        ) from None
    if not any(key.startswith(PREFIX) for key in props):
        raise UserError(
            f"{cams}: not a cams.parquet written by 'camexport explain' (a Parquet file without camexport's "
            "metadata); pass the cams.parquet of an explain run's folder"
        )
    spec = GraphSpec.from_props(props, cams)
    missing = [name for name in _COLUMNS if name not in parquet.schema_arrow.names]
    if missing:
        raise UserError(f"{cams}: damaged: no {', '.join(missing)} column; {_REWRITE}")
    try:
        _check_rows(parquet, cams)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{cams}: damaged ({first_line(exc)}); {_REWRITE}") from None
    return parquet, spec


def _check_rows(parquet: pq.ParquetFile, cams: Path) -> None:
    """Raises UserError at the first row whose ``cam`` does not hold as many values as its ``cam_shape`` says."""
    row = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=list(_COLUMNS)):
        sizes = pc.list_value_length(batch.column("cam")).to_pylist()
        shapes = batch.column("cam_shape").to_pylist()
        for i, image in enumerate(batch.column("image").to_pylist()):
            if not shapes[i] or sizes[i] != int(np.prod(shapes[i])):
                raise UserError(
                    f"{cams}: damaged: row {row + i} ({image}) holds {sizes[i]} cam values for a cam_shape of "
                    f"{shapes[i]}; {_REWRITE}"
                )
        row += batch.num_rows


_COLUMNS = ("image", "cam_shape", "cam")


def _detection_rows(parquet: pq.ParquetFile, out: Path, style: ExplainStyle) -> Iterator[_Row]:
    """A detection graph's rows, one per image (its rows are consecutive), each with its detections."""
    suffix = style.overlay_suffix
    taken: set[str] = set()
    columns = [*_COLUMNS, "detection", "box", "label", "probability"]
    current: _Row | None = None
    for batch in parquet.iter_batches(batch_size=256, columns=columns):
        for row in batch.to_pylist():
            if current is None or row["image"] != current.image:
                if current is not None:
                    yield current
                stem = unique_stem(Path(row["image"]), taken)
                current = _Row(row["image"], np.zeros(0, np.float32), out / f"{stem}_cam{suffix}")
            if row["detection"] is not None:
                picture = out / f"{stem}_det{row['detection']}_cam{suffix}"
                cam = np.asarray(row["cam"], np.float32).reshape(row["cam_shape"])
                found = _Detection(row["detection"], tuple(row["box"]), row["label"], row["probability"], cam, picture)
                current = replace(current, detections=(*current.detections, found))
    if current is not None:
        yield current


def _rows(parquet: pq.ParquetFile, out: Path, style: ExplainStyle) -> Iterator[_Row]:
    suffix = style.overlay_suffix
    taken: set[str] = set()
    for batch in parquet.iter_batches(batch_size=256, columns=list(_COLUMNS)):
        shapes, flat = batch.column("cam_shape").to_pylist(), batch.column("cam")
        for i, image in enumerate(batch.column("image").to_pylist()):
            cam = flat[i].values.to_numpy().reshape(shapes[i])
            yield _Row(image, cam, out / f"{unique_stem(Path(image), taken)}_cam{suffix}")
