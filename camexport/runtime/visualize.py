"""Visualisation: a heatmap over its photo with a matplotlib colormap, as a PIL image."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from camexport.errors import UserError


def check_style(alpha: float, colormap: str) -> None:
    """Raises UserError for an alpha outside [0, 1] or a colormap matplotlib does not know."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha={alpha}: use a value between 0 and 1")
    if colormap not in colormaps:
        raise UserError(f"colormap={colormap!r}: not a matplotlib colormap; try jet, viridis, inferno or turbo")


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
    mask: np.ndarray | None = None,
) -> Image.Image:
    """Blends ``colormap(heatmap)`` over ``image``: ``(1 − alpha)·photo + alpha·colour``.

    Args:
        image: the photo (converted to RGB).
        heatmap: [height, width] in [0, 1], the photo's size.
        alpha: weight of the colour layer, in [0, 1].
        colormap: any matplotlib colormap name.
        mask: optional boolean [height, width]; where False the photo is left uncoloured (e.g. outside
            the region the network saw).

    Raises:
        UserError: unknown colormap, alpha outside [0, 1], or a heatmap of another size.
    """
    check_style(alpha, colormap)
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heatmap.shape != photo.shape[:2]:
        raise UserError(f"heatmap is {heatmap.shape[1]}x{heatmap.shape[0]}, image {photo.shape[1]}x{photo.shape[0]}")
    colour = colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * photo + alpha * colour
    if mask is not None:
        blended = np.where(mask[..., None], blended, photo)
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), mode="RGB")
