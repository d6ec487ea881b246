"""Tracing: the forward pass, the backward pass to the target layer and the CAM, as one flat ATen graph.

``torch.onnx.export`` cannot capture ``torch.autograd.grad``. ``make_fx`` can: it records the ATen ops that
autograd dispatches, so the backward pass becomes ordinary ops in the same graph as the forward pass.
Parameters and buffers enter the traced function as inputs (``torch.func.functional_call``), and the
trace is symbolic in the batch size, so nothing about the example input (its values, its batch size) is
frozen into the graph; :class:`ExplainerModule` then binds the weights back as buffers for export.

At the target layer a forward hook swaps the output ``A`` for a detached leaf that requires gradients:
the backward pass then stops at ``A`` (no weight gradients, nothing below the layer), and a clone keeps
``A`` intact when the network modifies its input in place after the layer (``ReLU(inplace=True)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.attention import SDPBackend, sdpa_kernel

from camexport.builder.decompositions import ForwardRewrites, backward_decompositions
from camexport.builder.layouts import CHANNELS_FIRST, Layout
from camexport.builder.methods import (
    CAMS,
    normalised_heatmap,
    reciprocal_cam,
    reciprocal_mosaics,
    reciprocal_probabilities,
    token_mosaics,
)
from camexport.contract import OUTPUT_NAMES, RECIPROCAM, Task, check_methods, output_names
from camexport.errors import UserError

# Symbolic tracing specialises sizes 0 and 1; an example batch of 2 keeps the batch dimension symbolic.
TRACE_BATCH = 2


class _Pass(NamedTuple):
    """The forward and backward pass: logits, the explained class, A and g (detached), the layer's output and the
    input of the block that ReciproCAM masks too (if any)."""

    logits: torch.Tensor
    class_index: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    output: torch.Tensor
    block_input: torch.Tensor | None


def make_explain_function(
    model: nn.Module,
    layer: str,
    methods: tuple[str, ...],
    state_names: list[str],
    layout: Layout = CHANNELS_FIRST,
    pixels: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    task: Task = "classification",
    background: int | None = None,
    masked_block: str | None = None,
    class_maps: bool = False,
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Builds ``fn(state, image, target_class[, region]) -> outputs`` (see :func:`camexport.contract.output_names`).

    Every gradient method's map comes from the same forward and backward pass. ``state`` holds the model's
    parameters and buffers in ``state_names`` order. A negative ``target_class`` entry means "explain the
    top-1 class". ``layout`` says how the layer's output becomes A [N, C, h, w]. With
    ``pixels = (mean, std)`` the image is uint8 [N, H, W, C] (C = len(mean)), scaled to [0, 1] and normalised
    inside the graph. For ``task="segmentation"`` (logits [N, K, H, W]) the function takes ``region`` too and
    explains the class's logits summed over it (:func:`segmentation_score`; ``background`` as there).
    ReciproCAM masks ``masked_block``'s input too (:func:`reciprocal_block`); ``class_maps`` adds its map of
    every class.
    """
    methods = check_methods(methods)
    target_module = model.get_submodule(layer)
    block = None if masked_block is None else model.get_submodule(masked_block)
    modules = (target_module, block)

    def explain(
        state: list[torch.Tensor], image: torch.Tensor, target_class: torch.Tensor, region: torch.Tensor | None
    ):
        if pixels is not None:  # uint8 [N, H, W, C] -> normalised float [N, C, H, W]
            mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in pixels)
            image = (image.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - mean) / std
        params = dict(zip(state_names, state, strict=True))
        # The math attention kernel: fused attention kernels have backward ops with no ONNX lowering.
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]), ForwardRewrites():
            done = _gradient_pass(model, modules, layout, params, image, target_class, region, background)
            maps, extra = {}, ()
            if RECIPROCAM in methods:
                masked = _Masking(model, target_module, block, layout)
                probabilities = masked.probabilities(params, image, done)
                maps[RECIPROCAM] = reciprocal_cam(probabilities, done.class_index)
                extra = (probabilities,) if class_maps else ()
        outputs = _cam_outputs(methods, image, done, maps) + extra
        return outputs if region is None else (*outputs, done.logits.argmax(dim=1))

    def classify(state: list[torch.Tensor], image: torch.Tensor, target_class: torch.Tensor):
        return explain(state, image, target_class, None)

    return explain if task == "segmentation" else classify  # make_fx traces the signature's arguments


