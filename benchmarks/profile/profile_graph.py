"""Where a camexport graph spends its time, next to the plain model: onnxruntime's profiler, per op type.

Builds resnet18 (random weights) at ``layer4`` and ``layer3`` and exports the plain model, runs each graph
``--runs`` times at batch 1 and 8 with onnxruntime's profiler on, and sums kernel time per op type.
Results: ``benchmarks/profile/profile.md`` (the profiling's findings are written around the tables: this script
rewrites the whole file, so merge its tables back into the committed one).

Usage (from the repository root): python -m benchmarks.profile.profile_graph [--runs N] [--threads T]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.harness.contenders import export_plain
from benchmarks.harness.machine import machine_line
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model

HERE = Path(__file__).resolve().parent


def profile(path: Path, shape: tuple[int, ...], runs: int, threads: int) -> tuple[float, dict[str, float]]:
    """Median wall ms of ``runs`` runs on a random batch of ``shape`` (profiler off), and kernel ms per run by op
    type (profiler on)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"image": image, "target_class": np.array([-1], dtype=np.int64)})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"image": image, "target_class": np.array([-1], dtype=np.int64)})
        times.append(time.perf_counter() - start)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(3):
            profiled.run(None, {"image": image, "target_class": np.array([-1], dtype=np.int64)})
        events = json.loads(Path(profiled.end_profiling()).read_text())
    kernel: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernel[event["args"]["op_name"]] += event["dur"] / 1e3 / 3
    return float(np.median(times) * 1e3), dict(kernel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    lines = [
        "## onnxruntime profile: resnet18 graphs vs the plain model",
        "",
        f"Reproduce: `python -m benchmarks.profile.profile_graph`. {args.runs} timed runs per graph (one graph at",
        f"a time, so no thread-pool interplay), then 3 profiled runs; kernel ms per run by op type. {args.threads} "
        "threads.",
        f"Machine: {machine_line()}.",
        "",
    ]
    loaded = load_model("resnet18", "random")
    prep = loaded.preprocessing
    with tempfile.TemporaryDirectory() as folder:
        plain = export_plain(loaded.module, prep.image_size, Path(folder) / "p.onnx", prep.channels)
        graphs = {"plain model": plain}
        for layer in ("layer4", "layer3"):
            out = Path(folder) / f"{layer}.onnx"
            build(BuildOptions(model="resnet18", layer=layer, weights="random", output=out), log=lambda _: None)
            graphs[f"camexport {layer}"] = out
        for batch in (1, 8):
            shape = (batch, prep.channels, *prep.image_size)
            results = {name: profile(path, shape, args.runs, args.threads) for name, path in graphs.items()}
            ops = sorted(
                {op for _, kernel in results.values() for op in kernel},
                key=lambda op: -max(results[name][1].get(op, 0.0) for name in results),
            )
            base = results["plain model"][0]
            lines += [f"### batch {batch}", "", "| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
            lines.append("| wall ms (median) | " + " | ".join(f"{r[0]:.2f}" for r in results.values()) + " |")
            lines.append("| ÷ plain | " + " | ".join(f"{r[0] / base:.3f}" for r in results.values()) + " |")
            for op in ops[:12]:
                cells = [f"{r[1].get(op, 0.0):.2f}" if op in r[1] else "" for r in results.values()]
                lines.append(f"| {op} (kernel ms) | " + " | ".join(cells) + " |")
            lines.append("")
    (HERE / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
