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

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.attention import SDPBackend, sdpa_kernel

from camexport.decompositions import ForwardRewrites, backward_decompositions
from camexport.methods import CAMS, normalised_heatmap, parse_methods

OUTPUT_NAMES = ("logits", "class_index", "heatmap", "cam", "activations", "gradients")


def output_names(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The graph's outputs: :data:`OUTPUT_NAMES` (``heatmap``/``cam`` of the first method), then, for a graph of
    several methods, ``heatmap_<method>`` and ``cam_<method>`` for each."""
    if len(methods) < 2:
        return OUTPUT_NAMES
    return OUTPUT_NAMES + tuple(f"{kind}_{method}" for method in methods for kind in ("heatmap", "cam"))


INPUT_NAMES = ("image", "target_class")

# Symbolic tracing specialises sizes 0 and 1; an example batch of 2 keeps the batch dimension symbolic.
TRACE_BATCH = 2


def make_explain_function(
    model: nn.Module,
    layer: str,
    method: str,
    image_size: tuple[int, int],
    state_names: list[str],
    layout: tuple | None = None,
    pixels: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Builds ``fn(state, image, target_class) -> outputs`` (see :func:`output_names`).

    ``method`` is one method or several, comma-separated (:func:`camexport.methods.parse_methods`): every
    method's map comes from the same forward and backward pass.

    ``state`` holds the model's parameters and buffers in ``state_names`` order. A negative
    ``target_class`` entry means "explain the top-1 class". ``layout`` says how the layer's output becomes
    A [N, C, h, w]: None (it is already), ``("nhwc",)`` (permuted), ``("tokens", prefix, h, w)`` for a
    token output [N, T, C] whose patch tokens form the map (the prefix tokens are left out), or
    ``("windows", p, gh, gw, swap)`` for MaxViT's partitioned tokens (see :class:`camexport.layers.LayerInfo`).
    With ``pixels = (mean, std)`` the image is uint8 [N, H, W, 3] RGB, scaled to [0, 1] and normalised
    inside the graph.
    """
    methods = parse_methods(method)
    target_module = model.get_submodule(layer)

    def explain(state: list[torch.Tensor], image: torch.Tensor, target_class: torch.Tensor):
        captured: list[torch.Tensor] = []
        if pixels is not None:  # uint8 [N, H, W, 3] -> normalised float [N, 3, H, W]
            mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, 3, 1, 1) for v in pixels)
            image = (image.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - mean) / std

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            kind = layout[0] if layout else None
            if kind == "nhwc":
                leaf = output.permute(0, 3, 1, 2).detach().contiguous().requires_grad_(True)
                captured.append(leaf)
                return leaf.permute(0, 2, 3, 1).clone()
            if kind == "tokens":  # tokens [N, T, C] -> prefix + patch map [N, C, h, w]
                _, prefix, h, w = layout
                patches = output[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2)
                leaf = patches.detach().contiguous().requires_grad_(True)
                captured.append(leaf)
                return torch.cat([output[:, :prefix].detach(), leaf.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
            if kind == "windows":  # [N, gh*gw, p*p, C] -> [N, C, gh*p, gw*p], MaxViT's window departition
                _, p, gh, gw, swap = layout
                tokens = output.transpose(1, 2) if swap else output
                cells = tokens.unflatten(1, (gh, gw)).unflatten(3, (p, p)).permute(0, 5, 1, 3, 2, 4)
                leaf = cells.flatten(4, 5).flatten(2, 3).detach().contiguous().requires_grad_(True)
                captured.append(leaf)
                back = leaf.unflatten(2, (gh, p)).unflatten(4, (gw, p)).permute(0, 2, 4, 3, 5, 1)
                back = back.flatten(3, 4).flatten(1, 2)
                return (back.transpose(1, 2) if swap else back).contiguous()
            # Contiguous: autograd returns gradients in the strides of the input, and a strided copy
            # (as_strided_ + copy_) for a permuted output (ConvNeXt, Swin) has no ONNX lowering.
            leaf = output.detach().contiguous().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()

        handle = target_module.register_forward_hook(hook)
        try:
            # The math attention kernel: fused attention kernels have backward ops with no ONNX lowering.
            with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]), ForwardRewrites():
                logits = functional_call(model, dict(zip(state_names, state, strict=True)), (image,))
                top1 = logits.argmax(dim=1)
                class_index = torch.where(target_class < 0, top1, target_class)
                score = logits.gather(1, class_index[:, None]).sum()
                (activations,) = captured
                (gradients,) = torch.autograd.grad(score, activations)
        finally:
            handle.remove()
        activations = activations.detach()
        size = (image.shape[2], image.shape[3])  # symbolic with --dynamic-size
        cams = [CAMS[name](activations, gradients) for name in methods]  # one forward and backward for all
        heatmaps = [normalised_heatmap(cam, size) for cam in cams]
        outputs = (logits.detach(), class_index, heatmaps[0], cams[0], activations, gradients)
        if len(methods) > 1:
            outputs += tuple(t.clone() for pair in zip(heatmaps, cams, strict=True) for t in pair)
        return outputs

    return explain


