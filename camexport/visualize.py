"""Visualisation: heatmaps back at the photo's own resolution, and coloured overlays (matplotlib colormaps)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from camexport.errors import UserError
from camexport.preprocess import Preprocessing


def heatmap_to_original(heatmap: np.ndarray, prep: Preprocessing, width: int, height: int) -> np.ndarray:
    """Places a network-input heatmap [H, W] onto the original ``width`` x ``height`` photo.

    The network sees only the centre crop, so the map is resized (bilinear) to the crop's footprint in
    the original image and pasted there; pixels outside the crop get 0.

    Returns:
        float32 [height, width] in [0, 1].
    """
    left, top, right, bottom = prep.crop_box(width, height)
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    resized = np.asarray(
        Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(
            (box_w, box_h), Image.Resampling.BILINEAR
        )
    )
    canvas = np.zeros((height, width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    src_x0, src_y0 = max(0, -x0), max(0, -y0)
    dst_x0, dst_y0 = max(0, x0), max(0, y0)
    w = min(width - dst_x0, box_w - src_x0)
    h = min(height - dst_y0, box_h - src_y0)
    if w > 0 and h > 0:
        canvas[dst_y0 : dst_y0 + h, dst_x0 : dst_x0 + w] = resized[src_y0 : src_y0 + h, src_x0 : src_x0 + w]
    return np.clip(canvas, 0.0, 1.0)


def seen_mask(prep: Preprocessing, width: int, height: int) -> np.ndarray:
    """Boolean [height, width]: True where the network saw the photo (inside the centre crop)."""
    left, top, right, bottom = prep.crop_box(width, height)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, round(top)) : max(0, round(bottom)), max(0, round(left)) : max(0, round(right))] = True
    return mask


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
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha}: use a value between 0 and 1")
    if colormap not in colormaps:
        raise UserError(f"--colormap {colormap}: not a matplotlib colormap; try jet, viridis, inferno or turbo")
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    if heatmap.shape != photo.shape[:2]:
        raise UserError(f"heatmap is {heatmap.shape[1]}x{heatmap.shape[0]}, image {photo.shape[1]}x{photo.shape[0]}")
    colour = colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * photo + alpha * colour
    if mask is not None:
        blended = np.where(mask[..., None], blended, photo)
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), mode="RGB")
