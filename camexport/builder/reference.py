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

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Run:
    """One eager run without gradients: the logits, the layer's output and the masked block's input."""

    logits: torch.Tensor
    output: np.ndarray
    block_input: np.ndarray | None


def _run(model: nn.Module, module: nn.Module, x: torch.Tensor, block: nn.Module | None = None, masked=None) -> Run:
    """Runs ``model``, keeping the layer's output and ``block``'s input (float64); ``masked`` = (the layer's
    output, the block's input) replaces them."""
    seen: dict[str, np.ndarray] = {}

    def at_layer(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor | None:
        seen.setdefault("output", out.detach().double().numpy().copy())
        return None if masked is None else torch.as_tensor(masked[0], dtype=torch.float32)

    def at_block(_m: nn.Module, args: tuple) -> tuple | None:
        seen.setdefault("input", args[0].detach().double().numpy().copy())
        return None if masked is None else (torch.as_tensor(masked[1], dtype=torch.float32), *args[1:])

    handles = [module.register_forward_hook(at_layer)]
    if block is not None:
        handles.append(block.register_forward_pre_hook(at_block))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return Run(logits, seen["output"], seen.get("input"))


def _gaussian_at(i: int, j: int, h: int, w: int) -> np.ndarray:
    """[h, w]: the 3x3 Gaussian centred at (i, j), cut at the border."""
    padded = np.zeros((h + 2, w + 2))
    padded[i : i + 3, j : j + 3] = GAUSSIAN_3X3
    return padded[1:-1, 1:-1]


def _masked(one: np.ndarray, layout: Layout) -> np.ndarray:
    """One image's layer output → its h·w masked copies, laid out as the output. A convolutional map [C, h, w]
    (ReciproCAM, as its authors' code): copy p = (i, j) holds the vector at (i, j) times the Gaussian around it.
    Tokens [T, C] or a channels-last map [h, w, C] (ViT-ReciproCAM, as OpenVINO XAI's graph): copy p keeps the
    prefix tokens and every cell times the Gaussian weight of p there."""
    if isinstance(layout, Tokens):
        prefix, grid = one[: layout.prefix], one[layout.prefix :].reshape(layout.height, layout.width, -1)
        copies = [np.concatenate([prefix, (grid * g[:, :, None]).reshape(-1, grid.shape[-1])]) for g in _stamps(grid)]
        return np.stack(copies)
    if isinstance(layout, ChannelsLast):
        return np.stack([one * g[:, :, None] for g in _stamps(one)])
    _, h, w = one.shape
    return np.stack([one[:, i, j, None, None] * _gaussian_at(i, j, h, w) for i in range(h) for j in range(w)])


def _stamps(grid: np.ndarray) -> list[np.ndarray]:
    h, w = grid.shape[:2]
    return [_gaussian_at(i, j, h, w) for i in range(h) for j in range(w)]


@dataclass(frozen=True)
class ReciproCAM:
    """ReciproCAM's reference outputs: ``cam`` [N, h, w] of each image's class, ``heatmap`` [N, H, W] and the
    ``probabilities`` [N, K, h, w] of every class (all float64)."""

    cam: np.ndarray
    heatmap: np.ndarray
    probabilities: np.ndarray


def reference_reciprocam(
    model: nn.Module,
    layer: str,
    image: np.ndarray,
    classes: np.ndarray,
    layout: Layout = CHANNELS_FIRST,
    masked_block: str | None = None,
) -> ReciproCAM:
    """ReciproCAM (Byun & Lee 2022) and ViT-ReciproCAM (Byun & Lee 2023) image by image: the layer's output is
    replaced by its h·w masked copies (see :func:`_masked`; with ``masked_block``, that module's input too, as
    ViT-ReciproCAM masks a block's skip connection and its first normalisation's output), the rest of the network
    runs on them, and at each position (i, j) the softmax probability of each class is read.
    """
    modules = dict(model.named_modules())
    module, block = modules[layer], modules.get(masked_block) if masked_block else None
    probabilities = []
    for one in np.asarray(image, dtype=np.float32):
        x = torch.as_tensor(one[None])
        plain = _run(model, module, x, block)
        output = _masked(plain.output[0], layout)
        entry = None if block is None else _masked(plain.block_input[0], layout)
        masked = _run(model, module, x.expand(len(output), *x.shape[1:]), block, (output, entry))
        h, w = _as_map(torch.as_tensor(plain.output), layout).shape[-2:]
        probs = torch.softmax(masked.logits.double(), dim=1)
        probabilities.append(probs.T.reshape(-1, h, w))
    every = torch.stack(probabilities)
    cam = every[torch.arange(len(every)), torch.as_tensor(np.asarray(classes, dtype=np.int64))]
    size = tuple(np.asarray(image).shape[-2:])
    heatmap = _min_max(F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
    return ReciproCAM(cam.numpy(), heatmap.numpy(), every.numpy())


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
