"""The build pipeline: load → find layer → trace → export → validate → write (atomically) + JSON report."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
from google.protobuf.message import EncodeError
from torch import nn

from camexport import __version__
from camexport._util import first_line, write_atomically
from camexport.errors import (
    CamExportError,
    DynamicSizeError,
    ImageSizeError,
    OutputPathError,
    UnsupportedModelError,
    UserError,
)
from camexport.export import EXTERNAL_DATA_BYTES, check_opset, data_path, finalise, metadata_props, save_graph, to_onnx
from camexport.layers import LayerInfo, count_logits, default_layer, probe_layers, resolve_layer
from camexport.methods import parse_methods
from camexport.preprocess import normalise, open_image, to_pixels
from camexport.registry import EFFICIENTNET_LITE0, LoadedModel, ModelOverrides, load_model
from camexport.samples import sample_photo
from camexport.session import CamSession
from camexport.tracing import trace_explainer
from camexport.validation import TOLERANCES, Case, other_sizes, random_cases, results_as_dict, validate

DEFAULT_OUTPUT_DIR = Path("models")
# float32: normalised [N, 3, H, W]; uint8: RGB pixels [N, H, W, 3], converted and normalised in the graph.
INPUT_KINDS = ("float32", "uint8")
# Relative L2 change of the reference heatmap under a 1e-5 input perturbation above which a warning is printed.
ILL_CONDITIONED = 0.1


@dataclass
class BuildOptions:
    """Arguments of ``camexport build``; see the CLI help for each."""

    model: str
    layer: str | None = None
    method: str = "gradcampp"
    weights: str = "default"
    seed: int = 0
    image_size: tuple[int, int] | None = None
    opset: int | None = None
    output: Path | None = None
    overrides: ModelOverrides = field(default_factory=ModelOverrides)
    dynamic_size: bool = False
    input: str = "float32"

    def output_path(self) -> Path:
        """``--output`` or ``models/<model>-<method>.onnx`` (the model name made file-safe)."""
        methods = self.method.replace(",", "+").replace(" ", "")
        return Path(self.output) if self.output else DEFAULT_OUTPUT_DIR / f"{model_slug(self.model)}-{methods}.onnx"


def model_slug(name: str) -> str:
    """A file-safe name: ``timm:resnet50`` → ``timm-resnet50``, ``nets/my.py:build`` → ``my-build``."""
    if ":" in name and not name.startswith("timm:"):
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


def _check_dynamic_size(module: nn.Module, layer: LayerInfo, size: tuple[int, int], model: str) -> None:
    """--dynamic-size needs a map that follows the image: a CNN layer, and a model that runs at other sizes."""
    if layer.layout is not None:
        raise DynamicSizeError(
            f"--dynamic-size: {layer.name} is {layer.describe_layout()}, laid out for {size[0]}x{size[1]} "
            "images only; build without --dynamic-size (one graph per --image-size)"
        )
    for other in other_sizes(size):
        try:
            probe_layers(module, other, model)
        except ImageSizeError as exc:
            raise DynamicSizeError(f"--dynamic-size: {exc}; build without --dynamic-size") from None


@contextmanager
def _traceable(dynamic_size: bool) -> Iterator[None]:
    """Tracing failures that are not camexport's own become one :class:`UnsupportedModelError` line."""
    try:
        yield
    except CamExportError:
        raise
    except Exception as exc:  # make_fx and the decompositions fail with many exception types
        hint = "; build without --dynamic-size" if dynamic_size else ""
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
        raise OutputPathError(f"--output {path}: the graph file must end in .onnx")
    if path.is_dir():
        raise OutputPathError(f"--output {path}: is a directory; give a file name such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".camexport-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(
            f"--output {path}: cannot write to {path.parent} ({exc.strerror or exc}); choose a writable folder"
        ) from None


def _versions() -> dict[str, str]:
    versions = {"camexport": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "timm", "numpy"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _sha256(files: list[Path]) -> str:
    """One digest over the graph's files, in order, read in chunks (external data can be gigabytes)."""
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


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


def build(options: BuildOptions, log: Callable[[str], None] = print) -> BuildResult:
    """Builds, validates and writes one graph.

    Nothing is left at the output path unless every validation case passes.

    Raises:
        UserError: a bad argument (model, layer, method, weights, image size, output).
        UnsupportedModelError: the exporter cannot handle the model or layer.
        ValidationError: the graph disagrees with the eager reference.
    """
    try:
        methods = parse_methods(options.method)
    except ValueError as exc:
        raise UserError(f"--method {options.method}: {exc}") from None
    options = replace(options, method=",".join(methods))
    if options.image_size is not None and min(options.image_size) < 1:
        raise UserError(f"--image-size {options.image_size}: sizes must be positive integers")
    if options.seed < 0:
        raise UserError(f"--seed {options.seed}: use a non-negative integer")
    if options.input not in INPUT_KINDS:
        raise UserError(f"--input {options.input}: unknown; use one of {', '.join(INPUT_KINDS)}")
    pixels = options.input == "uint8"
    check_opset(options.opset)
    output = options.output_path()
    check_output(output)
    timings: dict[str, float] = {}

    with _step("load", f"load {options.model} (weights: {options.weights})", timings, log):
        loaded = load_model(options.model, options.weights, options.seed, options.overrides)
        default_size = loaded.preprocessing.image_size
        if options.image_size is not None:
            loaded.preprocessing = loaded.preprocessing.with_image_size(tuple(options.image_size))
        size = loaded.preprocessing.image_size
        layers = probe_layers(loaded.module, size, options.model)
        classes = count_logits(loaded.module, size, options.model)
        if not loaded.labels:
            loaded.labels = [f"class_{i}" for i in range(classes)]
        if len(loaded.labels) != classes:
            raise UserError(
                f"{len(loaded.labels)} labels for {classes} logits; pass --labels with one name per class"
                + ("" if options.overrides.labels else " or --num-classes to match your checkpoint")
            )
        wanted = options.layer
        if wanted is None and size != default_size:  # the default layer is the one for the model's own size
            try:
                wanted = default_layer(loaded.module, probe_layers(loaded.module, default_size, options.model)).name
            except ImageSizeError:  # a user's model that only runs at the given size: its default there
                wanted = None
        layer = resolve_layer(loaded.module, layers, wanted)
        if layer.map_shape[1] * layer.map_shape[2] < 2:
            raise ImageSizeError(
                f"at {size[0]}x{size[1]} the output of {layer.name} is 1x1, so a heatmap cannot localise anything; "
                f"use a larger --image-size (the default is {default_size[0]}) or an earlier --layer"
            )
        if options.dynamic_size:
            _check_dynamic_size(loaded.module, layer, size, options.model)
    how = (
        "given"
        if options.layer
        else "default: " + ("last block's first normalisation" if layer.layout else "last 4-D feature map")
    )
    log(f"  weights: {loaded.weights}")
    explained = f"output [N, {', '.join(map(str, layer.map_shape))}]"
    if layer.layout:
        explained = f"{list(layer.shape[1:])} ({layer.describe_layout()}) read as {explained}"
    log(f"  layer: {layer.name} ({how}), {explained}")

    with (
        _step("trace", f"trace forward + backward to {layer.name} ({options.method})", timings, log),
        _traceable(options.dynamic_size),
    ):
        traced = trace_explainer(
            loaded.module,
            layer.name,
            options.method,
            size,
            seed=options.seed,
            layout=layer.layout,
            dynamic_size=options.dynamic_size,
            pixels=(loaded.preprocessing.mean, loaded.preprocessing.std) if pixels else None,
        )

    props = metadata_props(
        model=options.model,
        layer=layer.name,
        method=options.method,
        labels=loaded.labels,
        mean=loaded.preprocessing.mean,
        std=loaded.preprocessing.std,
        image_size=size,
        resize_size=loaded.preprocessing.resize_size,
        interpolation=loaded.preprocessing.interpolation,
        weights=loaded.weights,
        version=__version__,
        dynamic_size=options.dynamic_size,
        input=options.input,
    )
    with _step("export", "export to ONNX", timings, log), _within_protobuf_limit():
        proto = to_onnx(traced, size, options.opset, options.dynamic_size, pixels)
        proto = finalise(proto, props, options.dynamic_size, pixels)
    del traced

    summary: dict = {}

    def write_validated(temporary: Path) -> None:
        with _within_protobuf_limit():
            files = save_graph(proto, temporary)
        if len(files) > 1:
            log(f"  weights over {EXTERNAL_DATA_BYTES / 1e9:.1f} GB: stored as ONNX external data in {files[1].name}")
        with _step("validate", "validate in onnxruntime against the eager reference", timings, log):
            session = CamSession(temporary)
            sizes = other_sizes(size) if options.dynamic_size else []
            prep = loaded.preprocessing if pixels else None
            cases = random_cases(size, len(loaded.labels), seed=options.seed + 1234, sizes=sizes, pixels=prep)
            if options.model == EFFICIENTNET_LITE0 and options.weights == "default":
                cases.append(sample_photo_case(loaded, pixels))
            results = validate(session, loaded.module, layer.name, options.method, cases, layout=layer.layout)
        for result in results:
            heat = next(c for c in result.checks if c.name == "heatmap")
            labels = ", ".join(loaded.labels[i] for i in result.class_index)
            grads = next(c for c in result.checks if c.name == "gradients")
            zero = " (every heatmap all zero: cam <= 0 everywhere)" if heat.reference_max_abs == 0 else ""
            worst = max(c.max_abs_diff for c in result.checks if c.name.startswith("heatmap"))
            log(
                f"  ok: {result.description}: classes [{labels}], heatmap max diff {worst:.2g}{zero}, "
                f"gradients rel L2 {grads.relative_l2:.1g}"
            )
            if heat.reference_spread is not None and heat.reference_spread > ILL_CONDITIONED:
                log(
                    f"  warning: the explanation is ill-conditioned here: a 1e-5 input perturbation moves the "
                    f"reference heatmap by {heat.reference_spread:.0%} (relative L2); "
                    + (
                        "Grad-CAM++ weights have poles where a channel's activation sum is negative: "
                        "prefer a layer after a ReLU or --method gradcam"
                        if methods[0] == "gradcampp"
                        else "prefer a later layer"
                    )
                )
        if all(c.reference_max_abs == 0 for result in results for c in result.checks if c.name == "gradients"):
            log(
                f"  warning: every gradient at {layer.name} is zero on the validation inputs (a zero-initialised "
                "classifier head under --weights random?), so only the forward pass was really compared"
            )
        summary.update(
            {
                "graph": str(output),
                "graph_bytes": sum(f.stat().st_size for f in files),
                "graph_sha256": _sha256(files),
                "external_data": str(data_path(output)) if len(files) > 1 else None,
                "model": options.model,
                "weights": loaded.weights,
                "layer": layer.name,
                "layer_default": options.layer is None,
                "layer_output_shape": ["N", *layer.shape[1:]],
                "layer_map_shape": ["N", *layer.map_shape],
                "layer_layout": list(layer.layout) if layer.layout else "nchw",
                "method": options.method,
                "image_size": list(size),
                "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
                "metadata": props | {"camexport.labels": f"<{len(loaded.labels)} labels>"},
                "validation": {"relative_tolerances": TOLERANCES, "cases": results_as_dict(results)},
                "versions": _versions(),
            }
        )

    write_atomically(output, write_validated)
    if summary["external_data"] is None:
        data_path(output).unlink(missing_ok=True)  # a previous, larger build's weights
    summary["timings_s"] = timings
    report = report_path(output)
    write_atomically(report, lambda p: p.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n"))
    log(f"wrote {output} ({summary['graph_bytes'] / 1e6:.1f} MB) and {report} in {sum(timings.values()):.1f} s")
    return BuildResult(graph=output, report=report, layer=layer.name, summary=summary)


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
