"""CAM formulas as traceable torch functions: these are the operations that end up in the ONNX graph.

Notation: ``A`` is the target layer's output [N, K, h, w], ``g = ∂y_c/∂A`` its gradient, where ``y_c`` is
the pre-softmax logit of the explained class c.

The eager yardstick in :mod:`camexport.reference` implements the same formulas separately.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

METHODS = ("gradcampp", "gradcam")
# Relative span below which an upsampled map counts as constant (float32 rounding is ~1e-7).
FLAT_MAP = 1e-5


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights (Selvaraju et al., ICCV 2017, arXiv 1610.02391, eq. 1).

    ``w_k = (1 / hw) Σ_ij g_kij``

    Args:
        activations: A, [N, K, h, w] (unused; kept for a uniform signature).
        gradients: g = ∂y_c/∂A, [N, K, h, w].

    Returns:
        w, [N, K].
    """
    del activations
    return gradients.mean(dim=(2, 3))


def gradcampp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhyay et al., WACV 2018, arXiv 1710.11063, eq. 19).

    ``α_kij = g_kij² / (2 g_kij² + (Σ_ab A_kab) g_kij³)``, with ``α = 0`` where the denominator is 0;
    ``w_k = Σ_ij α_kij ReLU(g_kij)``.

    This is the paper's formula. A widely copied "minimal example" puts ``Σ_ab (A_kab g_kab³)`` in the
    denominator instead; that is a different quantity and is not used here.

    Args:
        activations: A, [N, K, h, w].
        gradients: g = ∂y_c/∂A, [N, K, h, w].

    Returns:
        w, [N, K].
    """
    g2 = gradients * gradients
    g3 = g2 * gradients
    channel_sums = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 * g2 + channel_sums * g3
    nonzero = denominator != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denominator, torch.ones_like(denominator)), 0.0)
    return (alpha * F.relu(gradients)).sum(dim=(2, 3))


WEIGHTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcampp": gradcampp_weights,
    "gradcam": gradcam_weights,
}


def class_activation_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``cam = ReLU(Σ_k w_k A_k)``, [N, h, w]."""
    return F.relu((weights[:, :, None, None] * activations).sum(dim=1))


def normalised_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling to ``size`` (half-pixel, align_corners=False), then per-image min-max to [0, 1].

    An image whose upsampled map is constant (for example an all-zero cam), or varies by less than
    ``FLAT_MAP`` of its maximum (interpolation rounding), gets zeros, never NaN.
    """
    up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    span = high - low
    # A span at rounding level (interpolating a constant map) is noise, not structure: give zeros.
    positive = span > FLAT_MAP * high.abs()
    return torch.where(positive, (up - low) / torch.where(positive, span, torch.ones_like(span)), 0.0)
