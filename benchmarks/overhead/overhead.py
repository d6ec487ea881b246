"""The explanation's overhead against its arithmetic floor: (f) ÷ (e) next to the FLOP-ideal ratio.

For each model and layer below, the speed benchmark (benchmarks.harness.bench) with the two onnxruntime
contenders only (the plain model's graph (e) and the camexport graph (f)), interleaved, at batch 1, 8 and 32, on
this machine's cores; the FLOP-ideal ratio (forward MACs plus the input gradient's MACs down to the layer, over
forward MACs) comes from `benchmarks.harness.flops`. Targets: (f) ÷ (e) ≤ 1.03 × ideal at a model's default
layer, ≤ 1.05 × ideal at an inner layer. Writes benchmarks/overhead/results/<name>.json (with the harness's own
<model>-<layer>-gradcampp-cpu.json and .md beside it) and benchmarks/overhead/overhead.md.

Usage (from the repository root): python -m benchmarks.overhead.overhead [--runs 15] [--only NAME ...]
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
CONFIGS = {  # name: (model, layer or None for the default, weights)
    "resnet18": ("resnet18", None, "random"),
    "efficientnet_lite0": ("efficientnet_lite0", None, "default"),
    "mobilenet_v3_large": ("mobilenet_v3_large", None, "random"),
    "convnext_tiny": ("convnext_tiny", None, "random"),
    "vit_b_16": ("vit_b_16", None, "random"),
    "resnet18-layer3": ("resnet18", "layer3", "random"),
    "efficientnet_lite0-blocks.4.2.bn2": ("efficientnet_lite0", "blocks.4.2.bn2", "default"),
}


def row(name: str, result: dict) -> str:
    flops = result["flops"]
    target = next(t for t in result["targets"] if "FLOP-ideal" in t["target"])
    measured = {t["batch"]: t for t in result["targets"] if t["target"] == target["target"]}
    cells = " | ".join(f"{measured[b]['ratio']:.3f} {'✓' if measured[b]['met'] else '✗'}" for b in sorted(measured))
    limit = target["target"].split("≤ ")[1].split(" ")[0]
    return (
        f"| {name} | `{result['layer']}` | {flops['forward_macs'] / 1e9:.3f} | {flops['gradient_macs'] / 1e9:.3f} | "
        f"{flops['ratio']:.3f} | {limit} | {cells} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    config = BenchConfig(
        batch_sizes=(1, 8, 32), runs=args.runs, warmup=3, contenders=("e_ort_plain", "f_ort_camexport"), memory=False
    )
    for name in args.only:
        model, layer, weights = CONFIGS[name]
        print(f"== {name}", flush=True)
        result, _, _ = bench_model(
            model, layer, ("gradcampp",), weights, config, OUT, log=lambda line: print(line, flush=True)
        )
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    results = {
        name: json.loads((OUT / f"{name}.json").read_text()) for name in CONFIGS if (OUT / f"{name}.json").exists()
    }
    machine = next(iter(results.values()))["machine"]
    lines = [
        "# The explanation's overhead against its FLOP-ideal",
        "",
        "Reproduce: `python -m benchmarks.overhead.overhead` (about 10 minutes on 2 cores). onnxruntime, 2 threads, "
        f"{args.runs} interleaved rounds after 3 warm-up runs per batch; (f) ÷ (e) is the ratio of median times of the "
        "camexport graph and the plain model's graph. Machine: " + machine_line(machine) + ".",
        "",
        "| model | layer | forward GMACs | input-gradient GMACs | FLOP-ideal | target ≤ | (f) ÷ (e) batch 1 | batch 8 "
        "| batch 32 |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(name, result) for name, result in results.items()),
    ]
    (HERE / "overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'overhead.md'}")


if __name__ == "__main__":
    main()
