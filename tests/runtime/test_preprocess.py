"""Pillow preprocessing: modes, resize and crop geometry, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camexport.errors import UserError
from camexport.runtime.preprocess import Preprocessing, open_image, to_input

PREP = Preprocessing(
    mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), image_size=(4, 6), resize_size=4, interpolation="bilinear"
)


def test_normalisation_and_layout() -> None:
    photo = Image.new("RGB", (6, 4), (255, 0, 51))
    x = to_input(photo, PREP)
    assert x.shape == (3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, 0.2], rtol=1e-6)


def test_centre_crop_geometry() -> None:
    prep = Preprocessing((0, 0, 0), (1, 1, 1), image_size=(2, 2), resize_size=2, interpolation="nearest")
    photo = np.zeros((2, 6, 3), np.uint8)
    photo[:, 2:4] = 255  # the middle two columns
    x = to_input(Image.fromarray(photo), prep)
    assert x.min() == 1.0


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16", "CMYK"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.new("RGB", (8, 8), (120, 60, 30)).convert(mode) if mode != "I;16" else Image.new("I;16", (8, 8), 4000)
    path = tmp_path / ("x.tif" if mode in ("I;16", "CMYK") else "x.png")
    image.save(path)
    assert open_image(path).mode == "RGB"


def test_sixteen_bit_scales_to_eight_bit() -> None:
    image = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert np.asarray(open_image(image))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="not a readable image"):
        open_image(bad)
    with pytest.raises(UserError, match="no such file"):
        open_image(tmp_path / "missing.png")


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow refuses images over twice its pixel limit; the user gets one line naming the file."""
    Image.new("RGB", (120, 100)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 12,000 pixels is over 2 x 5,000
    with pytest.raises(UserError, match=r"huge.png: not a readable image \(Image size \(12000 pixels\) exceeds"):
        open_image(tmp_path / "huge.png")
