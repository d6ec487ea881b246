"""One explain run's state: its output folder, its record log, its summary, and the two calls by which an executor
(:mod:`camexport.runtime.local`, :mod:`camexport.runtime.distributed`) reports each image: explained, or failed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from camexport._util import signals_held
from camexport.errors import CamExportError
from camexport.runtime.options import ExplainStyle
from camexport.runtime.records import Record, RecordLog
from camexport.runtime.session import CamSession


@dataclass
class ExplainSummary:
    """What :func:`camexport.runtime.explain.explain` did.

    Attributes:
        written: every file written (overlays, heatmaps), in order.
        failures: one line per file that failed, naming it and the problem.
        predictions: the JSON Lines file (one record per explained image, this run's and a resumed one's).
        columnar: ``cams.parquet``, the records with each image's raw cam.
        explained: how many images this run explained.
        already_done: how many of the given images a resumed earlier run had recorded (skipped).
        skipped: files in the given folders that are not images (by suffix), left alone.
        seconds: wall time of the whole run.
    """

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    predictions: Path | None = None
    columnar: Path | None = None
    explained: int = 0
    already_done: int = 0
    skipped: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Explained images per second of wall time."""
        return self.explained / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ExplainRun:
    """One run: the graph, the folder and style its images are explained into, and what has been reported.

    Attributes:
        session: the graph.
        out: the output folder.
        style: what each image becomes; its ``target`` is a class index (−1: top-1).
        summary: what the run did so far.
        log: where the line per explained image goes.
        records: the folder's record log.
        stems: the file stems taken in the folder (by this run and an earlier one).
    """

    session: CamSession
    out: Path
    style: ExplainStyle
    summary: ExplainSummary
    log: Callable[[str], None]
    records: RecordLog
    stems: set[str] = field(default_factory=set)

    def report(self, images: list[list[Record]], bar: tqdm) -> None:
        """Records explained images (each its records: one, or a detection graph's one per detection; appended and
        flushed), counts them, and logs one line each: all of it or, when a stop signal arrives midway, all of it
        before the stop."""
        with signals_held():
            self._report(images, bar)

    def _report(self, images: list[list[Record]], bar: tqdm) -> None:
        self.records.append([record for records in images for record in records])
        for records in images:
            first = records[0]
            files = {first.image_overlay, first.heatmap} | {r.overlay for r in records}
            self.summary.written += [Path(w) for w in sorted(f for f in files if f)]
            self.summary.explained += 1
            with tqdm.external_write_mode():  # the bar steps aside for the line, then redraws
                self.log(_line(records))
        bar.update(len(images))

    def fail(self, message: str, bar: tqdm) -> None:
        """Counts one image that failed and logs its line."""
        with signals_held():
            self.summary.failures.append(message)
            with tqdm.external_write_mode(file=sys.stderr):
                print(f"error: {message}", file=sys.stderr)
            bar.update(1)


def _line(records: list[Record]) -> str:
    """One explained image's line: its top class and the one explained, or a detection graph's detections."""
    first = records[0]
    if not first.top:  # a detection graph's records: no class ranking, a row per detection
        found = [f"{r.label} {r.probability:.2f}" for r in records if r.detection is not None]
        shown = ", ".join(found[:5]) + (f", ... ({len(found)})" if len(found) > 5 else "")
        where = f" -> {first.image_overlay}" if first.image_overlay else ""
        return f"{first.image}: {shown or 'no detection over the threshold'}{where}"
    best = first.top[0]
    where = f" -> {first.overlay}" if first.overlay else ""
    return f"{first.image}: {best['label']} ({best['probability']:.2f}); explained '{first.label}'{where}"


class Interrupted(CamExportError):
    """Ctrl-C (SIGINT, exit status 130) or SIGTERM (143) stopped a run; the finished batches are recorded and
    merged."""

    exit_code = 130

    def __init__(self, summary: ExplainSummary, predictions: Path, terminated: bool = False) -> None:
        stopped = "terminated (SIGTERM)" if terminated else "interrupted"
        super().__init__(
            f"{stopped} after {summary.explained} image(s); the records are in {predictions}: run the same "
            "command with `resume` to finish"
        )
        self.summary = summary
        self.exit_code = 143 if terminated else 130


class NothingExplained(CamExportError):
    """Every image of a run failed (each already reported); nothing was written."""

    def __init__(self, summary: ExplainSummary) -> None:
        super().__init__(f"none of the {len(summary.failures)} image(s) could be explained; nothing was written")
        self.summary = summary
