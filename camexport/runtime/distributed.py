"""Explaining across machines with Ray Data: actors that each hold one session, records in the same files.

``explain_dataset`` turns a ``ray.data.Dataset`` of images (a ``path`` column, and an ``image`` column if Ray
read them, as ``ray.data.read_images(..., include_paths=True)`` gives) or a list of paths into a lazy Dataset
with one row per input: the columns of :data:`camexport.runtime.records.SCHEMA` plus ``error`` (None, or why
that input could not be explained). Each actor of the pool loads the graph once and explains
``batch_size`` images per call, writing overlays if asked; Ray restarts an actor that dies and runs its batch
again (``max_restarts``/``max_task_retries``), so every input comes out once. ``explain_with_ray`` is what
``camexport explain --ray`` runs (:func:`camexport.runtime.explain.explain` with the :class:`Ray` executor): it
streams those rows, in order, into the run's :class:`~camexport.runtime.records.RecordLog`, so the outputs are the
single-process run's files.

Every node needs camexport with ``camexport[ray]``, and the graph and images at the same paths (a shared
file system, or paths a node can read); overlays and heatmaps go to ``out_dir`` as each actor sees it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from camexport.contract import GraphSpec
from camexport.errors import CamExportError, UserError
from camexport.runtime.options import ExplainStyle, Ray, RunOptions
from camexport.runtime.outputs import failure_line, unique_stem, write_files
from camexport.runtime.records import SCHEMA, Files, Record, records_for, schema_for
from camexport.runtime.run import ExplainRun
from camexport.runtime.session import CamSession

if TYPE_CHECKING:
    import ray.data

ROWS = SCHEMA.append(pa.field("error", pa.string()))


def rows_schema(spec: GraphSpec) -> pa.Schema:
    """The rows a graph's explained images give: :data:`ROWS`, or a detection graph's (a row per detection)."""
    return pa.schema([*schema_for(spec).remove_metadata(), pa.field("error", pa.string())])


def _ray():
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # Ray Data logs each execution; camexport reports
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError("Ray is not installed; pip install 'camexport[ray]' on every node") from None
    return ray


class Explainer:
    """One actor's work: a session loaded once, a batch of rows in, a table of rows out (in order)."""

    def __init__(self, graph: str, style: ExplainStyle, provider: str, threads: int, out_dir: str | None) -> None:
        self.session = CamSession(graph, provider=provider, threads=threads)
        self.schema = rows_schema(self.session.spec)
        self.style, self.out_dir = style, None if out_dir is None else Path(out_dir)
        self.target = self.session.class_index(style.target)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        stems = [str(s) for s in batch["stem"]] if "stem" in batch else [_stem(p) for p in paths]
        images = batch.get("image")
        rows: list[list[dict]] = [[{"image": path, "error": None}] for path in paths]  # per image: its rows
        prepared, where = [], []
        for i, path in enumerate(paths):
            try:
                prepared.append(
                    self.session.prepare(path if images is None else images[i], path, self.style.jpeg_draft)
                )
                where.append(i)
            except CamExportError as exc:
                rows[i][0]["error"] = failure_line(path, exc)
        if prepared:
            self._explain(prepared, where, rows, stems)
        return pa.Table.from_pylist([row for image in rows for row in image], schema=self.schema)

    def _explain(self, prepared: list, where: list[int], rows: list[list[dict]], stems: list[str]) -> None:
        style = self.style
        try:
            results = self.session.explain_prepared(prepared, self.target, style.top_k)
        except CamExportError as exc:
            for i in where:
                rows[i][0]["error"] = f"{rows[i][0]['image']}: {exc}"
            return
        for i, (photo, _), result in zip(where, prepared, results, strict=True):
            image = rows[i][0]["image"]
            try:
                files = Files() if self.out_dir is None else write_files(self.out_dir, stems[i], photo, result, style)
            except (OSError, ValueError) as exc:
                rows[i][0]["error"] = f"{image}: cannot write its files ({exc})"
                continue
            rows[i] = [{**r.as_row(self.schema), "error": None} for r in records_for(image, files, result)]


