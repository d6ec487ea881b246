"""Coverage sweep: build every torchvision classifier (random weights) at its default layer.

Each model is built in its own process (``camexport build NAME --weights random``) with a time limit, so a
crash, an out-of-memory kill or a hang costs one row, not the sweep. The JSON report of each build gives
the default layer, the timings, the graph size and the validation diffs (onnxruntime vs the eager
reference on random inputs that were not the tracing example). Results: ``benchmarks/coverage/coverage.md`` and
``coverage.json`` beside it (or in ``--out``).

Usage (from the repository root):
python -m benchmarks.coverage.coverage [--models PATTERN ...] [--timeout SECONDS] [--out DIR]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness.machine import machine, machine_line

HERE = Path(__file__).resolve().parent


def torchvision_models() -> list[str]:
    """Every torchvision classifier, smallest first (by the weights' parameter count)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    size = {n: torchvision.models.get_model_weights(n).DEFAULT.meta["num_params"] for n in names}
    return sorted(names, key=lambda n: (size[n], n))


def build_one(name: str, folder: Path, timeout: int) -> dict:
    graph = folder / f"{name}.onnx"
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "camexport.cli", "build", name, "--weights", "random", "--output", str(graph)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        code, stderr = result.returncode, result.stderr
    except subprocess.TimeoutExpired:
        code, stderr = None, f"timed out after {timeout} s"
    wall = time.perf_counter() - started
    row: dict = {"model": name, "wall_s": round(wall, 1)}
    report_path = graph.with_suffix(".json")
    if code == 0 and report_path.exists():
        report = json.loads(report_path.read_text())
        diffs = [
            c["max_abs_diff"]
            for case in report["validation"]["cases"]
            for c in case["checks"]
            if c["name"] == "heatmap"
        ]
        row.update(
            status="ok",
            layer=report["layer"],
            build_s=round(sum(report["timings_s"].values()), 1),
            graph_mb=round(report["graph_bytes"] / 1e6, 1),
            external_data=bool(report.get("external_data")),
            max_heatmap_diff=max(diffs),
            reason="",
        )
    else:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {code}"
        if code in (-9, 137):
            reason = "killed (out of memory on this 24 GB machine)"
        row.update(
            status="failed",
            layer="",
            build_s=None,
            graph_mb=None,
            max_heatmap_diff=None,
            reason=reason.replace("camexport: error: ", "")[:300],
        )
    for path in (graph, graph.with_name(graph.name + ".data"), report_path):  # .data: ONNX external weights
        path.unlink(missing_ok=True)
    return row


def write_tables(rows: list[dict], out: Path, total: int) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    info = machine()
    versions, where = info["versions"], machine_line(info)
    (out / "coverage.json").write_text(json.dumps({"machine": where, "versions": versions, "rows": rows}, indent=2))
    lines = [
        "# Coverage: torchvision classifiers (random weights, default layer, Grad-CAM++)",
        "",
        f"Built and validated: **{len(ok)} of {len(rows)}** swept ({total} torchvision classifiers in all).",
        f"Machine: {where}.",
        "Reproduce: `python -m benchmarks.coverage.coverage`. Max heatmap diff: onnxruntime vs the eager reference,",
        "over build's validation cases (random inputs at batch 3 and 1; tracing used 2).",
        "",
        "| model | status | default layer | build s | graph MB | max heatmap diff | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "" if r["max_heatmap_diff"] is None else f"{r['max_heatmap_diff']:.1e}"
        lines.append(
            f"| {r['model']} | {r['status']} | {r['layer']} | {r['build_s'] or ''} | {r['graph_mb'] or ''} | "
            f"{diff} | {r['reason'].replace('|', '/')} |"
        )
    external = [r["model"] for r in ok if r.get("external_data")]
    if external:
        lines += ["", f"Weights in ONNX external data (`<graph>.onnx.data`, over 1.5 GB): {', '.join(external)}."]
    slowest = sorted(ok, key=lambda r: -r["build_s"])[:5]
    lines += ["", "Slowest builds: " + ", ".join(f"{r['model']} {r['build_s']} s" for r in slowest) + "."]
    (out / "coverage.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["*"], help="shell patterns (default: all)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    names = torchvision_models()
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.models)]
    # Rows of models not swept this time are kept from the previous coverage.json, in model order.
    previous = args.out / "coverage.json"
    kept = {r["model"]: r for r in json.loads(previous.read_text())["rows"]} if previous.exists() else {}
    with tempfile.TemporaryDirectory() as folder:
        for name in chosen:
            row = build_one(name, Path(folder), args.timeout)
            kept[name] = row
            print(f"{name}: {row['status']} {row['wall_s']} s {row['reason']}", flush=True)
            write_tables([kept[n] for n in names if n in kept], args.out, len(names))


if __name__ == "__main__":
    main()
