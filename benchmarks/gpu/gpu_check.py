"""camexport on a CUDA GPU: the session's answers against the CPU's, then the speed tables.

1. Builds resnet18 (random weights) and efficientnet_lite0 (real weights).
2. ``CamSession(provider="cuda")`` against ``"cpu"``: the same explained class and heatmaps within 1e-3, on the
   real photos of scikit-image and matplotlib and on random batches.
3. the speed benchmark (``python -m benchmarks.speed --provider cuda``) for both at batch 1, 8, 32 and 128, the
   eager contenders on the GPU too (OpenVINO's rows are CPU-only and say so): ``benchmarks/gpu/results/<name>.json``
   and ``.md``, and ``benchmarks/gpu/bench-cuda.md`` with the GPU's name.

Needs torch with CUDA and onnxruntime-gpu (``pip install 'camexport[gpu]'`` in place of onnxruntime). On a
machine without them it says so in one line and exits 0. Meant to finish within 8 minutes on a modern GPU.

Usage (from the repository root): python -m benchmarks.gpu.gpu_check [--runs 10] [--out benchmarks/gpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = (("resnet18", "random"), ("efficientnet_lite0", "default"))
HEATMAP_TOLERANCE = 1e-3


def missing_cuda() -> str | None:
    """Why CUDA cannot be checked here, or None."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'camexport[build]')"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def compare(graph: Path, log, providers: tuple[str, str] = ("cpu", "cuda")) -> list[str]:
    """The second provider against the first on real photos and random batches; returns the failures (empty:
    all agree)."""
    from camexport.runtime.samples import SAMPLES, sample_photo
    from camexport.runtime.session import CamSession

    cpu, cuda = (CamSession(graph, provider=provider) for provider in providers)
    photos = [cpu.prepare(sample_photo(name))[1] for name in SAMPLES]
    rng = np.random.default_rng(0)
    batches = [np.stack(photos), *(rng.standard_normal((n, *photos[0].shape)).astype(np.float32) for n in (1, 8, 32))]
    failures = []
    for i, batch in enumerate(batches):
        ours, theirs = cpu.run(batch), cuda.run(batch)
        worst = float(np.abs(ours["heatmap"] - theirs["heatmap"]).max())
        same = ours["class_index"].tolist() == theirs["class_index"].tolist()
        log(f"  {graph.name} batch {i} ({len(batch)} images): classes equal {same}, heatmap max diff {worst:.2e}")
        if not same or worst > HEATMAP_TOLERANCE:
            failures.append(f"{graph.name} batch {i}: classes equal {same}, heatmap max diff {worst:.2e}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    reason = missing_cuda()
    if reason:
        print(f"gpu_check: no CUDA here ({reason}); nothing measured")
        return 0
    import torch

    from benchmarks.harness.bench import bench_model
    from benchmarks.harness.report import report_markdown
    from benchmarks.harness.timing import BenchConfig
    from camexport.builder.pipeline import BuildOptions, build

    started, log = time.monotonic(), (lambda line: print(line, flush=True))
    gpu = torch.cuda.get_device_name(0)
    log(f"GPU: {gpu}")
    failures, tables = [], []
    with tempfile.TemporaryDirectory() as folder:
        for model, weights in MODELS:
            built = build(
                BuildOptions(model=model, weights=weights, output=Path(folder) / f"{model}.onnx"), log=lambda _: None
            )
            failures += compare(built.graph, log)
        config = BenchConfig(batch_sizes=(1, 8, 32, 128), runs=args.runs, warmup=3, provider="cuda", memory=False)
        for model, weights in MODELS:
            result, _, _ = bench_model(model, None, ("gradcampp",), weights, config, args.out / "results", log)
            tables.append(report_markdown(result))
    lines = [
        "# Speed benchmark (cuda)",
        "",
        f"GPU: {gpu}. Reproduce: `python -m benchmarks.gpu.gpu_check` ({time.monotonic() - started:.0f} s here). CUDA "
        f"session against CPU: {'all agree' if not failures else '; '.join(failures)} (same class, heatmap "
        f"within {HEATMAP_TOLERANCE:g}).",
        "",
        *tables,
    ]
    (args.out / "bench-cuda.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out / 'bench-cuda.md'} in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
