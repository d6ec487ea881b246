"""Preprocessing with Pillow: a photo becomes the graph's ``image`` input, and a heatmap goes back onto it.

The steps follow torchvision's and timm's evaluation transforms: convert to RGB, resize the shorter side to
``resize_size``, centre-crop ``image_size``, scale to [0, 1], subtract ``mean``, divide by ``std``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from camexport.errors import UserError

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How an image is turned into the graph's ``image`` input.

    Attributes:
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by after subtracting the mean.
        image_size: (H, W) of the network input, i.e. of the centre crop.
        resize_size: length of the shorter image side after resizing, before the centre crop.
        interpolation: resampling filter for the resize: ``bilinear``, ``bicubic``, ``nearest`` or ``lanczos``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: tuple[int, int]
    resize_size: int
    interpolation: str

    def with_image_size(self, size: tuple[int, int]) -> Preprocessing:
        """Returns a copy for another input size, keeping the resize-to-crop ratio."""
        ratio = self.resize_size / max(self.image_size)
        return replace(self, image_size=size, resize_size=round(max(size) * ratio))

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Resized size and crop box (in resized pixels) for an original ``width`` x ``height`` image."""
        scale = self.resize_size / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        crop_h, crop_w = self.image_size
        left = round((size[0] - crop_w) / 2.0)
        top = round((size[1] - crop_h) / 2.0)
        return size, (left, top, left + crop_w, top + crop_h)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of an original ``width`` x ``height`` image that the network sees, in its pixels.

        Returns:
            (left, top, right, bottom) in original-image coordinates (may reach outside the image when the
            crop is larger than the resized image).
        """
        (resized_w, resized_h), (left, top, right, bottom) = self.geometry(width, height)
        sx, sy = width / resized_w, height / resized_h
        return (left * sx, top * sy, right * sx, bottom * sy)


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """Opens a file (or takes a PIL image) and converts it to 8-bit RGB.

    Grayscale, palette, 16-bit and CMYK images are converted; an alpha channel is dropped.

    Raises:
        UserError: the file is missing or not a readable image.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            image = Image.open(path)
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"{path}: not a readable image ({str(exc)[:120]})") from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray((array / top * 255.0).round().astype(np.uint8), mode="L")
    return image.convert("RGB")


def to_pixels(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize and centre-crop one image: uint8 [H, W, 3] RGB, what a ``--input uint8`` graph takes."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size, box = prep.geometry(*image.size)
    resized = image.resize(size, _FILTERS.get(prep.interpolation, Image.Resampling.BILINEAR))
    return np.ascontiguousarray(np.asarray(resized.crop(box), dtype=np.uint8))


def normalise(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 [..., H, W, 3] pixels → float32 [..., 3, H, W]: scaled to [0, 1], minus mean, over std."""
    array = np.asarray(pixels, dtype=np.float32) / np.float32(255.0)
    array = (array - np.asarray(prep.mean, dtype=np.float32)) / np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def to_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize, centre-crop and normalise one RGB image into a float32 [3, H, W] array."""
    return normalise(to_pixels(image, prep), prep)


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
