"""The eager yardstick: the explained scores and the CAM methods in plain PyTorch, independent of the tracing path.

A forward hook captures the target layer's output ``A``; ``torch.autograd.grad`` gives ``g = ∂y_c/∂A`` for the
explained score ``y_c``; the formulas then run in float64, written out from the papers (each function names its
paper and equation):

* the score: a classifier's pre-softmax logit of the class (:func:`class_scores`); for segmentation logits
  [N, K, H, W], the class's logits summed over a region (:func:`region_scores`, Seg-Grad-CAM);
* the methods' maps: :func:`gradcampp`, :func:`gradcam`, :func:`xgradcam`, :func:`layercam`, :func:`hirescam` from
  ``A`` and ``g``; :func:`reciprocam` runs the network again on masked maps;
* ``heatmap`` = bilinear (half-pixel) upsampling to the input size, then per-image min-max to [0, 1] (zeros
  for a map that is constant up to 1e-5 of its maximum): :func:`heatmap`.

Nothing here is shared with :mod:`camexport.builder.methods`, :mod:`camexport.builder.tasks` or
:mod:`camexport.builder.tracing` (the layouts' fields are read, their
transforms are not used), so that the graph is checked against a separate implementation. Those modules' records
point here for their reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camexport.builder.layouts import ChannelsLast, Layout, Tokens, Windows
from camexport.contract import GraphSpec

# (logits, wanted classes [N], −1 = the default) → (the classes explained [N], their scores y_c [N])
Score = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def gradcampp(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, eq. 19): ``α_kij = g² / (2g² + (Σ_ab A_kab)·g³)`` (0 where the
    denominator is 0), ``w_k = Σ_ij α_kij·ReLU(g_kij)``, ``cam = ReLU(Σ_k w_k A_k)``."""
    n, k, h, w = A.shape
    sum_A = A.reshape(n, k, h * w).sum(-1)[:, :, None, None]
    numerator = g.pow(2)
    denominator = 2 * g.pow(2) + sum_A * g.pow(3)
    alpha = torch.zeros_like(g)
    defined = denominator != 0
    alpha[defined] = numerator[defined] / denominator[defined]
    return _weighted(torch.einsum("nkhw,nkhw->nk", alpha, g.clamp(min=0)), A)


def gradcam(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1): ``w_k = (1/Z) Σ_ij g_kij``, ``cam = ReLU(Σ_k w_k A_k)``."""
    n, k, h, w = A.shape
    return _weighted(g.reshape(n, k, h * w).sum(-1) / (h * w), A)


def xgradcam(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 9): ``w_k = Σ_ij A_kij g_kij / Σ_ab A_kab`` (0 where the sum is 0)."""
    n, k, h, w = A.shape
    totals = A.reshape(n, k, h * w).sum(-1)
    products = (A * g).reshape(n, k, h * w).sum(-1)
    weights = torch.zeros_like(totals)
    defined = totals != 0
    weights[defined] = products[defined] / totals[defined]
    return _weighted(weights, A)


def layercam(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021, eqs. 4-5): ``cam = ReLU(Σ_k ReLU(g_kij) A_kij)``."""
    return torch.einsum("nkhw,nkhw->nhw", g.clamp(min=0), A).clamp(min=0)


def hirescam(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020, eq. 4): ``cam = ReLU(Σ_k g_kij A_kij)``."""
    return torch.einsum("nkhw,nkhw->nhw", g, A).clamp(min=0)


