"""Kernel time per op type in onnxruntime: a camexport graph against the plain model's graph.

Builds the graph (weights as given) and exports the plain model, profiles 8 runs of each at the batch size,
and prints the op types whose time differs by more than 0.05 ms, largest difference first (count of nodes
in brackets). The comparisons in benchmarks/profile/profile.md ("Against the FLOP-ideal") come from it.

Usage (from the repository root):
python -m benchmarks.profile.profile_ops MODEL [--layer L] [--weights random] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.harness.contenders import export_plain
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model

RUNS = 8


def kernels(path: Path, feed: dict, threads: int, folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Kernel ms per run and nodes, by op type."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(RUNS):
        session.run(None, feed)
    ms: dict[str, float] = collections.defaultdict(float)
    nodes: dict[str, float] = collections.defaultdict(float)
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ms[event["args"]["op_name"]] += event["dur"] / 1e3 / RUNS
            nodes[event["args"]["op_name"]] += 1 / RUNS
    return ms, nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--layer")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    options = BuildOptions(model=args.model, layer=args.layer, weights=args.weights, output=folder / "g.onnx")
    built = build(options, log=lambda _line: None)
    size = tuple(built.summary["image_size"])
    loaded = load_model(args.model, args.weights)
    channels = loaded.preprocessing.channels
    plain = export_plain(loaded.module, size, folder / "p.onnx", channels)
    image = np.random.default_rng(0).standard_normal((args.batch, channels, *size)).astype(np.float32)
    kp, np_ = kernels(plain, {"image": image}, args.threads, folder)
    kg, ng = kernels(built.graph, {"image": image, "target_class": np.array([-1])}, args.threads, folder)
    totals = f"plain {sum(kp.values()):.2f} ms, camexport {sum(kg.values()):.2f} ms"
    print(f"{args.model} {built.layer}, batch {args.batch}: {totals}")
    for op in sorted(set(kp) | set(kg), key=lambda o: -(kg.get(o, 0) - kp.get(o, 0))):
        a, b = kp.get(op, 0.0), kg.get(op, 0.0)
        if abs(b - a) > 0.05:
            print(f"{op:24} plain {a:8.2f} ({np_.get(op, 0):.0f})  camexport {b:8.2f} ({ng.get(op, 0):.0f})")


if __name__ == "__main__":
    main()