def _gradient_pass(
    model: nn.Module,
    modules: tuple[nn.Module, nn.Module | None],
    layout: Layout,
    params: dict[str, torch.Tensor],
    image: torch.Tensor,
    target_class: torch.Tensor,
    region: torch.Tensor | None,
    background: int | None,
) -> _Pass:
    """The forward pass and the backward pass to the layer (``modules``: the layer and the block around it)."""
    target_module, block = modules
    captured: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    entries: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        # Contiguous: autograd returns gradients in the strides of the input, and a strided copy
        # (as_strided_ + copy_) for a permuted output (ConvNeXt, Swin) has no ONNX lowering.
        leaf = layout.to_map(output).detach().contiguous().requires_grad_(True)
        captured.append(leaf)
        outputs.append(output.detach())
        return layout.from_map(leaf, output)

    handles = [target_module.register_forward_hook(hook)]
    if block is not None:
        handles.append(block.register_forward_pre_hook(lambda _m, args: entries.append(args[0].detach())))
    try:
        logits = functional_call(model, params, (image,))
        if region is None:
            class_index = torch.where(target_class < 0, logits.argmax(dim=1), target_class)
            score = logits.gather(1, class_index[:, None]).sum()
        else:
            class_index, score = segmentation_score(logits, target_class, region, background)
        (activations,) = captured
        (gradients,) = torch.autograd.grad(score, activations)
    finally:
        for handle in handles:
            handle.remove()
    return _Pass(logits.detach(), class_index, activations.detach(), gradients, outputs[0], (entries or [None])[0])


@dataclass(frozen=True)
class _Masking:
    """ReciproCAM's second pass: the network run again with the layer's output replaced by its h·w masked maps
    per image, one batch of N·h·w without gradients. A convolutional map gets ReciproCAM's mosaics (Byun & Lee
    2022), a transformer's tokens ViT-ReciproCAM's (Byun & Lee 2023; see :mod:`camexport.builder.methods`).
    With a ``block``, the block's input is masked alike, so that its skip connection carries masked maps too."""

    model: nn.Module
    layer: nn.Module
    block: nn.Module | None
    layout: Layout

    def masked(self, output: torch.Tensor) -> torch.Tensor:
        """``output`` [N, ...] → its h·w masked copies per image, laid out as ``output`` [N·h·w, ...]."""
        maps = self.layout.to_map(output)
        mosaics = reciprocal_mosaics(maps) if self.layout == CHANNELS_FIRST else token_mosaics(maps)
        return self.layout.from_maps(mosaics, output, maps.shape[2] * maps.shape[3])

    def probabilities(self, params: dict[str, torch.Tensor], image: torch.Tensor, done: _Pass):
        """Every class's map [N, K, h, w] (:func:`camexport.builder.methods.reciprocal_probabilities`). The masked
        copies are made from the gradient pass's tensors, so that nothing before them runs twice."""
        replaced = self.masked(done.output)
        handles = [self.layer.register_forward_hook(lambda _m, _i, _o: replaced)]
        if self.block is not None:
            entry = self.masked(done.block_input)
            handles.append(self.block.register_forward_pre_hook(lambda _m, args: (entry, *args[1:])))
        try:
            with torch.no_grad():
                masked_logits = functional_call(self.model, params, (image,))
        finally:
            for handle in handles:
                handle.remove()
        h, w = done.activations.shape[2:]
        return reciprocal_probabilities(masked_logits, h, w)


def reciprocal_block(model: nn.Module, layer: str, image: torch.Tensor) -> str | None:
    """Where ReciproCAM's masked maps enter the network: None when ``layer``'s output alone feeds the rest, so
    that the maps replace it; otherwise the innermost module around the layer whose input is shaped like the
    layer's output and whose skip connection is then the only way around the layer (a Vision Transformer's
    block around its first normalisation, where ViT-ReciproCAM masks both): its input is masked too.

    Raises:
        UserError: a skip connection goes around the layer and no such module holds it.
    """
    shapes = _shapes(model, layer, image)
    if _runs_doubled(model, layer, None, image):
        return None
    parts = layer.split(".")
    for end in range(len(parts) - 1, 0, -1):
        block = ".".join(parts[:end])
        if shapes.get(block) == shapes[layer] and _runs_doubled(model, layer, block, image):
            return block
    raise UserError(
        f"methods=reciprocam at {layer}: a skip connection goes around the layer, and no module around it takes an "
        "input shaped like its output to mask as well; choose a stage's output (layer4, features), a residual "
        "block's last layer or a transformer block's first normalisation"
    )


