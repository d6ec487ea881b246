"""Preprocessing with Pillow: a photo becomes the graph's normalised ``image`` input, and back.

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


def to_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize, centre-crop and normalise one RGB image into a float32 [3, H, W] array."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size, box = prep.geometry(*image.size)
    resized = image.resize(size, _FILTERS.get(prep.interpolation, Image.Resampling.BILINEAR))
    cropped = resized.crop(box)
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep.mean, dtype=np.float32)) / np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))
