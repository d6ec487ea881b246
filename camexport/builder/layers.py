"""Finding the target layer: which modules yield a 4-D feature map, and which one to explain by default."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from camexport._util import first_line
from camexport.builder.layouts import CHANNELS_FIRST, ChannelsLast, Layout, Tokens, Windows
from camexport.contract import Task
from camexport.errors import ImageSizeError, UnknownLayerError, UserError

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class LayerInfo:
    """One module's output in a forward pass.

    Attributes:
        name: dotted module name, as in ``model.named_modules()``.
        shape: output shape for the probe input (batch first), or ``None`` when not a tensor.
        calls: how many times the module ran in one forward pass.
        order: position of the module's last completed call in the pass.
        layout: how the output becomes the explained map A [N, C, h, w] (:mod:`camexport.builder.layouts`).
    """

    name: str
    shape: tuple[int, ...] | None
    calls: int
    order: int
    layout: Layout = CHANNELS_FIRST

    @property
    def is_tokens(self) -> bool:
        """True for transformer tokens that hold a patch grid."""
        return isinstance(self.layout, (Tokens, Windows))

    @property
    def channels_last(self) -> bool:
        """True for a channels-last map [N, h, w, C]."""
        return isinstance(self.layout, ChannelsLast)

    @property
    def is_feature_map(self) -> bool:
        """True for a 4-D output [N, C, h, w], or one that reads as such (see ``layout``)."""
        return self.shape is not None and (self.layout != CHANNELS_FIRST or len(self.shape) == 4)

    @property
    def map_shape(self) -> tuple[int, ...]:
        """The explained map's shape without the batch: (C, h, w)."""
        return self.layout.map_shape(self.shape)

    def describe_layout(self) -> str:
        """How the output is read, for humans: '' when it is already [N, C, h, w]."""
        return self.layout.describe()


