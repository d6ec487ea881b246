"""``camexport explain``: photos and folders through a graph, to overlays, ``predictions.jsonl`` and ``cams.parquet``.

One entry point, :func:`explain`, for every executor: it finds the images, opens the output folder and its record
log (:mod:`camexport.runtime.records`: skipping what a resumed run recorded), runs the executor, and ends the run
(the records merged; Ctrl-C or SIGTERM; nothing explained). The executor explains the images and reports each into
the run
(:class:`camexport.runtime.run.ExplainRun`): :class:`~camexport.runtime.options.Local` in this process
(:mod:`camexport.runtime.local`), :class:`~camexport.runtime.options.Ray` on a cluster
(:mod:`camexport.runtime.distributed`). Every output is written atomically (a hidden temporary, then a rename), so
an interrupted run leaves no partial file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from camexport import checks
from camexport._util import Terminated, removing_new_folders
from camexport.errors import UserError
from camexport.runtime.distributed import connect, explain_with_ray
from camexport.runtime.local import Stages
from camexport.runtime.options import Executor, ExplainStyle, Local, Ray, RunOptions
from camexport.runtime.outputs import collect_images, output_folder, stem_of
from camexport.runtime.records import RecordLog
from camexport.runtime.run import ExplainRun, ExplainSummary, Interrupted, NothingExplained
from camexport.runtime.session import CamSession, random_weights_note, resolve_providers


def explain(
    session: CamSession,
    sources: str | Path | Iterable[str | Path],
    out: str | Path,
    style: ExplainStyle | None = None,
    options: RunOptions | None = None,
    executor: Executor | None = None,
) -> ExplainSummary:
    """Explains every image of ``sources`` (files, and folders' image files) into ``out``: ``<stem>_cam.<format>``
    overlays (as ``style`` says), ``predictions.jsonl`` and ``cams.parquet`` (see :mod:`camexport.runtime.records`),
    with ``executor`` (default: :class:`~camexport.runtime.options.Local`, in this process).

    Records are appended as batches finish, in the order of the images. A file that fails gets one line in the
    summary's ``failures``; the others go on. With ``options.resume``, images the folder's earlier run recorded are
    skipped; with ``options.overwrite``, its records are replaced once this run records its first batch. Ctrl-C
    stops after the batch in hand: what was recorded stays, and ``resume`` goes on.

    Raises:
        UserError: a bad argument, no images, or an earlier run in ``out`` without ``resume``/``overwrite``.
        NothingExplained: every image failed (an earlier run's records are left as they were).
        Interrupted: Ctrl-C, after the records of the finished batches are written and merged.
    """
    started = time.perf_counter()
    out = checks.path("out", out, "the output folder")
    session.require_preprocessing()
    style, options, executor = _checked(session, style or ExplainStyle(), options or RunOptions(), executor or Local())
    paths, skipped = collect_images(_sources(sources))
    if not paths:
        raise UserError("no images found; pass image files or folders that hold .png/.jpg files")
    if session.spec.provenance.random_weights:
        print(f"note: {random_weights_note(session)}", file=sys.stderr)
    with removing_new_folders(Path(out)):  # a run that explains nothing leaves no new folder behind
        folder = output_folder(out)
        records = RecordLog(folder, session.spec, resume=options.resume, overwrite=options.overwrite)
        run = ExplainRun(session, folder, style, ExplainSummary(skipped=skipped), options.log, records)
        run.stems.update(stem_of(name) for name in records.earlier_files)
        todo = [path for path in paths if str(path) not in records.done]
        run.summary.already_done = len(paths) - len(todo)
        _execute(run, todo, options, executor)
    run.summary.predictions = records.predictions if records.predictions.exists() else None
    run.summary.seconds = time.perf_counter() - started
    return run.summary


def _checked(
    session: CamSession, style: ExplainStyle, options: RunOptions, executor: Executor
) -> tuple[ExplainStyle, RunOptions, Executor]:
    """The arguments checked (each names what is wrong and the fix), the style's class as an index."""
    if not isinstance(session, CamSession):
        raise UserError(f"session={type(session).__name__}: pass a CamSession, e.g. CamSession('model.onnx')")
    for name, value, kind in (("style", style, ExplainStyle), ("options", options, RunOptions)):
        if not isinstance(value, kind):
            raise UserError(f"{name}={type(value).__name__}: pass a {kind.__name__}")
    if not isinstance(executor, (Local, Ray)):
        raise UserError(f"executor={type(executor).__name__}: pass Local() or Ray(...)")
    style.check()
    options.check()
    if style.jpeg_draft:
        session.check_draft()
    if isinstance(executor, Ray):
        executor.check()
        resolve_providers(executor.provider)
        connect(executor.address)  # a cluster that cannot be reached: one line before any folder is made
    return replace(style, target=session.class_index(style.target)), options, executor


def _sources(sources: str | Path | Iterable[str | Path]) -> list[str | Path]:
    """One path, or several (a single string is one path, not its characters)."""
    if isinstance(sources, (str, Path)):
        return [sources]
    if sources is None or not isinstance(sources, Iterable):
        raise UserError(f"sources={sources!r}: pass an image file, a folder, or a list of them")
    return list(sources)


def _execute(run: ExplainRun, todo: list[Path], options: RunOptions, executor: Executor) -> None:
    """Runs the executor on ``todo`` under a progress bar, then merges the records (also after Ctrl-C)."""
    bar = tqdm(total=len(todo), unit="img", disable=not options.progress or len(todo) < 2, leave=False)
    interrupted: KeyboardInterrupt | None = None
    try:
        if isinstance(executor, Ray):
            explain_with_ray(run, todo, bar, options.batch_size, executor)
        else:
            Stages(run).all(todo, options.batch_size, bar)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under the command line (camexport._util.Terminated)
        interrupted = exc
    finally:
        bar.close()
        run.summary.columnar = run.records.finish()
    if interrupted is not None:
        raise Interrupted(run.summary, run.records.predictions, terminated=isinstance(interrupted, Terminated))
    if todo and not run.summary.explained:  # every image failed: an earlier run's records stay as they were
        raise NothingExplained(run.summary)
