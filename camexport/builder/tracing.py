"""Tracing: the forward pass, the backward pass to the target layer and the CAMs, as one flat ATen graph.

``torch.onnx.export`` cannot capture ``torch.autograd.grad``. ``make_fx`` can: it records the ATen ops that
autograd dispatches, so the backward pass becomes ordinary ops in the same graph as the forward pass.
Parameters and buffers enter the traced function as inputs (``torch.func.functional_call``), and the
trace is symbolic in the batch size, so nothing about the example input (its values, its batch size) is
frozen into the graph; :class:`ExplainerModule` then binds the weights back as buffers for export.

At the target layer a forward hook swaps the output ``A`` for a detached leaf that requires gradients:
the backward pass then stops at ``A`` (no weight gradients, nothing below the layer), and a clone keeps
``A`` intact when the network modifies its input in place after the layer (``ReLU(inplace=True)``).

What is computed comes from the spec and the two registries: the task's score and outputs
(:mod:`camexport.builder.tasks`) and each method's maps from the pass (:mod:`camexport.builder.methods`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.attention import SDPBackend, sdpa_kernel

from camexport.builder.decompositions import ForwardRewrites, backward_decompositions
from camexport.builder.layouts import CHANNELS_FIRST, Layout
from camexport.builder.methods import REGISTRY as METHODS
from camexport.builder.methods import LayerPass, Maps, normalised_heatmap
from camexport.builder.tasks import REGISTRY as TASKS
from camexport.contract import GraphSpec

# Symbolic tracing specialises sizes 0 and 1; an example batch of 2 keeps the batch dimension symbolic.
TRACE_BATCH = 2


@contextlib.contextmanager
def exportable() -> Iterator[None]:
    """The math attention kernel (fused attention kernels have backward ops with no ONNX lowering) and the
    forward rewrites of :mod:`camexport.builder.decompositions`."""
    with sdpa_kernel([SDPBackend.MATH]), ForwardRewrites():
        yield


@dataclass(frozen=True)
class _Network:
    """The model as the traced function calls it: its weights by name, the explained layer, and the block whose
    input a method may replace too."""

    model: nn.Module
    params: dict[str, torch.Tensor]
    layer: nn.Module
    block: nn.Module | None

    def rerun(self, image: torch.Tensor, output: torch.Tensor, entry: torch.Tensor | None) -> torch.Tensor:
        """The logits with the layer's output replaced by ``output`` (and the block's input by ``entry``)."""
        handles = [self.layer.register_forward_hook(lambda _m, _i, _o: output)]
        if self.block is not None and entry is not None:
            handles.append(self.block.register_forward_pre_hook(lambda _m, args: (entry, *args[1:])))
        try:
            with torch.no_grad(), exportable():
                return functional_call(self.model, self.params, (image,))
        finally:
            for handle in handles:
                handle.remove()


def make_explain_function(
    model: nn.Module, spec: GraphSpec, layout: Layout, state_names: list[str]
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Builds ``fn(state, image, target_class, *task_inputs) -> outputs`` in :attr:`GraphSpec.output_names` order.

    Every gradient method's map comes from the same forward and backward pass. ``state`` holds the model's
    parameters and buffers in ``state_names`` order. A negative ``target_class`` entry means "explain the default
    class" (the task's: a classifier's top-1). ``layout`` says how the layer's output becomes A [N, C, h, w]. A
    ``uint8`` spec takes pixels [N, H, W, C], scaled to [0, 1] and normalised inside the graph.
    """
    task = TASKS[spec.task]
    layer = model.get_submodule(spec.layer)
    block = None if spec.masked_block is None else model.get_submodule(spec.masked_block)

    def explain(state: list[torch.Tensor], image: torch.Tensor, target_class: torch.Tensor, *extras: torch.Tensor):
        image = network_input(image, spec)
        network = _Network(model, dict(zip(state_names, state, strict=True)), layer, block)
        logits, done = _gradient_pass(
            network, layout, image, lambda out: task.score(out, target_class, extras, spec.background)
        )
        maps = [METHODS[name].graph(done) for name in spec.methods]
        return _outputs(spec, image, logits, done, maps) + task.outputs(logits)

    return explain


def network_input(image: torch.Tensor, spec: GraphSpec) -> torch.Tensor:
    """In the graph: the ``image`` input as the network takes it; a ``uint8`` spec's pixels [N, H, W, C] scaled to
    [0, 1] and normalised with its mean and std into [N, C, H, W]."""
    if not spec.takes_pixels:
        return image
    prep = spec.preprocessing
    mean, std = (torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in (prep.mean, prep.std))
    return (image.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - mean) / std


def _gradient_pass(
    network: _Network, layout: Layout, image: torch.Tensor, score: Callable[[torch.Tensor], tuple]
) -> tuple[torch.Tensor, LayerPass]:
    """The forward pass and the backward pass of ``score(logits)``'s sum to the layer: the logits (detached) and
    what the methods take (:class:`camexport.builder.methods.LayerPass`)."""
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

    handles = [network.layer.register_forward_hook(hook)]
    if network.block is not None:
        handles.append(network.block.register_forward_pre_hook(lambda _m, args: entries.append(args[0].detach())))
    try:
        with torch.enable_grad(), exportable():
            logits = functional_call(network.model, network.params, (image,))
            class_index, total = score(logits)
            (activations,) = captured
            (gradients,) = torch.autograd.grad(total, activations)
    finally:
        for handle in handles:
            handle.remove()
    rerun = lambda output, entry: network.rerun(image, output, entry)  # noqa: E731
    done = LayerPass(class_index, activations.detach(), gradients, layout, outputs[0], (entries or [None])[0], rerun)
    return logits.detach(), done


