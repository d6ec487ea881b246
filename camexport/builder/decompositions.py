"""Decompositions of backward ATen ops into forward ops that the ONNX exporter can lower.

``make_fx`` records the backward pass as ATen ops. Several of them (``convolution_backward``,
``max_pool2d_with_indices_backward``, ``_adaptive_avg_pool2d_backward``, ``as_strided_scatter``) have no
ONNX lowering, so they are rewritten here while tracing. Only the gradient with respect to the op's input
is needed: parameters never require gradients in a camexport graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

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


def _zero_inserted(grad: torch.Tensor, stride: Sequence[int], extra: Sequence[int]) -> torch.Tensor:
    """``grad`` [N, C, *h] with ``s − 1`` zeros between neighbours along each strided axis and ``extra`` zeros
    after the last: [N, C, *(s·(h − 1) + 1 + extra)], the grid a strided convolution's input gradient lives on."""
    for d, step in enumerate(stride):
        axis, size = 2 + d, grad.shape[2 + d]
        if step > 1:
            shape = list(grad.shape)
            zeros = grad.new_zeros([*shape[: axis + 1], step - 1, *shape[axis + 1 :]])
            spread = torch.cat([grad.unsqueeze(axis + 1), zeros], dim=axis + 1)
            grad = spread.reshape([*shape[:axis], size * step, *shape[axis + 1 :]]).narrow(
                axis, 0, step * (size - 1) + 1
            )
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
    """Routes each output gradient to the input position that held the maximum (scatter-add)."""
    del kernel_size, stride, padding, dilation, ceil_mode
    n, c, h, w = input.shape
    flat = grad_output.new_zeros((n, c, h * w))
    flat = flat.scatter_add(2, indices.reshape(n, c, -1), grad_output.reshape(n, c, -1))
    return flat.reshape(n, c, h, w)


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
    kernel = list(kernel_size) if len(kernel_size) == 2 else [kernel_size[0]] * 2
    steps = list(stride) if stride else kernel
    steps = steps if len(steps) == 2 else [steps[0]] * 2
    pads = list(padding) if len(padding) == 2 else [padding[0]] * 2
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
    """Replaces forward calls whose PyTorch implementation leaves un-exportable ops in the trace.

    ``adaptive_avg_pool2d`` is decomposed by PyTorch before any dispatch table sees it, so it is caught
    here, at the Python call, instead.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
            return adaptive_avg_pool2d(*args, **kwargs)
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
}


def backward_decompositions() -> dict[object, Callable[..., object]]:
    """The decomposition table for tracing: PyTorch's own for backward and scatter ops, plus ours.

    Forward ops are left alone so that the exporter keeps its direct lowerings (``Resize`` for
    bilinear upsampling, ``Conv``, ``BatchNormalization``...).
    """
    table = {op: fn for op, fn in core_aten_decompositions().items() if "backward" in str(op) or "scatter" in str(op)}
    table.update(_OURS)
    return table
