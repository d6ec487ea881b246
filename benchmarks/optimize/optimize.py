"""Optimised graphs: do they pay?

Each variant of a camexport graph is timed against the graph as shipped (onnxruntime optimising it at load,
``ORT_ENABLE_ALL``), interleaved, and its outputs compared with the shipped graph's on real photos:

- ``offline-extended``: onnxruntime's optimised model saved at ``ORT_ENABLE_EXTENDED`` (portable), loaded
  with the full optimisation again.
- ``offline-all``: saved at ``ORT_ENABLE_ALL`` (includes this CPU's NCHWc layout: not portable), loaded with
  optimisation disabled: the load time is what it saves.
- ``onnxsim``: onnx-simplifier (constant folding and shape inference at the ONNX level), then as shipped.
- ``onnxscript``: onnxscript's optimizer (constant folding, dead code), then as shipped.
- ``fp16``: onnxconverter-common's float16 conversion, float32 inputs and outputs kept.
- ``int8``: onnxruntime's static QDQ quantisation (per-channel weights), calibrated on the photos.

A variant is worth shipping only if it is faster *and* its outputs are identical (offline, simplified) or
its heatmaps stay within the validation's tolerance (``heatmap`` 4e-3 absolute) with the same class.

Writes benchmarks/optimize/optimize.json and optimize.md.

Usage (from the repository root): python -m benchmarks.optimize.optimize [--runs 15] [--only GRAPH ...]
(installs nothing: needs ``pip install onnxsim onnxconverter-common`` besides camexport[build]; a missing one is
reported as such, not measured)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.harness.machine import machine, machine_line
from camexport.builder.comparison import TOLERANCES
from camexport.builder.pipeline import BuildOptions, build
from camexport.runtime.samples import SAMPLES
from camexport.runtime.session import CamSession

HERE = Path(__file__).resolve().parent
GRAPHS = {  # name: (model, layer, weights)
    "resnet18-layer4": ("resnet18", None, "random"),
    "resnet18-layer3": ("resnet18", "layer3", "random"),
    "efficientnet_lite0-bn2": ("efficientnet_lite0", None, "default"),
}
BATCHES = (1, 8)
THREADS = 2


@dataclass
class Variant:
    """One way of shipping a graph: the file, how to load it, and why it did not run (if it did not)."""

    name: str
    path: Path | None
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    missing: str = ""


@dataclass
class Row:
    graph: str
    variant: str
    load_ms: float
    mb: float
    batch_ms: dict[int, float]
    ratio: dict[int, float]
    same_class: bool
    identical: bool
    max_heatmap_diff: float
    max_logit_diff: float
    within_tolerance: bool
    note: str = ""


def session(path: Path, level: ort.GraphOptimizationLevel, save_to: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = level
    options.log_severity_level = 3
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _offline(graph: Path, folder: Path) -> list[Variant]:
    levels = ort.GraphOptimizationLevel
    extended, full = folder / "offline-extended.onnx", folder / "offline-all.onnx"
    session(graph, levels.ORT_ENABLE_EXTENDED, save_to=extended)
    session(graph, levels.ORT_ENABLE_ALL, save_to=full)
    return [Variant("offline-extended", extended), Variant("offline-all", full, levels.ORT_DISABLE_ALL)]


def _converted(name: str, graph: Path, folder: Path, convert: Callable[[onnx.ModelProto], onnx.ModelProto]) -> Variant:
    try:
        model = convert(onnx.load(str(graph)))
    except ImportError as exc:
        return Variant(name, None, missing=f"not installed ({exc.name})")
    except Exception as exc:  # a converter that cannot handle the graph is a finding, recorded as such
        return Variant(name, None, missing=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return Variant(name, path)


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ValueError("onnxsim's own check failed")
    return simplified


def _onnxscript(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 inside, float32 in and out (onnxconverter-common), then three repairs the converter misses.

    Graph outputs that inner nodes also read (``activations``) first get an Identity of their own (else the
    converter casts the tensor the inner nodes read to float32); after conversion, ``Cast`` to float32 and
    ``ConstantOfShape``'s value become float16, and the class score's ``ScatterElements`` (reduction add,
    which onnxruntime's CPU provider has no float16 kernel for) runs in float32 between two Casts.
    """
    from onnxconverter_common import float16

    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        node.input[:] = [f"{n}__inner" if n in outputs else n for n in node.input]
        node.output[:] = [f"{n}__inner" if n in outputs else n for n in node.output]
    model.graph.node.extend(onnx.helper.make_node("Identity", [f"{n}__inner"], [n]) for n in sorted(outputs))
    del model.graph.value_info[:]
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    nodes = []
    for node in converted.graph.node:
        nodes += _fp16_repaired(node) if not set(node.output) & outputs else [node]
    del converted.graph.node[:]
    converted.graph.node.extend(nodes)
    return converted


