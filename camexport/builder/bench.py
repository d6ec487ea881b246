"""``camexport bench``: the explanation's cost next to plain inference, eager autograd and the CAM libraries.

Contenders, all on the same inputs, thread count and machine:

* ``a_eager``: eager PyTorch inference, no gradients (logits only);
* ``b_eager_gradcampp``: eager PyTorch Grad-CAM++ (forward with a hook, ``autograd.grad``, the formulas,
  bilinear upsampling and min-max to the input size), float32;
* ``c_pytorch_grad_cam``: pytorch-grad-cam's ``GradCAMPlusPlus`` (heatmaps at input size);
* ``d_torchcam``: torchcam's ``GradCAMpp``, upsampled to input size with ``F.interpolate``;
* ``e_ort_plain``: onnxruntime running the plain model's ONNX graph (logits only);
* ``f_ort_camexport``: onnxruntime running the camexport graph (logits, class, heatmap, ...);
* ``g_openvino_plain`` and ``h_openvino_camexport``: the same two graphs in OpenVINO's CPU plugin, read from
  the .onnx files, in float32 (``pip install 'camexport[openvino]'``; CPU only).

For each batch size: a warm-up, then rounds in which every contender runs once, in an order that rotates
from round to round, so that machine drift hits all alike, with a short pause after each run (see
``BenchConfig.pause_s``); the median and interquartile range of each
contender's times. Peak memory is measured per contender and batch size in a fresh process (the peak
resident memory of two runs above what the ready model, session and batch hold).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from camexport._util import quiet
from camexport.builder.flops import FlopIdeal, flop_ideal
from camexport.builder.methods import CAMS, normalised_heatmap
from camexport.errors import UserError
from camexport.runtime.session import resolve_providers

CONTENDERS = (
    "a_eager",
    "b_eager_gradcampp",
    "c_pytorch_grad_cam",
    "d_torchcam",
    "e_ort_plain",
    "f_ort_camexport",
    "g_openvino_plain",
    "h_openvino_camexport",
)
DESCRIPTIONS = {
    "a_eager": "eager PyTorch, inference only (no heatmap)",
    "b_eager_gradcampp": "eager PyTorch Grad-CAM++ (forward + autograd)",
    "c_pytorch_grad_cam": "pytorch-grad-cam GradCAMPlusPlus",
    "d_torchcam": "torchcam GradCAMpp (+ upsampling)",
    "e_ort_plain": "onnxruntime, plain model ONNX (no heatmap)",
    "f_ort_camexport": "onnxruntime, camexport graph (heatmap)",
    "g_openvino_plain": "OpenVINO, plain model ONNX (no heatmap)",
    "h_openvino_camexport": "OpenVINO, camexport graph (heatmap)",
}
# What the memory column measures, said wherever it is shown.
MEMORY_NOTE = (
    "Added peak RSS: in a fresh process per contender and batch, the peak resident memory (Linux VmHWM) of two "
    "runs minus the resident memory once the model, session and batch were ready, in MB (the run's own "
    "working memory, not the model's)."
)


@dataclass(frozen=True)
class Target:
    """A ratio of two contenders' median times, checked against a limit in the report."""

    numerator: str
    denominator: str
    limit: float
    at_most: bool  # the ratio must stay ≤ limit (an overhead), else reach ≥ limit (a speed-up)
    why: str = ""  # where the limit comes from, when it is not a plain number

    @property
    def label(self) -> str:
        bound = f"{'≤' if self.at_most else '≥'} {self.limit:g}"
        return f"({self.numerator[0]}) ÷ ({self.denominator[0]}) {bound}" + (f" ({self.why})" if self.why else "")

    def met(self, ratio: float) -> bool:
        return ratio <= self.limit if self.at_most else ratio >= self.limit


# The targets of issue 5, and the same overhead bound for the graph in OpenVINO.
TARGETS = (
    Target("f_ort_camexport", "e_ort_plain", 1.05, at_most=True),
    Target("c_pytorch_grad_cam", "f_ort_camexport", 6.0, at_most=False),
    Target("b_eager_gradcampp", "f_ort_camexport", 2.0, at_most=False),
    Target("h_openvino_camexport", "g_openvino_plain", 1.05, at_most=True),
)


