"""Overlays checked by pixel values, and heatmaps placed back on the photo."""

from __future__ import annotations

import numpy as np
import numpy_cam
import pytest
from matplotlib import colormaps
from PIL import Image

from camexport.errors import UserError
from camexport.runtime.preprocess import Preprocessing, heatmap_to_original, seen_mask
from camexport.runtime.visualize import heatmap_from_cam, overlay

PREP = Preprocessing(mean=(0, 0, 0), std=(1, 1, 1), image_size=(4, 4), resize_size=4, interpolation="bilinear")


def test_overlay_blends_the_colormap_by_alpha() -> None:
    photo = Image.new("RGB", (3, 2), (200, 100, 0))
    heat = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]], dtype=np.float32)
    out = np.asarray(overlay(photo, heat, alpha=0.25, colormap="viridis")).astype(float)
    colour = np.round(colormaps["viridis"](heat)[..., :3] * 255)  # matplotlib's colour, in bytes
    photo_rgb = np.array([200, 100, 0], dtype=np.float32)
    expected = np.floor(photo_rgb + np.float32(0.25) * (colour.astype(np.float32) - photo_rgb))  # Pillow rounds down
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("cmap", ["jet", "viridis", "turbo", "inferno"])
def test_overlay_colours_are_matplotlibs_for_every_level(cmap: str) -> None:
    heat = np.linspace(0.0, 1.0, 1001, dtype=np.float32)[None, :]
    out = np.asarray(overlay(Image.new("RGB", (1001, 1)), heat, alpha=1.0, colormap=cmap))[0]
    np.testing.assert_array_equal(out, np.round(colormaps[cmap](heat[0])[:, :3] * 255))


def test_heatmap_from_cam_matches_the_independent_numpy_heatmap() -> None:
    cam = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    got = heatmap_from_cam(cam, 31, 45)
    np.testing.assert_allclose(got, numpy_cam.heatmap(cam[None], 31, 45)[0], atol=1e-6)
    assert got.min() == 0.0 and got.max() == 1.0
    assert not heatmap_from_cam(np.full((7, 7), 3.0), 20, 20).any()  # a flat map: zeros, never NaN


def test_overlay_mask_leaves_unseen_pixels_untouched() -> None:
    photo = Image.new("RGB", (2, 1), (10, 20, 30))
    mask = np.array([[True, False]])
    out = np.asarray(overlay(photo, np.ones((1, 2), np.float32), alpha=1.0, colormap="jet", mask=mask))
    assert out[0, 1].tolist() == [10, 20, 30]
    assert out[0, 0].tolist() == [round(c * 255) for c in colormaps["jet"](1.0)[:3]]


@pytest.mark.parametrize(("alpha", "cmap", "match"), [(1.5, "jet", "alpha=1.5"), (0.5, "nope", "colormap='nope'")])
def test_overlay_rejects_bad_options(alpha: float, cmap: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        overlay(Image.new("RGB", (1, 1)), np.zeros((1, 1), np.float32), alpha, cmap)


def test_heatmap_lands_on_the_centre_crop() -> None:
    # An 8x4 photo resized to shorter side 4 stays 8x4; the 4x4 crop is columns 2..5.
    heat = np.ones((4, 4), np.float32)
    placed = heatmap_to_original(heat, PREP, width=8, height=4)
    assert placed.shape == (4, 8)
    assert placed[:, 2:6].min() == 1.0 and placed[:, :2].max() == 0.0 and placed[:, 6:].max() == 0.0
    assert seen_mask(PREP, 8, 4)[:, 2:6].all() and not seen_mask(PREP, 8, 4)[:, :2].any()


def test_heatmap_scales_with_the_photo() -> None:
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    placed = heatmap_to_original(heat, PREP, width=40, height=40)  # 10x upscale of the 4x4 crop
    y, x = np.unravel_index(placed.argmax(), placed.shape)
    assert y < 10 and x < 10 and placed[30:, 30:].max() == 0.0