def _shapes(model: nn.Module, layer: str, image: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The layer's output shape and each enclosing module's first input shape, from one eager run."""
    shapes: dict[str, tuple[int, ...]] = {}
    parts = layer.split(".")

    def output(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        shapes.setdefault(layer, out.shape)

    handles = [model.get_submodule(layer).register_forward_hook(output)]
    for end in range(1, len(parts)):
        name = ".".join(parts[:end])

        def record(_m: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(name, args[0].shape)

        handles.append(model.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _runs_doubled(model: nn.Module, layer: str, block: str | None, image: torch.Tensor) -> bool:
    """True when the network runs with the layer's output (and the block's input) doubled along the batch and
    gives doubled logits: nothing after them reads the undoubled tensors (a skip connection around them)."""

    def double(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[: len(image)], out[: len(image)]])

    handles = [model.get_submodule(layer).register_forward_hook(double)]
    if block is not None:
        first = model.get_submodule(block)
        handles.append(first.register_forward_pre_hook(lambda _m, args: (torch.cat([args[0], args[0]]), *args[1:])))
    try:
        with torch.no_grad():
            return model(image).shape[0] == 2 * len(image)
    except (RuntimeError, ValueError, AssertionError, IndexError):
        return False
    finally:
        for handle in handles:
            handle.remove()


def segmentation_score(
    logits: torch.Tensor, target_class: torch.Tensor, region: torch.Tensor, background: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seg-Grad-CAM's explained score (Vinogradova et al., AAAI 2020, eq. 1): ``y_c = Σ_(i,j)∈M logits[c, i, j]``.

    ``M`` is weighted per pixel by ``region`` [N, H, W]: a pixel with a negative weight counts 1 where the
    predicted class (argmax over K) is ``c`` and 0 elsewhere, so a region of −1 everywhere is the paper's
    default, the pixels predicted as ``c``. An empty region gives a zero score, a zero gradient and a zero
    heatmap. A negative ``target_class`` picks the class predicted on the most pixels; the ``background``
    class (if any) is counted at 1e-9 per pixel, so it is chosen only when nothing else is predicted.

    Returns:
        ``class_index`` [N] and the summed score (a scalar: the images' scores are independent).
    """
    classes = logits.shape[1]
    predicted = logits.argmax(dim=1)
    ids = torch.arange(classes, device=logits.device)
    counts = (predicted[:, None] == ids[None, :, None, None]).to(logits.dtype).sum(dim=(2, 3))
    if background is not None:
        counts = counts * torch.where(ids == background, 1e-9, 1.0).to(logits.dtype)
    class_index = torch.where(target_class < 0, counts.argmax(dim=1), target_class)
    chosen = (predicted == class_index[:, None, None]).to(logits.dtype)
    weights = torch.where(region < 0, chosen, region)
    per_pixel = logits.gather(1, class_index[:, None, None, None].expand(-1, 1, *logits.shape[2:]))[:, 0]
    return class_index, (per_pixel * weights).sum()


