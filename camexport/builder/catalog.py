"""The model list with default layers: ``camexport models``.

Each architecture is built on PyTorch's ``meta`` device (shapes without data, so even a 600M-parameter
model costs milliseconds) and probed once at its default input size. Only parameter storage
(``torch.empty``) goes to ``meta`` during construction, so constructors that compute with real tensors
(torchvision's RegNet) still work.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from camexport.builder.layers import default_layer, probe_layers
from camexport.builder.sources import LoadedModel, available_models, load_model
from camexport.errors import CamExportError


@dataclass(frozen=True)
class ModelEntry:
    """One row of ``camexport models``.

    Attributes:
        name: registry name.
        layer: the default target layer, or ``None`` when it could not be determined.
        map_shape: the explained map (C, h, w) at ``image_size``.
        image_size: the weights' input size (H, W).
        problem: why ``layer`` is ``None``.
    """

    name: str
    layer: str | None
    map_shape: tuple[int, ...] | None
    image_size: tuple[int, int]
    problem: str = ""


def matching_models(pattern: str = "*") -> list[str]:
    """Registry names that match a shell-style ``pattern`` (``resnet*``, ``*vit*``)."""
    return [name for name in available_models() if fnmatch.fnmatch(name, pattern)]


class _WeightsOnMeta(TorchFunctionMode):
    """``torch.empty`` without a device allocates on ``meta``: parameters cost nothing, and their
    initialisation (in-place ops on a meta tensor, which change no shape) is skipped; constructors that
    compute sizes with real tensors still work."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": "meta"}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and _is_meta(args[0]):
            return args[0]
        return func(*args, **kwargs)


class _ShapesOnly(TorchFunctionMode):
    """Normalisations, activations and dropout on ``meta`` tensors return their input: the same shape, without
    running their meta kernels (BatchNorm's decomposition alone was half of ``camexport models``' time)."""

    _SAME_SHAPE = frozenset(
        {
            *(F.batch_norm, F.layer_norm, F.group_norm, torch.batch_norm, torch.layer_norm),
            *(F.relu, torch.relu, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.mish),
            *(torch.sigmoid, F.sigmoid, torch.tanh, F.softmax, F.dropout, torch.dropout),
        }
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._SAME_SHAPE and args and _is_meta(args[0]):
            return args[0]
        return func(*args, **(kwargs or {}))


def _is_meta(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_meta


def skeleton(name: str) -> LoadedModel:
    """The model's architecture on the ``meta`` device: shapes, state names and versions, no data."""
    with _WeightsOnMeta():
        loaded = load_model(name, "random")
    loaded.module.to("meta")
    return loaded


def model_entries(names: list[str]) -> Iterator[ModelEntry]:
    """Each model's default layer, in ``names`` order (lazily, so a caller can print as they come)."""
    for name in names:
        loaded = skeleton(name)
        size = loaded.preprocessing.image_size
        try:
            with torch.device("meta"), _ShapesOnly():
                layer = default_layer(loaded.module, probe_layers(loaded.module, size, name))
        except CamExportError as exc:
            yield ModelEntry(name, None, None, size, str(exc))
            continue
        yield ModelEntry(name, layer.name, layer.map_shape, size)
