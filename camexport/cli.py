"""Command line: parses arguments and calls the library. Errors become one line and an exit status."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from camexport import __version__
from camexport._util import Terminated, sigterm_as_interrupt
from camexport.contract import (
    DEFAULT_DETECTION_METHOD,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_METHOD,
    INPUT_KINDS,
    MAX_DETECTIONS,
    METHODS,
    parse_methods,
)
from camexport.errors import CamExportError
from camexport.runtime.options import (
    METRICS,
    OVERLAY_FORMATS,
    ExplainStyle,
    Local,
    Ray,
    RunOptions,
    Scoring,
    ServeOptions,
    parse_metrics,
)

EXIT_USER_ERROR = 2
LOCAL_RAY = "local"  # --ray without an address: a Ray instance on this machine


class _Formatter(argparse.HelpFormatter):
    """Shows ``--image-size H [W]`` as such (argparse would write ``H [W] [H [W] ...]`` for one or more)."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, _ImageSize):
            return str(action.metavar)
        return super()._format_args(action, default_metavar)


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error style of the rest of camexport (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"camexport: error: {message}; see '{self.prog} --help'\n")


class _ImageSize(argparse.Action):
    """``--image-size H [W]``: one or two positive integers, stored as (H, W)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        if len(values) not in (1, 2) or min(values) < 1:
            parser.error(f"{option_string} takes H or H W, positive integers (got {' '.join(map(str, values))})")
        setattr(namespace, self.dest, (values[0], values[-1]))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="camexport", description="Grad-CAM/Grad-CAM++ inside one self-contained ONNX graph.")
    parser.add_argument("--version", action="version", version=f"camexport {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_build,
        _add_models,
        _add_layers,
        _add_evaluate,
        _add_explain,
        _add_render,
        _add_serve,
        _add_samples,
    ):
        add(commands)
    return parser


def _add_build(commands: argparse._SubParsersAction) -> None:
    build = commands.add_parser("build", help="trace, export and validate one explaining ONNX graph (camexport[build])")
    build.add_argument(
        "model",
        help="a torchvision classifier (resnet18, ...), segmenter or detector (ssdlite320_mobilenet_v3_large, ...), "
        "efficientnet_lite0, timm:ARCH, your own factory package.module:factory / path/to/file.py:factory (this "
        "imports and runs your code), or an ONNX classifier file model.onnx",
    )
    build.add_argument(
        "--layer",
        help="dotted module name (layer4, layer3, layer4.1.conv2), or a tensor of an ONNX file as 'camexport layers "
        "FILE.onnx' lists it; default: last 4-D map",
    )
    build.add_argument(
        "--method",
        help=f"{', '.join(METHODS)} (default {DEFAULT_METHOD}; for detectors {DEFAULT_DETECTION_METHOD}, whose "
        "element-wise map separates detections of one class), or several comma-separated (one graph, one pass, "
        "outputs heatmap_<method> each; the first is the default heatmap)",
    )
    build.add_argument(
        "--weights", default="default", help="default (pretrained), random (seeded) or PATH to a state_dict"
    )
    build.add_argument("--seed", type=int, default=0, help="seed of random weights and validation inputs")
    build.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        action=_ImageSize,
        metavar="H [W]",
        help="input size H [W] (default: the weights')",
    )
    build.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 18 or newer)")
    build.add_argument(
        "--input",
        choices=INPUT_KINDS,
        default=INPUT_KINDS[0],
        help="image input: float32 [N,C,H,W] normalised (default) or uint8 [N,H,W,C] pixels, normalised inside",
    )
    build.add_argument(
        "--dynamic-size",
        action="store_true",
        help="one graph for any image height and width (CNN layers whose map follows the image)",
    )
    build.add_argument(
        "--class-maps",
        action="store_true",
        help="with reciprocam: also output every class's map (class_maps [N,K,h,w]) from the same masked pass",
    )
    build.add_argument(
        "--max-detections",
        type=int,
        default=DEFAULT_MAX_DETECTIONS,
        metavar="M",
        help=f"detectors: the detections the graph returns and explains, the best after NMS (default "
        f"{DEFAULT_MAX_DETECTIONS}, at most {MAX_DETECTIONS})",
    )
    build.add_argument(
        "--score-threshold",
        type=float,
        metavar="S",
        help="detectors: the score a detection must exceed (default: the detector's own)",
    )
    build.add_argument("--output", type=Path, help="graph file (default: models/<model>-<method>[+<method>...].onnx)")
    build.add_argument("--labels", type=Path, help="class names: a JSON list or one name per line")
    build.add_argument(
        "--mean", type=float, nargs="+", metavar="M", help="normalisation mean, one per channel (3 for RGB, 1 for gray)"
    )
    build.add_argument("--std", type=float, nargs="+", metavar="S", help="normalisation std, one per channel")
    build.add_argument("--num-classes", type=int, help="number of logits, passed to the model's constructor")


def _add_models(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list the model names build accepts, with their default layers")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")


def _add_layers(commands: argparse._SubParsersAction) -> None:
    layers = commands.add_parser(
        "layers", help="list a model's candidate layers (feature maps, token sequences) with their shapes"
    )
    layers.add_argument("model", help="as for build, or an .onnx file (its tensors, with the op that writes each)")
    layers.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        action=_ImageSize,
        metavar="H [W]",
        help="input size H [W] (default: the model's)",
    )
    layers.add_argument("--all", action="store_true", help="list every module (or tensor), not only the candidates")


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="faithfulness of a graph's heatmaps: Average Drop, deletion/insertion"
    )
    evaluate.add_argument("graph", type=Path, help="a .onnx file written by 'camexport build' (one or several methods)")
    evaluate.add_argument("images", nargs="+", help="image files or folders")
    evaluate.add_argument(
        "--metrics",
        help=f"comma-separated subset of {', '.join(METRICS)} (default: all; deletion and insertion cost steps+1 "
        "runs per image each, adcc one)",
    )
    evaluate.add_argument(
        "--steps", type=int, default=Scoring.steps, help=f"deletion/insertion steps (default {Scoring.steps})"
    )
    evaluate.add_argument("--class", dest="target", help="class to explain, by index or label (default: top-1)")
    evaluate.add_argument("--out", type=Path, help="write the scores as JSON to this file")


def _add_explain(commands: argparse._SubParsersAction) -> None:
    style, run, ray = ExplainStyle(), RunOptions(), Ray()
    explain = commands.add_parser("explain", help="explain photos with a built graph (overlays + predictions)")
    explain.add_argument("graph", type=Path, help="a .onnx file written by 'camexport build'")
    explain.add_argument("images", nargs="+", help="image files or folders")
    explain.add_argument("--class", dest="target", help="class to explain, by index or label (default: top-1)")
    explain.add_argument(
        "--top-k", type=int, default=style.top_k, help=f"predictions to report per image (default {style.top_k})"
    )
    explain.add_argument("--provider", default="cpu", help="cpu (default) or cuda")
    explain.add_argument("--out", type=Path, default=Path("explained"), help="output folder (default: explained/)")
    _add_style(explain, style)
    explain.add_argument("--save-heatmap", action="store_true", help="also save each heatmap as .npy")
    explain.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode a large JPEG at 1/2, 1/4 or 1/8 scale where that leaves twice the graph's resize: faster, near "
        "the exact pixels (benchmarks/explain_dataset/decode_bound.md), overlays at that size; classifiers only",
    )
    explain.add_argument(
        "--no-overlay",
        action="store_true",
        help="write no overlays (records only; 'camexport render' draws them later)",
    )
    explain.add_argument(
        "--batch-size", type=int, default=run.batch_size, help=f"images per onnxruntime run (default {run.batch_size})"
    )
    explain.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: all cores)")
    explain.add_argument("--quiet", action="store_true", help="no line per image, only errors and the summary")
    explain.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        metavar="ADDRESS",
        help="explain on a Ray cluster (camexport[ray]): at ADDRESS (auto, HOST:PORT, ray://HOST:PORT), or a local "
        "one on this machine's cores if none is given",
    )
    explain.add_argument(
        "--actors",
        type=int,
        default=ray.actors,
        help=f"with --ray: actors, each holding one session (default {ray.actors})",
    )
    explain.add_argument(
        "--actor-cpus",
        type=float,
        metavar="F",
        help="with --ray: CPUs per actor (fractions allowed; default --threads)",
    )
    again = explain.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="finish the run in --out: skip the images it has recorded")
    again.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (once this run records its first batch)"
    )


def _add_style(parser: argparse.ArgumentParser, style: ExplainStyle) -> None:
    """The overlay's flags, shared by explain and render."""
    parser.add_argument(
        "--alpha", type=float, default=style.alpha, help=f"overlay opacity in [0, 1] (default {style.alpha})"
    )
    parser.add_argument("--colormap", default=style.colormap, help=f"matplotlib colormap (default {style.colormap})")
    parser.add_argument(
        "--format",
        dest="overlay_format",
        default=style.overlay_format,
        metavar="|".join(OVERLAY_FORMATS),
        help=f"overlay file format (default {style.overlay_format}: 100x faster to write than png at 12 megapixels, "
        "8x smaller)",
    )
    parser.add_argument(
        "--overlay-max-side", type=int, metavar="N", help="downscale overlays to at most N pixels on the longer side"
    )


