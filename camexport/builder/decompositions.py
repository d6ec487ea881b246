"""Decompositions of backward ATen ops into forward ops that the ONNX exporter can lower, and deterministically.

``make_fx`` records the backward pass as ATen ops. Several of them (``convolution_backward``,
``max_pool2d_with_indices_backward``, ``_adaptive_avg_pool2d_backward``, ``as_strided_scatter``) have no
ONNX lowering, so they are rewritten here while tracing. Only the gradient with respect to the op's input
is needed: parameters never require gradients in a camexport graph.

No rewrite here scatters. PyTorch's own decompositions route gradients back through ``scatter_add``,
``index_put(accumulate=True)`` or ``slice_scatter`` (max pooling, bilinear upsampling, slicing), which become ONNX
``ScatterElements``/``ScatterND``; onnxruntime adds duplicate indices on several threads in no fixed order, so
such a graph gives different gradients from run to run (upstream issues #18048, #23396). Instead, max pooling's
backward adds one-hot-masked, shifted gradients (Pads), a slice's or a selection's backward is a Pad, and bilinear
and nearest upsampling are rewritten in the forward pass as two matrix products, whose backward is two more
(:func:`camexport.builder.export.check_deterministic` refuses any graph that still holds a scatter).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch._decomp import core_aten_decompositions
from torch.overrides import TorchFunctionMode

from camexport.errors import DynamicSizeError, UnsupportedModelError

aten = torch.ops.aten


def conv_output_padding(in_size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output padding that makes a transposed convolution restore ``in_size``.

    ``(in + 2p − d(k−1) − 1) mod s``: the rows a strided convolution skipped at the end.
    """
    return (in_size + 2 * padding - dilation * (kernel - 1) - 1) % stride


def _is_symbolic(*sizes: object) -> bool:
    return any(isinstance(size, torch.SymInt) for size in sizes)


def _dynamic_size_unsupported(what: str) -> DynamicSizeError:
    return DynamicSizeError(
        f"`dynamic_size`: the backward pass crosses {what}, whose shape depends on the image size; "
        "build without `dynamic_size`, or choose a `layer` after it"
    )


def _transposed_to_size(
    grad: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    sizes: Sequence[object],
) -> torch.Tensor:
    """A transposed convolution cut to the forward input's (possibly symbolic) ``sizes``.

    The full transposed output (no padding) covers the padded input but for the last
    ``(in + 2p − d(k−1) − 1) mod s`` rows, which the strided convolution skipped (their gradient is 0):
    pad those at the end, then crop ``p`` rows from the start. Unlike ``output_padding``, this needs no
    constant.
    """
    spatial = len(stride)
    zeros = [0] * spatial
    full = aten.convolution.default(grad, weight, None, list(stride), zeros, list(dilation), True, zeros, groups)
    pads: list = []
    for d in reversed(range(spatial)):
        pads += [0, sizes[d] + 2 * padding[d] - full.shape[2 + d]]
    full = aten.constant_pad_nd.default(full, pads, 0.0)
    for d in range(spatial):
        full = aten.slice.Tensor(full, 2 + d, padding[d], padding[d] + sizes[d])
    return full


