"""The build pipeline: load → find layer → trace → export → validate → write (atomically) + JSON report.

:func:`build` runs the named steps below in order; each step reads and extends one :class:`_Build`.
"""

from __future__ import annotations

import json
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import EncodeError
from torch import nn

from camexport import __version__
from camexport._util import first_line, removing_new_folders, sha256_of, sweep_staged, write_atomically
from camexport.builder.comparison import TOLERANCES, Case, CaseResult, results_as_dict
from camexport.builder.coverage import uncovered_nodes
from camexport.builder.detection import (
    FD_CHECK,
    default_detection_layer,
    detection_layer,
    detection_parts,
    trace_detector,
)
from camexport.builder.detection import validate as validate_detections
from camexport.builder.detectors import DETECTORS, Postprocess, is_detector
from camexport.builder.export import (
    EXTERNAL_DATA_BYTES,
    check_opset,
    data_path,
    finalise,
    needs_external_data,
    save_graph,
    to_onnx,
)
from camexport.builder.layers import LayerInfo, count_logits, default_layer, input_channels, probe_layers, resolve_layer
from camexport.builder.layouts import CHANNELS_FIRST
from camexport.builder.methods import REGISTRY as METHODS
from camexport.builder.sources import EFFICIENTNET_LITE0, LoadedModel, ModelOverrides, load_model
from camexport.builder.tasks import REGISTRY as TASKS
from camexport.builder.tracing import prepared, trace_explainer
from camexport.builder.validation import Explained, other_sizes, random_cases, validate
from camexport.contract import (
    DEFAULT_DETECTION_METHOD,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_METHOD,
    DETECTION_TASK,
    INPUT_KINDS,
    MAX_DETECTIONS,
    Detection,
    GraphSpec,
    InputKind,
    Provenance,
    check_methods,
)
from camexport.contract import METHODS as METHOD_SPECS
from camexport.errors import (
    CamExportError,
    DynamicSizeError,
    ImageSizeError,
    OutputPathError,
    UnsupportedModelError,
    UserError,
)
from camexport.runtime.preprocess import normalise, open_image, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession

DEFAULT_OUTPUT_DIR = Path("models")
# Relative L2 change of the reference heatmap under a 1e-5 input perturbation above which a warning is printed.
ILL_CONDITIONED = 0.1
# One onnxruntime thread while validating, so that a build checks the same numbers on every machine whatever its
# core count (a sum split over threads rounds otherwise in float32). Before graphs held no scatter, two threads
# also gave different results from run to run (measured on fcn_resnet50: one run in four flipped a ReLU kink of
# the segmentation head at random weights and moved 13% of the gradient's elements).
VALIDATION_THREADS = 1