def _add_render(commands: argparse._SubParsersAction) -> None:
    render = commands.add_parser("render", help="draw overlays later from an explain run's cams.parquet (no graph)")
    render.add_argument("source", type=Path, help="the --out folder of 'camexport explain', or its cams.parquet")
    render.add_argument("--out", type=Path, help="where the overlays go (default: beside cams.parquet)")
    _add_style(render, ExplainStyle())


def _add_serve(commands: argparse._SubParsersAction) -> None:
    defaults = ServeOptions()
    serve = commands.add_parser(
        "serve", help="serve a graph over HTTP: POST /explain with dynamic batching (camexport[serve])"
    )
    serve.add_argument("graph", type=Path, help="a .onnx graph written by camexport build")
    serve.add_argument(
        "--host", default=defaults.host, help=f"address to listen on (default {defaults.host}: this machine)"
    )
    serve.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port}; 0: any free)")
    for flag, kind, what in (
        ("--max-batch", int, "most images per graph run"),
        ("--max-wait-ms", float, "longest an image waits for others to batch with"),
        ("--max-upload-mb", float, "largest upload accepted, in megabytes"),
        ("--decoders", int, "images decoded and encoded at once"),
        ("--drain-s", float, "on SIGTERM, how long to wait for the requests in flight"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        serve.add_argument(flag, type=kind, default=default, help=f"{what} (default {default:g})")
    serve.add_argument("--provider", default="cpu", help="cpu (default) or cuda")
    serve.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: all cores)")
    serve.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")


def _add_samples(commands: argparse._SubParsersAction) -> None:
    samples = commands.add_parser("samples", help="write the real photos bundled with scikit-image and matplotlib")
    samples.add_argument("folder", type=Path, nargs="?", default=Path("photos"), help="where (default: photos/)")


def _build(args: argparse.Namespace) -> int:
    from camexport.builder.factory import read_labels
    from camexport.builder.pipeline import BuildOptions, build
    from camexport.builder.sources import ModelOverrides

    overrides = ModelOverrides(
        labels=read_labels(args.labels) if args.labels else None,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
        num_classes=args.num_classes,
    )
    options = BuildOptions(
        model=args.model,
        layer=args.layer,
        methods=parse_methods(args.method) if args.method else None,
        weights=args.weights,
        seed=args.seed,
        image_size=args.image_size,
        opset=args.opset,
        output=args.output,
        overrides=overrides,
        dynamic_size=args.dynamic_size,
        input=args.input,
        class_maps=args.class_maps,
        max_detections=args.max_detections,
        score_threshold=args.score_threshold,
    )
    build(options, log=lambda line: print(line, flush=True))
    return 0


def _models(args: argparse.Namespace) -> int:
    from camexport.builder.catalog import matching_models, model_entries

    names = matching_models(args.pattern)
    if not names:
        print(
            f"camexport: error: no model matches {args.pattern!r}; run 'camexport models' for the list", file=sys.stderr
        )
        return EXIT_USER_ERROR
    width = max(len(name) for name in names)
    print(f"{'model':{width}}  {'input':9}  default layer -> explained map [C, h, w]")
    for entry in model_entries(names):
        size = f"{entry.image_size[0]}x{entry.image_size[1]}"
        where = f"{entry.layer} -> {list(entry.map_shape)}" if entry.layer else f"({entry.problem})"
        print(f"{entry.name:{width}}  {size:9}  {where}", flush=True)
    print("also: timm:ARCH for any name in timm.list_models(), and package.module:factory or file.py:factory")
    return 0


def _layers(args: argparse.Namespace) -> int:
    if args.model.lower().endswith(".onnx"):
        from camexport.builder.onnx_file import describe_onnx_layers

        print("\n".join(describe_onnx_layers(args.model, args.image_size, everything=args.all)))
        return 0
    from camexport.builder.detection import describe_detector_layers
    from camexport.builder.detectors import is_detector
    from camexport.builder.layers import describe_layers, input_channels
    from camexport.builder.sources import load_model

    loaded = load_model(args.model, "random")
    if is_detector(loaded.module):
        print("\n".join(describe_detector_layers(loaded, args.image_size, everything=args.all)))
        return 0
    size = args.image_size or loaded.preprocessing.image_size
    channels = input_channels(loaded.module) or loaded.preprocessing.channels
    print("\n".join(describe_layers(loaded.module, size, args.model, everything=args.all, channels=channels)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from camexport.runtime.metrics import evaluate_paths
    from camexport.runtime.session import CamSession

    metrics = parse_metrics(args.metrics) if args.metrics is not None else METRICS
    scoring = Scoring(metrics=metrics, steps=args.steps)
    print(evaluate_paths(CamSession(args.graph), args.images, args.out, args.target, scoring))
    return 0


def _explain(args: argparse.Namespace) -> int:
    from camexport.runtime.explain import explain
    from camexport.runtime.session import CamSession

    session = CamSession(args.graph, provider=args.provider, threads=args.threads)
    style = ExplainStyle(
        target=args.target,
        top_k=args.top_k,
        alpha=args.alpha,
        colormap=args.colormap,
        save_heatmap=args.save_heatmap,
        overlay_format=None if args.no_overlay else args.overlay_format,
        overlay_max_side=args.overlay_max_side,
        jpeg_draft=args.jpeg_draft,
    )
    options = RunOptions(
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
        log=(lambda _line: None) if args.quiet else print,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    executor = Local()
    if args.ray is not None:
        address = None if args.ray == LOCAL_RAY else args.ray
        executor = Ray(address, args.actors, args.actor_cpus, args.threads or 1, args.provider)
    summary = explain(session, args.images, args.out, style, options, executor)
    skipped = f", {len(summary.skipped)} non-image file(s) skipped" if summary.skipped else ""
    earlier = f", {summary.already_done} recorded earlier" if summary.already_done else ""
    print(
        f"explained {summary.explained} image(s) in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} images/s), {len(summary.failures)} failed{skipped}{earlier}; "
        f"{'outputs' if args.no_overlay else 'overlays'} in {args.out}/, predictions: {summary.predictions}, "
        f"cams: {summary.columnar}"
    )
    return 1 if summary.failures else 0


def _render(args: argparse.Namespace) -> int:
    from camexport.runtime.render import render

    style = ExplainStyle(
        alpha=args.alpha,
        colormap=args.colormap,
        overlay_format=args.overlay_format,
        overlay_max_side=args.overlay_max_side,
    )
    summary = render(args.source, args.out, style)
    print(f"rendered {len(summary.written)} overlay(s), {len(summary.failures)} failed")
    return 1 if summary.failures else 0


def _serve(args: argparse.Namespace) -> int:
    from camexport.runtime.serve import serve

    options = ServeOptions(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        decoders=args.decoders,
        drain_s=args.drain_s,
        access_log=args.access_log,
    )
    serve(args.graph, options, provider=args.provider, threads=args.threads, log=lambda line: print(line, flush=True))
    return 0


def _samples(args: argparse.Namespace) -> int:
    from camexport.runtime.samples import write_samples

    for path in write_samples(args.folder):
        print(path)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": _build,
    "models": _models,
    "layers": _layers,
    "evaluate": _evaluate,
    "explain": _explain,
    "render": _render,
    "serve": _serve,
    "samples": _samples,
}

# The library's parameters that messages name (see camexport.errors), and the flags whose name differs.
PARAMETERS = frozenset(
    "weights layer methods seed image_size opset output labels mean std num_classes dynamic_size input top_k "
    "batch_size out_dir out alpha colormap provider metrics steps target threads "
    "overlay_format overlay_max_side resume overwrite actors cpus_per_actor ray port max_batch "
    "max_wait_ms max_upload_mb decoders drain_s class_maps jpeg_draft".split()
)
_FLAG_OF = {
    "methods": "--method",
    "out_dir": "--out",
    "target": "--class",
    "overlay_format": "--format",
    "cpus_per_actor": "--actor-cpus",
}
_PARAMETERS = re.compile(r"`(\w+)`|\b(\w+)=('[^']*'|\([^)]*\)|\S+?)(?=[:;,)]|\s|$)")


def for_the_command_line(message: str) -> str:
    """A library message with its Python parameters as flags: ``seed=-1`` → ``--seed -1``,
    ```dynamic_size``` → ``--dynamic-size`` (see :mod:`camexport.errors`)."""

    def flag(name: str) -> str:
        return _FLAG_OF.get(name, "--" + name.replace("_", "-"))

    def swap(match: re.Match) -> str:
        bare, name, value = match.groups()
        if bare is not None:
            return flag(bare) if bare in PARAMETERS else match.group(0)
        if name not in PARAMETERS:
            return match.group(0)
        if value.startswith("'") and " " not in value:
            value = value.strip("'")
        elif value.startswith("("):  # a tuple such as image_size=(16, 16): the flag's own form, 16 16
            value = " ".join(part.strip() for part in value.strip("()").split(",") if part.strip())
        return f"{flag(name)} {value}"

    return _PARAMETERS.sub(swap, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camexport`` console script."""
    args = _parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return HANDLERS[args.command](args)
    except CamExportError as exc:
        print(f"camexport: error: {for_the_command_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated: whatever was being written is undone
        terminated = isinstance(exc, Terminated)
        print(f"camexport: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # the reader went away (camexport models | head): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python would flush into it at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
