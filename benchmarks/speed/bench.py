"""The README's speed table: the speed benchmark for resnet18 (layer4), resnet18 layer3 and efficientnet_lite0.

Each configuration runs all eight contenders (see ``benchmarks/harness/contenders.py``) at batch sizes 1, 8 and
32 on this machine's cores, with interleaved rounds, and writes ``benchmarks/speed/results/<name>.json`` and
``.md``; this script then joins them into ``benchmarks/speed/bench-<provider>.md`` with the machine description
and the targets ((f) ÷ (e) ≤ 1.05, the overhead target; (c) ÷ (f) ≥ 6 and (b) ÷ (f) ≥ 2, the speed-ups).

Usage (from the repository root):
python -m benchmarks.speed.bench [--runs N] [--batch-sizes 1 8 32] [--provider cpu|cuda] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.harness.bench import bench_model
from benchmarks.harness.machine import machine_line
from benchmarks.harness.report import report_markdown
from benchmarks.harness.timing import BenchConfig

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "resnet18": ("resnet18", None, "random"),
    "resnet18-layer3": ("resnet18", "layer3", "random"),
    "efficientnet_lite0": ("efficientnet_lite0", None, "default"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    results = HERE / "results"
    for key in args.only:
        model, layer, weights = CONFIGS[key]
        config = BenchConfig(
            batch_sizes=tuple(args.batch_sizes), runs=args.runs, warmup=args.warmup, provider=args.provider
        )
        print(f"== {key}", flush=True)
        bench_model(model, layer, ("gradcampp",), weights, config, results, log=lambda line: print(line, flush=True))
    tables = []
    info = None
    for path in sorted(results.glob(f"*-{args.provider}.json")):
        result = json.loads(path.read_text())
        info = result["machine"]
        tables.append(report_markdown(result))
    lines = [
        f"# Speed benchmark ({args.provider})",
        "",
        "Reproduce: `python -m benchmarks.speed.bench` (all three tables, ~20 min on 2 cores) or "
        "`python -m benchmarks.speed MODEL [--layer L]` for one.",
        "",
        f"Machine: {machine_line(info) if info else 'n/a'}.",
        "",
        "Random weights where the model has no offline pretrained weights (timings do not depend on the values);",
        "efficientnet_lite0 runs its real ImageNet weights. Each contender produces a heatmap at input resolution",
        "except (a) and (e), which only infer. (c) pytorch-grad-cam runs `loss.backward()` through the whole",
        "network (parameter gradients included), which is how that library works.",
        "",
        *tables,
    ]
    (HERE / f"bench-{args.provider}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / f'bench-{args.provider}.md'}")


if __name__ == "__main__":
    main()
