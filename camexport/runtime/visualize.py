"""Visualisation: a heatmap over its photo with a matplotlib colormap, as a PIL image."""

from __future__ import annotations

import functools

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
    """Blends ``colormap(heatmap)`` over ``image``: ``(1 − alpha)·photo + alpha·colour``, rounded to uint8.

    The colour comes from the colormap's own lookup table (matplotlib quantises a float to one of its ``N``
    entries, so the table gives the same colours), and the blend runs in float32 over bands of rows, so a
    12-megapixel photo needs tens of megabytes, not gigabytes.

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
    photo = np.asarray(image.convert("RGB"))
    if heatmap.shape != photo.shape[:2]:
        raise UserError(f"heatmap is {heatmap.shape[1]}x{heatmap.shape[0]}, image {photo.shape[1]}x{photo.shape[0]}")
    table = colour_table(colormap)
    out = np.empty_like(photo)
    for top in range(0, photo.shape[0], ROWS_AT_ONCE):
        rows = slice(top, top + ROWS_AT_ONCE)
        index = np.clip(np.floor(np.asarray(heatmap[rows], np.float32) * len(table)), 0, len(table) - 1)
        blended = (1.0 - alpha) * photo[rows].astype(np.float32) + alpha * table[index.astype(np.intp)]
        blended = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        out[rows] = blended if mask is None else np.where(mask[rows, :, None], blended, photo[rows])
    return Image.fromarray(out, mode="RGB")


ROWS_AT_ONCE = 256


@functools.lru_cache(maxsize=16)
def colour_table(colormap: str) -> np.ndarray:
    """The colormap's entries as float32 RGB in [0, 255], [N, 3]: what ``colormaps[colormap](x)`` picks from."""
    cmap = colormaps[colormap]
    return (cmap(np.arange(cmap.N))[:, :3] * 255.0).astype(np.float32)
