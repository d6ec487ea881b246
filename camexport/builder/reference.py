"""The eager yardstick: the CAM methods in plain PyTorch, independent of the tracing path.

A forward hook captures the target layer's output ``A``; ``torch.autograd.grad`` gives ``g = ∂y_c/∂A`` for
the pre-softmax logit ``y_c``; the formulas then run in float64, written out from the papers:

* Grad-CAM (Selvaraju et al. 2017): ``w_k = (1/Z) Σ_ij g_kij``.
* Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): ``α_kij = g² / (2g² + (Σ_ab A_kab)·g³)`` (0 where the
  denominator is 0), ``w_k = Σ_ij α_kij·ReLU(g_kij)``.
* XGrad-CAM (Fu et al. 2020): ``w_k = Σ_ij A_kij g_kij / Σ_ab A_kab`` (0 where the sum is 0).
* ``cam = ReLU(Σ_k w_k A_k)`` for those three; LayerCAM (Jiang et al. 2021):
  ``cam = ReLU(Σ_k ReLU(g_kij) A_kij)``; HiResCAM (Draelos & Carin 2020): ``cam = ReLU(Σ_k g_kij A_kij)``.
* ``heatmap`` = bilinear (half-pixel) upsampling to the input size, then per-image min-max to [0, 1] (zeros
  for a map that is constant up to 1e-5 of its maximum).

Nothing here is shared with :mod:`camexport.builder.methods` or :mod:`camexport.builder.tracing` (the layouts'
fields are read, their transforms are not used), so that the graph is checked against a separate
implementation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camexport.builder.layouts import CHANNELS_FIRST, ChannelsLast, Layout, Tokens, Windows


def _paper_cam(method: str, A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    if method == "layercam":
        return torch.einsum("nkhw,nkhw->nhw", g.clamp(min=0), A).clamp(min=0)
    if method == "hirescam":
        return torch.einsum("nkhw,nkhw->nhw", g, A).clamp(min=0)
    return torch.einsum("nk,nkhw->nhw", _paper_weights(method, A, g), A).clamp(min=0)


def _paper_weights(method: str, A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    n, k, h, w = A.shape
    if method == "gradcam":
        return g.reshape(n, k, h * w).sum(-1) / (h * w)
    if method == "xgradcam":
        totals = A.reshape(n, k, h * w).sum(-1)
        products = (A * g).reshape(n, k, h * w).sum(-1)
        out = torch.zeros_like(totals)
        defined = totals != 0
        out[defined] = products[defined] / totals[defined]
        return out
    if method == "gradcampp":
        sum_A = A.reshape(n, k, h * w).sum(-1)[:, :, None, None]
        numerator = g.pow(2)
        denominator = 2 * g.pow(2) + sum_A * g.pow(3)
        alpha = torch.zeros_like(g)
        defined = denominator != 0
        alpha[defined] = numerator[defined] / denominator[defined]
        return torch.einsum("nkhw,nkhw->nk", alpha, g.clamp(min=0))
    raise ValueError(f"unknown method {method!r}")


def _departition(x: torch.Tensor, p: int, gh: int, gw: int) -> torch.Tensor:
    n, _, _, c = x.shape
    return x.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)


def _as_map(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    if isinstance(layout, ChannelsLast):
        return t.movedim(-1, 1)
    if isinstance(layout, Tokens):
        return torch.stack([x[layout.prefix :].t().reshape(-1, layout.height, layout.width) for x in t])
    if isinstance(layout, Windows):  # undone as torchvision's WindowDepartition does it
        return _departition(t.swapaxes(1, 2) if layout.swap else t, layout.p, layout.gh, layout.gw)
    return t


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(maps)
    for i, m in enumerate(maps):
        low, high = m.min(), m.max()
        if high - low > 1e-5 * abs(high):  # flat up to rounding: zeros
            out[i] = (m - low) / (high - low)
    return out


def reference_explain(
    model: nn.Module,
    layer: str,
    method: str,
    image: torch.Tensor | np.ndarray,
    target_class: torch.Tensor | np.ndarray | list[int] | None = None,
    layout: Layout = CHANNELS_FIRST,
) -> dict[str, np.ndarray]:
    """Eager Grad-CAM/Grad-CAM++ for a batch.

    Args:
        model: network in eval mode.
        layer: dotted name of the target module.
        method: ``gradcampp``, ``gradcam``, ``xgradcam``, ``layercam`` or ``hirescam``.
        image: [N, 3, H, W] float32, normalised.
        target_class: [N] class indices, −1 (or None for all) meaning the top-1 class.
        layout: the output's layout (:mod:`camexport.builder.layouts`); only its fields are read, the
            transforms are this module's own: [N, h, w, C] moved to channels first; tokens [N, T, C]: after the
            gradient is taken with respect to the raw output, the prefix tokens are dropped and the rest laid
            out as [N, C, h, w]; MaxViT's windows [N, gh*gw, p*p, C] (token axes swapped when ``swap``)
            departitioned to [N, C, gh*p, gw*p].

    Returns:
        ``logits``, ``class_index``, ``heatmap``, ``cam``, ``activations``, ``gradients`` as numpy arrays
        (the float ones as float64 where computed in float64).
    """
    image = torch.as_tensor(np.asarray(image, dtype=np.float32)).clone().requires_grad_(True)
    module = dict(model.named_modules())[layer]
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        seen.append(out)
        return out.clone()  # later in-place ops must not change the captured A

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(image)
    finally:
        handle.remove()
    A = seen[-1]
    if target_class is None:
        chosen = logits.argmax(1)
    else:
        wanted = torch.as_tensor(np.asarray(target_class, dtype=np.int64)).expand(image.shape[0])
        chosen = torch.where(wanted < 0, logits.argmax(1), wanted)
    y_c = logits[torch.arange(image.shape[0]), chosen]
    (g,) = torch.autograd.grad(y_c.sum(), A)

    A64, g64 = _as_map(A.detach().double(), layout), _as_map(g.double(), layout)
    cam = _paper_cam(method, A64, g64)
    upsampled = F.interpolate(cam[:, None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    heatmap = _min_max(upsampled[:, 0])
    return {
        "logits": logits.detach().numpy(),
        "class_index": chosen.numpy(),
        "heatmap": heatmap.numpy(),
        "cam": cam.numpy(),
        "activations": A64.numpy(),
        "gradients": g64.numpy(),
    }