@dataclass
class BuildOptions:
    """What to build (the command line's ``camexport build`` flags, typed).

    Attributes:
        model: a model source's name (:mod:`camexport.builder.sources`): a torchvision name, ``timm:ARCH``,
            ``efficientnet_lite0``, a factory ``package.module:factory`` / ``file.py:factory``, or ``FILE.onnx``.
        layer: dotted module name (a tensor's name for an ONNX file); None picks the default layer.
        methods: the CAM methods, the first being the plain ``heatmap``/``cam`` outputs; None: ``gradcampp``, and
            for torchvision's detectors ``hirescam`` (:data:`camexport.contract.DEFAULT_DETECTION_METHOD`).
        weights: ``"default"``, ``"random"`` or a state_dict path.
        seed: seed of random weights and validation inputs.
        image_size: (H, W); None takes the weights' own.
        opset: ONNX opset; None takes the exporter's.
        output: the graph file; None writes ``models/<model>-<methods>.onnx``.
        overrides: labels, mean, std, number of classes.
        dynamic_size: one graph for any image height and width.
        input: ``float32`` (normalised [N, C, H, W]) or ``uint8`` (pixels [N, H, W, C]).
        class_maps: also output every class's map (``class_maps`` [N, K, h, w]), from a method that gives them.
        max_detections: a detector's graph: M, the detections it returns and explains, the best after NMS.
        score_threshold: a detector's graph: the score a detection must exceed; None takes the detector's own.
    """

    model: str
    layer: str | None = None
    methods: tuple[str, ...] | None = None
    weights: str | Path = "default"
    seed: int = 0
    image_size: tuple[int, int] | None = None
    opset: int | None = None
    output: Path | None = None
    overrides: ModelOverrides = field(default_factory=ModelOverrides)
    dynamic_size: bool = False
    input: InputKind = "float32"
    class_maps: bool = False
    max_detections: int = DEFAULT_MAX_DETECTIONS
    score_threshold: float | None = None

    def output_path(self) -> Path:
        """``output`` or ``models/<model>-<method>[+<method>...].onnx`` (the model name made file-safe)."""
        methods = self.methods or default_methods(self.model)
        return Path(self.output) if self.output else DEFAULT_OUTPUT_DIR / default_file_name(self.model, methods)

    def check(self) -> None:
        """Raises UserError for a bad option, before any work."""
        methods = check_methods(self.methods or default_methods(self.model))
        if self.class_maps and not any(METHOD_SPECS[m].every_class for m in methods):
            able = ", ".join(name for name, spec in METHOD_SPECS.items() if spec.every_class)
            raise UserError(
                "class_maps: every class's map comes from a gradient-free method's pass (a gradient method needs one "
                f"backward pass per class); add {able} to `methods` or leave out `class_maps`"
            )
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise UserError(f"image_size={self.image_size}: give (H, W) as positive integers")
        if self.seed < 0:
            raise UserError(f"seed={self.seed}: use a non-negative integer")
        if self.input not in INPUT_KINDS:
            raise UserError(f"input={self.input!r}: unknown; use one of {', '.join(INPUT_KINDS)}")
        check_opset(self.opset)
        check_detection_options(self)
        check_output(self.output_path())
        if self.model.lower().endswith(".onnx"):
            if self.output_path().resolve() == Path(self.model).resolve():
                raise UserError(f"output={self.output_path()}: that is the model file itself; write the graph apart")
            if self.dynamic_size:
                raise DynamicSizeError(
                    "`dynamic_size`: a graph from an ONNX file has one image size (its file's computation may hold "
                    "it); build without `dynamic_size`, with `image_size` where the file's size is free"
                )


def default_methods(model: str) -> tuple[str, ...]:
    """The methods of a build that names none: Grad-CAM++, or for torchvision's detectors HiResCAM."""
    return (DEFAULT_DETECTION_METHOD,) if model in DETECTORS else (DEFAULT_METHOD,)


def default_file_name(model: str, methods: tuple[str, ...]) -> str:
    """``<model>-<method>.onnx``; a graph of several methods joins them with ``+`` (``resnet18-gradcampp+layercam``)."""
    return f"{model_slug(model)}-{'+'.join(methods)}.onnx"


def model_slug(name: str) -> str:
    """A file-safe name: ``timm:resnet50`` → ``timm-resnet50``, ``nets/my.py:build`` → ``my-build``,
    ``zoo/resnet50-v1-7.onnx`` → ``resnet50-v1-7``."""
    if name.lower().endswith(".onnx"):
        name = Path(name).stem
    elif ":" in name and not name.startswith("timm:"):
        location, _, attribute = name.rpartition(":")
        name = f"{Path(location).stem if location.endswith('.py') else location.rsplit('.', 1)[-1]}-{attribute}"
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "model"


@dataclass
class BuildResult:
    """What a build wrote."""

    graph: Path
    report: Path
    layer: str
    summary: dict = field(default_factory=dict)


def _check_dynamic_size(module: nn.Module, layer: LayerInfo, size: tuple[int, int], model: str, channels: int) -> None:
    """--dynamic-size needs a map that follows the image: a CNN layer, and a model that runs at other sizes."""
    if layer.layout != CHANNELS_FIRST:
        raise DynamicSizeError(
            f"`dynamic_size`: {layer.name} is {layer.describe_layout()}, laid out for {size[0]}x{size[1]} "
            "images only; build without `dynamic_size` (one graph per `image_size`)"
        )
    for other in other_sizes(size):
        try:
            probe_layers(module, other, model, channels)
        except ImageSizeError as exc:
            raise DynamicSizeError(f"`dynamic_size`: {exc}; build without `dynamic_size`") from None


