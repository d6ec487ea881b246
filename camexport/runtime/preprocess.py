"""Preprocessing with Pillow: a photo becomes the graph's ``image`` input, and a heatmap goes back onto it.

The steps follow torchvision's and timm's evaluation transforms: convert to the graph's image mode (RGB for
3 channels, grayscale for 1, four bands for 4: :data:`camexport.contract.IMAGE_MODES`), resize the shorter
side to ``resize_size``, centre-crop ``image_size``, scale to [0, 1], subtract ``mean``, divide by ``std``.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from camexport.contract import Preprocessing
from camexport.errors import UserError

_ORIENTATION = 0x0112  # the EXIF tag

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def open_image(
    source: str | Path | bytes | Image.Image,
    name: str | None = None,
    mode: str = "RGB",
    draft: Preprocessing | None = None,
) -> Image.Image:
    """Opens a file or an image file's bytes (or takes a PIL image), turns it upright and converts it to 8-bit
    ``mode``, by the rules the browser page and the Node.js example follow too (docs/runtimes.md, "Decoding"):

    - the EXIF orientation is applied (``ImageOps.exif_transpose``);
    - 16-bit samples become their high byte (Pillow reads 16-bit colour PNGs so; 16-bit grayscale likewise);
    - ``mode`` ``RGB``: grayscale is repeated, a palette looked up, alpha and transparency dropped, CMYK converted
      by Pillow's formula; ``L``: colour becomes ITU-R 601-2 luma as Pillow converts it; ``RGBA``: a four-band
      image (RGBA, or CMYK's bands as data) taken as it is.

    With ``draft`` (a graph's preprocessing), a JPEG file is decoded at 1/2, 1/4 or 1/8 of its size where that
    still leaves at least twice the resize the graph asks for (:func:`jpeg_draft`): faster, not Pillow's exact pixels.

    Raises:
        UserError: the file is missing or not a readable image (messages call it ``name``, or its path), or a
            four-band graph gets an image with fewer bands.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        source = source if isinstance(source, bytes) else Path(source)
        name = name or str(source)
        image = open_unread(source, name)
        if draft is not None:
            jpeg_draft(image, draft)
        try:
            image.load()
        except (OSError, ValueError) as exc:
            raise UserError(f"{name}: not a readable image ({str(exc)[:120]})") from None
    if image.getexif().get(_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: the high byte, as Pillow reads colour
        array = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    if mode == "RGBA" and image.mode not in ("RGBA", "CMYK"):
        raise UserError(
            f"{name or 'image'}: the image has {len(image.getbands())} band(s) ({image.mode}), the graph takes 4 "
            "channels; pass a four-band image (RGBA PNG or TIFF) or an [H, W, 4] array"
        )
    if image.mode == "CMYK" and mode == "RGBA":
        return Image.merge("RGBA", image.split())  # four bands of data, not a colour space to convert
    if image.mode == mode:  # an image already in mode is used as it is
        return image
    with warnings.catch_warnings():  # a palette's transparency is dropped on purpose (Pillow warns about it)
        warnings.simplefilter("ignore", UserWarning)
        return image.convert(mode)


_OPENING = threading.Lock()  # warnings filters are process-wide: one opener changes them at a time


def jpeg_draft(image: Image.Image, prep: Preprocessing, margin: int = 2) -> int:
    """Asks libjpeg to decode a not yet loaded JPEG at 1/2, 1/4 or 1/8 scale, in the DCT domain (Pillow's
    ``Image.draft``), the smallest scale whose image is still at least ``margin`` times the size the graph resizes
    it to (in both directions, upright by its EXIF orientation): decoding costs about the scale's square less, and
    the resize that follows starts from a smaller image. Returns the scale's denominator (1: left as it is, as every
    other format and any photo under twice that size are). camexport uses ``margin`` 2; the benchmark also
    measures 1.

    The pixels are not the full decode's resized: libjpeg's scaled IDCT is a box-like filter of its own. Measured
    on benchmarks/explain_dataset's 1,000 photos: the top-1 class and the heatmaps it changes are in that
    benchmark's table, which is why this is asked for (``--jpeg-draft``), never the default."""
    if image.format not in ("JPEG", "MPO"):  # MPO: a camera's JPEG with a multi-picture extension
        return 1
    width, height = image.size
    turned = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # upright, the photo is height x width
    (want_w, want_h), _ = prep.geometry(*((height, width) if turned else (width, height)))
    want = (margin * want_h, margin * want_w) if turned else (margin * want_w, margin * want_h)
    if width < 2 * want[0] or height < 2 * want[1]:
        return 1
    image.draft(image.mode, want)
    return round(width / image.size[0])


def open_unread(path: Path | bytes, name: str | None = None) -> Image.Image:
    """Opens a file's header (nothing decoded yet), refusing a decompression bomb: a photo over Pillow's
    ``MAX_IMAGE_PIXELS`` (89 megapixels), before it is decoded.

    Args:
        path: a file, or an image file's bytes (an upload).
        name: what messages call the image (the path itself by default).

    Raises:
        UserError: the file is missing, not an image, or a decompression bomb.
    """
    name = name or str(path)
    if isinstance(path, bytes):
        source: Path | io.BytesIO = io.BytesIO(path)
    elif not path.is_file():
        raise UserError(f"{name}: no such file")
    else:
        source = path
    try:
        with _OPENING, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = str(exc).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise UserError(f"{name}: not a readable image ({reason}: a decompression bomb?); downscale it first") from None
    except (OSError, ValueError) as exc:
        reason = re.sub(r" <_io\.BytesIO object at \w+>", "", str(exc))[:120]  # Pillow names a buffer by its repr
        raise UserError(f"{name}: not a readable image ({reason})") from None


def to_pixels(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize and centre-crop one image: uint8 [H, W, C], what a ``--input uint8`` graph takes.

    A four-band image is resized band by band: Pillow resizes RGBA with premultiplied alpha, which would
    scale the first three channels by the fourth.
    """
    mode = prep.image_mode
    if mode is None:
        raise UserError(
            f"the graph takes {prep.channels}-channel images, which no image file holds; pass prepared "
            f"[N, {prep.channels}, H, W] arrays to CamSession.run"
        )
    if image.mode != mode:
        image = open_image(image, mode=mode)
    size, box = prep.geometry(*image.size)
    resample = _FILTERS.get(prep.interpolation, Image.Resampling.BILINEAR)
    if mode == "RGBA":
        bands = [band.resize(size, resample).crop(box) for band in image.split()]
        return np.ascontiguousarray(np.stack([np.asarray(b, dtype=np.uint8) for b in bands], axis=-1))
    pixels = np.asarray(image.resize(size, resample).crop(box), dtype=np.uint8)
    return np.ascontiguousarray(pixels[..., None] if pixels.ndim == 2 else pixels)


def normalise(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 [..., H, W, C] pixels → float32 [..., C, H, W]: scaled to [0, 1], minus mean, over std.

    Computed as one multiply-add per value, ``x·(1/(255·std)) − mean/std`` (within float32 rounding of the
    three-step form, at a third of its time).
    """
    std = np.asarray(prep.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    offset = (-np.asarray(prep.mean, dtype=np.float64) / std).astype(np.float32)[:, None, None]
    array = np.multiply(np.moveaxis(np.asarray(pixels), -1, -3), scale, dtype=np.float32, order="C")
    array += offset
    return array


def to_input(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Resize, centre-crop and normalise one image into a float32 [C, H, W] array."""
    return normalise(to_pixels(image, prep), prep)


def heatmap_to_original(heatmap: np.ndarray, prep: Preprocessing, width: int, height: int) -> np.ndarray:
    """Places a network-input heatmap [H, W] onto the original ``width`` x ``height`` photo.

    The network sees only the centre crop, so the map is resized (bilinear) to the crop's footprint in
    the original image and pasted there; pixels outside the crop get 0.

    Returns:
        float32 [height, width] in [0, 1].
    """
    (left, top, right, bottom), inside = placed_heatmap(heatmap, prep, width, height)
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[top:bottom, left:right] = inside
    return canvas


def placed_heatmap(
    heatmap: np.ndarray, prep: Preprocessing, width: int, height: int
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The part of the photo the network saw, as a box (left, top, right, bottom) in the photo's pixels, and the
    heatmap resized (bilinear) onto it: float32 [bottom − top, right − left] in [0, 1]."""
    size, (src_x0, src_y0), box = _placement(prep, width, height)
    resized = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    crop = (src_x0, src_y0, src_x0 + box[2] - box[0], src_y0 + box[3] - box[1])
    return box, np.clip(np.asarray(resized.crop(crop), dtype=np.float32), 0.0, 1.0)


def seen_mask(prep: Preprocessing, width: int, height: int) -> np.ndarray:
    """Boolean [height, width]: True where the network saw the photo (inside the centre crop; the box of
    :func:`placed_heatmap`)."""
    left, top, right, bottom = _placement(prep, width, height)[2]
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _placement(
    prep: Preprocessing, width: int, height: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """Where the network's view lands on a ``width`` x ``height`` photo: the crop's footprint in whole pixels
    (box_w, box_h), the offset into that footprint of its visible part, and that part's box in the photo."""
    left, top, right, bottom = prep.crop_box(width, height)
    box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
    x0, y0 = round(left), round(top)
    dst_x0, dst_y0 = max(0, x0), max(0, y0)
    w = max(0, min(width - dst_x0, box_w - (dst_x0 - x0)))
    h = max(0, min(height - dst_y0, box_h - (dst_y0 - y0)))
    return (box_w, box_h), (dst_x0 - x0, dst_y0 - y0), (dst_x0, dst_y0, dst_x0 + w, dst_y0 + h)
