"""The ops of an ONNX file as torch computes them, one small function per op (:data:`OPS`), and :class:`OnnxNode`,
one node of a file as a module (see :mod:`camexport.builder.onnx_import` for how a file becomes a module).

Shapes are of two kinds while make_fx traces: numbers known while tracing (the image's height and width and what
exporters compute from them) are numpy arrays or :class:`Ints` of plain ints, computed on the spot outside the
trace (:meth:`OnnxNode._computed_now`); numbers that follow the batch are :class:`Ints` holding symbolic ints,
carried through the integer algebra of the ops in ``_SHAPE_AWARE``. Inputs that act as attributes
(:data:`STATIC_INPUTS`: shapes, axes, indices, bounds) are read as numpy.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from camexport.errors import UnsupportedFileError

SMALL = 16  # float constants of at most this many numbers are numbers, not weights


@dataclass(frozen=True)
class Ints:
    """A small integer vector computed from shapes (a ``Shape`` output and what exporters derive from it): Python
    ints, or symbolic ints while make_fx traces; ``scalar`` for a 0-d value (a ``Gather`` of one index)."""

    values: tuple
    scalar: bool = False


Value = torch.Tensor | Ints


def _ints(value: Value) -> list:
    """The value as a list of (possibly symbolic) ints: a shape argument of Reshape, Expand, Tile, Slice..."""
    if isinstance(value, Ints):
        return list(value.values)
    return [int(v) for v in value.reshape(-1).tolist()]


def _as_tensor(value: Ints, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Shape numbers as a tensor, for an op on tensors (a head size's square root); they must not follow the
    batch."""
    if not _known(value):
        raise UnsupportedFileError(
            "the file computes float numbers from its batch size (a symbolic dimension); export it with a fixed "
            "batch, or without that computation"
        )
    tensor = torch.from_numpy(_numbers(value))
    return tensor if dtype is None else tensor.to(dtype)


def _known(value: Value | np.ndarray) -> bool:
    """Numbers known while tracing: a numpy constant, or shape numbers none of which follows the batch."""
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, Ints) and all(isinstance(v, (int, float)) for v in value.values)


def _numbers(value: Value | np.ndarray) -> np.ndarray:
    """Known numbers as numpy: int64, float32 where a Cast made floats of them, bool for a comparison's."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Ints):
        kinds = {type(v) for v in value.values}
        dtype = np.float32 if float in kinds else np.bool_ if kinds == {bool} else np.int64
        array = np.array(value.values, dtype)
        return array.reshape(()) if value.scalar else array
    return value.detach().numpy().copy()  # owned: the tensor may not outlive this


def _as_ints(value: Value) -> Ints:
    return value if isinstance(value, Ints) else Ints(tuple(_ints(value)), scalar=len(value.shape) == 0)


_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


class OnnxNode(nn.Module):
    """One node of the file: its op, attributes and the opset of the file; ``forward`` computes its outputs from
    its inputs (a tuple where the node has several outputs)."""

    def __init__(self, node: onnx.NodeProto, opset: int) -> None:
        super().__init__()
        self.op, self.opset, self.node_name = node.op_type, opset, node.name or node.output[0]
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.inputs, self.outputs = list(node.input), [o for o in node.output]
        self.static: dict[int, np.ndarray] = {}  # constant inputs read as attributes (STATIC_INPUTS)

    def _arg(self, i: int, value: Value | np.ndarray | None, shaped: bool) -> Value | np.ndarray | None:
        """An integer constant (numpy) joins shape ints as ints, else becomes a tensor (an attribute-like input
        stays numpy); shape ints reaching an op on numbers become a tensor."""
        if isinstance(value, np.ndarray) and i not in STATIC_INPUTS.get(self.op, ()):
            return _as_ints(value) if shaped and value.dtype.kind in "iub" else torch.as_tensor(value)
        if isinstance(value, Ints) and self.op not in _SHAPE_AWARE:
            return _as_tensor(value)
        return value

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def forward(self, *args: Value | np.ndarray | None) -> Any:
        if any(a is not None for a in args) and all(a is None or _known(a) for a in args):
            result = self._computed_now(args)
        else:
            shaped = self.op in _SHAPE_AWARE and any(isinstance(a, Ints) for a in args)
            result = OPS[self.op](self, *(self._arg(i, a, shaped) for i, a in enumerate(args)))
        return result[0] if isinstance(result, tuple) and len(self.outputs) == 1 else result

    def _computed_now(self, args: Sequence[Value | np.ndarray | None]) -> Any:
        """A node on numbers known while tracing (shapes of fixed dimensions and constants: a padding computed
        from the image size), computed here, outside the trace, into numpy; the graph gets its result as a
        constant."""
        with _disable_current_modes():  # fake tensors, the proxy tracer: none of them sees these numbers
            tensors = [None if a is None else torch.from_numpy(np.asarray(_numbers(a))) for a in args]
            result = OPS[self.op](self, *tensors)
            results = result if isinstance(result, tuple) else (result,)
            numbers = tuple(np.asarray(_numbers(r)) for r in results)
        return numbers if isinstance(result, tuple) else numbers[0]


# --- elementwise and shape arithmetic -------------------------------------------------------------------------


def _arith(fn: Callable, torch_fn: Callable) -> Callable:
    """An elementwise op: on tensors, torch's (with ONNX's numpy broadcasting); on shape ints, Python's."""

    def op(node: OnnxNode, a: Value, b: Value) -> Value:
        if not isinstance(a, Ints) and not isinstance(b, Ints):
            return torch_fn(a, b)
        x, y = _as_ints(a), _as_ints(b)
        xs, ys = list(x.values), list(y.values)
        n = max(len(xs), len(ys))
        xs, ys = xs * n if len(xs) == 1 else xs, ys * n if len(ys) == 1 else ys
        return Ints(tuple(fn(p, q) for p, q in zip(xs, ys, strict=True)), x.scalar and y.scalar)

    return op


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _sum(node: OnnxNode, *args: torch.Tensor) -> torch.Tensor:
    total = args[0]
    for arg in args[1:]:
        total = total + arg
    return total


