"""A TensorFlow.js graph model (``model.json`` and its weight shards) as a PyTorch module.

The graph is interpreted node by node with torch operations, so that it traces, exports and differentiates like
any PyTorch network: each computing node is a submodule (its name the node's, without the converter's prefixes), so
a layer is hooked by that name; the convolutions' filters and biases are parameters. Nodes whose inputs are all
constants (shape arithmetic) are folded once, at load. The operations are those of graphs converted from ONNX by
onnx-tf and tensorflowjs (NCHW tensors with transposes around NHWC convolutions): see :data:`OPERATIONS`.

Validation rules, each refused with :class:`camexport.errors.WeightsError` (files) or
:class:`camexport.errors.UnsupportedModelError` (operations), naming the node:
    - the file is a ``graph-model`` with one input;
    - every operation is in :data:`OPERATIONS`; every weight's dtype is float32 (float16/uint8-quantised too) or
      int32, and its shard holds its bytes.

The graph's reshapes were converted at batch 1: a target shape whose first entry is 1 keeps the input's batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camexport.errors import UnsupportedModelError, WeightsError

_PREFIXES = ("PartitionedCall/", "StatefulPartitionedCall/", "onnx_tf_prefix_")


def module_name(node: str) -> str:
    """A node's name as a submodule's: the converter's prefixes dropped, ``/`` and ``.`` as ``_``."""
    for prefix in _PREFIXES:
        node = node.replace(prefix, "")
    return node.replace("/", "_").replace(".", "_")


def _attribute(node: dict, key: str, default=None):
    value = node.get("attr", {}).get(key)
    if value is None:
        return default
    if "list" in value:
        return [int(i) for i in value["list"].get("i", [])]
    if "s" in value:
        import base64

        return base64.b64decode(value["s"]).decode()
    if "f" in value:
        return float(value["f"])
    if "i" in value:
        return int(value["i"])
    return value.get("b", default)


def _read_weights(path: Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    """Every weight of the manifest, dequantised to float32 (or int32)."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((path.parent / shard).read_bytes() for shard in group["paths"])
        offset = 0
        for entry in group["weights"]:
            shape = [int(s) for s in entry["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quantization = entry.get("quantization")
            stored = np.dtype(quantization["dtype"] if quantization else entry["dtype"])
            size = count * stored.itemsize
            if offset + size > len(data):
                raise WeightsError(f"{path}: weight '{entry['name']}' lies past the end of its shard; re-download it")
            values = np.frombuffer(data, stored, count, offset).reshape(shape)
            if quantization and quantization["dtype"] == "uint8":
                values = values * float(quantization["scale"]) + float(quantization["min"])
            weights[entry["name"]] = values.astype(np.float32 if entry["dtype"] == "float32" else np.int32)
            offset += size
    return weights


class Node(nn.Module):
    """One computing node: its operation on its inputs' values, and its parameters where it has some."""

    def __init__(self, op: str, node: dict, constants: dict[str, object]) -> None:
        super().__init__()
        self.op, self.attributes = op, node
        self.inputs = [name for name in node.get("input", []) if not name.startswith("^")]
        self.constants = {}
        for name in self.inputs:
            value = constants.get(name.split(":")[0]) if ":" not in name else None
            if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim > 0:
                self.register_parameter(f"w{len(self._parameters)}", nn.Parameter(torch.from_numpy(value.copy())))
                self.constants[name] = f"w{len(self._parameters) - 1}"
            elif value is not None:
                self.constants[name] = value

    def forward(self, *values):
        return OPERATIONS[self.op](self, *values)

    def value(self, name: str, computed: dict[str, torch.Tensor]):
        held = self.constants.get(name)
        if isinstance(held, str):
            return getattr(self, held)
        return held if held is not None else computed[name]


def _conv2d(node: Node, x, w, *_):
    """Conv2D on NHWC with an HWIO filter (depthwise where the filter takes fewer channels than x has)."""
    if _attribute(node.attributes, "padding") != "VALID":
        raise UnsupportedModelError("Conv2D with padding other than VALID: not supported (onnx-tf pads explicitly)")
    strides, dilations = _attribute(node.attributes, "strides"), _attribute(node.attributes, "dilations", [1] * 4)
    groups = x.shape[3] // w.shape[2]
    y = F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), None, strides[1:3], 0, dilations[1:3], groups)
    return y.permute(0, 2, 3, 1)


def _max_pool(node: Node, x, *_):
    ksize, strides = _attribute(node.attributes, "ksize"), _attribute(node.attributes, "strides")
    if _attribute(node.attributes, "padding") != "VALID":
        raise UnsupportedModelError("MaxPool with padding other than VALID: not supported")
    return F.max_pool2d(x.permute(0, 3, 1, 2), ksize[1:3], strides[1:3]).permute(0, 2, 3, 1)


def _pad(_node: Node, x, paddings, value=0.0):
    flat = [int(v) for pair in reversed(np.asarray(paddings).tolist()) for v in pair]
    return F.pad(x, flat, value=float(np.asarray(value)))


