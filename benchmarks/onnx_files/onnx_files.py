"""What a graph built from an ONNX file costs: its time over the file's own in onnxruntime, beside the same ratio for
the graph built from the PyTorch code of the same network.

For each network below: its PyTorch module (the source's weights) is exported to ONNX (opset 17, a free batch): the
file a team would hold, (e). camexport builds the graph from the file, (f-file), and from the code, (f-code), at
the same layer with Grad-CAM++. The three run in onnxruntime (2 threads, not spinning: on 2 cores spinning threads
make batch-1 times swing between 18 and 50 ms), interleaved: each round runs each once in a rotating order, after 3
warm-up runs; median times. Goal: (f-file) ÷ (e) equal to (f-code) ÷ (e) within 2 %. Also recorded: whether the two
graphs hold the same ops (counted per op type), which makes any difference in time the machine's.
Writes benchmarks/onnx_files/results/<name>.json and benchmarks/onnx_files/onnx_files.md.

Usage (from the repository root): python -m benchmarks.onnx_files.onnx_files [--runs 20] [--only NAME ...]
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from benchmarks.harness.machine import machine_line
from benchmarks.harness.studies import interleaved_medians, run_study, sessions
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
CONFIGS = {"resnet18": "random", "efficientnet_lite0": "default"}  # model: weights; each at its default layer
BATCHES = (1, 8)
GOAL = 0.02


def _export(model: str, weights: str, folder: Path) -> Path:
    module = load_model(model, weights, seed=0).module
    path = folder / f"{model}.onnx"
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(module, (torch.randn(1, 3, 224, 224),), str(path), input_names=["image"],
                      output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
    return path


def _graphs(model: str, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The file, the graph from the code and the graph from the file (each at its default layer: the same
    tensor), and the two layers' names."""
    weights = CONFIGS[model]
    file = _export(model, weights, folder)
    quiet = lambda _line: None  # noqa: E731
    code = build(BuildOptions(model, weights=weights, output=folder / "code.onnx"), log=quiet)
    from_file = build(BuildOptions(str(file), output=folder / "file.onnx"), log=quiet)
    return {"e": file, "f-code": code.graph, "f-file": from_file.graph}, [code.layer, from_file.layer]


def _time(paths: dict[str, Path], batch: int, runs: int) -> dict[str, float]:
    """Median seconds per run of each graph on one random batch, interleaved."""
    running = sessions(paths)
    image = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    feeds = {
        k: {i.name: image if i.name == "image" else np.array([-1], np.int64) for i in s.get_inputs()}
        for k, s in running.items()
    }
    return interleaved_medians(running, feeds, runs, warmup=3)


def _op_counts(path: Path) -> dict[str, int]:
    return dict(sorted(collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node).items()))


def run(name: str, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        paths, layers = _graphs(name, Path(folder))
        same_ops = _op_counts(paths["f-code"]) == _op_counts(paths["f-file"])
        rows = []
        for batch in BATCHES:
            median = _time(paths, batch, runs)
            code, file = median["f-code"] / median["e"], median["f-file"] / median["e"]
            rows.append({"batch": batch, "median_s": median, "code_ratio": code, "file_ratio": file,
                         "file_over_code": file / code, "met": abs(file / code - 1) <= GOAL})  # fmt: skip
            print(f"{name} batch {batch}: (f-code)/(e) {code:.3f}, (f-file)/(e) {file:.3f}", flush=True)
    return {"name": name, "model": name, "layers": layers, "runs": runs, "same_op_counts": same_ops, "rows": rows}


def main() -> None:
    args, results, info = run_study(__doc__.splitlines()[0], list(CONFIGS), 30, run, OUT)
    lines = [
        "# A graph built from an ONNX file: its cost over the file, beside the graph built from the code",
        "",
        "Reproduce: `python -m benchmarks.onnx_files.onnx_files` (about 4 minutes on 2 cores). onnxruntime, 2 threads "
        "without spinning, "
        f"{args.runs} interleaved rounds after 3 warm-up runs; median times; Grad-CAM++ at the default layer. Goal: "
        f"(f-file) ÷ (e) within {GOAL:.0%} of (f-code) ÷ (e). Machine: {machine_line(info)}.",
        "",
        "| model | layer (code / file) | same ops | batch | (e) file ms | (f-code) ÷ (e) | (f-file) ÷ (e) "
        "| file ÷ code | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            lines.append(
                f"| {result['model']} | `{result['layers'][0]}` / `{result['layers'][1]}` | "
                f"{'yes' if result['same_op_counts'] else 'no'} | {row['batch']} | "
                f"{row['median_s']['e'] * 1e3:.1f} | "
                f"{row['code_ratio']:.3f} | {row['file_ratio']:.3f} | {row['file_over_code']:.3f} | "
                f"{'✓' if row['met'] else '✗'} |"
            )
    (HERE / "onnx_files.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'onnx_files.md'}")


if __name__ == "__main__":
    main()
