"""Visualisation: a heatmap over its photo with a matplotlib colormap, and the graph's heatmap from a raw cam."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from camexport import checks
from camexport.contract import FLAT_MAP, Preprocessing
from camexport.errors import UserError
from camexport.runtime.options import ExplainStyle
from camexport.runtime.preprocess import placed_heatmap


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
    mask: np.ndarray | None = None,
) -> Image.Image:
    """Blends ``colormap(heatmap)`` over ``image``: ``(1 − alpha)·photo + alpha·colour``, in uint8.

    The heatmap becomes one byte per pixel, ``floor(256·h)``, coloured through a 256-entry palette taken from
    the colormap (for matplotlib's 256-entry maps, such as jet and viridis, the very colours ``colormap(h)``
    gives); Pillow then colours and blends in C (rounding down), so a 12-megapixel photo takes tens of
    milliseconds and a few bytes per pixel.

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
    checks.style(alpha, colormap)
    if not isinstance(image, Image.Image):
        raise UserError(f"image={type(image).__name__}: pass a PIL image (open_image opens files, bytes and arrays)")
    photo = image if image.mode == "RGB" else image.convert("RGB")
    heatmap = checks.array("heatmap", heatmap, np.float32, "pass an array [height, width] of values in [0, 1]")
    if heatmap.shape != (photo.height, photo.width):
        shown = "x".join(map(str, heatmap.shape[::-1])) if heatmap.ndim == 2 else f"of shape {list(heatmap.shape)}"
        raise UserError(
            f"heatmap is {shown}, image {photo.width}x{photo.height}; pass the heatmap at the photo's size "
            "(Explanation.heatmap, or heatmap_at(width, height) for a resized photo)"
        )
    blended = Image.blend(photo, colourise(heatmap, colormap), alpha)
    if mask is not None:
        blended = Image.composite(blended, photo, Image.fromarray(np.asarray(mask, dtype=bool)))
    return blended


def overlay_on_photo(
    photo: Image.Image,
    input_heatmap: np.ndarray,
    preprocessing: Preprocessing,
    style: ExplainStyle | None = None,
    region: np.ndarray | None = None,
) -> Image.Image:
    """The graph's ``input_heatmap`` placed back on ``photo`` (downscaled first so that its longer side is at most
    the style's ``overlay_max_side``, if given) and blended over the part the network saw with the style's
    ``alpha`` and ``colormap``; the rest of the photo is left as it is.

    The result is RGB: a grayscale photo is shown in gray, a four-band one by its first three bands. A
    ``region`` (bool [H, W] at the network input's size: the pixels a segmentation explains) is outlined in
    white, one pixel wide on the drawn photo."""
    style = style or ExplainStyle()
    max_side = style.overlay_max_side
    if photo.mode != "RGB":
        photo = photo.convert("RGB")
    if max_side and max(photo.size) > max_side:
        scale = max_side / max(photo.size)
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        photo = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    box, heatmap = placed_heatmap(input_heatmap, preprocessing, *photo.size)
    coloured = photo.copy()
    coloured.paste(overlay(photo.crop(box), heatmap, style.alpha, style.colormap), box)
    if region is not None:
        _outline(coloured, region, preprocessing)
    return coloured


def draw_boxes(
    image: Image.Image, boxes: Sequence[tuple[Sequence[float], str, int]], photo_size: tuple[int, int]
) -> None:
    """Draws each (box, caption, slot) on ``image`` in place: boxes in the pixels of a ``photo_size`` photo (scaled
    to ``image``, which may be the photo downscaled), an outline two pixels wide per 500 of the longer side, each
    caption in white on the outline's colour above the box (inside it at the top edge). A detection's colour is its
    slot's in matplotlib's ``tab10`` (the same in every overlay), so that neighbouring boxes stand apart."""
    scale = image.width / photo_size[0]
    width = max(2, round(max(image.size) / 250))
    font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    draw = ImageDraw.Draw(image)
    colours = colormaps["tab10"].colors
    for box, caption, slot in boxes:
        colour = tuple(round(255 * c) for c in colours[slot % len(colours)])
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        lift = bottom - top + 2 * width if y1 - (bottom - top) - 2 * width >= 0 else 0
        shift = min(0.0, image.width - (right + 2 * width) - 1)  # a caption past the right edge moves left
        draw.rectangle((left + shift, top - lift, right + 2 * width + shift, bottom - lift + width), fill=colour)
        draw.text((x1 + width + shift, y1 - lift), caption, fill=(255, 255, 255), font=font)


