"""The speed benchmark's contenders, defined once: :data:`CONTENDERS`, a table of records (name, letter,
description, how it is made); everything else is derived from it.

All run on the same inputs, thread count and machine:

* (a) ``a_eager``: eager PyTorch inference, no gradients (logits only);
* (b) ``b_eager_gradcampp``: eager PyTorch Grad-CAM++ (the graph's first gradient method: forward with a hook,
  ``autograd.grad``, the formulas, bilinear upsampling and min-max to the input size), float32;
* (c) ``c_pytorch_grad_cam``: pytorch-grad-cam's ``GradCAMPlusPlus`` (heatmaps at input size);
* (d) ``d_torchcam``: torchcam's ``GradCAMpp``, upsampled to input size with ``F.interpolate``;
* (e) ``e_ort_plain``: onnxruntime running the plain model's ONNX graph (logits only);
* (f) ``f_ort_camexport``: onnxruntime running the camexport graph (logits, class, heatmap, ...);
* (g) ``g_openvino_plain`` and (h) ``h_openvino_camexport``: the same two graphs in OpenVINO's CPU plugin, read
  from the .onnx files, in float32 (``pip install 'camexport[openvino]'``; CPU only).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from camexport._util import quiet
from camexport.builder.layouts import CHANNELS_FIRST
from camexport.builder.methods import REGISTRY, LayerPass, normalised_heatmap
from camexport.runtime.session import CamSession, resolve_providers

Runner = Callable[[np.ndarray], object]  # one run on a batch [N, C, H, W]


@dataclass(frozen=True)
class Subject:
    """What the contenders explain: the layer and method(s), camexport's graph, the plain model's graph, the
    input size and channels. With the model itself, this is everything a contender is made from."""

    layer: str
    methods: tuple[str, ...]
    graph: Path
    plain: Path
    size: tuple[int, int]
    channels: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One input image's shape, (C, H, W)."""
        return (self.channels, *self.size)

    def as_spec(self) -> dict:
        """JSON-ready, for a fresh process (see :meth:`from_spec`)."""
        return {
            **asdict(self),
            "methods": list(self.methods),
            "graph": str(self.graph),
            "plain": str(self.plain),
            "size": list(self.size),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> Subject:
        return cls(
            spec["layer"],
            tuple(spec["methods"]),
            Path(spec["graph"]),
            Path(spec["plain"]),
            tuple(spec["size"]),
            spec["channels"],
        )


@dataclass(frozen=True)
class Contender:
    """One contender of the speed benchmark.

    Attributes:
        name: its key in the results (``a_eager``, ...); its first letter is its letter in the tables.
        description: its row's label in the tables.
        make: how it is made: ``make(model, subject, threads, provider)`` gives its :data:`Runner`; raises
            ImportError where a library is missing, RuntimeError where it cannot run here (both: skipped).
    """

    name: str
    description: str
    make: Callable[[nn.Module, Subject, int, str], Runner]

    @property
    def letter(self) -> str:
        """(a) to (h), as the tables and targets name it."""
        return self.name[0]


def graph_channels(graph: Path) -> int:
    """A camexport graph's image channels: the length of its metadata's mean."""
    return CamSession(graph).spec.preprocessing.channels


def export_plain(model: nn.Module, size: tuple[int, int], path: Path, channels: int) -> Path:
    """(e)'s graph: the plain model exported by torch.onnx (dynamo) with a dynamic batch, for ``channels``-channel
    images of ``size``."""
    example = torch.zeros(2, channels, *size)
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


def _held(model: nn.Module, provider: str) -> tuple[nn.Module, torch.device]:
    """As a user holds a model eagerly: a copy on the device, with parameters that require gradients (what the
    CAM libraries expect)."""
    device = torch.device("cuda" if provider == "cuda" else "cpu")
    return copy.deepcopy(model).to(device).eval().requires_grad_(True), device


def _synced(fn: Callable[[torch.Tensor], object], device: torch.device) -> Runner:
    """``fn`` on a NumPy batch moved to the device, waiting for the GPU to finish."""

    def run(batch: np.ndarray) -> object:
        out = fn(torch.from_numpy(batch).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def eager_gradient_cam(model: nn.Module, layer: str, method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """(b): a gradient method in float32, the same formulas as the graph (:data:`REGISTRY`), run by autograd."""
    module = model.get_submodule(layer)
    maps_of = REGISTRY[method].graph

    def run(image: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.enable_grad():
                logits = model(image)
                classes = logits.argmax(1, keepdim=True)
                score = logits.gather(1, classes).sum()
                (grads,) = torch.autograd.grad(score, captured[-1])
        finally:
            handle.remove()
        activations = captured[-1].detach()
        done = LayerPass(classes[:, 0], activations, grads, CHANNELS_FIRST, activations, None, rerun=None)
        return normalised_heatmap(maps_of(done).cam, tuple(image.shape[-2:]))

    return run


def _eager(model: nn.Module, _subject: Subject, _threads: int, provider: str) -> Runner:
    held, device = _held(model, provider)

    def infer(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return held(image)

    return _synced(infer, device)


def _eager_cam(model: nn.Module, subject: Subject, _threads: int, provider: str) -> Runner:
    gradient = [m for m in subject.methods if REGISTRY[m].spec.gradient]
    if not gradient:
        raise RuntimeError(f"the graph has no gradient method ({','.join(subject.methods)})")
    held, device = _held(model, provider)
    return _synced(eager_gradient_cam(held, subject.layer, gradient[0]), device)


def _pytorch_grad_cam(model: nn.Module, subject: Subject, _threads: int, provider: str) -> Runner:
    from pytorch_grad_cam import GradCAMPlusPlus

    held, device = _held(model, provider)
    cam = GradCAMPlusPlus(model=held, target_layers=[held.get_submodule(subject.layer)])
    return _synced(lambda image: cam(input_tensor=image, targets=None), device)


def _torchcam(model: nn.Module, subject: Subject, _threads: int, provider: str) -> Runner:
    from torchcam.methods import GradCAMpp

    held, device = _held(model, provider)
    with quiet():
        extractor = GradCAMpp(held, target_layer=subject.layer, input_shape=subject.image_shape)

    def run(image: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            scores = held(image)
            classes = scores.argmax(1).tolist()
            (cams,) = extractor(classes, scores)
        return F.interpolate(cams[:, None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)

    return _synced(run, device)


# The camexport graph's target_class is a required input: [-1], each image's top-1; the plain graph has none.
_TARGET = {"target_class": np.array([-1], dtype=np.int64)}


def _onnxruntime(plain: bool) -> Callable[[nn.Module, Subject, int, str], Runner]:
    def make(_model: nn.Module, subject: Subject, threads: int, provider: str) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        path = subject.plain if plain else subject.graph
        session = ort.InferenceSession(str(path), sess_options=options, providers=resolve_providers(provider))
        names, target = [o.name for o in session.get_outputs()], {} if plain else _TARGET
        return lambda batch: session.run(names, {"image": batch, **target})

    return make


def _openvino(plain: bool) -> Callable[[nn.Module, Subject, int, str], Runner]:
    """OpenVINO's CPU plugin on the .onnx file, float32 (its default on CPUs with bfloat16 units is bfloat16)."""

    def make(_model: nn.Module, subject: Subject, threads: int, provider: str) -> Runner:
        import openvino

        if provider != "cpu":
            raise RuntimeError("CPU only (OpenVINO's CPU plugin)")
        settings = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        path = subject.plain if plain else subject.graph
        compiled = openvino.Core().compile_model(str(path), "CPU", settings)
        target = {} if plain else _TARGET
        return lambda batch: compiled({"image": batch, **target})

    return make


# The table: every contender, in the order of the results.
CONTENDERS = (
    Contender("a_eager", "eager PyTorch, inference only (no heatmap)", _eager),
    Contender("b_eager_gradcampp", "eager PyTorch Grad-CAM++ (forward + autograd)", _eager_cam),
    Contender("c_pytorch_grad_cam", "pytorch-grad-cam GradCAMPlusPlus", _pytorch_grad_cam),
    Contender("d_torchcam", "torchcam GradCAMpp (+ upsampling)", _torchcam),
    Contender("e_ort_plain", "onnxruntime, plain model ONNX (no heatmap)", _onnxruntime(plain=True)),
    Contender("f_ort_camexport", "onnxruntime, camexport graph (heatmap)", _onnxruntime(plain=False)),
    Contender("g_openvino_plain", "OpenVINO, plain model ONNX (no heatmap)", _openvino(plain=True)),
    Contender("h_openvino_camexport", "OpenVINO, camexport graph (heatmap)", _openvino(plain=False)),
)
BY_NAME = {contender.name: contender for contender in CONTENDERS}
NAMES = tuple(BY_NAME)
DESCRIPTIONS = {contender.name: contender.description for contender in CONTENDERS}


def make_contenders(
    model: nn.Module, subject: Subject, names: tuple[str, ...], threads: int, provider: str
) -> dict[str, Runner | str]:
    """Each named contender as ``run(batch)``; a string instead says why it is skipped."""
    made: dict[str, Runner | str] = {}
    for name in names:
        try:
            made[name] = BY_NAME[name].make(model, subject, threads, provider)
        except ImportError as exc:
            made[name] = f"not installed ({exc.name})"
        except RuntimeError as exc:  # a contender that cannot run here (OpenVINO on a GPU run)
            made[name] = str(exc)
    return made