def _extreme(fn: Callable, python: Callable) -> Callable:
    """Max and Min: of tensors, or of shape numbers (a SAME padding's max(0, ...))."""

    def op(node: OnnxNode, *args: Value) -> Value:
        result = args[0]
        for arg in args[1:]:
            result = _arith(python, fn)(node, result, arg)
        return result

    return op


def _rounding(fn: Callable, torch_fn: Callable) -> Callable:
    """Ceil and Floor: of tensors, or of shape numbers (a SAME padding's ceil(size / stride))."""

    def op(node: OnnxNode, x: Value) -> Value:
        return Ints(tuple(fn(v) for v in x.values), x.scalar) if isinstance(x, Ints) else torch_fn(x)

    return op


def _where(node: OnnxNode, cond: Value, a: Value, b: Value) -> Value:
    if any(isinstance(v, Ints) for v in (cond, a, b)):
        c, x, y = (list(_as_ints(v).values) for v in (cond, a, b))
        n = max(len(c), len(x), len(y))
        c, x, y = ([*v] * n if len(v) == 1 else v for v in (c, x, y))
        return Ints(tuple(p if k else q for k, p, q in zip(c, x, y, strict=True)))
    return torch.where(cond, a, b)


def _cast(node: OnnxNode, x: Value) -> Value:
    dtype = _DTYPES[node.attr("to")]
    if isinstance(x, Ints):  # shape numbers stay numbers: floats for a float type, ints otherwise
        kind = float if dtype.is_floating_point else int
        return Ints(tuple(v if isinstance(v, torch.SymInt) else kind(v) for v in x.values), x.scalar)
    return x.to(dtype)


def _shape(node: OnnxNode, x: Value) -> Ints:
    start, end = node.attr("start", 0), node.attr("end", None)
    dims = (() if x.scalar else (len(x.values),)) if isinstance(x, Ints) else tuple(x.shape)
    return Ints(dims[start:end])


def _gather(node: OnnxNode, data: Value, indices: torch.Tensor | np.ndarray) -> Value:
    axis = node.attr("axis", 0)
    if isinstance(data, Ints):
        picked = [data.values[int(i)] for i in indices.reshape(-1).tolist()]
        return Ints(tuple(picked), scalar=len(indices.shape) == 0)
    axis %= data.dim()
    if len(indices.shape) == 0:
        return data.select(axis, int(indices) % data.shape[axis] if int(indices) < 0 else int(indices))
    indices = torch.as_tensor(indices)
    flat = torch.where(indices < 0, indices + data.shape[axis], indices).reshape(-1)
    picked = torch.index_select(data, axis, flat)
    return picked.reshape(*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :])


def _concat(node: OnnxNode, *args: Value) -> Value:
    if any(isinstance(a, Ints) for a in args):
        return Ints(tuple(v for a in args for v in _as_ints(a).values))
    return torch.cat(args, dim=node.attr("axis"))


