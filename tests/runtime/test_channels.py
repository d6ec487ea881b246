"""Images of any channel count on the run side: the committed 1-channel (X-ray-like) and 4-band graphs take photos
as luma and band by band, give their networks' known answers on a real photo, and explain from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures
import numpy as np
import numpy_cam
import pytest
from PIL import Image
from support import channel_photos

from camexport.cli import main
from camexport.errors import UserError
from camexport.runtime.session import CamSession


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return channel_photos(tmp_path_factory.mktemp("channels"))


@pytest.mark.parametrize(("graph", "channels", "photo"), [("gray", 1, "gray.png"), ("bands", 4, "rgbn.png")])
def test_a_real_photo_gives_the_known_answer(
    graphs: dict[str, Path], photos: Path, graph: str, channels: int, photo: str
) -> None:
    session = CamSession(graphs[graph])
    assert session.spec.preprocessing.channels == channels
    _, image = session.prepare(photos / photo)
    assert image.shape == (channels, fixtures.SIZE, fixtures.SIZE)
    outputs = session.run(image[None])
    net = fixtures.net("linear", channels)
    A = fixtures.activations(image[None])
    cam = fixtures.cam("gradcampp", A, fixtures.gradients(net, A, outputs["class_index"]))
    np.testing.assert_allclose(outputs["cam"], cam, rtol=1e-5, atol=1e-5 * np.abs(cam).max())
    np.testing.assert_allclose(outputs["heatmap"], numpy_cam.heatmap(cam, 16, 16), atol=1e-3)


def test_a_colour_photo_becomes_luma_for_a_gray_graph(graphs: dict[str, Path], photos: Path) -> None:
    """Pillow's ITU-R 601-2 luma, checked against the formula in numpy (within one level of rounding)."""
    session = CamSession(graphs["gray-uint8"])
    rgb = np.asarray(Image.open(photos / "coffee.png"), dtype=np.float64)
    luma = np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    _, from_colour = session.prepare(photos / "coffee.png")
    _, from_luma = session.prepare(luma)
    assert from_colour.shape == (16, 16, 1) and from_colour.dtype == np.uint8
    assert np.abs(from_colour.astype(int) - from_luma.astype(int)).max() <= 1


def test_uint8_and_float32_gray_graphs_agree(graphs: dict[str, Path], photos: Path) -> None:
    """The same network, one graph normalising inside: the same heatmap for the same photo."""
    floats, pixels = CamSession(graphs["gray"]), CamSession(graphs["gray-uint8"])
    heat_f = floats.run(floats.prepare(photos / "gray.png")[1][None])["heatmap"]
    heat_u = pixels.run(pixels.prepare(photos / "gray.png")[1][None])["heatmap"]
    assert np.abs(heat_f - heat_u).max() < 1e-4


def test_four_bands_are_resized_band_by_band(graphs: dict[str, Path], photos: Path) -> None:
    """The fourth band is data: the first three come out as the RGB photo's own resize (no premultiplication by
    the fourth, which is 0 in a corner), and the fourth as that band resized alone."""
    session = CamSession(graphs["bands"])
    prep = session.spec.preprocessing
    _, image = session.prepare(photos / "rgbn.png")
    pixels = np.round((image * np.array(prep.std)[:, None, None] + np.array(prep.mean)[:, None, None]) * 255)
    size, box = prep.geometry(600, 400)
    rgba = Image.open(photos / "rgbn.png")
    rgb = np.asarray(rgba.convert("RGB").resize(size, Image.Resampling.BILINEAR).crop(box))
    fourth = np.asarray(rgba.getchannel("A").resize(size, Image.Resampling.BILINEAR).crop(box))
    assert np.array_equal(pixels[:3].transpose(1, 2, 0), rgb)
    assert np.array_equal(pixels[3], fourth)
    assert (fourth == 0).any() and (fourth == 200).any()


def test_explain_command_draws_gray_and_four_band_photos(
    graphs: dict[str, Path], photos: Path, tmp_path: Path, capsys
) -> None:
    gray = ["explain", str(graphs["gray"]), str(photos / "coffee.png"), str(photos / "gray.png")]
    assert main([*gray, "--out", str(tmp_path / "g")]) == 0
    overlay = Image.open(tmp_path / "g" / "gray_cam.jpg")
    assert overlay.mode == "RGB" and overlay.size == (600, 400)
    assert main(["explain", str(graphs["bands"]), str(photos / "rgbn.png"), "--out", str(tmp_path / "r")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and Path(tmp_path / "r" / "rgbn_cam.jpg").is_file()
    assert main(["evaluate", str(graphs["bands"]), str(photos / "rgbn.png"), "--steps", "4"]) == 0
    capsys.readouterr()


def test_bad_channel_inputs_get_one_line_each(graphs: dict[str, Path], photos: Path) -> None:
    session = CamSession(graphs["bands"])
    with pytest.raises(UserError, match="the image has 3 band"):
        session.prepare(photos / "coffee.png")
    with pytest.raises(UserError, match=r"the graph takes \[N, 4, 16, 16\]"):
        session.run(np.zeros((1, 3, 16, 16), np.float32))