@contextmanager
def _traceable(dynamic_size: bool) -> Iterator[None]:
    """Tracing failures that are not camexport's own become one :class:`UnsupportedModelError` line."""
    try:
        yield
    except CamExportError:
        raise
    except Exception as exc:  # make_fx and the decompositions fail with many exception types
        hint = "; build without `dynamic_size`" if dynamic_size else ""
        raise UnsupportedModelError(f"tracing failed ({type(exc).__name__}: {first_line(exc)[:200]}){hint}") from None


def report_path(graph: Path) -> Path:
    """The JSON report lies next to the graph: ``x.onnx`` → ``x.json``."""
    return graph.with_suffix(".json")


def check_output(path: Path) -> None:
    """Fails early (before any work) when ``path`` cannot be written.

    Raises:
        OutputPathError: it is a directory, or its folder cannot be created or written.
    """
    if path.suffix.lower() != ".onnx":
        raise OutputPathError(f"output={str(path)!r}: the graph file must end in .onnx")
    if path.is_dir():
        raise OutputPathError(f"output={str(path)!r}: is a directory; give a file name such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".camexport-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(
            f"output={str(path)!r}: cannot write to {path.parent} ({exc.strerror or exc}); choose a writable folder"
        ) from None


def _versions() -> dict[str, str]:
    versions = {"camexport": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "timm", "numpy"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def sample_photo_case(loaded: LoadedModel, pixels: bool = False) -> Case:
    """scikit-image's ``coffee()`` photo, preprocessed for the model (a real photo for the real weights)."""
    crop = to_pixels(open_image(sample_photo("coffee")), loaded.preprocessing)[None]
    image = normalise(crop, loaded.preprocessing)
    return Case("real photo: skimage.data.coffee()", crop if pixels else image, None, image)


@contextmanager
def _step(key: str, description: str, timings: dict[str, float], log: Callable[[str], None]) -> Iterator[None]:
    log(f"{description}...")
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 3)
    log(f"  done in {timings[key]:.1f} s")


@contextmanager
def _within_protobuf_limit() -> Iterator[None]:
    """Turns protobuf's failure on a graph over 2 GB into a one-line error."""
    try:
        yield
    except EncodeError:
        raise UnsupportedModelError(
            "the graph is over protobuf's 2 GB limit even with its weights as ONNX external data; "
            "this is a camexport bug, please report it with the model name"
        ) from None


@dataclass
class _Build:
    """What the steps of one build share; each step fills in its part."""

    options: BuildOptions
    log: Callable[[str], None]
    output: Path
    timings: dict[str, float] = field(default_factory=dict)
    loaded: LoadedModel | None = None
    layers: list[LayerInfo] = field(default_factory=list)
    layer: LayerInfo | None = None
    default_size: tuple[int, int] = (0, 0)
    spec: GraphSpec | None = None
    proto: onnx.ModelProto | None = None
    results: list[CaseResult] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def build(options: BuildOptions, log: Callable[[str], None] = print) -> BuildResult:
    """Builds, validates and writes one graph.

    Nothing is left at the output path unless every validation case passes.

    Raises:
        UserError: a bad option (model, layer, methods, weights, image size, output).
        UnsupportedModelError: the exporter cannot handle the model or layer.
        ValidationError: the graph disagrees with the eager reference.
    """
    # a list given by a caller becomes a tuple
    options = replace(options, methods=check_methods(options.methods or default_methods(options.model)))
    job = _Build(options, log, options.output_path())
    with removing_new_folders(job.output.parent):  # a failed build leaves no empty folder behind
        options.check()
        with _step("load", f"load {options.model} (weights: {options.weights})", job.timings, log):
            job.loaded = load_model(options.model, options.weights, options.seed, options.overrides)
            detects = is_detector(job.loaded.module)
            check_detection_fit(options, detects)
            if detects:
                dense, post = _load_detector(job)
            else:
                task = _load(job)
                _choose_layer(job, task)
        if detects:
            write_detection_graph(job, dense, post)
        else:
            _build_explainer(job, task)
    if job.summary["external_data"] is None:
        data_path(job.output).unlink(missing_ok=True)  # a previous, larger build's weights
    job.summary["timings_s"] = job.timings
    report = report_path(job.output)
    write_atomically(report, lambda p: p.write_text(json.dumps(job.summary, indent=2, default=_json_default) + "\n"))
    total = sum(job.timings.values())
    log(f"wrote {job.output} ({job.summary['graph_bytes'] / 1e6:.1f} MB) and {report} in {total:.1f} s")
    return BuildResult(graph=job.output, report=report, layer=job.layer.name, summary=job.summary)


def _build_explainer(job: _Build, task: str) -> None:
    """A classifier's or a segmenter's graph, validated and written."""
    job.spec = _spec(job, task)
    _describe(job)
    _trace_and_export(job)
    sweep_staged(job.output.parent, job.output.name)  # what an earlier build, killed while writing, left
    write_atomically(job.output, lambda temporary: _write_validated(job, temporary))


def _load(job: _Build) -> str:
    """The model at the asked image size, with one label per logit; returns its task."""
    options, loaded = job.options, job.loaded
    job.default_size = loaded.preprocessing.image_size
    if options.image_size is not None:
        loaded.preprocessing = loaded.preprocessing.with_image_size(tuple(options.image_size))
    size = loaded.preprocessing.image_size
    channels = _check_channels(loaded, options.model)
    job.layers = probe_layers(loaded.module, size, options.model, channels)  # one line if it cannot run there
    logits = count_logits(loaded.module, size, options.model, channels)
    if options.dynamic_size and not TASKS[logits.task].dynamic_size:
        raise DynamicSizeError(
            f"`dynamic_size`: {logits.task} graphs have one image size; build without `dynamic_size`"
        )
    if not loaded.labels:
        loaded.labels = [f"class_{i}" for i in range(logits.classes)]
    if len(loaded.labels) != logits.classes:
        raise UserError(
            f"labels: {len(loaded.labels)} labels for {logits.classes} logits; pass `labels` with one name per class"
            + ("" if options.overrides.labels else " or `num_classes` to match your checkpoint")
        )
    job.loaded = loaded
    return logits.task


def _check_channels(loaded: LoadedModel, model: str) -> int:
    """The input's channel count: the normalisation's, which must match the network's first convolution."""
    channels, takes = loaded.preprocessing.channels, input_channels(loaded.module)
    if takes is not None and takes != channels:
        raise UserError(
            f"{model} takes {takes}-channel images but its normalisation has {channels} value(s); pass `mean` and "
            f"`std` with {takes} value(s) each, those the network was trained with"
        )
    return channels


def _choose_layer(job: _Build, task: str) -> None:
    """The target layer: the given one, or the default at the model's own size; checked to localise."""
    options, module, prep = job.options, job.loaded.module, job.loaded.preprocessing
    size, default_size, channels = prep.image_size, job.default_size, prep.channels
    layers = job.layers
    wanted = options.layer or job.loaded.default_layer
    if wanted is None and size != default_size:  # the default layer is the one for the model's own size
        try:
            probed = probe_layers(module, default_size, options.model, channels)
            wanted = default_layer(module, probed, task).name
        except ImageSizeError:  # a user's model that only runs at the given size: its default there
            wanted = None
    layer = resolve_layer(module, layers, wanted, task)
    if layer.map_shape[1] * layer.map_shape[2] < 2:
        raise ImageSizeError(
            f"image_size={size}: the output of {layer.name} is 1x1 there, so a heatmap cannot localise anything; "
            f"use a larger `image_size` (the default is {default_size[0]}) or an earlier `layer`"
        )
    if options.dynamic_size:
        _check_dynamic_size(module, layer, size, options.model, channels)
    job.layer = layer


def _spec(job: _Build, task: str, detection: Detection | None = None) -> GraphSpec:
    """The graph's spec; each method checked to explain the layer (:attr:`Method.unfit`)."""
    options, loaded = job.options, job.loaded
    spec = GraphSpec(
        task=task,
        layer=job.layer.name,
        methods=options.methods,
        labels=tuple(loaded.labels),
        preprocessing=loaded.preprocessing,
        provenance=Provenance(options.model, loaded.weights, loaded.random_weights, __version__),
        input=options.input,
        dynamic_size=options.dynamic_size,
        background=loaded.background,
        class_maps=options.class_maps,
        detection=detection,
    )
    for name in spec.methods:
        reason = METHODS[name].unfit(job.layer.layout, spec)
        if reason:
            raise UserError(f"methods={name} cannot be built here ({reason}); use gradient methods")
    return spec


def _describe(job: _Build) -> None:
    layer = job.layer
    how = (
        "given"
        if job.options.layer
        else "default: "
        + ("last block's first normalisation" if layer.layout != CHANNELS_FIRST else "last 4-D feature map")
    )
    job.log(f"  weights: {job.loaded.weights}")
    explained = f"output [N, {', '.join(map(str, layer.map_shape))}]"
    if layer.describe_layout():
        explained = f"{list(layer.shape[1:])} ({layer.describe_layout()}) read as {explained}"
    job.log(f"  layer: {layer.name} ({how}), {explained}")


def _trace_and_export(job: _Build) -> None:
    options, module, layer = job.options, job.loaded.module, job.layer
    methods = ",".join(options.methods)
    with (
        _step("trace", f"trace forward + backward to {layer.name} ({methods})", job.timings, job.log),
        _traceable(options.dynamic_size),
    ):
        job.spec = prepared(module, job.spec, options.seed)
        if job.spec.masked_block:
            block = job.spec.masked_block
            job.log(f"  masked block: {block}, whose skip connection goes around {layer.name}, is masked too")
        traced = trace_explainer(module, job.spec, layer.layout, options.seed)
    with _step("export", "export to ONNX", job.timings, job.log), _within_protobuf_limit():
        job.proto = finalise(to_onnx(traced, options.opset), job.spec)
    _check_cuda_kernels(job)


def _check_cuda_kernels(job: _Build) -> None:
    """Says (and reports) which nodes onnxruntime's CUDA provider has no kernel for: they would run on the CPU,
    with copies between the devices on every run (:mod:`camexport.builder.coverage`)."""
    if needs_external_data(job.proto):  # shape inference reads a graph of under 2 GB only
        job.summary["cuda_nodes_without_kernel"] = None
        job.log("  CUDA kernels: not checked (a graph with external data)")
        return
    missing = [str(node) for node in uncovered_nodes(job.proto)]
    job.summary["cuda_nodes_without_kernel"] = missing
    if missing:
        job.log(f"  CUDA kernels: {len(missing)} node(s) would run on the CPU under --provider cuda: {missing[0]}")
    else:
        job.log("  CUDA kernels: every node has one (onnxruntime's kernel table)")


def check_detection_options(options: BuildOptions) -> None:
    """Raises UserError for detection options out of range (before any work)."""
    m, threshold = options.max_detections, options.score_threshold
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_DETECTIONS:
        raise UserError(f"max_detections={m!r}: use a whole number from 1 to {MAX_DETECTIONS}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise UserError(f"score_threshold={threshold!r}: use a number from 0 up to (not including) 1")


def check_detection_fit(options: BuildOptions, detects: bool) -> None:
    """Raises UserError for detection options given for another model, or options a detector's graph has not."""
    if not detects:
        if options.max_detections != DEFAULT_MAX_DETECTIONS or options.score_threshold is not None:
            raise UserError(
                f"max_detections/score_threshold: {options.model} is not a detector; leave them out "
                f"(detectors: {', '.join(DETECTORS)}, or a factory's torchvision SSD, RetinaNet, FCOS or Faster R-CNN)"
            )
        return
    if options.dynamic_size or options.class_maps:
        raise UserError(
            "dynamic_size/class_maps: a detector's graph has one image size and no class maps; leave them out"
        )
    free = [m for m in options.methods if not METHOD_SPECS[m].gradient]
    if free:
        raise UserError(
            f"methods={','.join(free)}: a detection is explained by its score's gradient; use gradient methods "
            "(gradcampp, gradcam, hirescam, layercam, xgradcam)"
        )


def _load_detector(job: _Build):
    """The dense detector and its post-processing at the asked size, and the explained layer."""
    options = job.options
    dense, post = detection_parts(job.loaded, options.image_size, options.max_detections, options.score_threshold)
    job.loaded.preprocessing = replace(job.loaded.preprocessing, **_sized(options.image_size))
    job.layer = detection_layer(dense, options.layer or default_detection_layer(dense))
    labels = job.loaded.labels = job.loaded.labels or [f"class_{i}" for i in range(dense.classes)]
    if len(labels) != dense.classes:
        raise UserError(f"labels: {len(labels)} labels for a detector of {dense.classes} classes; pass one per class")
    return dense, post


def write_detection_graph(job: _Build, dense: nn.Module, post: Postprocess) -> None:
    """A detector's graph (:mod:`camexport.builder.detection`), validated and written."""
    options, log = job.options, job.log
    job.spec = _spec(job, DETECTION_TASK.name, post.detection)
    detection = post.detection
    log(f"  weights: {job.loaded.weights}")
    shape = ", ".join(map(str, job.layer.shape[1:]))
    log(
        f"  layer: {job.layer.name}, output [N, {shape}]; the {detection.max_detections} best detections over "
        f"{detection.score_threshold:g} after NMS (IoU {detection.iou_threshold:g}), each explained"
    )
    with _step(
        "trace", f"trace the detector, with each detection's backward pass to {job.layer.name}", job.timings, log
    ):
        with _traceable(False):
            traced = trace_detector(dense, job.spec, post, options.seed)
    with _step("export", "export to ONNX", job.timings, log), _within_protobuf_limit():
        job.proto = finalise(to_onnx(traced, options.opset), job.spec)
    _check_cuda_kernels(job)
    sweep_staged(job.output.parent, job.output.name)
    write_atomically(job.output, lambda temporary: _write_detection(job, temporary, dense))


def _sized(image_size: tuple[int, int] | None) -> dict:
    if image_size is None:
        return {}
    return {"image_size": tuple(image_size), "resize_size": min(image_size)}


def _write_detection(job: _Build, temporary: Path, dense: nn.Module) -> None:
    with _within_protobuf_limit():
        files = save_graph(job.proto, temporary)
    with _step("validate", "validate in onnxruntime against the detector and float64 references", job.timings, job.log):
        session = CamSession(temporary, threads=VALIDATION_THREADS)
        job.results, unreached = validate_detections(session, job.loaded.module, dense, job.options.seed + 1234)
    for result in job.results:
        checks = {c.name: c for c in result.checks}
        labels = [job.loaded.labels[i] for i in result.class_index]
        shown = ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
        job.log(
            f"  ok: {result.description}: {len(labels)} detection(s) [{shown}], gradients rel L2 "
            f"{checks['gradients'].relative_l2:.1g}, finite differences {checks[FD_CHECK].max_abs_diff:.1g} of |g||v|, "
            f"heatmap max diff {max(c.max_abs_diff for c in result.checks if c.name.startswith('heatmap')):.2g}"
        )
    if not any(result.class_index for result in job.results):
        job.log(
            f"  warning: the validation's images (random, and a photo) gave no detection over "
            f"{job.spec.detection.score_threshold}: the gradients were checked on none; pass a lower score_threshold "
            "to check them"
        )
    if unreached:
        job.log(
            f"  warning: {unreached} detection(s) of the validation's first case have a zero gradient at "
            f"{job.layer.name}: the layer does not reach their scores (a level of the pyramid after the levels "
            "split?), so their maps are all zero; leave `layer` out for one every detection depends on"
        )
    job.summary.update(_summary(job, files))


def _write_validated(job: _Build, temporary: Path) -> None:
    """Saves the graph to ``temporary``, validates it there, and records the report's summary."""
    with _within_protobuf_limit():
        files = save_graph(job.proto, temporary)
    if len(files) > 1:
        job.log(f"  weights over {EXTERNAL_DATA_BYTES / 1e9:.1f} GB: stored as ONNX external data in {files[1].name}")
    with _step("validate", "validate in onnxruntime against the eager reference", job.timings, job.log):
        explained = Explained(job.loaded.module, job.spec, job.layer.layout)
        job.results = validate(CamSession(temporary, threads=VALIDATION_THREADS), explained, _cases(job))
    _log_results(job)
    if job.loaded.check_graph is not None:
        with _step("check", "check against the source file, by finite differences", job.timings, job.log):
            checked = job.loaded.check_graph(temporary, job.spec, job.layer.layout, job.options.seed)
        for line in checked.lines():
            job.log(line)
        job.summary["source_check"] = asdict(checked)
    job.summary.update(_summary(job, files))


def _cases(job: _Build) -> list[Case]:
    options, spec = job.options, job.spec
    cases = random_cases(spec, options.seed + 1234)
    cases += TASKS[spec.task].cases(cases[0], spec, options.seed + 4321)
    if options.model == EFFICIENTNET_LITE0 and options.weights == "default":
        cases.append(sample_photo_case(job.loaded, spec.takes_pixels))
    return cases


def _log_results(job: _Build) -> None:
    labels = job.loaded.labels
    for result in job.results:
        checks = {c.name: c for c in result.checks}
        heat, grads = checks["heatmap"], checks["gradients"]
        zero = " (every heatmap all zero: cam <= 0 everywhere)" if heat.reference_max_abs == 0 else ""
        worst = max(c.max_abs_diff for c in result.checks if c.name.startswith("heatmap"))
        job.log(
            f"  ok: {result.description}: classes [{', '.join(labels[i] for i in result.class_index)}], "
            f"heatmap max diff {worst:.2g}{zero}, gradients rel L2 {grads.relative_l2:.1g}"
        )
        if heat.reference_spread is not None and heat.reference_spread > ILL_CONDITIONED:
            advice = (
                "Grad-CAM++ weights have poles where a channel's activation sum is negative: "
                "prefer a layer after a ReLU or methods=('gradcam',)"
                if job.options.methods[0] == "gradcampp"
                else "prefer a later layer"
            )
            job.log(
                f"  warning: the explanation is ill-conditioned here: a 1e-5 input perturbation moves the "
                f"reference heatmap by {heat.reference_spread:.0%} (relative L2); {advice}"
            )
    if all(c.reference_max_abs == 0 for r in job.results for c in r.checks if c.name == "gradients"):
        job.log(
            f"  warning: every gradient at {job.layer.name} is zero on the validation inputs (a zero-initialised "
            "classifier head under random weights?), so only the forward pass was really compared"
        )


def _summary(job: _Build, files: list[Path]) -> dict:
    """The JSON report's body."""
    options, layer, spec = job.options, job.layer, job.spec
    props = spec.to_props()
    return {
        "graph": str(job.output),
        "graph_bytes": sum(f.stat().st_size for f in files),
        "graph_sha256": sha256_of(files),
        "external_data": str(data_path(job.output)) if len(files) > 1 else None,
        "model": options.model,
        "weights": spec.provenance.weights,
        "layer": layer.name,
        "layer_default": options.layer is None,
        "layer_output_shape": ["N", *layer.shape[1:]],
        "layer_map_shape": ["N", *layer.map_shape],
        "layer_layout": layer.layout.as_json(),
        "method": ",".join(options.methods),
        "methods": list(options.methods),
        "image_size": list(spec.preprocessing.image_size),
        "opset": next((o.version for o in job.proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "metadata": props | {"camexport.labels": f"<{len(spec.labels)} labels>"},
        "validation": {"relative_tolerances": TOLERANCES, "cases": results_as_dict(job.results)},
        "versions": _versions(),
    }


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