def _flipped_transposed(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """[out, in/g, *k] → [in, out/g, *k] per group, each kernel flipped in every spatial axis."""
    out_channels, in_per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    grouped = weight.reshape(groups, out_channels // groups, in_per_group, *kernel).transpose(1, 2)
    swapped = grouped.reshape(groups * in_per_group, out_channels // groups, *kernel)
    return swapped.flip(list(range(2, 2 + len(kernel))))


def _spread(grad: torch.Tensor, axis: int, step: int) -> torch.Tensor:
    """``grad`` with ``step − 1`` zeros between neighbours along ``axis``: its length h becomes s·(h − 1) + 1."""
    if step <= 1:
        return grad
    size, shape = grad.shape[axis], list(grad.shape)
    zeros = grad.new_zeros([*shape[: axis + 1], step - 1, *shape[axis + 1 :]])
    spread = torch.cat([grad.unsqueeze(axis + 1), zeros], dim=axis + 1)
    return spread.reshape([*shape[:axis], size * step, *shape[axis + 1 :]]).narrow(axis, 0, step * (size - 1) + 1)


def _zero_inserted(grad: torch.Tensor, stride: Sequence[int], extra: Sequence[int]) -> torch.Tensor:
    """``grad`` [N, C, *h] with ``s − 1`` zeros between neighbours along each strided axis and ``extra`` zeros
    after the last: [N, C, *(s·(h − 1) + 1 + extra)], the grid a strided convolution's input gradient lives on."""
    for d, step in enumerate(stride):
        grad = _spread(grad, 2 + d, step)
        if extra[d]:
            pads = [0, 0] * (len(stride) - 1 - d) + [0, extra[d]]
            grad = aten.constant_pad_nd.default(grad, pads, 0.0)
    return grad


def _strided_grouped_input_gradient(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    flipped_padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    extra: Sequence[int],
) -> torch.Tensor:
    """A strided grouped (depthwise) convolution's input gradient as a stride-1 Conv, with the flipped kernel, over
    the gradient spread on the input's grid. It multiplies zeros (stride² times the transposed convolution's
    work), but onnxruntime's grouped ConvTranspose runs one small product per group: a 5×5 stride-2 depthwise
    backward of efficientnet_lite0 took 3.1 ms at batch 8 as ConvTranspose (benchmarks/profile/profile.md)."""
    spatial = len(stride)
    return aten.convolution.default(
        _zero_inserted(grad_output, stride, extra),
        _flipped_transposed(weight, groups),
        None,
        [1] * spatial,
        list(flipped_padding),
        list(dilation),
        False,
        [0] * spatial,
        groups,
    )


def convolution_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """Input gradient of a convolution: a transposed convolution with the same weight and groups."""
    del bias_sizes, output_padding
    if transposed:
        raise UnsupportedModelError(
            "the backward pass crosses a transposed convolution, which camexport cannot export yet; "
            "choose a layer after it"
        )
    if output_mask[1] or output_mask[2]:
        raise UnsupportedModelError("weight gradients were requested while tracing; this is a camexport bug")
    grad_input = None
    if output_mask[0]:
        spatial = len(stride)
        extra = [
            conv_output_padding(input.shape[2 + d], weight.shape[2 + d], stride[d], padding[d], dilation[d])
            for d in range(spatial)
        ]
        flipped_padding = [dilation[d] * (weight.shape[2 + d] - 1) - padding[d] for d in range(spatial)]
        if all(v == 1 for v in stride) and all(isinstance(v, int) and v >= 0 for v in flipped_padding):
            # Stride 1: the input gradient is an ordinary convolution with the kernel flipped and its
            # channel axes swapped (per group). onnxruntime runs Conv on its fast blocked kernels, while
            # ConvTranspose goes through im2col; the weight rearrangement is folded at session start.
            grad_input = aten.convolution.default(
                grad_output,
                _flipped_transposed(weight, groups),
                None,
                [1] * spatial,
                flipped_padding,
                list(dilation),
                False,
                [0] * spatial,
                groups,
            )
        elif groups > 1 and all(isinstance(v, int) and v >= 0 for v in (*extra, *flipped_padding)):
            grad_input = _strided_grouped_input_gradient(
                grad_output, weight, stride, flipped_padding, dilation, groups, extra
            )
        elif all(isinstance(e, int) for e in extra):
            grad_input = aten.convolution.default(
                grad_output, weight, None, list(stride), list(padding), list(dilation), True, extra, groups
            )
        else:  # symbolic spatial sizes (--dynamic-size): the output padding is not a constant
            sizes = [input.shape[2 + d] for d in range(spatial)]
            grad_input = _transposed_to_size(grad_output, weight, stride, padding, dilation, groups, sizes)
    return grad_input, None, None


def max_pool2d_with_indices_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
    indices: torch.Tensor,
) -> torch.Tensor:
    """Routes each output gradient to the input position that held the window's maximum, without a scatter.

    For each kernel offset ``(a, b)``, ``mask[o] = (indices[o] == the flat position of o's window at (a, b))``; the
    masked gradient, spread on the input's grid (``s − 1`` zeros between neighbours), lands shifted by the offset
    (one Pad, which also crops), and the ``kh·kw`` shares are added in a fixed order. PyTorch's own decomposition
    scatter-adds them, which onnxruntime does in no fixed order where windows overlap.
    """
    del ceil_mode
    kernel = _pair(kernel_size)
    steps = _pair(stride) if stride else kernel
    pads, dilations = _pair(padding), _pair(dilation) if dilation else [1, 1]
    out_h, out_w = grad_output.shape[-2:]
    height, width = input.shape[-2:]
    rows = torch.arange(out_h, dtype=torch.int64)[:, None] * steps[0] - pads[0]
    cols = torch.arange(out_w, dtype=torch.int64)[None, :] * steps[1] - pads[1]
    total = None
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            position = (rows + a * dilations[0]) * width + (cols + b * dilations[1])
            share = _zero_inserted(grad_output * (indices == position).to(grad_output.dtype), steps, [0, 0])
            top, left = a * dilations[0] - pads[0], b * dilations[1] - pads[1]
            placed = _placed(_placed(share, 2, top, height), 3, left, width)
            total = placed if total is None else total + placed
    return total


def _pair(value: object) -> list:
    """A pooling or resizing argument as [height's, width's]."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values * 2 if len(values) == 1 else values


def interpolation_matrix(
    out_size: int, in_size: int, scale: float | None = None, corners: bool = False
) -> torch.Tensor:
    """[out, in] float64 weights of 1-D linear interpolation as PyTorch's CPU kernel computes it.

    With half-pixel centres (``align_corners=False``) output ``i`` samples ``s·(i + 0.5) − 0.5``, clamped at 0,
    where ``s`` is ``1/scale`` for a given ``scale_factor`` and ``in/out`` otherwise; with ``align_corners=True``
    it samples ``i·(in − 1)/(out − 1)``. The sample lies between its two neighbours (the last pixel twice at the
    border) and weighs each by its distance to the other.
    """
    if corners:
        step = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
        step = 1.0 / scale if scale else in_size / out_size
    rows = []
    for i in range(out_size):
        source = i * step if corners else max((i + 0.5) * step - 0.5, 0.0)
        low = min(int(source), in_size - 1)
        high = min(low + 1, in_size - 1)
        frac = source - low
        row = [0.0] * in_size
        row[low] += 1.0 - frac
        row[high] += frac
        rows.append(row)
    # From Python numbers, so that tracing records one constant rather than the loop.
    return torch.tensor(rows, dtype=torch.float64)


def nearest_matrix(out_size: int, in_size: int, scale: float | None = None, exact: bool = False) -> torch.Tensor:
    """[out, in] 0/1 matrix of nearest-neighbour resizing as PyTorch's CPU kernel computes it (in float32): output
    ``i`` takes input ``min(⌊s·i⌋, in − 1)`` (mode ``nearest``) or ``min(⌊s·(i + 0.5)⌋, in − 1)``
    (``nearest-exact``), ``s`` being ``1/scale`` for a given ``scale_factor`` and ``in/out`` otherwise."""
    step = np.float32(1.0 / scale) if scale else np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5 if exact else 0.0)
    sources = np.minimum(np.floor(centres * step).astype(np.int64), in_size - 1)
    if not exact and out_size in (in_size, 2 * in_size):  # PyTorch's shortcuts: copy, or halve the index
        sources = np.arange(out_size) // (out_size // in_size)
    return torch.tensor((sources[:, None] == np.arange(in_size)[None, :]).astype(np.float64))


_MATRICES = {
    "bilinear": lambda o, i, s, corners: interpolation_matrix(o, i, s, corners),
    "nearest": lambda o, i, s, corners: nearest_matrix(o, i, s),
    "nearest-exact": lambda o, i, s, corners: nearest_matrix(o, i, s, exact=True),
}


def resize_as_products(
    input: torch.Tensor,
    size: int | Sequence[int] | None = None,
    scale_factor: float | Sequence[float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> torch.Tensor | None:
    """``F.interpolate`` (bilinear, nearest or nearest-exact) of a fixed-size [N, C, h, w] tensor as
    ``U_H · x · U_Wᵀ``; None for any other call (which then runs as PyTorch has it).

    Both modes are separable and linear, so the two products are exact to float rounding (nearest's matrices
    hold one 1 per row), and their backward is two more products: no ``index_put`` with accumulation (a
    ScatterND with ``reduction="add"``).
    """
    if mode not in _MATRICES or antialias or input.dim() != 4 or _is_symbolic(*input.shape[-2:]):
        return None
    in_size = [int(input.shape[-2]), int(input.shape[-1])]
    if size is not None:
        out_size, scales = [int(v) for v in _pair(size)], [None, None]
    elif scale_factor is not None:
        factors = [float(v) for v in _pair(scale_factor)]
        out_size = [int(i * f) for i, f in zip(in_size, factors, strict=True)]
        scales = [None, None] if recompute_scale_factor else factors
    else:
        return None
    if _is_symbolic(*out_size):
        return None
    rows, cols = (
        _MATRICES[mode](o, i, s, bool(align_corners)).to(input.dtype)
        for o, i, s in zip(out_size, in_size, scales, strict=True)
    )
    return rows @ input @ cols.T


def _placed(grad: torch.Tensor, dim: int, before: object, size: object) -> torch.Tensor:
    """``grad`` along ``dim`` at offset ``before`` in zeros of length ``size``: one Pad."""
    pads = [0, 0] * (grad.dim() - 1 - dim) + [before, size - before - grad.shape[dim]]
    return aten.constant_pad_nd.default(grad, pads, 0.0)


def slice_backward(
    grad_output: torch.Tensor, input_sizes: Sequence[int], dim: int, start: int, end: int, step: int
) -> torch.Tensor:
    """The gradient of ``x[start:end:step]`` along ``dim``: the slice's gradient put back in zeros (spread with
    ``step − 1`` zeros between neighbours first). PyTorch's own writes it with ``slice_scatter``, which the exporter
    lowers to a ScatterND; a Pad is exact, cheaper, and holds no index at all (a class token dropped, a padded
    window cropped: ViT, Swin)."""
    del end
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    if isinstance(start, int) and isinstance(size, int):
        start = min(max(start + size if start < 0 else start, 0), size)
    return _placed(_spread(grad_output, dim, step), dim, start, size)


def select_backward(grad_output: torch.Tensor, input_sizes: Sequence[int], dim: int, index: int) -> torch.Tensor:
    """The gradient of ``x.select(dim, index)`` (``x[:, 0]``, a class token): put back in zeros with a Pad."""
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    if isinstance(index, int) and isinstance(size, int) and index < 0:
        index += size
    return _placed(grad_output.unsqueeze(dim), dim, index, size)


def _adaptive_pool_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] averaging matrix of adaptive average pooling along one axis."""
    rows = []
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(in_size)])
    # Built from Python numbers so that tracing records one constant, not the loop.
    return torch.tensor(rows, dtype=like.dtype)


