"""The eager yardstick: the CAM methods in plain PyTorch, independent of the tracing path.

A forward hook captures the target layer's output ``A``; ``torch.autograd.grad`` gives ``g = ∂y_c/∂A`` for
the pre-softmax logit ``y_c``; the formulas then run in float64, written out from the papers:

* Grad-CAM (Selvaraju et al. 2017): ``w_k = (1/Z) Σ_ij g_kij``.
* Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19): ``α_kij = g² / (2g² + (Σ_ab A_kab)·g³)`` (0 where the
  denominator is 0), ``w_k = Σ_ij α_kij·ReLU(g_kij)``.
* XGrad-CAM (Fu et al. 2020): ``w_k = Σ_ij A_kij g_kij / Σ_ab A_kab`` (0 where the sum is 0).
* ``cam = ReLU(Σ_k w_k A_k)`` for those three; LayerCAM (Jiang et al. 2021):
  ``cam = ReLU(Σ_k ReLU(g_kij) A_kij)``; HiResCAM (Draelos & Carin 2020): ``cam = ReLU(Σ_k g_kij A_kij)``.
* Seg-Grad-CAM (Vinogradova et al. 2020): for logits [N, K, H, W], ``y_c = Σ_(i,j)∈M logits[c, i, j]``, M
  the pixels predicted as ``c`` (or the given region's weights); the default class is the one predicted on the
  most pixels, the background class only when nothing else is predicted.
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


def _region_scores(
    logits: torch.Tensor, wanted: torch.Tensor, region: np.ndarray | None, background: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the class (given, or the most predicted one) and its logits summed over the region."""
    classes, scores = [], []
    for i, image_logits in enumerate(logits):
        predicted = image_logits.detach().argmax(0)
        c = int(wanted[i])
        if c < 0:
            counts = torch.bincount(predicted.flatten(), minlength=image_logits.shape[0])
            others = counts.clone()
            if background is not None:
                others[background] = 0
            c = int(others.argmax()) if others.sum() > 0 else int(counts.argmax())
        mask = (predicted == c).double()
        if region is not None:
            given = torch.as_tensor(np.asarray(region[i], dtype=np.float64))
            mask = torch.where(given < 0, mask, given)
        classes.append(c)
        scores.append((image_logits[c].double() * mask).sum())
    return torch.tensor(classes), torch.stack(scores)


GAUSSIAN_3X3 = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16.0


def _with_layer_output(model: nn.Module, module: nn.Module, x: torch.Tensor, replacement: torch.Tensor | None = None):
    """Runs ``model`` without gradients; returns (logits, the module's output); ``replacement`` replaces it."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor | None:
        seen.append(out.detach().clone())
        return replacement

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, seen[-1]


def _reciprocal_mosaics(feature: np.ndarray) -> np.ndarray:
    """[C, h, w] → [h·w, C, h, w]: position (i, j) keeps ``feature[:, i, j]`` times the 3x3 Gaussian around it."""
    c, h, w = feature.shape
    mosaics = np.zeros((h * w, c, h, w))
    for i in range(h):
        for j in range(w):
            padded = np.zeros((c, h + 2, w + 2))
            padded[:, i : i + 3, j : j + 3] = feature[:, i, j, None, None] * GAUSSIAN_3X3
            mosaics[i * w + j] = padded[:, 1:-1, 1:-1]
    return mosaics


def reference_reciprocam(
    model: nn.Module, layer: str, image: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ReciproCAM (Byun & Lee 2022) as its authors' code does it, image by image: for each position (i, j) a
    zero feature map holding ``A[:, i, j]`` times the 3x3 Gaussian around (i, j) (cut at the border), the rest of
    the network run on those maps (the layer's output replaced by them), and the softmax probability of the
    class at each position.

    Returns:
        ``cam`` [N, h, w] (float64) and ``heatmap`` [N, H, W] (upsampled and min-maxed as for every method).
    """
    module = dict(model.named_modules())[layer]
    cams = []
    for one, cls in zip(np.asarray(image, dtype=np.float32), classes, strict=True):
        x = torch.as_tensor(one[None])
        _, feature = _with_layer_output(model, module, x)
        mosaics = torch.as_tensor(_reciprocal_mosaics(feature[0].double().numpy()), dtype=torch.float32)
        logits, _ = _with_layer_output(model, module, x.expand(len(mosaics), *x.shape[1:]), mosaics)
        h, w = feature.shape[-2:]
        cams.append(torch.softmax(logits.double(), dim=1)[:, int(cls)].reshape(h, w))
    cam = torch.stack(cams)
    size = tuple(np.asarray(image).shape[-2:])
    heatmap = _min_max(F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
    return cam.numpy(), heatmap.numpy()


def reference_explain(
    model: nn.Module,
    layer: str,
    method: str,
    image: torch.Tensor | np.ndarray,
    target_class: torch.Tensor | np.ndarray | list[int] | None = None,
    layout: Layout = CHANNELS_FIRST,
    region: np.ndarray | None = None,
    background: int | None = None,
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
        region: for segmentation logits, [N, H, W] pixel weights (negative: the pixel counts where it is
            predicted as the class); None: the predicted pixels.
        background: for segmentation logits, the class chosen by default only when nothing else is predicted.

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
    wanted = torch.full((image.shape[0],), -1) if target_class is None else torch.as_tensor(np.asarray(target_class))
    wanted = wanted.to(torch.int64).expand(image.shape[0])
    if logits.ndim == 4:
        chosen, y_c = _region_scores(logits, wanted, region, background)
    else:
        chosen = torch.where(wanted < 0, logits.argmax(1), wanted)
        y_c = logits[torch.arange(image.shape[0]), chosen]
    (g,) = torch.autograd.grad(y_c.sum(), A)

    A64, g64 = _as_map(A.detach().double(), layout), _as_map(g.double(), layout)
    cam = _paper_cam(method, A64, g64)
    upsampled = F.interpolate(cam[:, None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    heatmap = _min_max(upsampled[:, 0])
    extra = {"segmentation": logits.detach().argmax(1).numpy()} if logits.ndim == 4 else {}
    return extra | {
        "logits": logits.detach().numpy(),
        "class_index": chosen.numpy(),
        "heatmap": heatmap.numpy(),
        "cam": cam.numpy(),
        "activations": A64.numpy(),
        "gradients": g64.numpy(),
    }