def _stem(path: str) -> str:
    """A file stem no other path gives: the name's stem and 8 hex digits of the whole path's digest."""
    return f"{Path(path).stem}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def explain_dataset(
    graph: str | Path,
    images: ray.data.Dataset | Sequence[str | Path],
    style: ExplainStyle | None = None,
    batch_size: int = RunOptions.batch_size,
    options: Ray | None = None,
    out_dir: str | Path | None = None,
) -> ray.data.Dataset:
    """Explains a dataset on the Ray cluster that ``ray.init`` connected to (lazily: nothing runs until read).

    Args:
        graph: the ``.onnx`` file, at this path on every node.
        images: a Dataset with a ``path`` column (and ``image`` arrays, and a ``stem`` column for overlay
            names, if it has them), or a list of image paths.
        style: class, top-k and overlay style (``style.target``: an index, −1 or None for each image's top-1).
        batch_size: images per graph run.
        options: actors, CPUs, threads, provider (its ``address`` is :func:`connect`'s, not used here).
        out_dir: where actors write the overlays and heatmaps the style asks for (None: no files).

    Returns:
        One row per input (a detection graph: one per detection), in order when the Dataset context preserves
        order: :data:`ROWS` (:func:`rows_schema`).
    """
    ray = _ray()
    style, options = style or ExplainStyle(), options or Ray()
    style.check()
    options.check()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size={batch_size!r}: use a whole number, 1 or more")
    if not isinstance(images, ray.data.Dataset):
        images = ray.data.from_items([{"path": str(p)} for p in images])
    return images.map_batches(
        Explainer,
        fn_constructor_kwargs={
            "graph": str(Path(graph).resolve()),
            "style": style,
            "provider": options.provider,
            "threads": options.threads,
            "out_dir": None if out_dir is None else str(Path(out_dir).resolve()),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus(ray.cluster_resources().get("CPU", 1.0)),
        num_gpus=1 if options.provider == "cuda" else 0,
    )  # Ray Data's actors restart when they die, and run their batch again (max_restarts, max_task_retries -1)


def explain_with_ray(run: ExplainRun, todo: list[Path], bar: tqdm, batch_size: int, options: Ray) -> None:
    """Explains ``todo`` on the cluster at ``options.address`` (:func:`connect`) and reports every row into ``run``,
    in order, as the rows stream back."""
    connect(options.address)
    ray = _ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # camexport's own bar and lines report progress
    rows = [{"path": str(p), "stem": unique_stem(p, run.stems)} for p in todo]
    blocks = min(len(rows), 200, max(options.actors, len(rows) // (4 * batch_size)))
    source = ray.data.from_items(rows, override_num_blocks=blocks)
    explained = explain_dataset(run.session.path, source, run.style, batch_size, options, run.out)
    for table in explained.iter_batches(batch_format="pyarrow", batch_size=None):
        failed = table.column("error").is_valid()
        for message in table.filter(failed).column("error").to_pylist():
            run.fail(message, bar)
        records = [Record.from_row(row) for row in table.filter(pc.invert(failed)).to_pylist()]
        for record in records:  # the actors wrote to the resolved folder; the records name it as the user did
            for name in ("overlay", "heatmap", "image_overlay"):
                written = getattr(record, name)
                setattr(record, name, str(run.out / Path(written).name) if written else None)
        run.report([list(rows) for _, rows in itertools.groupby(records, key=lambda r: r.image)], bar)


def connect(address: str | None) -> None:
    """Connects to the Ray cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or starts a
    local one on this machine's cores (None), on 127.0.0.1, without the dashboard."""
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        if address is None:
            ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
            )
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"ray={address!r}: cannot connect to a Ray cluster there ({exc}); start one with 'ray start --head'"
        ) from None