def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling is ``P_h X P_wᵀ``, so its input gradient is ``P_hᵀ G P_w``."""
    if _is_symbolic(*input.shape[-2:]):
        raise _dynamic_size_unsupported("an adaptive average pooling to a fixed grid")
    in_h, in_w = int(input.shape[-2]), int(input.shape[-1])
    out_h, out_w = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    p_h = _adaptive_pool_matrix(in_h, out_h, grad_output)
    p_w = _adaptive_pool_matrix(in_w, out_w, grad_output)
    return torch.matmul(torch.matmul(p_h.t(), grad_output), p_w)


def adaptive_avg_pool2d(input: torch.Tensor, output_size: int | Sequence[int | None]) -> torch.Tensor:
    """Global average pooling as a plain mean.

    PyTorch's own path restrides the result to the input's memory format (``as_strided_``), which after a
    permute (ConvNeXt, Swin) leaves a strided scatter in the graph that ONNX cannot express.
    """
    pair = [output_size, output_size] if isinstance(output_size, int) else list(output_size)
    if pair == [1, 1]:
        return input.mean(dim=(-2, -1), keepdim=True)
    if _is_symbolic(*input.shape[-2:]):
        raise _dynamic_size_unsupported("an adaptive average pooling to a fixed grid")
    size = [int(v) if v is not None else int(input.shape[-2 + i]) for i, v in enumerate(pair)]
    return aten._adaptive_avg_pool2d.default(input.contiguous(), size)


def _avg_pool_divisors(
    in_size: int, out_size: int, kernel: int, stride: int, padding: int, include_pad: bool
) -> list[int]:
    """Per output index along one axis, the window length PyTorch divides by (as in its CPU kernel)."""
    divisors = []
    for i in range(out_size):
        start = i * stride - padding
        end = min(start + kernel, in_size + padding)
        divisors.append(end - start if include_pad else min(end, in_size) - max(start, 0))
    return divisors


def avg_pool2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """Each output gradient, divided by its window's divisor, spread over the window: a transposed
    depthwise convolution with a kernel of ones (cropped where ``ceil_mode`` windows overhang)."""
    kernel = _pair(kernel_size)
    steps = _pair(stride) if stride else kernel
    pads = _pair(padding)
    channels = int(input.shape[1])
    ones = torch.ones(channels, 1, kernel[0], kernel[1], dtype=grad_output.dtype)
    if _is_symbolic(*input.shape[-2:]):  # --dynamic-size: only windows that never overhang keep one divisor
        if ceil_mode or (any(pads) and not count_include_pad and not divisor_override):
            raise _dynamic_size_unsupported("an average pooling whose windows overhang the border")
        scaled = grad_output / float(divisor_override or kernel[0] * kernel[1])
        return _transposed_to_size(scaled, ones, steps, pads, [1, 1], channels, list(input.shape[-2:]))
    in_h, in_w = int(input.shape[-2]), int(input.shape[-1])
    out_h, out_w = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    if divisor_override:
        scaled = grad_output / float(divisor_override)
    else:
        rows = _avg_pool_divisors(in_h, out_h, kernel[0], steps[0], pads[0], count_include_pad)
        cols = _avg_pool_divisors(in_w, out_w, kernel[1], steps[1], pads[1], count_include_pad)
        divisors = torch.tensor([[1.0 / (r * c) for c in cols] for r in rows], dtype=grad_output.dtype)
        scaled = grad_output * divisors
    full_h = (out_h - 1) * steps[0] - 2 * pads[0] + kernel[0]
    full_w = (out_w - 1) * steps[1] - 2 * pads[1] + kernel[1]
    extra = [max(0, in_h - full_h), max(0, in_w - full_w)]
    spread = aten.convolution.default(scaled, ones, None, steps, pads, [1, 1], True, extra, channels)
    return spread[..., :in_h, :in_w]


# Activation backwards as products with a 0/1 mask. PyTorch decomposes them into ``where(mask, 0, grad)``;
# onnxruntime's Where with a scalar branch runs ~8x slower than Greater/And/Cast/Mul on the same
# [8, 480, 28, 28] tensors (12 ms against 1.5 ms, measured), and efficientnet_lite0's ReLU6 backwards cost 5.8
# of its 43 ms at batch 8 (benchmarks/profile/profile.md). The boundaries are PyTorch's own.


def _mask(condition: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return condition.to(like.dtype)


def threshold_backward(grad_output: torch.Tensor, self: torch.Tensor, threshold: float) -> torch.Tensor:
    """ReLU's backward: ``grad`` where ``x > threshold``, else 0."""
    return grad_output * _mask(self > threshold, grad_output)


