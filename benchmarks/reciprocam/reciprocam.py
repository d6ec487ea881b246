"""What ReciproCAM costs in the graph, next to Grad-CAM++: (f) ÷ (e) for each method set, like the other tables.

For each model, the speed benchmark (benchmarks.harness.bench) with the two onnxruntime contenders (the plain
model's graph (e) and the camexport graph (f)), interleaved, at batch 1 and 8, once per method set: Grad-CAM++
alone, ReciproCAM alone, both in one graph. ReciproCAM runs the rest of the network once per position of the
layer's map (h·w masked maps per image), so its cost is the tail after the layer times h·w; for a Vision
Transformer (ViT-ReciproCAM at the last block's first normalisation) that is the last block 196 times. Writes
benchmarks/reciprocam/results/<name>-<methods>.json (with the harness's own <model>-<layer>-<methods>-cpu.json
and .md beside it) and benchmarks/reciprocam/reciprocam.md.

Usage (from the repository root): python -m benchmarks.reciprocam.reciprocam [--runs 15]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.harness.bench import bench_model
from benchmarks.harness.machine import machine_line
from benchmarks.harness.timing import BenchConfig

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0", None, "default"),
    "resnet18": ("resnet18", None, "random"),
    # ViT-ReciproCAM at the default layer (blocks.11.norm1; the block's input is masked too): the last block
    # runs 196 times per image. Random weights: the cost does not depend on them.
    "vit_tiny_patch16_224 (timm)": ("timm:vit_tiny_patch16_224", None, "random"),
}
METHOD_SETS = (("gradcampp",), ("reciprocam",), ("gradcampp", "reciprocam"))


def row(name: str, result: dict) -> str:
    timings = {(t["contender"], t["batch"]): t["median_ms"] for t in result["timings"]}
    cells = []
    for batch in result["batch_sizes"]:
        plain, ours = timings[("e_ort_plain", batch)], timings[("f_ort_camexport", batch)]
        cells.append(f"{ours:.2f} ms ({ours / plain:.3f})")
    return f"| {name} | `{result['layer']}` | {' + '.join(result['method'].split(','))} | {' | '.join(cells)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    config = BenchConfig(
        batch_sizes=(1, 8), runs=args.runs, warmup=3, contenders=("e_ort_plain", "f_ort_camexport"), memory=False
    )
    rows, machine = [], None
    for name, (model, layer, weights) in MODELS.items():
        for methods in METHOD_SETS:
            print(f"== {name} {'+'.join(methods)}", flush=True)
            result, _, _ = bench_model(
                model, layer, methods, weights, config, OUT, log=lambda line: print(line, flush=True)
            )
            (OUT / f"{name.split()[0]}-{'+'.join(methods)}.json").write_text(json.dumps(result, indent=2) + "\n")
            rows.append(row(name, result))
            machine = result["machine"]
    lines = [
        "# ReciproCAM in the graph: its cost next to Grad-CAM++",
        "",
        f"Reproduce: `python -m benchmarks.reciprocam.reciprocam`. onnxruntime, {args.runs} interleaved rounds "
        "after 3 warm-ups per batch; median ms of the camexport graph (f) and, in brackets, its ratio to the plain "
        f"model's graph (e) in the same run. Machine: {machine_line(machine)}.",
        "",
        "| model | layer | methods | batch 1 | batch 8 |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    (HERE / "reciprocam.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'reciprocam.md'}")


if __name__ == "__main__":
    main()