def token_grid(shape: tuple[int, ...], image_size: tuple[int, int]) -> tuple[int, int, int] | None:
    """Reads a token output [N, T, C] as ``prefix`` tokens (class, distillation) plus an h x w patch grid.

    The grid must have the image's aspect ratio and at least 2 x 2 cells; a class token (prefix 1) is
    tried first, then none, then two.

    Returns:
        (prefix, h, w), or None when the output is not such a token sequence.
    """
    if len(shape) != 3:
        return None
    height, width = image_size
    for prefix in (1, 0, 2):
        cells = shape[1] - prefix
        if cells < 4:
            continue
        h = round((cells * height / width) ** 0.5)
        if h >= 2 and cells % h == 0 and (cells // h) * height == h * width:
            return (prefix, h, cells // h)
    return None


def input_channels(model: nn.Module) -> int | None:
    """The channel count the network takes: its first 2-D convolution's ``in_channels`` (None without one)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else int(first.in_channels)


def probe_layers(
    model: nn.Module, image_size: tuple[int, int], model_name: str = "the model", channels: int = 3
) -> list[LayerInfo]:
    """Runs one forward pass on zeros [1, channels, H, W] and records every named module's output shape.

    Raises:
        ImageSizeError: the model cannot run at ``image_size``.
    """
    records: dict[str, list] = {}
    counter = [0]
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            counter[0] += 1
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            entry = records.setdefault(name, [shape, 0, 0])
            entry[0], entry[1], entry[2] = shape, entry[1] + 1, counter[0]

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, *image_size))
    except (RuntimeError, AssertionError, ValueError) as exc:  # models check their input size in any of these
        reason = first_line(exc)[:160]
        raise ImageSizeError(
            f"{model_name} cannot run on {image_size[0]}x{image_size[1]} images ({reason}); "
            "use another `image_size`, e.g. the model's default"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    nhwc_grids = {shape[1:3] for name, (shape, _, _) in records.items() if _channels_last_norm(modules[name], shape)}
    infos = [
        LayerInfo(name, shape, calls, order, _layout(model, name, shape, image_size, nhwc_grids))
        for name, (shape, calls, order) in records.items()
    ]
    return sorted(infos, key=lambda info: info.order)


def _layout(
    model: nn.Module,
    name: str,
    shape: tuple[int, ...] | None,
    image_size: tuple[int, int],
    nhwc_grids: set[tuple[int, ...]],
) -> Layout:
    """The ``layout`` of one module's output (see :class:`LayerInfo`)."""
    if shape is None:
        return CHANNELS_FIRST
    windows = _window_layout(model, name, shape)
    if windows is not None:
        return windows
    grid = token_grid(shape, image_size)
    if grid is not None:
        return Tokens(*grid)
    # Channels last: a LayerNorm over the last axis of a 4-D map, or any 4-D output on the same h x w grid
    # as such a norm (a Swin block, the MLP inside a ConvNeXt block). A shape that reads both ways
    # ([N, 7, 7, 7]) stays channels first.
    if len(shape) == 4 and shape[1:3] in nhwc_grids and shape[1:3] != shape[2:4]:
        return ChannelsLast()
    return CHANNELS_FIRST


def _window_layout(model: nn.Module, name: str, shape: tuple[int, ...]) -> Windows | None:
    """MaxViT: an output [N, gh*gw, p*p, C] (or its swap) inside torchvision's ``PartitionAttentionLayer``."""
    try:
        from torchvision.models.maxvit import PartitionAttentionLayer
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    parts, modules = name.split("."), dict(model.named_modules())
    for cut in range(len(parts) - 1, 0, -1):
        owner = modules.get(".".join(parts[:cut]))
        if isinstance(owner, PartitionAttentionLayer):
            p, (grid_h, grid_w) = owner.p, owner.grid_size
            gh, gw = grid_h // p, grid_w // p
            swap = owner.partition_type == "grid"
            expected = (gh * gw, p * p)[::-1] if swap else (gh * gw, p * p)
            if len(shape) == 4 and shape[1:3] == expected:
                return Windows(p, gh, gw, swap)
            return None
    return None


@dataclass(frozen=True)
class Logits:
    """What a model's forward returns: K classes for the image ([N, K]) or for each pixel ([N, K, H, W])."""

    classes: int
    task: Task


def count_logits(
    model: nn.Module, image_size: tuple[int, int], model_name: str = "the model", channels: int = 3
) -> Logits:
    """The model's logits: [N, K] (a classifier) or [N, K, H, W] at the input's size (semantic segmentation).

    Raises:
        UserError: the output is neither.
    """
    with torch.no_grad():
        output = model(torch.zeros(2, channels, *image_size))
    shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if isinstance(output, torch.Tensor) and output.shape[0] == 2:
        if output.ndim == 2:
            return Logits(int(output.shape[1]), "classification")
        if output.ndim == 4 and tuple(output.shape[2:]) == tuple(image_size):
            return Logits(int(output.shape[1]), "segmentation")
    raise UserError(
        f"{model_name} returns {shape}; camexport explains models whose forward returns logits [N, K] (classifiers) "
        "or [N, K, H, W] at the input's size (semantic segmentation)"
    )


def _channels_last_norm(module: nn.Module, shape: tuple[int, ...] | None) -> bool:
    """A LayerNorm over the last axis of a 4-D output: a [N, h, w, C] map (Swin Transformer blocks)."""
    return (
        isinstance(module, nn.LayerNorm)
        and shape is not None
        and len(shape) == 4
        and tuple(module.normalized_shape) == (shape[-1],)
    )


def default_layer(model: nn.Module, layers: list[LayerInfo], task: Task = "classification") -> LayerInfo:
    """The last module, in execution order, whose output is a 4-D feature map (global pools excluded).

    Maps of more than one position are preferred; a 1x1 map is chosen only when there is nothing else.

    For resnet18 this is ``layer4``; for timm's EfficientNet, ``bn2``. For a segmentation model with a
    ``backbone`` (torchvision's), the backbone's last map, before the segmentation head, as Seg-Grad-CAM
    (Vinogradova et al. 2020) explains the bottleneck: ``backbone.layer4``, or ``backbone.16`` for MobileNetV3.
    """
    modules = dict(model.named_modules())
    maps = [
        info
        for info in layers
        if info.is_feature_map and info.calls == 1 and not isinstance(modules[info.name], _GLOBAL_POOLS)
    ]
    in_backbone = [info for info in maps if info.name.startswith("backbone.") and info.name.count(".") == 1]
    if task == "segmentation" and in_backbone:
        return in_backbone[-1]
    window_norms = [
        info
        for info in maps
        if isinstance(info.layout, Windows) and not info.layout.swap and info.name.endswith("attn_layer.0")
    ]
    if window_norms:  # MaxViT: the first normalisation of the last block's (window) attention
        return window_norms[-1]
    block_norms = [info for info in maps if info.channels_last and info.name.endswith(("norm1", "ln_1"))]
    if block_norms:  # a Swin-style transformer on [N, h, w, C] maps: the last block's first normalisation
        return block_norms[-1]
    tokens = [info for info in maps if info.is_tokens]
    grids = [info for info in maps if not info.is_tokens]
    if tokens and (not grids or tokens[-1].order > grids[-1].order):
        # A transformer: the last block's first normalisation, as pytorch-grad-cam recommends for ViT.
        norms = [info for info in tokens if info.name.endswith(("ln_1", "norm1"))]
        return (norms or tokens)[-1]
    maps = grids
    spatial = [info for info in maps if info.map_shape[1] * info.map_shape[2] > 1]
    if spatial:  # a 1x1 map (a pooled head such as SqueezeNet's classifier) cannot localise anything
        return spatial[-1]
    if not maps:
        raise UnknownLayerError(
            f"{type(model).__name__} has no module with a 4-D output [N,C,h,w]; camexport explains convolutional "
            "feature maps, pass `layer` with a module that yields one"
        )
    return maps[-1]


def resolve_layer(
    model: nn.Module, layers: list[LayerInfo], name: str | None, task: Task = "classification"
) -> LayerInfo:
    """Checks a user-given layer name, or picks the default when ``name`` is None.

    Raises:
        UnknownLayerError: no such module (close candidates are listed), its output is not 4-D, or it
            runs more than once per forward pass (so its activations are ambiguous).
    """
    if name is None:
        return default_layer(model, layers, task)
    by_name = {info.name: info for info in layers}
    info = by_name.get(name)
    if info is None:
        candidates = [i.name for i in layers if i.is_feature_map]
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
        hint = f"close candidates: {', '.join(close)}" if close else f"4-D layers include: {', '.join(candidates[-5:])}"
        if name in dict(model.named_modules()):
            raise UnknownLayerError(f"layer={name!r}: the module never runs in a forward pass; {hint}")
        raise UnknownLayerError(f"layer={name!r}: no such module in {type(model).__name__}; {hint}")
    if not info.is_feature_map:
        shape = "not a tensor" if info.shape is None else f"shape {list(info.shape)}"
        raise UnknownLayerError(
            f"layer={name!r}: its output is {shape}, not a 4-D feature map [N,C,h,w] nor tokens of a patch grid; "
            "choose a convolutional layer or a transformer block"
        )
    if info.calls != 1:
        raise UnknownLayerError(
            f"layer={name!r}: the module runs {info.calls} times in one forward pass, so its activations are "
            "ambiguous; choose its parent block or a module that runs once"
        )
    return info


def describe_layers(
    model: nn.Module,
    image_size: tuple[int, int],
    model_name: str = "the model",
    everything: bool = False,
    channels: int = 3,
    chosen: str | None = None,
) -> list[str]:
    """Lines for ``camexport layers``: each module's output shape in execution order, the default (``chosen``, or
    the classifier's or segmenter's default) marked."""
    layers = probe_layers(model, image_size, model_name, channels)
    if chosen is None:
        chosen = default_layer(model, layers, count_logits(model, image_size, model_name, channels).task).name
    rows = [info for info in layers if everything or info.is_feature_map]
    shapes = ["-" if info.shape is None else "[N, " + ", ".join(map(str, info.shape[1:])) + "]" for info in rows]
    width = max((len(info.name) for info in rows), default=5)
    shape_width = max([len("output [N, ...]"), *map(len, shapes)])
    lines = [f"{'layer':{width}}  {'output [N, ...]':{shape_width}}  note", f"{'-' * width}  {'-' * shape_width}  ----"]
    for info, shape in zip(rows, shapes, strict=True):
        notes = [info.describe_layout()] if info.describe_layout() else []
        if info.name == chosen:
            notes.append("default")
        if info.calls != 1:
            notes.append(f"runs {info.calls}x: not selectable")
        elif not info.is_feature_map:
            notes.append("not a 4-D map")
        lines.append(f"{info.name:{width}}  {shape:{shape_width}}  {', '.join(notes)}".rstrip())
    return lines


def enclosing_block(model: nn.Module, layer: str, image: torch.Tensor) -> str | None:
    """Where a replacement of ``layer``'s output must enter the network (ReciproCAM's masked maps): None when the
    layer's output alone feeds the rest, so that replacing it is enough; otherwise the innermost module around the
    layer whose input is shaped like the layer's output and whose skip connection is then the only way around the
    layer (a Vision Transformer's block around its first normalisation, where ViT-ReciproCAM masks both): its input
    is replaced too.

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
    modules = dict(model.named_modules())
    for end in range(1, len(parts)):
        name = ".".join(parts[:end])
        if name not in modules:  # a name's dots that are no module's (an ONNX file's tensor names)
            continue

        def record(_m: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(name, args[0].shape)

        handles.append(modules[name].register_forward_pre_hook(record))
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