def hardtanh_backward(grad_output: torch.Tensor, self: torch.Tensor, min_val: float, max_val: float) -> torch.Tensor:
    """ReLU6's (and hardtanh's) backward: ``grad`` where ``min < x < max``, else 0."""
    return grad_output * _mask((self > min_val) & (self < max_val), grad_output)


def hardswish_backward(grad_output: torch.Tensor, self: torch.Tensor) -> torch.Tensor:
    """``x·ReLU6(x + 3)/6``'s backward: 0 up to −3, ``x/3 + 1/2`` on (−3, 3), 1 from 3."""
    middle = _mask((self > -3.0) & (self < 3.0), grad_output)
    return grad_output * (middle * (self / 3.0 + 0.5) + _mask(self >= 3.0, grad_output))


def hardsigmoid_backward(grad_output: torch.Tensor, self: torch.Tensor) -> torch.Tensor:
    """``ReLU6(x + 3)/6``'s backward: ``grad/6`` on (−3, 3), else 0."""
    return grad_output * _mask((self > -3.0) & (self < 3.0), grad_output) * (1.0 / 6.0)


def leaky_relu_backward(
    grad_output: torch.Tensor, self: torch.Tensor, negative_slope: float, self_is_result: bool
) -> torch.Tensor:
    """``grad`` where ``x > 0``, else ``slope·grad``."""
    del self_is_result  # x and the result have the same sign
    positive = _mask(self > 0, grad_output)
    return grad_output * (positive + (1.0 - positive) * negative_slope)


