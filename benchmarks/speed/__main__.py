"""Time one model's camexport graph against eager PyTorch, the CAM libraries and plain inference.

Builds the graph, times the eight contenders (see benchmarks/harness/contenders.py) in interleaved rounds,
prints the table and writes ``<model>-<layer>-<methods>-<provider>.json`` and ``.md`` to ``--out``.

Usage (from the repository root):
python -m benchmarks.speed MODEL [--layer L] [--method M] [--weights random|default|PATH] [--batch-sizes 1 8 32]
    [--runs 15] [--warmup 3] [--threads 0] [--provider cpu|cuda] [--contenders a,b] [--no-memory] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness.timing import BenchConfig
from camexport.contract import DEFAULT_METHOD, METHODS, parse_methods
from camexport.errors import CamExportError

# The harness's parameters that its messages name (``batch_sizes=[0]``), to be shown as this command's flags.
_PARAMETERS = re.compile(r"\b(batch_sizes|runs|warmup|threads|contenders|methods)=")
_FLAG_OF = {"methods": "--method"}


def as_flags(message: str) -> str:
    """``batch_sizes=[0]: ...`` → ``--batch-sizes [0]: ...``."""
    return _PARAMETERS.sub(lambda m: _FLAG_OF.get(m.group(1), "--" + m.group(1).replace("_", "-")) + " ", message)


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    made.add_argument("model", help="a model name as for camexport build")
    made.add_argument("--layer", help="target layer (default: the model's default)")
    methods = ", ".join(METHODS)
    made.add_argument("--method", default=DEFAULT_METHOD, help=f"{methods}, or several, comma-separated")
    made.add_argument("--weights", default="random", help="random (default), default or PATH")
    config = BenchConfig()
    sizes = " ".join(map(str, config.batch_sizes))
    made.add_argument("--batch-sizes", type=int, nargs="+", default=list(config.batch_sizes), help=f"default: {sizes}")
    made.add_argument(
        "--runs", type=int, default=config.runs, help=f"timed rounds per batch size (default {config.runs})"
    )
    made.add_argument(
        "--warmup", type=int, default=config.warmup, help=f"warm-up runs per contender (default {config.warmup})"
    )
    made.add_argument(
        "--threads", type=int, default=config.threads, help="threads for torch and onnxruntime (default: all cores)"
    )
    made.add_argument(
        "--provider", default=config.provider, help="cpu (default) or cuda (eager contenders on the GPU too)"
    )
    made.add_argument("--contenders", help="comma-separated subset, e.g. e_ort_plain,f_ort_camexport (default: all)")
    made.add_argument(
        "--no-memory", action="store_true", help="skip measuring each contender's added peak RSS in its own process"
    )
    made.add_argument(
        "--out", type=Path, default=Path("bench"), help="folder for the JSON and Markdown (default bench/)"
    )
    return made


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns the exit status (2 for a bad setting, with the message on stderr)."""
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except CamExportError as exc:
        print(f"benchmarks.speed: error: {as_flags(str(exc))}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    from benchmarks.harness.bench import bench_model
    from benchmarks.harness.contenders import NAMES
    from benchmarks.harness.report import report_terminal

    config = BenchConfig(
        batch_sizes=tuple(args.batch_sizes),
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        provider=args.provider,
        contenders=tuple(args.contenders.split(",")) if args.contenders else NAMES,
        memory=not args.no_memory,
    )
    config.check()
    methods = parse_methods(args.method)
    say = lambda line: print(line, flush=True)  # noqa: E731
    result, json_path, md_path = bench_model(args.model, args.layer, methods, args.weights, config, args.out, say)
    print(report_terminal(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