@dataclass
class Timing:
    """One contender at one batch size."""

    contender: str
    batch: int
    times_s: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    skipped: str = ""

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s)) if self.times_s else float("nan")

    @property
    def iqr_s(self) -> float:
        if not self.times_s:
            return float("nan")
        q1, q3 = np.percentile(self.times_s, [25, 75])
        return float(q3 - q1)

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s if self.times_s else float("nan")

    def as_dict(self) -> dict:
        return {
            "contender": self.contender,
            "batch": self.batch,
            "median_ms": round(self.median_s * 1e3, 3),
            "iqr_ms": round(self.iqr_s * 1e3, 3),
            "images_per_s": round(self.images_per_s, 2),
            "peak_mb": self.peak_mb,
            "runs": len(self.times_s),
            "skipped": self.skipped,
        }


@dataclass
class BenchConfig:
    """What to measure."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    runs: int = 15
    warmup: int = 3
    threads: int = 0
    provider: str = "cpu"
    contenders: tuple[str, ...] = CONTENDERS
    seed: int = 0
    memory: bool = True
    # Between two timed runs: onnxruntime's and OpenMP's worker threads spin after a run, and a contender
    # started while the previous one's threads still spin runs up to 10x slower (resnet18 eager: 274 ms
    # instead of 25 ms right after an onnxruntime run). A pause lets them go idle, so each run starts on a
    # quiet machine with its runtime's default settings.
    pause_s: float = 0.05

    def check(self) -> None:
        """Raises UserError for a bad setting."""
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UserError(f"batch_sizes={list(self.batch_sizes)}: use positive integers")
        if self.runs < 3:
            raise UserError(f"runs={self.runs}: use 3 or more (a median and quartiles need several runs)")
        for name in ("warmup", "threads"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}={getattr(self, name)}: use 0 or more")
        unknown = [c for c in self.contenders if c not in CONTENDERS]
        if unknown:
            raise UserError(f"contenders={','.join(unknown)!r}: unknown; choose from {', '.join(CONTENDERS)}")


def _eager_gradcampp(model: nn.Module, layer: str, method: str) -> Callable[[torch.Tensor], object]:
    """(b): eager Grad-CAM++ (or the graph's first ``method``) in float32, the same formulas as the graph, run by
    autograd."""
    module = model.get_submodule(layer)
    cam_of = CAMS[method]

    def run(image: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.enable_grad():
                logits = model(image)
                score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                (grads,) = torch.autograd.grad(score, captured[-1])
        finally:
            handle.remove()
        activations = captured[-1].detach()
        cam = cam_of(activations, grads)
        return normalised_heatmap(cam, tuple(image.shape[-2:]))

    return run


def _pytorch_grad_cam(model: nn.Module, layer: str) -> Callable[[torch.Tensor], object]:
    from pytorch_grad_cam import GradCAMPlusPlus

    cam = GradCAMPlusPlus(model=model, target_layers=[model.get_submodule(layer)])

    def run(image: torch.Tensor) -> np.ndarray:
        return cam(input_tensor=image, targets=None)

    return run


def _torchcam(model: nn.Module, layer: str, size: tuple[int, int]) -> Callable[[torch.Tensor], object]:
    from torchcam.methods import GradCAMpp

    with quiet():
        extractor = GradCAMpp(model, target_layer=layer, input_shape=(3, *size))

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            scores = model(image)
            classes = scores.argmax(1).tolist()
            (cams,) = extractor(classes, scores)
        return F.interpolate(cams[:, None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)

    return run


def _ort_session(path: Path, threads: int, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=resolve_providers(provider))


def export_plain(model: nn.Module, size: tuple[int, int], path: Path) -> Path:
    """(e)'s graph: the plain model exported by torch.onnx (dynamo) with a dynamic batch."""
    example = torch.zeros(2, 3, *size)
    with quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    return path


@dataclass(frozen=True)
class Subject:
    """What the contenders explain: the layer and method(s), camexport's graph, the plain model's graph, the
    input size. With the model itself, this is everything a contender is made from."""

    layer: str
    methods: tuple[str, ...]
    graph: Path
    plain: Path
    size: tuple[int, int]

    def as_spec(self) -> dict:
        """JSON-ready, for :func:`peak_memory_mb`'s fresh process (see :meth:`from_spec`)."""
        return {
            **asdict(self),
            "methods": list(self.methods),
            "graph": str(self.graph),
            "plain": str(self.plain),
            "size": list(self.size),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> Subject:
        return cls(spec["layer"], tuple(spec["methods"]), Path(spec["graph"]), Path(spec["plain"]), tuple(spec["size"]))


def peak_memory_mb(spec: dict) -> float:
    """Peak resident memory of one contender's run, measured in a fresh process (so that what other
    contenders allocated does not hide it): the peak resident memory (Linux VmHWM, reset once the model,
    session and batch are ready) of two runs, minus the memory held at that point, in MB; NaN where the
    measurement is not possible (not Linux).

    ``spec``: :meth:`Subject.as_spec` plus model, weights, batch, contender, threads, provider.
    """
    code = (
        "import json, sys; from camexport.builder.bench import _peak_in_this_process; "
        "print(json.dumps(_peak_in_this_process(json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        return float("nan")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def _peak_in_this_process(spec: dict) -> float:
    from camexport.builder.registry import load_model

    torch.set_num_threads(spec["threads"])
    subject = Subject.from_spec(spec)
    model = load_model(spec["model"], spec["weights"]).module
    config = BenchConfig(threads=spec["threads"], provider=spec["provider"], contenders=(spec["contender"],))
    run = _contender(spec["contender"], model, subject, config)
    batch = np.random.default_rng(0).standard_normal((spec["batch"], 3, *subject.size)).astype(np.float32)
    ready = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak (VmHWM) to the current RSS
    for _ in range(2):
        run(batch)
    return round(max(status_mb("VmHWM") - ready, 0.0), 1)


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_contenders(
    model: nn.Module, subject: Subject, config: BenchConfig
) -> dict[str, Callable[[np.ndarray], object] | str]:
    """Each contender as ``run(batch)``; a string instead says why it is skipped."""
    made: dict[str, Callable[[np.ndarray], object] | str] = {}
    for name in config.contenders:
        try:
            made[name] = _contender(name, model, subject, config)
        except ImportError as exc:
            made[name] = f"not installed ({exc.name})"
        except RuntimeError as exc:  # a contender that cannot run here (OpenVINO on a GPU run)
            made[name] = str(exc)
    return made


def _contender(name: str, model: nn.Module, subject: Subject, config: BenchConfig) -> Callable[[np.ndarray], object]:
    layer, size = subject.layer, subject.size
    device = torch.device("cuda" if config.provider == "cuda" else "cpu")
    # As a user holds a model eagerly: parameters that require gradients (what the CAM libraries expect).
    on_device = copy.deepcopy(model).to(device).eval().requires_grad_(True)

    def torch_input(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch).to(device)

    def synced(fn: Callable[[torch.Tensor], object]) -> Callable[[np.ndarray], object]:
        def run(batch: np.ndarray) -> object:
            out = fn(torch_input(batch))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        return run

    if name == "a_eager":

        def infer(image: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return on_device(image)

        return synced(infer)
    if name == "b_eager_gradcampp":
        return synced(_eager_gradcampp(on_device, layer, subject.methods[0]))
    if name == "c_pytorch_grad_cam":
        return synced(_pytorch_grad_cam(on_device, layer))
    if name == "d_torchcam":
        return synced(_torchcam(on_device, layer, size))
    # The camexport graph's target_class is required (contract 2): [-1], each image's top-1; the plain graph has none.
    target = {} if name.endswith("_plain") else {"target_class": np.array([-1], dtype=np.int64)}
    path = subject.plain if name.endswith("_plain") else subject.graph
    if name.startswith("g_") or name.startswith("h_"):
        compiled = _openvino_model(path, config.threads, config.provider)
        return lambda batch: compiled({"image": batch, **target})
    session = _ort_session(path, config.threads, config.provider)
    names = [o.name for o in session.get_outputs()]
    return lambda batch: session.run(names, {"image": batch, **target})


def _openvino_model(path: Path, threads: int, provider: str) -> Callable[[dict], object]:
    """OpenVINO's CPU plugin on the .onnx file, float32 (its default on CPUs with bfloat16 units is bfloat16)."""
    import openvino

    if provider != "cpu":
        raise RuntimeError("CPU only (OpenVINO's CPU plugin)")
    settings = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    return openvino.Core().compile_model(str(path), "CPU", settings)


def measure(
    contenders: dict[str, Callable[[np.ndarray], object] | str],
    size: tuple[int, int],
    config: BenchConfig,
    log: Callable[[str], None] = print,
    memory: dict | None = None,
) -> list[Timing]:
    """Times every contender at every batch size (interleaved rounds); with ``memory`` (the spec of
    :func:`peak_memory_mb` but for batch and contender), also each one's peak memory in its own process."""
    rng = np.random.default_rng(config.seed)
    timings: list[Timing] = []
    for batch_size in config.batch_sizes:
        batch = rng.standard_normal((batch_size, 3, *size)).astype(np.float32)
        rows = {name: Timing(name, batch_size) for name in contenders}
        runnable = [name for name, run in contenders.items() if callable(run)]
        for name, run in contenders.items():
            if not callable(run):
                rows[name].skipped = run
        for name in runnable:
            for _ in range(config.warmup):
                contenders[name](batch)
            time.sleep(config.pause_s)
        for round_index in range(config.runs):
            shift = round_index % max(len(runnable), 1)
            for name in runnable[shift:] + runnable[:shift]:
                start = time.perf_counter()
                contenders[name](batch)
                rows[name].times_s.append(time.perf_counter() - start)
                time.sleep(config.pause_s)
        if memory is not None:
            for name in runnable:
                rows[name].peak_mb = peak_memory_mb({**memory, "batch": batch_size, "contender": name})
        for row in rows.values():
            if row.times_s:
                log(f"  batch {batch_size:>3} {row.contender:20} median {row.median_s * 1e3:9.2f} ms")
        timings += rows.values()
    return timings


def ideal_target(ideal: FlopIdeal, slack: float) -> Target:
    """(f) ÷ (e) within ``slack`` of the FLOP-ideal ratio (issue 14: 1.03 at a model's default layer, 1.05 at
    an inner one)."""
    why = f"{slack:g} × FLOP-ideal {ideal.ratio:.3f}"
    return Target("f_ort_camexport", "e_ort_plain", round(slack * ideal.ratio, 3), at_most=True, why=why)


def ratios(timings: list[Timing], targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """The targets per batch size: the measured ratio of medians and whether it is met."""
    by = {(t.contender, t.batch): t for t in timings if t.times_s}
    checks = []
    for target in targets:
        for batch in sorted({t.batch for t in timings}):
            if (target.numerator, batch) not in by or (target.denominator, batch) not in by:
                continue
            value = by[target.numerator, batch].median_s / by[target.denominator, batch].median_s
            checks.append({"target": target.label, "batch": batch, "ratio": round(value, 3), "met": target.met(value)})
    return checks


def machine() -> dict:
    """CPU model, cores, memory, Python, GPU (if torch sees one), onnxruntime providers, package versions."""
    cpu = platform.processor() or platform.machine()
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    memory = None
    if meminfo.exists():
        total = [line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")]
        memory = round(int(total[0]) / 1024**2, 1) if total else None
    versions = {}
    packages = (
        "camexport",
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "openvino",
        "grad-cam",
        "torchcam",
    )
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "onnxruntime_providers": ort.get_available_providers(),
        "versions": versions,
    }


def machine_line(info: dict | None = None) -> str:
    """One line for a report: CPU, cores, memory, Python, versions."""
    info = info or machine()
    memory = f", {info['memory_gb']} GB RAM" if info.get("memory_gb") else ""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return f"{info['cpu']}, {info['cores']} cores{memory}{gpu}, Python {info['python']}; {versions}"


def report_markdown(result: dict) -> str:
    """The Markdown table of one bench run."""
    lines = [
        f"### {result['model']} — layer `{result['layer']}`, {result['method']}, {result['image_size'][0]}×"
        f"{result['image_size'][1]}, {result['threads']} threads, {result['provider']}",
        "",
        f"Graph: {result['graph_mb']} MB, built in {result['build_s']} s. {result['runs']} interleaved rounds "
        f"after {result['warmup']} warm-up runs; median and interquartile range (IQR) per batch. Machine: "
        f"{machine_line(result['machine'])}. {MEMORY_NOTE}",
        "",
        *_flops_line(result),
        "| contender | batch | median ms | IQR ms | images/s | added peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["timings"]:
        if row["skipped"]:
            lines.append(f"| {DESCRIPTIONS[row['contender']]} | {row['batch']} | {row['skipped']} | | | |")
            continue
        lines.append(
            f"| {DESCRIPTIONS[row['contender']]} | {row['batch']} | {row['median_ms']:.2f} | {row['iqr_ms']:.2f} | "
            f"{row['images_per_s']:.1f} | {row['peak_mb']} |"
        )
    lines += ["", "| target | batch | measured | met |", "|---|---|---|---|"]
    for check in result["targets"]:
        lines.append(
            f"| {check['target']} | {check['batch']} | {check['ratio']:.3f} | {'yes' if check['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _flops_line(result: dict) -> list[str]:
    if "flops" not in result:  # results written before the FLOP-ideal existed
        return []
    flops = result["flops"]
    return [
        f"FLOP-ideal (camexport.builder.flops): forward {flops['forward_macs'] / 1e9:.3f} GMACs per image, input "
        f"gradient down to the layer {flops['gradient_macs'] / 1e9:.3f} GMACs: (f) ÷ (e) ≥ {flops['ratio']:.3f} "
        "for any graph that computes them.",
        "",
    ]


def report_terminal(result: dict) -> str:
    """A plain-text table for the terminal."""
    lines = [f"{'contender':46} {'batch':>5} {'median ms':>10} {'IQR ms':>8} {'img/s':>8} {'+peak MB':>8}"]
    for row in result["timings"]:
        label = DESCRIPTIONS[row["contender"]]
        if row["skipped"]:
            lines.append(f"{label:46} {row['batch']:>5} {row['skipped']}")
        else:
            lines.append(
                f"{label:46} {row['batch']:>5} {row['median_ms']:>10.2f} {row['iqr_ms']:>8.2f} "
                f"{row['images_per_s']:>8.1f} {row['peak_mb']!s:>8}"
            )
    for check in result["targets"]:
        lines.append(
            f"target {check['target']} at batch {check['batch']}: {check['ratio']:.3f} "
            f"({'met' if check['met'] else 'MISSED'})"
        )
    lines.append(f"+peak MB: {MEMORY_NOTE}")
    return "\n".join(lines)


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
    slack: float = 1.03,
) -> dict:
    """Exports the plain model, measures every contender, and returns the JSON-ready result.

    With ``weights`` (how :func:`camexport.builder.registry.load_model` gets the same model again), each
    contender's peak memory is measured in a fresh process; without, it is left out. ``slack``: how far over
    the FLOP-ideal ratio (:mod:`camexport.builder.flops`) the (f) ÷ (e) target allows.
    """
    config.check()
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    config = BenchConfig(**{**asdict(config), "threads": threads})
    with tempfile.TemporaryDirectory() as folder:
        log("export the plain model to ONNX for (e)...")
        plain = export_plain(loaded_model, size, Path(folder) / "plain.onnx")
        subject = Subject(layer, methods, graph, plain, size)
        contenders = make_contenders(loaded_model, subject, config)
        memory = None
        if weights is not None and config.memory:
            memory = {
                **subject.as_spec(),
                "model": model_name,
                "weights": weights,
                "threads": threads,
                "provider": config.provider,
            }
        timings = measure(contenders, size, config, log, memory)
    ideal = flop_ideal(loaded_model, layer, size)
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
    from camexport._util import write_atomically
    from camexport.builder.pipeline import BuildOptions, build, model_slug
    from camexport.builder.registry import load_model

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
        slack = 1.03 if layer is None else 1.05  # issue 14: the default layer, or an inner one
        result = run_bench(
            loaded.module, model, built.layer, methods, built.graph, built.summary, size, config, log, weights, slack
        )
    name = f"{model_slug(model)}-{built.layer.replace('.', '_')}-{'+'.join(methods)}-{config.provider}"
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    write_atomically(json_path, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomically(md_path, lambda p: p.write_text(report_markdown(result)))
    return result, json_path, md_path
