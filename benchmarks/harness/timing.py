"""How the speed benchmark times its contenders, and measures their peak memory in a fresh process.

For each batch size: a warm-up, then rounds in which every contender runs once, in an order that rotates
from round to round, so that machine drift hits all alike, with a short pause after each run (see
``BenchConfig.pause_s``); the median and interquartile range of each contender's times. Peak memory is
measured per contender and batch size in a fresh process (the peak resident memory of two runs above what the
ready model, session and batch hold).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.harness.contenders import BY_NAME, NAMES, Runner, Subject
from camexport.errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the repository, where ``benchmarks`` imports from


@dataclass
class Timing:
    """One contender at one batch size."""

    contender: str
    batch: int
    times_s: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    skipped: str = ""

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s)) if self.times_s else float("nan")

    @property
    def iqr_s(self) -> float:
        if not self.times_s:
            return float("nan")
        q1, q3 = np.percentile(self.times_s, [25, 75])
        return float(q3 - q1)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s if self.times_s else float("nan")

    def as_dict(self) -> dict:
        return {
            "contender": self.contender,
            "batch": self.batch,
            "median_ms": round(self.median_s * 1e3, 3),
            "iqr_ms": round(self.iqr_s * 1e3, 3),
            "images_per_s": round(self.images_per_s, 2),
            "peak_mb": self.peak_mb,
            "runs": len(self.times_s),
            "skipped": self.skipped,
        }


@dataclass
class BenchConfig:
    """What to measure."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    runs: int = 15
    warmup: int = 3
    threads: int = 0
    provider: str = "cpu"
    contenders: tuple[str, ...] = NAMES
    seed: int = 0
    memory: bool = True
    # Between two timed runs: onnxruntime's and OpenMP's worker threads spin after a run, and a contender
    # started while the previous one's threads still spin runs up to 10x slower (resnet18 eager: 274 ms
    # instead of 25 ms right after an onnxruntime run). A pause lets them go idle, so each run starts on a
    # quiet machine with its runtime's default settings.
    pause_s: float = 0.05

    def check(self) -> None:
        """Raises UserError for a bad setting."""
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError(f"batch_sizes={list(self.batch_sizes)}: use positive integers")
        if self.runs < 3:
            raise UserError(f"runs={self.runs}: use 3 or more (a median and quartiles need several runs)")
        for name in ("warmup", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}={getattr(self, name)}: use 0 or more")
        unknown = [c for c in self.contenders if c not in BY_NAME]
        if unknown:
            raise UserError(f"contenders={','.join(unknown)!r}: unknown; choose from {', '.join(NAMES)}")


def peak_memory_mb(spec: dict) -> float:
    """Peak resident memory of one contender's run, measured in a fresh process (so that what other
    contenders allocated does not hide it): the peak resident memory (Linux VmHWM, reset once the model,
    session and batch are ready) of two runs, minus the memory held at that point, in MB; NaN where the
    measurement is not possible (not Linux).

    ``spec``: :meth:`Subject.as_spec` plus model, weights, batch, contender, threads, provider.
    """
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from benchmarks.harness.timing import peak_in_this_process; "
        "print(json.dumps(peak_in_this_process(json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        return float("nan")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def peak_in_this_process(spec: dict) -> float:
    """:func:`peak_memory_mb`'s measurement, in the process it runs in."""
    import torch

    from camexport.builder.sources import load_model

    torch.set_num_threads(spec["threads"])
    subject = Subject.from_spec(spec)
    model = load_model(spec["model"], spec["weights"]).module
    run = BY_NAME[spec["contender"]].make(model, subject, spec["threads"], spec["provider"])
    batch = np.random.default_rng(0).standard_normal((spec["batch"], *subject.image_shape)).astype(np.float32)
    ready = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak (VmHWM) to the current RSS
    for _ in range(2):
        run(batch)
    return round(max(status_mb("VmHWM") - ready, 0.0), 1)


def status_mb(name: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {name} in /proc/self/status")


def measure(
    contenders: dict[str, Runner | str],
    image_shape: tuple[int, int, int],
    config: BenchConfig,
    log: Callable[[str], None] = print,
    memory: dict | None = None,
) -> list[Timing]:
    """Times every contender at every batch size of images of ``image_shape`` (C, H, W), in interleaved rounds;
    with ``memory`` (the spec of :func:`peak_memory_mb` but for batch and contender), also each one's peak
    memory in its own process."""
    rng = np.random.default_rng(config.seed)
    timings: list[Timing] = []
    for batch_size in config.batch_sizes:
        batch = rng.standard_normal((batch_size, *image_shape)).astype(np.float32)
        rows = {name: Timing(name, batch_size) for name in contenders}
        runnable = {name: run for name, run in contenders.items() if callable(run)}
        for name, run in contenders.items():
            if not callable(run):
                rows[name].skipped = run
        _rounds(runnable, batch, rows, config)
        if memory is not None:
            for name in runnable:
                rows[name].peak_mb = peak_memory_mb({**memory, "batch": batch_size, "contender": name})
        for row in rows.values():
            if row.times_s:
                log(f"  batch {batch_size:>3} {row.contender:20} median {row.median_s * 1e3:9.2f} ms")
        timings += rows.values()
    return timings


def _rounds(runnable: dict[str, Runner], batch: np.ndarray, rows: dict[str, Timing], config: BenchConfig) -> None:
    """The warm-up, then ``config.runs`` rounds of every contender once, the order rotating every round."""
    names = list(runnable)
    for name in names:
        for _ in range(config.warmup):
            runnable[name](batch)
        time.sleep(config.pause_s)
    for round_index in range(config.runs):
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runnable[name](batch)
            rows[name].times_s.append(time.perf_counter() - start)
            time.sleep(config.pause_s)
