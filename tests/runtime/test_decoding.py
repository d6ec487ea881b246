"""Decoding: the photo files that stress a decoder (tests/image_fixtures.py: 16-bit gray and colour PNG, a palette
with transparency, alpha, EXIF orientations, progressive and CMYK JPEG, one pixel) become the pixels camexport's
rules say, in Python. The browser page and the Node.js example decode the same files to the same bytes
(tests/e2e/test_web.py, tests/e2e/test_node_channels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_fixtures import write_fixtures
from PIL import Image

from camexport.runtime.preprocess import open_image


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("decoding")
    return folder, write_fixtures(folder)


def test_the_set_covers_every_case_the_rules_name(fixtures) -> None:
    _, known = fixtures
    names = set(known)
    assert {"gray16.png", "rgb16.png", "palette-transparent.png", "alpha.png", "cmyk.jpg", "progressive.jpg"} <= names
    assert {f"exif-{v}.jpg" for v in range(2, 9)} <= names and {"one-pixel.png", "one-pixel.jpg"} <= names


def test_python_decodes_each_fixture_to_its_known_pixels(fixtures) -> None:
    folder, known = fixtures
    for name, pixels in known.items():
        decoded = np.asarray(open_image(folder / name))
        assert decoded.shape == pixels.shape and np.array_equal(decoded, pixels), name


def test_the_orientation_is_applied_from_bytes_and_from_an_open_image_alike(fixtures) -> None:
    """A PIL image handed in (opened, not yet decoded) is turned upright as its file is."""
    folder, known = fixtures
    with Image.open(folder / "exif-6.jpg") as image:
        assert np.array_equal(np.asarray(open_image(image)), known["exif-6.jpg"])
    assert np.array_equal(np.asarray(open_image((folder / "exif-8.jpg").read_bytes())), known["exif-8.jpg"])


def test_grayscale_and_four_band_graphs_follow_the_same_rules(fixtures) -> None:
    folder, known = fixtures
    luma = np.asarray(open_image(folder / "gray16.png", mode="L"))
    assert np.array_equal(luma, known["gray16.png"][..., 0])
    rgba16 = np.asarray(open_image(folder / "rgba16.png", mode="RGBA"))
    assert np.array_equal(rgba16[..., :3], known["rgba16.png"]) and rgba16.dtype == np.uint8
