"""The speed benchmark: the explanation's cost next to plain inference, eager autograd and the CAM libraries.

:func:`bench_model` builds a model's camexport graph, exports the plain model, times the eight contenders
(:mod:`benchmarks.harness.contenders`) in interleaved rounds (:mod:`benchmarks.harness.timing`), checks the
targets (:mod:`benchmarks.harness.report`) and writes ``<name>.json`` and ``<name>.md``. ``python -m
benchmarks.speed MODEL`` runs it from the command line.

A result's JSON holds: model, layer, method, image_size, threads, provider, runs, warmup, batch_sizes, graph,
graph_mb, build_s, machine (:mod:`benchmarks.harness.machine`), timings (one row per contender and batch:
contender, batch, median_ms, iqr_ms, images_per_s, peak_mb, runs, skipped), flops (forward_macs, gradient_macs,
ratio) and targets (target, batch, ratio, met).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from benchmarks.harness.contenders import Subject, export_plain, graph_channels, make_contenders
from benchmarks.harness.flops import flop_ideal
from benchmarks.harness.machine import machine
from benchmarks.harness.report import (
    SLACK_DEFAULT_LAYER,
    SLACK_INNER_LAYER,
    TARGETS,
    ideal_target,
    ratios,
    report_markdown,
)
from benchmarks.harness.timing import BenchConfig, measure
from camexport._util import write_atomically


def run_bench(
    loaded_model: nn.Module,
    model_name: str,
    layer: str,
    methods: tuple[str, ...],
    graph: Path,
    build_report: dict,
    size: tuple[int, int],
    config: BenchConfig,
    log: Callable[[str], None] = print,
    weights: str | None = None,
    slack: float = SLACK_DEFAULT_LAYER,
) -> dict:
    """Exports the plain model, measures every contender on images of the graph's channels, and returns the
    JSON-ready result.

    With ``weights`` (how :func:`camexport.builder.sources.load_model` gets the same model again), each
    contender's peak memory is measured in a fresh process; without, it is left out. ``slack``: how far over
    the FLOP-ideal ratio (:mod:`benchmarks.harness.flops`) the (f) ÷ (e) target allows.
    """
    config.check()
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    config = BenchConfig(**{**asdict(config), "threads": threads})
    channels = graph_channels(graph)
    with tempfile.TemporaryDirectory() as folder:
        log("export the plain model to ONNX for (e)...")
        plain = export_plain(loaded_model, size, Path(folder) / "plain.onnx", channels)
        subject = Subject(layer, methods, graph, plain, size, channels)
        contenders = make_contenders(loaded_model, subject, config.contenders, threads, config.provider)
        memory = None
        if weights is not None and config.memory:
            memory = {**subject.as_spec(), "model": model_name, "weights": weights}
            memory |= {"threads": threads, "provider": config.provider}
        timings = measure(contenders, subject.image_shape, config, log, memory)
    ideal = flop_ideal(loaded_model, layer, size, channels)
    return {
        "model": model_name,
        "layer": layer,
        "method": ",".join(methods),
        "image_size": list(size),
        "threads": threads,
        "provider": config.provider,
        "runs": config.runs,
        "warmup": config.warmup,
        "batch_sizes": list(config.batch_sizes),
        "graph": str(graph),
        "graph_mb": round(build_report.get("graph_bytes", graph.stat().st_size) / 1e6, 1),
        "build_s": round(sum(build_report.get("timings_s", {}).values()), 1),
        "machine": machine(),
        "timings": [t.as_dict() for t in timings],
        "flops": ideal.as_dict(),
        "targets": ratios(timings, (*TARGETS, ideal_target(ideal, slack))),
    }


def bench_model(
    model: str,
    layer: str | None,
    methods: tuple[str, ...],
    weights: str,
    config: BenchConfig,
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> tuple[dict, Path, Path]:
    """Builds the graph (timed), runs :func:`run_bench`, writes ``<name>.json`` and ``<name>.md`` to ``out_dir``.

    Returns:
        The result and the two paths written.
    """
    from camexport.builder.pipeline import BuildOptions, build, model_slug
    from camexport.builder.sources import load_model

    config.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        log(f"build {model} ({layer or 'default layer'}, {','.join(methods)}, weights {weights})...")
        built = build(
            BuildOptions(model=model, layer=layer, methods=methods, weights=weights, output=Path(folder) / "g.onnx"),
            log=lambda _line: None,
        )
        loaded = load_model(model, weights)
        size = tuple(built.summary["image_size"])
        slack = SLACK_DEFAULT_LAYER if layer is None else SLACK_INNER_LAYER
        result = run_bench(
            loaded.module, model, built.layer, methods, built.graph, built.summary, size, config, log, weights, slack
        )
    name = f"{model_slug(model)}-{built.layer.replace('.', '_')}-{'+'.join(methods)}-{config.provider}"
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    write_atomically(json_path, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomically(md_path, lambda p: p.write_text(report_markdown(result)))
    return result, json_path, md_path