def _reshape(_node: Node, x, shape):
    shape = [int(v) for v in np.asarray(shape)]
    if shape and shape[0] == 1 and x.dim() > 0:  # converted at batch 1: keep the input's batch
        return x.reshape(x.shape[0], *shape[1:])
    return x.reshape(shape)


def _resize(node: Node, x, size):
    if not _attribute(node.attributes, "half_pixel_centers", False) or _attribute(node.attributes, "align_corners"):
        raise UnsupportedModelError("ResizeBilinear without half-pixel centres: not supported")
    nchw = F.interpolate(x.permute(0, 3, 1, 2), size=[int(v) for v in np.asarray(size)], mode="bilinear")
    return nchw.permute(0, 2, 3, 1)


def _split(_node: Node, x, sizes, axis):
    return tuple(torch.split(x, [int(v) for v in np.asarray(sizes)], dim=int(np.asarray(axis))))


def _sparse_to_dense(_node: Node, indices, shape, values, default):
    dense = np.full([int(v) for v in np.asarray(shape)], np.asarray(default), np.asarray(values).dtype)
    dense[tuple(np.asarray(indices).T)] = values
    return dense


OPERATIONS: dict[str, Callable] = {
    "Conv2D": _conv2d,
    "MaxPool": _max_pool,
    "Pad": _pad,
    "PadV2": _pad,
    "Reshape": _reshape,
    "ResizeBilinear": _resize,
    "SplitV": _split,
    "SparseToDense": _sparse_to_dense,
    "Add": lambda _n, a, b: a + b,
    "AddV2": lambda _n, a, b: a + b,
    "Transpose": lambda _n, x, perm: x.permute(*[int(v) for v in np.asarray(perm)]),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, _attribute(n.attributes, "alpha", 0.2)),
    "Relu": lambda _n, x: F.relu(x),
    "Sigmoid": lambda _n, x: torch.sigmoid(x),
    "ConcatV2": lambda _n, *xs: torch.cat(xs[:-1], dim=int(np.asarray(xs[-1]))),
    "Identity": lambda _n, x: x,
}


class GraphModel(nn.Module):
    """The graph from its input to the named ``outputs`` (node names; ``name:1`` for a node's second output)."""

    def __init__(self, nodes: Sequence[dict], weights: dict[str, np.ndarray], outputs: Sequence[str]) -> None:
        super().__init__()
        by_name = {node["name"]: node for node in nodes}
        inputs = [node["name"] for node in nodes if node["op"] == "Placeholder"]
        if len(inputs) != 1:
            raise UnsupportedModelError(f"the graph has {len(inputs)} inputs; a model with one image input is needed")
        self.input, self.outputs = inputs[0], list(outputs)
        constants: dict[str, object] = {name: weights[name] for name in weights}
        self.order: list[str] = []
        for name in _needed(by_name, self.outputs):
            node = by_name[name]
            if node["op"] in ("Placeholder", "Const"):
                continue
            if node["op"] not in OPERATIONS:
                raise UnsupportedModelError(
                    f"node '{name}': operation {node['op']} is not supported ({', '.join(OPERATIONS)})"
                )
            step = Node(node["op"], node, constants)
            if all(i in step.constants and not isinstance(step.constants[i], str) for i in step.inputs):
                constants[name] = step(*[step.constants[i] for i in step.inputs])  # shape arithmetic: fold it
                continue
            self.add_module(module_name(name), step)
            self.order.append(name)

    def forward(self, image: torch.Tensor):
        computed: dict[str, torch.Tensor] = {self.input: image}
        for name in self.order:
            step = self.get_submodule(module_name(name))
            result = step(*[step.value(i, computed) for i in step.inputs])
            if isinstance(result, tuple):
                computed.update({f"{name}:{k}": part for k, part in enumerate(result)})
                computed[name] = result[0]
            else:
                computed[name] = result
        return [computed[name] for name in self.outputs]


def _needed(nodes: dict[str, dict], outputs: Sequence[str]) -> list[str]:
    """The nodes the outputs depend on, in an order where each comes after its inputs."""
    order: list[str] = []
    seen: set[str] = set()
    stack = [(name.split(":")[0], False) for name in reversed(outputs)]
    while stack:
        name, expanded = stack.pop()
        if expanded:
            order.append(name)
            continue
        if name in seen:
            continue
        if name not in nodes:
            raise UnsupportedModelError(f"node '{name}' is not in the graph")
        seen.add(name)
        stack.append((name, True))
        stack.extend((i.lstrip("^").split(":")[0], False) for i in nodes[name].get("input", []))
    return order


def read_graph(path: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The nodes and the weights of a TF.js graph model.

    Raises:
        ModelLoadError: not a graph model, or a shard missing.
    """
    try:
        model = json.loads(path.read_text())
        nodes, manifest = model["modelTopology"]["node"], model["weightsManifest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path}: not a TensorFlow.js graph model ({exc}); pass its model.json") from None
    if model.get("format", "graph-model") != "graph-model":
        raise WeightsError(f"{path}: a TF.js {model.get('format')}, not a graph-model; convert it as a graph model")
    try:
        return nodes, _read_weights(path, manifest)
    except OSError as exc:
        raise WeightsError(f"{path}: its weights are not readable ({exc}); keep its .bin files beside it") from None