def _weighted(weights: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nk,nkhw->nhw", weights, A).clamp(min=0)


def heatmap(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``cam`` [N, h, w] upsampled bilinearly (half-pixel) to ``size``, then min-max scaled per image to [0, 1];
    a map flat up to 1e-5 of its maximum gives zeros."""
    upsampled = F.interpolate(cam[:, None].double(), size=size, mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros_like(upsampled)
    for i, m in enumerate(upsampled):
        low, high = m.min(), m.max()
        if high - low > 1e-5 * abs(high):
            out[i] = (m - low) / (high - low)
    return out.numpy()


def _departition(x: torch.Tensor, p: int, gh: int, gw: int) -> torch.Tensor:
    n, _, _, c = x.shape
    return x.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)


def as_map(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A layer's output as [N, C, h, w]: [N, h, w, C] moved to channels first; tokens [N, T, C] without the prefix
    tokens laid out as [N, C, h, w]; MaxViT's windows [N, gh*gw, p*p, C] (token axes swapped when ``swap``)
    departitioned to [N, C, gh*p, gw*p] as torchvision's WindowDepartition does it."""
    if isinstance(layout, ChannelsLast):
        return t.movedim(-1, 1)
    if isinstance(layout, Tokens):
        return torch.stack([x[layout.prefix :].t().reshape(-1, layout.height, layout.width) for x in t])
    if isinstance(layout, Windows):
        return _departition(t.swapaxes(1, 2) if layout.swap else t, layout.p, layout.gh, layout.gw)
    return t


def class_scores(logits: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier's: the class (given, or the top-1 for −1) and its pre-softmax logit, per image."""
    chosen = torch.where(wanted < 0, logits.argmax(1), wanted)
    return chosen, logits[torch.arange(len(logits)), chosen]


def region_scores(
    logits: torch.Tensor, wanted: torch.Tensor, region: np.ndarray | None, background: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seg-Grad-CAM (Vinogradova et al., AAAI 2020, eq. 1), per image: the class (given, or the one predicted on the
    most pixels, the background only when nothing else is predicted) and ``y_c = Σ_(i,j)∈M logits[c, i, j]``, M the
    pixels predicted as ``c`` or, where ``region`` is not negative, its weights."""
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


@dataclass(frozen=True)
class ReferencePass:
    """The eager forward and backward pass of one batch: what each method's reference starts from.

    Attributes:
        model: the network in eval mode.
        spec: the graph explained (its layer, its masked block).
        layout: how the layer's output is read as a map.
        image: the normalised float32 input [N, C, H, W].
        logits: the network's logits.
        class_index: the classes explained, int64 [N].
        activations: A as [N, D, h, w], float64.
        gradients: g = ∂y_c/∂A as [N, D, h, w], float64.
    """

    model: nn.Module
    spec: GraphSpec
    layout: Layout
    image: np.ndarray
    logits: torch.Tensor
    class_index: np.ndarray
    activations: torch.Tensor
    gradients: torch.Tensor


def gradient_pass(
    model: nn.Module, spec: GraphSpec, layout: Layout, image: np.ndarray, target_class: object, score: Score
) -> ReferencePass:
    """Runs ``model`` on ``image`` with a hook at ``spec.layer``, scores the logits with ``score`` and takes the
    gradient of the scores' sum with respect to the layer's output. ``target_class``: [N] or [1] classes, −1 (or
    None for all) meaning the default class."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32)).clone().requires_grad_(True)
    seen: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        seen.append(out)
        return out.clone()  # later in-place ops must not change the captured A

    handle = dict(model.named_modules())[spec.layer].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        handle.remove()
    wanted = torch.full((len(x),), -1) if target_class is None else torch.as_tensor(np.asarray(target_class))
    chosen, y_c = score(logits, wanted.to(torch.int64).expand(len(x)))
    (g,) = torch.autograd.grad(y_c.sum(), seen[-1])
    A64, g64 = as_map(seen[-1].detach().double(), layout), as_map(g.double(), layout)
    return ReferencePass(model, spec, layout, np.asarray(image), logits.detach(), chosen.numpy(), A64, g64)


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


def reciprocam(done: ReferencePass) -> tuple[torch.Tensor, torch.Tensor]:
    """ReciproCAM (Byun & Lee 2022) and ViT-ReciproCAM (Byun & Lee 2023) image by image: the layer's output is
    replaced by its h·w masked copies (see :func:`_masked`; with the spec's ``masked_block``, that module's input
    too, as ViT-ReciproCAM masks a block's skip connection and its first normalisation's output), the rest of the
    network runs on them, and at each position (i, j) the softmax probability of each class is read.

    Returns:
        ``cam`` [N, h, w] of each image's explained class and every class's map [N, K, h, w] (float64).
    """
    modules = dict(done.model.named_modules())
    module = modules[done.spec.layer]
    block = modules[done.spec.masked_block] if done.spec.masked_block else None
    probabilities = []
    for one in np.asarray(done.image, dtype=np.float32):
        x = torch.as_tensor(one[None])
        plain = _run(done.model, module, x, block)
        output = _masked(plain.output[0], done.layout)
        entry = None if block is None else _masked(plain.block_input[0], done.layout)
        masked = _run(done.model, module, x.expand(len(output), *x.shape[1:]), block, (output, entry))
        h, w = as_map(torch.as_tensor(plain.output), done.layout).shape[-2:]
        probs = torch.softmax(masked.logits.double(), dim=1)
        probabilities.append(probs.T.reshape(-1, h, w))
    every = torch.stack(probabilities)
    cam = every[torch.arange(len(every)), torch.as_tensor(done.class_index, dtype=torch.int64)]
    return cam, every