def _cam_outputs(
    methods: tuple[str, ...], image: torch.Tensor, done: _Pass, maps: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """The graph's outputs in contract order, every gradient method's map from the same A and g (the
    gradient-free ones come in ``maps``)."""
    size = (image.shape[2], image.shape[3])  # symbolic with --dynamic-size
    cams = [maps[name] if name in maps else CAMS[name](done.activations, done.gradients) for name in methods]
    heatmaps = [normalised_heatmap(cam, size) for cam in cams]
    outputs = (done.logits, done.class_index, heatmaps[0], cams[0], done.activations, done.gradients)
    if len(methods) > 1:
        outputs += tuple(t.clone() for pair in zip(heatmaps, cams, strict=True) for t in pair)
    return outputs


@dataclass
class TracedExplainer:
    """The traced graph and the weights it takes.

    Attributes:
        graph: flat ATen graph ``(state, image, target_class) -> outputs``.
        state: the model's parameters and buffers, in the order the graph takes them.
        state_names: their dotted names in the model.
        channels: the image's channel count.
        task: ``classification``, or ``segmentation`` (a ``region`` input, a ``segmentation`` output).
        masked_block: the module whose input ReciproCAM masks too (:func:`reciprocal_block`), if any.
    """

    graph: torch.fx.GraphModule
    state: list[torch.Tensor]
    state_names: list[str]
    output_names: tuple[str, ...] = OUTPUT_NAMES
    channels: int = 3
    task: Task = "classification"
    masked_block: str | None = None


def model_state(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Parameters then buffers, detached, with their dotted names."""
    items = [(n, p.detach()) for n, p in model.named_parameters()]
    items += [(n, b.detach()) for n, b in model.named_buffers()]
    return [n for n, _ in items], [t for _, t in items]


def trace_explainer(
    model: nn.Module,
    layer: str,
    methods: tuple[str, ...],
    image_size: tuple[int, int],
    seed: int = 0,
    layout: Layout = CHANNELS_FIRST,
    dynamic_size: bool = False,
    pixels: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    channels: int = 3,
    task: Task = "classification",
    background: int | None = None,
    class_maps: bool = False,
) -> TracedExplainer:
    """Traces forward, backward and CAM into one graph with a symbolic batch dimension.

    Args:
        model: network in eval mode.
        layer: dotted name of the target module.
        methods: the CAM methods (:data:`camexport.contract.METHODS`), the first being the default.
        image_size: (H, W) of the input.
        seed: seed of the example input (its values do not enter the graph).
        layout: how the layer's output becomes [N, C, h, w] (:mod:`camexport.builder.layouts`).
        dynamic_size: the height and width are symbolic too (one graph for any H x W).
        pixels: ``(mean, std)`` for a graph that takes uint8 [N, H, W, C] pixels (see
            :func:`make_explain_function`); None for normalised float32 [N, C, H, W].
        channels: C, the image's channel count (1 for grayscale, 3 for RGB).
        task: ``segmentation`` for logits [N, K, H, W]: the graph takes ``region`` [N, H, W] too.
        background: a segmentation model's background class (see :func:`segmentation_score`).
        class_maps: with ReciproCAM, output every class's map too (``class_maps`` [N, K, h, w]).
    """
    names, state = model_state(model)
    image = example_image(image_size, pixels is not None, seed, channels)
    block = reciprocal_block(model, layer, _as_float(image, pixels)) if RECIPROCAM in methods else None
    explain = make_explain_function(
        model, layer, methods, names, layout, pixels, task, background, masked_block=block, class_maps=class_maps
    )
    target = torch.full((TRACE_BATCH,), -1, dtype=torch.int64)
    # Only the batch dimension is symbolic: a fully symbolic trace carries every spatial size as a
    # sympy expression through the whole network (minutes for a Swin Transformer, seconds this way).
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    spatial = DimDynamic.DYNAMIC if dynamic_size else DimDynamic.STATIC
    sizes = [spatial, spatial, DimDynamic.STATIC] if pixels is not None else [DimDynamic.STATIC, spatial, spatial]
    dims = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, *sizes])
    fake_image = mode.from_tensor(image, symbolic_context=dims)
    fake_target = mode.from_tensor(
        target, symbolic_context=StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC])
    )
    fake_state = [mode.from_tensor(t, static_shapes=True) for t in state]
    inputs = [fake_state, fake_image, fake_target]
    if task == "segmentation":
        region = example_region(image_size)
        region_dims = [DimDynamic.DYNAMIC, spatial, spatial]
        inputs.append(mode.from_tensor(region, symbolic_context=StatelessSymbolicContext(dynamic_sizes=region_dims)))
    graph = make_fx(explain, tracing_mode="symbolic", decomposition_table=backward_decompositions())(*inputs)
    outputs = output_names(methods, task, class_maps)
    return TracedExplainer(graph, state, names, outputs, channels, task, block)


def _as_float(image: torch.Tensor, pixels: tuple | None) -> torch.Tensor:
    """The example as the network takes it: float [N, C, H, W] (a uint8 example only needs the layout)."""
    return image.permute(0, 3, 1, 2).float() / 255.0 if pixels is not None else image


def example_region(image_size: tuple[int, int]) -> torch.Tensor:
    """A ``region`` for tracing: −1 (the predicted pixels) for :data:`TRACE_BATCH` images."""
    return torch.full((TRACE_BATCH, *image_size), -1.0)


def example_image(image_size: tuple[int, int], pixels: bool, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A seeded example input of :data:`TRACE_BATCH` images: float32 [N, C, H, W] or uint8 [N, H, W, C]."""
    generator = torch.Generator().manual_seed(seed)
    if pixels:
        return torch.randint(0, 256, (TRACE_BATCH, *image_size, channels), generator=generator, dtype=torch.uint8)
    return torch.randn(TRACE_BATCH, channels, *image_size, generator=generator)


def _buffer_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "w"
    candidate, i = base, 1
    while candidate in taken:
        candidate, i = f"{base}_{i}", i + 1
    taken.add(candidate)
    return candidate


class ExplainerModule(nn.Module):
    """An ``nn.Module`` around the traced graph, with the weights as buffers, ready for ``torch.export``."""

    def __init__(self, traced: TracedExplainer) -> None:
        super().__init__()
        # Held as a plain attribute, not a submodule: torch.export then lifts the trace's tensor constants
        # (e.g. an adaptive-pool matrix made by a decomposition) instead of losing them in a nested module.
        object.__setattr__(self, "graph", traced.graph)
        taken: set[str] = set()
        self._names = []
        for name, tensor in zip(traced.state_names, traced.state, strict=True):
            buffer = _buffer_name(name, taken)
            self.register_buffer(buffer, tensor)
            self._names.append(buffer)

    def forward(self, image: torch.Tensor, target_class: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.graph(self.state(), image, target_class))

    def state(self) -> list[torch.Tensor]:
        """The weights, in the order the traced graph takes them."""
        return [getattr(self, name) for name in self._names]


class SegmentationExplainerModule(ExplainerModule):
    """:class:`ExplainerModule` for a segmentation model: the ``region`` input besides the image and class."""

    def forward(
        self, image: torch.Tensor, target_class: torch.Tensor, region: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return tuple(self.graph(self.state(), image, target_class, region))