class ForwardRewrites(TorchFunctionMode):
    """Replaces forward calls whose PyTorch implementation leaves un-exportable or order-dependent ops in the
    trace.

    ``adaptive_avg_pool2d`` is decomposed by PyTorch before any dispatch table sees it, so it is caught
    here, at the Python call, instead; bilinear and nearest ``interpolate`` become two matrix products
    (:func:`resize_as_products`), whose backward needs no scatter.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
            return adaptive_avg_pool2d(*args, **kwargs)
        if func is F.interpolate:
            products = resize_as_products(*args, **kwargs)
            if products is not None:
                return products
        return func(*args, **kwargs)

    def __enter__(self):
        # Attention is called from inside other functions (nn.MultiheadAttention's), where a mode does not
        # see it: the module attribute those calls look up is replaced for the time of the trace instead.
        self._sdpa = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = functools.partial(attention, self._sdpa)
        return super().__enter__()

    def __exit__(self, *exc_info):
        F.scaled_dot_product_attention = self._sdpa
        return super().__exit__(*exc_info)


def attention(
    func: Callable[..., torch.Tensor],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Unmasked attention as ``softmax(q·kᵀ·scale)·v``, the formula itself (PyTorch's math kernel guards fully
    masked rows with a ``_safe_softmax``: an Equal, a ReduceMin and a Where per layer, 8 % of a ViT-B/16
    graph's time in onnxruntime, for rows that cannot occur without a mask). Anything else goes to ``func``."""
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        return func(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    factor = scale if scale is not None else query.shape[-1] ** -0.5
    weights = torch.softmax((query * factor) @ key.transpose(-2, -1), dim=-1)
    return weights @ value


_OURS: dict[object, Callable[..., object]] = {
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
    aten.convolution_backward.default: convolution_backward,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
    aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
    aten.threshold_backward.default: threshold_backward,
    aten.hardtanh_backward.default: hardtanh_backward,
    aten.hardswish_backward.default: hardswish_backward,
    aten.hardsigmoid_backward.default: hardsigmoid_backward,
    aten.leaky_relu_backward.default: leaky_relu_backward,
    aten.slice_backward.default: slice_backward,
    aten.select_backward.default: select_backward,
}


def backward_decompositions() -> dict[object, Callable[..., object]]:
    """The decomposition table for tracing: PyTorch's own for backward and scatter ops, plus ours.

    Forward ops are left alone so that the exporter keeps its direct lowerings (``Resize`` for
    bilinear upsampling, ``Conv``, ``BatchNormalization``...).
    """
    table = {op: fn for op, fn in core_aten_decompositions().items() if "backward" in str(op) or "scatter" in str(op)}
    table.update(_OURS)
    return table
