"""What the ratio studies share (onnx_files, detection): onnxruntime sessions on 2 threads without spinning, interleaved
median timings, and the command line that runs some or all of a study's configurations and keeps each one's JSON."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.harness.machine import machine


def sessions(paths: dict[str, Path]) -> dict[str, ort.InferenceSession]:
    """onnxruntime CPU sessions on 2 threads, not spinning: on 2 cores spinning threads fight, and batch-1 times
    then swing between 18 and 50 ms from run to run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}


def interleaved_medians(
    runs_of: dict[str, ort.InferenceSession], feeds: dict[str, dict], runs: int, warmup: int
) -> dict[str, float]:
    """Median seconds per run of each session: each round runs each once, in a rotating order; the first ``warmup``
    rounds are not counted."""
    times: dict[str, list[float]] = {k: [] for k in runs_of}
    names = list(runs_of)
    for round_ in range(warmup + runs):
        for k in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            runs_of[k].run(None, feeds[k])
            if round_ >= warmup:
                times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def run_study(
    description: str, names: Sequence[str], runs: int, run: Callable[[str, int], dict], out: Path
) -> tuple[argparse.Namespace, list[dict], dict]:
    """Parses ``--runs`` and ``--only``, runs each named configuration (``run(name, runs)``), writes its
    ``out/<name>.json`` with the machine, and returns the arguments, every configuration's results found in ``out``
    (this run's and earlier ones', in ``names`` order) and the machine."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--only", nargs="*", default=list(names), choices=list(names))
    args = parser.parse_args()
    out.mkdir(exist_ok=True)
    info = machine()
    for name in args.only:
        result = run(name, args.runs) | {"machine": info}
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    results = [json.loads((out / f"{n}.json").read_text()) for n in names if (out / f"{n}.json").exists()]
    return args, results, info