@dataclass
class TracedExplainer:
    """The traced graph and the weights it takes.

    Attributes:
        graph: flat ATen graph ``(state, image, target_class) -> outputs``.
        state: the model's parameters and buffers, in the order the graph takes them.
        state_names: their dotted names in the model.
    """

    graph: torch.fx.GraphModule
    state: list[torch.Tensor]
    state_names: list[str]
    output_names: tuple[str, ...] = OUTPUT_NAMES


def model_state(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Parameters then buffers, detached, with their dotted names."""
    items = [(n, p.detach()) for n, p in model.named_parameters()]
    items += [(n, b.detach()) for n, b in model.named_buffers()]
    return [n for n, _ in items], [t for _, t in items]


def trace_explainer(
    model: nn.Module,
    layer: str,
    method: str,
    image_size: tuple[int, int],
    seed: int = 0,
    layout: tuple | None = None,
    dynamic_size: bool = False,
    pixels: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> TracedExplainer:
    """Traces forward, backward and CAM into one graph with a symbolic batch dimension.

    Args:
        model: network in eval mode.
        layer: dotted name of the target module.
        method: ``gradcampp`` or ``gradcam``.
        image_size: (H, W) of the input.
        seed: seed of the example input (its values do not enter the graph).
        layout: how the layer's output becomes [N, C, h, w] (see :func:`make_explain_function`).
        dynamic_size: the height and width are symbolic too (one graph for any H x W).
        pixels: ``(mean, std)`` for a graph that takes uint8 [N, H, W, 3] pixels (see
            :func:`make_explain_function`); None for normalised float32 [N, 3, H, W].
    """
    names, state = model_state(model)
    explain = make_explain_function(model, layer, method, image_size, names, layout, pixels)
    image = example_image(image_size, pixels is not None, seed)
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
    graph = make_fx(explain, tracing_mode="symbolic", decomposition_table=backward_decompositions())(
        fake_state, fake_image, fake_target
    )
    return TracedExplainer(
        graph=graph, state=state, state_names=names, output_names=output_names(parse_methods(method))
    )


def example_image(image_size: tuple[int, int], pixels: bool, seed: int = 0) -> torch.Tensor:
    """A seeded example input of :data:`TRACE_BATCH` images: float32 [N, 3, H, W] or uint8 [N, H, W, 3]."""
    generator = torch.Generator().manual_seed(seed)
    if pixels:
        return torch.randint(0, 256, (TRACE_BATCH, *image_size, 3), generator=generator, dtype=torch.uint8)
    return torch.randn(TRACE_BATCH, 3, *image_size, generator=generator)


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
        state = [getattr(self, name) for name in self._names]
        return tuple(self.graph(state, image, target_class))
