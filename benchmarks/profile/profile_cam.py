"""The CAM part of a camexport graph in onnxruntime: its nodes and their kernel time, from the profiler.

The CAM part is every node of onnxruntime's optimized graph that the ``cam`` and ``heatmap`` outputs need
and the ``logits``, ``activations`` and ``gradients`` outputs do not: the method's weights, the weighted
sum, the ReLU, the upsampling and the min-max. Run before and after a change to the formulas; it prints JSON
(``benchmarks/profile/profile_cam.json`` holds a run's), and the findings go into ``benchmarks/profile/profile.md``.
The random batch has the graph's own channels and image size (its metadata).

Usage (from the repository root): python -m benchmarks.profile.profile_cam GRAPH [--batch 8] [--runs 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from camexport.runtime.session import CamSession

CAM_OUTPUTS = ("cam", "heatmap")
OTHER_OUTPUTS = ("logits", "activations", "gradients")


def ancestors(graph: onnx.GraphProto, outputs: tuple[str, ...]) -> set[str]:
    """Names of the nodes that compute ``outputs``, transitively."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[str] = set()
    pending = [name for name in outputs if name in producer]
    while pending:
        node = producer[pending.pop()]
        if node.name in seen:
            continue
        seen.add(node.name)
        pending += [name for name in node.input if name in producer]
    return seen


def cam_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """{node name: op type} of the CAM part."""
    outputs = {o.name for o in model.graph.output}
    wanted = ancestors(model.graph, tuple(o for o in outputs if o.startswith(CAM_OUTPUTS)))
    shared = ancestors(model.graph, tuple(o for o in OTHER_OUTPUTS if o in outputs))
    return {n.name: n.op_type for n in model.graph.node if n.name in wanted - shared}


def profile(graph: Path, batch: int, runs: int, threads: int) -> dict:
    folder = Path(tempfile.mkdtemp())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    nodes = cam_nodes(onnx.load(str(folder / "optimized.onnx")))
    prep = CamSession(graph).spec.preprocessing
    image = np.random.default_rng(0).standard_normal((batch, prep.channels, *prep.image_size)).astype(np.float32)
    feed = {"image": image, "target_class": np.array([-1], dtype=np.int64)}
    for _ in range(runs + 3):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total += event["dur"]
            name = event["name"].removesuffix("_kernel_time")
            if name in nodes:
                per_node[name] += event["dur"]
    by_op: dict[str, float] = collections.defaultdict(float)
    for name, micros in per_node.items():
        by_op[nodes[name]] += micros / (runs + 3) / 1000
    return {
        "graph": graph.name,
        "batch": batch,
        "cam_nodes": len(nodes),
        "cam_ops": dict(collections.Counter(nodes.values()).most_common()),
        "cam_ms": round(sum(by_op.values()), 3),
        "all_kernels_ms": round(total / (runs + 3) / 1000, 3),
        "cam_ms_by_op": {op: round(ms, 3) for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    print(json.dumps(profile(args.graph, args.batch, args.runs, args.threads), indent=1))


if __name__ == "__main__":
    main()