def _axes(node: OnnxNode, given: Value | None) -> list[int] | None:
    """Axes from the attribute (earlier opsets) or the input (later ones); None where neither says."""
    if given is not None:
        return _ints(given)
    axes = node.attr("axes")
    return None if axes is None else list(axes)


def _unsqueeze(node: OnnxNode, x: Value, axes: Value | None = None) -> Value:
    if isinstance(x, Ints):
        return Ints(x.values)
    rank = x.dim() + len(_axes(node, axes))
    for axis in sorted(a % rank for a in _axes(node, axes)):
        x = x.unsqueeze(axis)
    return x


def _squeeze(node: OnnxNode, x: Value, axes: Value | None = None) -> Value:
    if isinstance(x, Ints):
        return Ints(x.values, scalar=True)
    chosen = _axes(node, axes)
    if chosen is None:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in chosen), reverse=True):
        x = x.squeeze(axis)
    return x


def _slice_args(node: OnnxNode, args: Sequence[Value | None]) -> tuple[list, list, list, list]:
    if node.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes = list(node.attr("axes", range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    starts, ends = _ints(args[0]), _ints(args[1])
    axes = _ints(args[2]) if len(args) > 2 and args[2] is not None else list(range(len(starts)))
    steps = _ints(args[3]) if len(args) > 3 and args[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


def _slice(node: OnnxNode, x: Value, *args: Value | None) -> Value:
    starts, ends, axes, steps = _slice_args(node, args)
    if isinstance(x, Ints):
        return Ints(tuple(x.values[slice(starts[0], _end(ends[0]), steps[0])]))
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        if step > 0:
            x = x[(slice(None),) * axis + (slice(start, _end(end), step),)]
        else:  # backwards: the axis flipped (whose gradient is a flip), then sliced forwards
            n = x.shape[axis]
            first, last, step = slice(start, end, step).indices(n)
            x = x.flip(axis)[(slice(None),) * axis + (slice(n - 1 - first, n - 1 - last, -step),)]
    return x


def _end(end: int) -> int | None:
    return None if isinstance(end, int) and end >= 2**62 else end


def _reshape(node: OnnxNode, x: torch.Tensor, shape: Value) -> torch.Tensor:
    dims = _ints(shape)
    if isinstance(x, Ints):  # a shape vector made a vector or a scalar again
        return Ints(x.values, scalar=not dims)
    if not node.attr("allowzero", 0):
        dims = [x.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _expand(node: OnnxNode, x: torch.Tensor, shape: Value) -> torch.Tensor:
    dims = _ints(shape)
    rank = max(len(dims), x.dim())
    dims = [1] * (rank - len(dims)) + dims
    have = [1] * (rank - x.dim()) + list(x.shape)
    target = [h if isinstance(d, int) and d == 1 else d for d, h in zip(dims, have, strict=True)]
    return x.reshape(have).expand(target)


def _flatten(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
    axis = node.attr("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]) if axis else 1, -1)


def _transpose(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
    perm = node.attr("perm") or list(range(x.dim()))[::-1]
    return x.permute(*perm)


def _split(node: OnnxNode, x: torch.Tensor, sizes: Value | None = None) -> tuple[torch.Tensor, ...]:
    axis = node.attr("axis", 0)
    given = _ints(sizes) if sizes is not None else node.attr("split")
    if given:
        return torch.split(x, list(given), dim=axis)
    count = len(node.outputs)
    return torch.split(x, -(-x.shape[axis] // count), dim=axis)


def _constant_of_shape(node: OnnxNode, shape: Value) -> torch.Tensor:
    value = node.attrs.get("value")
    filled = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    dims = _ints(shape)
    if isinstance(shape, Ints) and len(dims) == 1 and isinstance(dims[0], int) and filled.dtype.kind in "iub":
        return Ints((int(filled.reshape(-1)[0]),) * dims[0])  # a vector of ints, as shapes are computed
    return torch.full(_ints(shape), filled.reshape(-1)[0].item(), dtype=torch.from_numpy(filled.copy()).dtype)


def _range(node: OnnxNode, start: Value, limit: Value, delta: Value) -> torch.Tensor:
    a, b, d = (_ints(v)[0] if isinstance(v, Ints) else v.item() for v in (start, limit, delta))
    return torch.arange(a, b, d)


def _tile(node: OnnxNode, x: torch.Tensor, repeats: Value) -> torch.Tensor:
    return x.repeat(_ints(repeats))


def _reduce_prod(node: OnnxNode, x: Value, *rest: Value) -> Value:
    if isinstance(x, Ints):
        return Ints((math.prod(x.values),), scalar=not node.attr("keepdims", 1))
    return _reduce(torch.prod)(node, x, *rest)


def _reduce(fn: Callable) -> Callable:
    """ReduceMean, ReduceSum, ReduceMax...: axes as attribute or (later opsets) input, ``keepdims`` (1)."""

    def op(node: OnnxNode, x: torch.Tensor, axes: Value | None = None) -> torch.Tensor:
        chosen = _axes(node, axes)
        keep = bool(node.attr("keepdims", 1))
        if not chosen:
            if node.attr("noop_with_empty_axes", 0):
                return x
            chosen = list(range(x.dim()))
        for axis in sorted((a % x.dim() for a in chosen), reverse=True):
            x = fn(x, axis, keepdim=keep)
            x = x.values if hasattr(x, "values") and not isinstance(x, torch.Tensor) else x
        return x

    return op


# --- neural network ops --------------------------------------------------------------------------------------


def _spatial(node: OnnxNode, x: torch.Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and (begin, end) pads per spatial axis, ``auto_pad`` resolved (ONNX Conv/Pool)."""
    n = len(kernel)
    strides = list(node.attr("strides", [1] * n))
    dilations = list(node.attr("dilations", [1] * n))
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            pads_begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            pads_end.append(total - pads_begin[-1])
        return strides, dilations, pads_begin + pads_end
    pads = list(node.attr("pads", [0] * 2 * n)) if auto_pad != "VALID" else [0] * 2 * n
    return strides, dilations, pads


def _torch_pads(pads: list[int]) -> list[int]:
    """ONNX pads (every axis's begin, then every axis's end) as F.pad takes them (the last axis first)."""
    n = len(pads) // 2
    return [p for axis in reversed(range(n)) for p in (pads[axis], pads[axis + n])]


def _padded(x: torch.Tensor, pads: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads stay for the op; asymmetric ones are applied here."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return x, pads[:n]
    return F.pad(x, _torch_pads(pads)), [0] * n


def _conv(node: OnnxNode, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    kernel = list(node.attr("kernel_shape", weight.shape[2:]))
    strides, dilations, pads = _spatial(node, x, kernel)
    x, padding = _padded(x, pads)
    conv = {1: F.conv1d, 2: F.conv2d}.get(len(kernel))
    if conv is None:
        raise UnsupportedFileError(f"node {node.node_name}: a {len(kernel)}-D Conv; camexport imports 1-D and 2-D")
    return conv(x, weight, bias, strides, padding, dilations, node.attr("group", 1))


def _max_pool(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, pads = _spatial(node, x, kernel)
    n = len(kernel)
    if len(node.outputs) > 1:
        raise UnsupportedFileError(f"node {node.node_name}: MaxPool's Indices output; camexport imports the values")
    padding = pads[:n]
    if pads[:n] != pads[n:] or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        x = F.pad(x, _torch_pads(pads), value=float("-inf"))
        padding = [0] * n
    pool = {1: F.max_pool1d, 2: F.max_pool2d}[n]
    return pool(x, kernel, strides, padding, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))


def _average_pool(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
    kernel = list(node.attr("kernel_shape"))
    strides, _, pads = _spatial(node, x, kernel)
    include = bool(node.attr("count_include_pad", 0))
    ceil = bool(node.attr("ceil_mode", 0))
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d}[len(kernel)]
    n = len(kernel)
    if pads[:n] == pads[n:] and all(2 * p <= k for p, k in zip(pads[:n], kernel, strict=True)):
        return pool(x, kernel, strides, pads[:n], ceil, count_include_pad=include)
    spec = _torch_pads(pads)
    area = math.prod(kernel)
    total = pool(F.pad(x, spec), kernel, strides, 0, ceil, count_include_pad=True) * area
    if include:
        return total / area
    ones = F.pad(torch.ones_like(x[:1, :1]), spec)
    return total / (pool(ones, kernel, strides, 0, ceil, count_include_pad=True) * area)


def _global_pool(reduce: str) -> Callable:
    def op(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        return x.mean(dim=dims, keepdim=True) if reduce == "mean" else x.amax(dim=dims, keepdim=True)

    return op


def _gemm(node: OnnxNode, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    a = a.transpose(0, 1) if node.attr("transA", 0) else a
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transB", 0) and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1):
        return F.linear(a, b, c)  # one Gemm again, as the file had it
    b = b.transpose(0, 1) if node.attr("transB", 0) else b
    out = torch.matmul(a, b) if alpha == 1.0 else torch.matmul(a, b) * alpha
    return out if c is None else out + (c if beta == 1.0 else beta * c)


def _batch_norm(node: OnnxNode, x, scale, bias, mean, var) -> torch.Tensor:
    if node.opset < 9 and node.attr("spatial", 1) == 0:
        raise UnsupportedFileError(f"node {node.node_name}: BatchNormalization with spatial=0 (opset {node.opset})")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))


def _lrn(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
    """ONNX LRN: x / (bias + alpha / size * Σ x²)^beta, the sum over channels c - ⌊(size-1)/2⌋ .. c +
    ⌈(size-1)/2⌉ (torch's local_response_norm centres an even window the other way)."""
    size = node.attr("size")
    squares = F.pad(x * x, [0, 0] * (x.dim() - 2) + [(size - 1) // 2, size // 2])
    channels = x.shape[1]
    total = squares[:, 0:channels]
    for shift in range(1, size):
        total = total + squares[:, shift : shift + channels]
    scale = node.attr("bias", 1.0) + node.attr("alpha", 1e-4) / size * total
    return x / scale ** node.attr("beta", 0.75)


def _softmax(fn: Callable) -> Callable:
    """Softmax and LogSoftmax: over one axis (opset 13 on; -1 by default), or before opset 13 over the input
    flattened to 2-D at ``axis`` (1 by default)."""

    def op(node: OnnxNode, x: torch.Tensor) -> torch.Tensor:
        if node.opset >= 13:
            return fn(x, dim=node.attr("axis", -1))
        axis = node.attr("axis", 1) % x.dim()
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return op


def _clip(node: OnnxNode, x: torch.Tensor, low: Value | None = None, high: Value | None = None) -> torch.Tensor:
    if node.opset < 11:
        low_value, high_value = node.attr("min"), node.attr("max")
    else:
        low_value = None if low is None else low.item()
        high_value = None if high is None else high.item()
    return torch.clamp(x, low_value, high_value)


def _pad(node: OnnxNode, x: torch.Tensor, pads: Value | None = None, value: Value | None = None, axes=None):
    mode = node.attr("mode", "constant")
    amounts = list(node.attr("pads")) if node.opset < 11 else _ints(pads)
    fill = node.attr("value", 0.0) if node.opset < 11 else (0.0 if value is None else value.item())
    chosen = _ints(axes) if axes is not None else list(range(x.dim()))
    n = len(chosen)
    full = [0] * (2 * x.dim())
    for i, axis in enumerate(chosen):
        full[axis % x.dim()], full[axis % x.dim() + x.dim()] = amounts[i], amounts[i + n]
    spec = [p for axis in reversed(range(x.dim())) for p in (full[axis], full[axis + x.dim()])]
    while len(spec) > 2 and spec[-1] == 0 and spec[-2] == 0:
        spec = spec[:-2]
    if mode == "constant":
        return F.pad(x, spec, value=fill)
    return F.pad(x, spec, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _resize(node: OnnxNode, x: torch.Tensor, *args: Value | None) -> torch.Tensor:
    """Resize (opset 10 on) and Upsample (before): scales or sizes over the spatial axes."""
    scales, sizes = _resize_args(node, args)
    mode = node.attr("mode", "nearest")
    coordinates = node.attr("coordinate_transformation_mode", "half_pixel" if node.opset >= 11 else "asymmetric")
    spatial = x.shape[2:]
    if sizes:
        size = [int(s) for s in sizes[2:]]
    else:
        size = [math.floor(n * s) for n, s in zip(spatial, scales[2:], strict=True)]
    if mode == "nearest":
        if coordinates != "asymmetric" or node.attr("nearest_mode", "round_prefer_floor") != "floor":
            if not all(s % n == 0 for s, n in zip(size, spatial, strict=True)):
                raise UnsupportedFileError(
                    f"node {node.node_name}: Resize nearest with {coordinates} coordinates at a non-integer scale"
                )
        return F.interpolate(x, size=size, mode="nearest")
    kind = {"linear": {3: "linear", 4: "bilinear"}, "cubic": {4: "bicubic"}}.get(mode, {}).get(x.dim())
    if kind is None or coordinates not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise UnsupportedFileError(
            f"node {node.node_name}: Resize mode {mode} with {coordinates} coordinates (opset {node.opset})"
        )
    return F.interpolate(x, size=size, mode=kind, align_corners=coordinates == "align_corners")


def _resize_args(node: OnnxNode, args: Sequence[Value | None]) -> tuple[list[float] | None, list | None]:
    if node.op == "Upsample" and node.opset < 9:
        return list(node.attr("scales")), None
    if node.opset < 11:
        return [float(v) for v in args[0].reshape(-1).tolist()], None
    scales = args[1] if len(args) > 1 else None
    sizes = args[2] if len(args) > 2 else None
    if sizes is not None and (isinstance(sizes, Ints) or math.prod(sizes.shape)):
        return None, _ints(sizes)
    return [float(v) for v in scales.reshape(-1).tolist()], None


def _prelu(node: OnnxNode, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


def _layer_norm(node: OnnxNode, x, scale, bias=None) -> torch.Tensor:
    axis = node.attr("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, node.attr("epsilon", 1e-5))


def _dropout(node: OnnxNode, x: torch.Tensor, *rest: Value | None) -> Any:
    return (x, torch.ones_like(x, dtype=torch.bool)) if len(node.outputs) > 1 else x


def _unary(fn: Callable) -> Callable:
    return lambda node, x: fn(x)


# Inputs that act as attributes (shapes, axes, indices, bounds): where the file gives them as constants, the
# node reads them as numpy arrays fixed at import, so that tracing never reads a traced tensor's values.
STATIC_INPUTS: dict[str, set[int]] = {
    **{op: {1} for op in ("Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", "Split", "Gather", "Upsample")},
    **{op: {1} for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd")},
    "ConstantOfShape": {0},
    "Range": {0, 1, 2},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3},
    "Clip": {1, 2},
    "Resize": {1, 2, 3},
}

# Ops that take shape ints (as data or as a shape argument); any other op gets them as a tensor.
_SHAPE_AWARE = {
    *("Add", "Sub", "Mul", "Div", "Mod", "Equal", "Less", "Greater", "Not", "Where", "Cast", "Identity", "Shape"),
    *("Max", "Min", "Ceil", "Floor"),
    *("Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Reshape", "Expand", "Tile", "ConstantOfShape", "Range"),
    *("ReduceProd", "Split", "Pad", "Resize", "Upsample", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"),
}

OPS: dict[str, Callable] = {
    "Add": _arith(operator.add, torch.add),
    "Sub": _arith(operator.sub, torch.sub),
    "Mul": _arith(operator.mul, torch.mul),
    "Div": _arith(lambda a, b: a / b if isinstance(a, float) or isinstance(b, float) else a // b, _div),
    "Pow": lambda node, a, b: torch.pow(a, b),
    "Sum": _sum,
    "Max": _extreme(torch.maximum, max),
    "Min": _extreme(torch.minimum, min),
    "Ceil": _rounding(math.ceil, torch.ceil),
    "Floor": _rounding(math.floor, torch.floor),
    "Mod": lambda node, a, b: (
        _arith(math.fmod, torch.fmod) if node.attr("fmod", 0) else _arith(operator.mod, torch.remainder)
    )(node, a, b),
    "Equal": _arith(operator.eq, torch.eq),
    "Less": _arith(operator.lt, torch.lt),
    "Greater": _arith(operator.gt, torch.gt),
    "Not": lambda node, x: Ints(tuple(not v for v in x.values), x.scalar) if isinstance(x, Ints) else ~x,
    "Where": _where,
    "Cast": _cast,
    "Identity": lambda node, x: x,
    "Shape": _shape,
    "Gather": _gather,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Expand": _expand,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Split": _split,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Tile": _tile,
    "ReduceProd": _reduce_prod,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_pool("mean"),
    "GlobalMaxPool": _global_pool("max"),
    "Gemm": _gemm,
    "MatMul": lambda node, a, b: torch.matmul(a, b),
    "BatchNormalization": _batch_norm,
    "LRN": _lrn,
    "Dropout": _dropout,
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "Relu": _unary(torch.relu),
    "LeakyRelu": lambda node, x: F.leaky_relu(x, node.attr("alpha", 0.01)),
    "PRelu": _prelu,
    "Clip": _clip,
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": lambda node, x: torch.clamp(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0.0, 1.0),
    "HardSwish": _unary(F.hardswish),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Gelu": lambda node, x: F.gelu(x, approximate=node.attr("approximate", "none")),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Exp": _unary(torch.exp),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "LayerNormalization": _layer_norm,
}