def _fp16_repaired(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    from onnx import TensorProto, helper, numpy_helper

    for attribute in node.attribute:  # (the converter's own output casts never come here)
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
            attribute.i = TensorProto.FLOAT16
        if node.op_type == "ConstantOfShape" and attribute.name == "value" and attribute.t.data_type == 1:
            attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float16)))
    if node.op_type == "ConstantOfShape" and not node.attribute:  # the default value is a float32 zero
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
    if node.op_type != "ScatterElements":
        return [node]
    data, indices, updates = node.input
    out = node.output[0]
    node.input[:] = [f"{data}__f32", indices, f"{updates}__f32"]
    node.output[:] = [f"{out}__f32"]
    return [
        helper.make_node("Cast", [data], [f"{data}__f32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [updates], [f"{updates}__f32"], to=TensorProto.FLOAT),
        node,
        helper.make_node("Cast", [f"{out}__f32"], [out], to=TensorProto.FLOAT16),
    ]


def _int8(graph: Path, folder: Path, calibration: list[dict[str, np.ndarray]]) -> Variant:
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    path = folder / "int8.onnx"
    try:
        prepared = folder / "int8-prepared.onnx"
        q.quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
        q.quantize_static(
            str(prepared), str(path), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
            weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QInt8,
        )  # fmt: skip
    except Exception as exc:  # recorded as a finding
        return Variant("int8", None, missing=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    return Variant("int8", path)


def variants(graph: Path, folder: Path, calibration: list[dict[str, np.ndarray]]) -> list[Variant]:
    return [
        Variant("as shipped", graph),
        *_offline(graph, folder),
        _converted("onnxsim", graph, folder, _onnxsim),
        _converted("onnxscript", graph, folder, _onnxscript),
        _converted("fp16", graph, folder, _fp16),
        _int8(graph, folder, calibration),
    ]


def runnable(variant: Variant, images: np.ndarray) -> Variant:
    """The variant, or one that says why onnxruntime cannot load or run it."""
    if variant.path is None:
        return variant
    try:
        session(variant.path, variant.level).run(None, feeds(images))
    except Exception as exc:  # recorded as a finding
        return Variant(variant.name, None, missing=f"onnxruntime cannot run it: {str(exc).splitlines()[0][-140:]}")
    return variant


def photo_batch(graph: Path) -> np.ndarray:
    """The bundled photos, prepared as the graph's metadata says."""
    camsession = CamSession(graph, threads=THREADS)
    return np.stack([camsession.prepare(load(), name)[1] for name, load in SAMPLES.items()])


def feeds(images: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": images, "target_class": np.full(len(images), -1, dtype=np.int64)}


def load_ms(variant: Variant, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session(variant.path, variant.level)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def timed(sessions: dict[str, ort.InferenceSession], images: np.ndarray, runs: int) -> dict[str, float]:
    """Median ms per batch of each session, the sessions interleaved round by round after 3 warm-ups."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(runs + 3):
        for name, running in sessions.items():
            start = time.perf_counter()
            running.run(["heatmap"], feeds(images))
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def compare(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict:
    heat = float(np.abs(outputs["heatmap"] - reference["heatmap"]).max())
    logits = float(np.abs(outputs["logits"] - reference["logits"]).max())
    same = bool((outputs["class_index"] == reference["class_index"]).all())
    finite = bool(np.isfinite(outputs["heatmap"]).all())
    return {
        "same_class": same,
        "identical": all(np.array_equal(outputs[k], reference[k]) for k in ("logits", "class_index", "heatmap")),
        "max_heatmap_diff": heat,
        "max_logit_diff": logits,
        "within_tolerance": same and finite and heat <= TOLERANCES["heatmap"],
    }


def measure_graph(name: str, graph: Path, runs: int, log: Callable[[str], None]) -> list[Row]:
    photos = photo_batch(graph)
    calibration = [feeds(photos[i : i + 1]) for i in range(len(photos))]
    with tempfile.TemporaryDirectory() as folder:
        made = [runnable(v, photos[:1]) for v in variants(graph, Path(folder), calibration)]
        ready = [v for v in made if v.path is not None]
        sessions = {v.name: session(v.path, v.level) for v in ready}
        names = ["logits", "class_index", "heatmap"]
        outputs = {n: dict(zip(names, s.run(names, feeds(photos)), strict=True)) for n, s in sessions.items()}
        loads = {v.name: load_ms(v) for v in ready}
        sizes = {v.name: v.path.stat().st_size / 1e6 for v in ready}
        batch_ms = {}
        for batch in BATCHES:
            images = np.resize(photos, (batch, *photos.shape[1:]))
            batch_ms[batch] = timed(sessions, images, runs)
            log(f"{name} batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in batch_ms[batch].items()))
    rows = []
    for v in made:
        if v.path is None:
            rows.append(Row(name, v.name, 0.0, 0.0, {}, {}, False, False, float("nan"), float("nan"), False, v.missing))
            continue
        ms = {b: batch_ms[b][v.name] for b in BATCHES}
        ratio = {b: ms[b] / batch_ms[b]["as shipped"] for b in BATCHES}
        same = compare(outputs["as shipped"], outputs[v.name])
        rows.append(Row(name, v.name, loads[v.name], sizes[v.name], ms, ratio, **same))
    return rows


def _cell(row: Row) -> str:
    if row.note:
        return f"| {row.graph} | {row.variant} | {row.note} |  |  |  |  |  |  |  |"
    speed = " | ".join(f"{row.batch_ms[b]:.1f} ({row.ratio[b]:.3f})" for b in BATCHES)
    verdict = "identical" if row.identical else ("within" if row.within_tolerance else "**outside**")
    return (
        f"| {row.graph} | {row.variant} | {row.mb:.1f} | {row.load_ms:.0f} | {speed} | "
        f"{'yes' if row.same_class else '**no**'} | {row.max_logit_diff:.2e} | {row.max_heatmap_diff:.2e} | {verdict} |"
    )


def report(rows: list[Row], runs: int, info: dict) -> str:
    return "\n".join(
        [
            "# Optimised graphs: measured against the graph as shipped",
            "",
            f"Reproduce: `python -m benchmarks.optimize.optimize --runs {runs}`. onnxruntime on CPU, {THREADS} "
            f"threads, {runs} interleaved rounds after 3 warm-ups; the photos are the {len(SAMPLES)} bundled ones "
            "(batch 8 repeats the first). Load ms: session creation, median of 3. Ratio: time over the shipped "
            "graph's. Outputs compared with the shipped graph's on the photos; heatmap tolerance "
            f"{TOLERANCES['heatmap']} (the validation's). Machine: {machine_line(info)}.",
            "",
            "| graph | variant | MB | load ms | batch 1 ms (ratio) | batch 8 ms (ratio) | same class | max logit Δ "
            "| max heatmap Δ | outputs |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(_cell(row) for row in rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", nargs="*", default=list(GRAPHS), choices=list(GRAPHS))
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only:
            model, layer, weights = GRAPHS[name]
            path = Path(folder) / f"{name}.onnx"
            print(f"== build {name}", flush=True)
            build(BuildOptions(model=model, layer=layer, weights=weights, output=path), log=lambda _l: None)
            rows += measure_graph(name, path, args.runs, lambda line: print(line, flush=True))
    info = machine()
    (HERE / "optimize.json").write_text(
        json.dumps({"machine": info, "runs": args.runs, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    (HERE / "optimize.md").write_text(report(rows, args.runs, info))
    print(f"wrote {HERE / 'optimize.md'}")


if __name__ == "__main__":
    main()