def _outputs(
    spec: GraphSpec, image: torch.Tensor, logits: torch.Tensor, done: LayerPass, maps: list[Maps]
) -> tuple[torch.Tensor, ...]:
    """The graph's outputs in the spec's order, up to the task's own."""
    size = (image.shape[2], image.shape[3])  # symbolic with --dynamic-size
    heatmaps = [normalised_heatmap(m.cam, size) for m in maps]
    outputs = (logits, done.class_index, heatmaps[0], maps[0].cam, done.activations, done.gradients)
    if len(maps) > 1:
        outputs += tuple(t.clone() for heat, m in zip(heatmaps, maps, strict=True) for t in (heat, m.cam))
    if spec.class_maps:
        outputs += (next(m.every_class for m in maps if m.every_class is not None),)
    return outputs


@dataclass
class TracedExplainer:
    """The traced graph, the weights it takes, and the spec it computes.

    Attributes:
        graph: flat ATen graph ``(state, image, target_class, *task_inputs) -> outputs``.
        state: the model's parameters and buffers, in the order the graph takes them.
        state_names: their dotted names in the model.
        spec: the graph's spec (its inputs and outputs).
    """

    graph: torch.fx.GraphModule
    state: list[torch.Tensor]
    state_names: list[str]
    spec: GraphSpec


def model_state(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """Parameters then buffers, detached, with their dotted names."""
    items = [(n, p.detach()) for n, p in model.named_parameters()]
    items += [(n, b.detach()) for n, b in model.named_buffers()]
    return [n for n, _ in items], [t for _, t in items]


def trace_explainer(
    model: nn.Module, spec: GraphSpec, layout: Layout = CHANNELS_FIRST, seed: int = 0
) -> TracedExplainer:
    """Traces forward, backward and the spec's maps into one graph with a symbolic batch dimension (and symbolic
    height and width for a spec of any image size).

    Args:
        model: network in eval mode.
        spec: what the graph computes (layer, methods, task, input kind; its methods prepared).
        layout: how the layer's output becomes [N, C, h, w] (:mod:`camexport.builder.layouts`).
        seed: seed of the example input (its values do not enter the graph).
    """
    names, state = model_state(model)
    explain = make_explain_function(model, spec, layout, names)
    inputs = symbolic_inputs(spec, state, seed)
    graph = make_fx(explain, tracing_mode="symbolic", decomposition_table=backward_decompositions())(*inputs)
    return TracedExplainer(graph, state, names, spec)


def symbolic_inputs(spec: GraphSpec, state: list[torch.Tensor], seed: int) -> list[object]:
    """The traced function's inputs as fake tensors: the weights with fixed shapes, then the spec's inputs with the
    axes it leaves open symbolic.

    Only those axes are symbolic: a fully symbolic trace carries every spatial size as a sympy expression through
    the whole network (minutes for a Swin Transformer, seconds this way).
    """
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    inputs: list[object] = [[mode.from_tensor(t, static_shapes=True) for t in state]]
    for tensor, example in zip(spec.inputs, example_inputs(spec, seed), strict=True):
        dims = [_dynamism(axis, spec) for axis in tensor.axes]
        inputs.append(mode.from_tensor(example, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims)))
    return inputs


def _dynamism(axis: str, spec: GraphSpec) -> DimDynamic:
    """An input axis is symbolic when the spec leaves it open: the batch, and the image size in a graph of any."""
    return DimDynamic.DYNAMIC if isinstance(spec.axis(axis), str) else DimDynamic.STATIC


def example_inputs(spec: GraphSpec, seed: int = 0) -> list[torch.Tensor]:
    """Seeded examples of the spec's inputs for :data:`TRACE_BATCH` images: the image (float32 [N, C, H, W] or
    uint8 [N, H, W, C]), ``target_class`` −1 each, and the task's inputs."""
    generator = torch.Generator().manual_seed(seed)
    size, channels = spec.preprocessing.image_size, spec.preprocessing.channels
    if spec.takes_pixels:
        image = torch.randint(0, 256, (TRACE_BATCH, *size, channels), generator=generator, dtype=torch.uint8)
    else:
        image = torch.randn(TRACE_BATCH, channels, *size, generator=generator)
    target = torch.full((TRACE_BATCH,), -1, dtype=torch.int64)
    extras = TASKS[spec.task].examples(TRACE_BATCH, size) if spec.task_spec.inputs else ()
    return [image, target, *extras]


def example_image(spec: GraphSpec, seed: int = 0) -> torch.Tensor:
    """The example image as the network takes it: float [N, C, H, W] (a uint8 example only needs the layout)."""
    image = example_inputs(spec, seed)[0]
    return image.permute(0, 3, 1, 2).float() / 255.0 if spec.takes_pixels else image


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

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The spec's inputs in order: image, target_class, then the task's."""
        return tuple(self.graph(self.state(), *inputs))

    def state(self) -> list[torch.Tensor]:
        """The weights, in the order the traced graph takes them."""
        return [getattr(self, name) for name in self._names]


def prepared(model: nn.Module, spec: GraphSpec, seed: int = 0) -> GraphSpec:
    """``spec`` with what its methods need of the model before tracing (:attr:`Method.prepare`: ReciproCAM's masked
    block), found on the seeded example image."""
    image = example_image(spec, seed)
    for name in spec.methods:
        spec = METHODS[name].prepare(model, spec, image)
    return spec