def _outline(image: Image.Image, region: np.ndarray, preprocessing: Preprocessing) -> None:
    """Paints the boundary of ``region`` (network-input pixels) white on ``image``, in place: the mask is placed
    like the heatmap (bilinear, thresholded at 1/2), and its boundary is the mask minus its 3x3 erosion."""
    box, placed = placed_heatmap(np.asarray(region, dtype=np.float32), preprocessing, *image.size)
    mask = Image.fromarray(((placed >= 0.5) * 255).astype(np.uint8), mode="L")
    inner = mask.filter(ImageFilter.MinFilter(3))
    edge = Image.fromarray(((np.asarray(mask) > 0) & (np.asarray(inner) == 0)).astype(np.uint8) * 255, mode="L")
    image.paste((255, 255, 255), box, edge)


def colourise(heatmap: np.ndarray, colormap: str = "jet") -> Image.Image:
    """``colormap(heatmap)`` as an RGB image: byte ``floor(256·h)`` (clipped to 0..255) through :func:`palette`."""
    index = np.empty(heatmap.shape, dtype=np.uint8)
    for top in range(0, heatmap.shape[0], ROWS_AT_ONCE):  # bands: a float copy of a 12-MP map is 48 MB
        band = np.multiply(heatmap[top : top + ROWS_AT_ONCE], np.float32(256.0), dtype=np.float32)
        index[top : top + ROWS_AT_ONCE] = np.clip(band, 0.0, 255.0, out=band)
    picture = Image.fromarray(index)
    picture.putpalette(palette(colormap))  # the byte image becomes a palette image
    return picture.convert("RGB")


ROWS_AT_ONCE = 256


@functools.lru_cache(maxsize=16)
def palette(colormap: str) -> bytes:
    """256 RGB entries: entry ``q`` is the colormap's entry ``floor(q·N/256)`` of its ``N``, rounded to bytes
    (for ``N = 256``, what ``colormaps[colormap](h)`` gives for every ``h`` with ``floor(256·h) = q``)."""
    cmap = colormaps[colormap]
    entries = cmap(np.arange(256) * cmap.N // 256)[:, :3]
    return np.round(entries * 255.0).astype(np.uint8).tobytes()


def heatmap_from_cam(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """The graph's ``heatmap`` from its raw ``cam`` [h, w]: bilinear to ``height`` x ``width`` (half-pixel
    centres, as PyTorch's ``align_corners=False``), then min-max to [0, 1]; a map flat to ``FLAT_MAP`` of its
    maximum gives zeros (see :mod:`camexport.contract`). Float32 [height, width]."""
    cam = np.asarray(cam, dtype=np.float64)
    up = _interpolation(height, cam.shape[0]) @ cam @ _interpolation(width, cam.shape[1]).T
    low, high = up.min(), up.max()
    if not high - low > FLAT_MAP * abs(high):
        return np.zeros((height, width), dtype=np.float32)
    return ((up - low) / (high - low)).astype(np.float32)


def _interpolation(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] weights of 1-D linear interpolation with half-pixel centres, clamped at the edges."""
    source = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0, in_size - 1)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, in_size - 1)
    weights = np.zeros((out_size, in_size))
    np.add.at(weights, (np.arange(out_size), low), 1.0 - (source - low))
    np.add.at(weights, (np.arange(out_size), high), source - low)
    return weights
