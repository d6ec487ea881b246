"""Image files that stress decoding, with their known pixels: the set that Python (camexport.runtime.preprocess), the
browser page and the Node.js example must decode to the same bytes (tests/runtime/test_decoding.py,
tests/e2e/test_web.py, tests/e2e/test_node_channels.py). Torch-free: numpy, Pillow, and a PNG writer for the
files Pillow cannot write (16-bit colour, a palette with partial transparency).

Each fixture's known answer is what camexport's decoding rules give (docs/runtimes.md, "Decoding"), computed here
from the samples written, not by decoding the file: 16-bit samples' high byte, palettes looked up (transparency
dropped), alpha dropped, grayscale repeated, CMYK by Pillow's formula, the EXIF orientation applied by numpy.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (43, 61)  # height, width: odd, so that a transposition cannot pass for the identity


def png_bytes(samples: np.ndarray, color_type: int, bit_depth: int = 8, palette=None, transparency=None) -> bytes:
    """A PNG of ``samples`` [H, W, bands] (uint8, or uint16 for a bit depth of 16), without filters."""
    height, width = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + samples[y].astype(dtype).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = [(b"IHDR", header)]
    if palette is not None:
        chunks.append((b"PLTE", bytes(np.asarray(palette, np.uint8).ravel())))
    if transparency is not None:
        chunks.append((b"tRNS", bytes(transparency)))
    chunks += [(b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in chunks:
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return out


# EXIF orientation → how the stored pixels become upright (ImageOps.exif_transpose's table, in numpy).
ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Pillow's CMYK → RGB: ``(255 − k) − round((255 − k)·c / 255)`` per channel (its MULDIV255)."""
    x = cmyk.astype(np.int64)
    nk = 255 - x[..., 3:4]
    t = x[..., :3] * nk + 128
    return np.clip(nk - (((t >> 8) + t) >> 8), 0, 255).astype(np.uint8)


def write_fixtures(folder: Path) -> dict[str, np.ndarray]:
    """Writes the fixtures into ``folder``; returns each file's known RGB pixels [H, W, 3]."""
    from camexport.runtime.samples import sample_photo

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(25)
    height, width = SIZE
    photo = sample_photo("chelsea").resize((width, height))
    rgb = np.asarray(photo)
    known: dict[str, np.ndarray] = {}

    def png(name: str, samples: np.ndarray, color_type: int, depth: int, pixels: np.ndarray, **extra) -> None:
        (folder / name).write_bytes(png_bytes(samples, color_type, depth, **extra))
        known[name] = pixels

    gray16 = (np.add.outer(np.arange(height), np.arange(width)) * 733 % 65536).astype(np.uint16)
    png("gray16.png", gray16[..., None], 0, 16, np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, 2))
    rgb16 = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
    png("rgb16.png", rgb16, 2, 16, (rgb16 >> 8).astype(np.uint8))
    rgba16 = rng.integers(0, 65536, (height, width, 4), dtype=np.uint16)
    png("rgba16.png", rgba16, 6, 16, (rgba16[..., :3] >> 8).astype(np.uint8))
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (height, width, 1), dtype=np.uint8)
    alphas = rng.integers(0, 256, 10, dtype=np.uint8)  # entries 10..15 opaque
    png("palette-transparent.png", index, 3, 8, palette[index[..., 0]], palette=palette, transparency=alphas)
    alpha = np.dstack([rgb, rng.integers(0, 256, (height, width), dtype=np.uint8)])
    png("alpha.png", alpha, 6, 8, rgb)
    gray = np.asarray(photo.convert("L"))
    png("gray-alpha.png", np.dstack([gray, alpha[..., 3]]), 4, 8, np.repeat(gray[..., None], 3, 2))
    png("one-pixel.png", np.array([[[200, 100, 50]]], np.uint8), 2, 8, np.array([[[200, 100, 50]]], np.uint8))

    photo.save(folder / "progressive.jpg", quality=85, progressive=True)
    photo.save(folder / "baseline.jpg", quality=85)
    upright = np.asarray(Image.open(folder / "baseline.jpg").convert("RGB"))
    known["baseline.jpg"] = upright
    known["progressive.jpg"] = np.asarray(Image.open(folder / "progressive.jpg").convert("RGB"))
    for value in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = value
        photo.save(folder / f"exif-{value}.jpg", quality=85, exif=exif.tobytes())
        known[f"exif-{value}.jpg"] = np.ascontiguousarray(ORIENTATIONS[value](upright))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "exif-6.png", exif=exif.tobytes())
    known["exif-6.png"] = np.ascontiguousarray(ORIENTATIONS[6](rgb))
    photo.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    raw = Image.open(folder / "cmyk.jpg")
    raw.load()
    known["cmyk.jpg"] = _cmyk_to_rgb(np.asarray(raw))
    Image.new("RGB", (1, 1), (200, 100, 50)).save(folder / "one-pixel.jpg")
    known["one-pixel.jpg"] = np.asarray(Image.open(folder / "one-pixel.jpg").convert("RGB"))
    return known
