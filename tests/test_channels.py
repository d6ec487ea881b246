"""Images of any channel count: a 1-channel (X-ray-like) and a 4-channel network, through build, explain and Node.js."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_matches_reference, run_node
from PIL import Image

from camexport.builder.registry import ModelOverrides, load_model
from camexport.cli import main
from camexport.errors import UserError
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession

NETS = """
from torch import nn

def net(channels: int, num_classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )

def gray_net(num_classes: int = 4) -> nn.Module:
    return net(1, num_classes)

def rgbn_net(num_classes: int = 4) -> nn.Module:
    return net(4, num_classes)
"""
NORMALISATION = {"gray_net": ([0.45], [0.22]), "rgbn_net": ([0.5, 0.45, 0.4, 0.3], [0.25, 0.24, 0.23, 0.2])}
SIZE = (48, 40)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The factories, three graphs (1 channel float32 and uint8, 4 channels), and photos: RGB, grayscale, and a
    four-band PNG whose fourth band is data (zero in a corner, so premultiplied resizing would show)."""
    folder = tmp_path_factory.mktemp("channels")
    (folder / "nets.py").write_text(NETS)
    for graph, (net, kind) in {
        "gray": ("gray_net", "float32"),
        "gray8": ("gray_net", "uint8"),
        "rgbn": ("rgbn_net", "float32"),
    }.items():
        mean, std = NORMALISATION[net]
        args = ["build", f"{folder / 'nets.py'}:{net}", "--weights", "random", "--image-size", *map(str, SIZE)]
        args += [
            "--mean",
            *map(str, mean),
            "--std",
            *map(str, std),
            "--input",
            kind,
            "--output",
            str(folder / f"{graph}.onnx"),
        ]
        assert main(args) == 0
    rgb = np.asarray(sample_photo("coffee"))
    Image.fromarray(rgb).save(folder / "coffee.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    fourth = np.full(rgb.shape[:2], 200, dtype=np.uint8)
    fourth[:150, :200] = 0
    Image.fromarray(np.dstack([rgb, fourth]), "RGBA").save(folder / "rgbn.png")
    return folder


def _model(kit: Path, net: str):
    mean, std = NORMALISATION[net]
    overrides = ModelOverrides(mean=tuple(mean), std=tuple(std))
    return load_model(f"{kit / 'nets.py'}:{net}", "random", 0, overrides).module


@pytest.mark.parametrize(
    ("graph", "net", "photo"), [("gray", "gray_net", "gray.png"), ("rgbn", "rgbn_net", "rgbn.png")]
)
def test_graph_matches_the_eager_reference_on_a_real_photo(kit: Path, graph: str, net: str, photo: str) -> None:
    session = CamSession(kit / f"{graph}.onnx")
    channels = len(NORMALISATION[net][0])
    assert session.info.preprocessing.channels == channels
    _, image = session.prepare(kit / photo)
    assert image.shape == (channels, *SIZE)
    outputs = session.run(image[None])
    assert_matches_reference(outputs, _model(kit, net), "4", "gradcampp", image[None], None)
    assert outputs["heatmap"].max() == pytest.approx(1.0) and np.isfinite(outputs["heatmap"]).all()


def test_a_colour_photo_becomes_luma_for_a_gray_graph(kit: Path) -> None:
    """Pillow's ITU-R 601-2 luma, checked against the formula in numpy (within one level of rounding)."""
    session = CamSession(kit / "gray8.onnx")
    rgb = np.asarray(Image.open(kit / "coffee.png"), dtype=np.float64)
    luma = np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    _, from_colour = session.prepare(kit / "coffee.png")
    _, from_luma = session.prepare(luma)
    assert from_colour.shape == (*SIZE, 1) and from_colour.dtype == np.uint8
    assert np.abs(from_colour.astype(int) - from_luma.astype(int)).max() <= 1


def test_uint8_and_float32_gray_graphs_agree(kit: Path) -> None:
    """Same weights (seed 0), one graph normalising inside: the same heatmap for the same photo."""
    floats, pixels = CamSession(kit / "gray.onnx"), CamSession(kit / "gray8.onnx")
    heat_f = floats.run(floats.prepare(kit / "gray.png")[1][None])["heatmap"]
    heat_u = pixels.run(pixels.prepare(kit / "gray.png")[1][None])["heatmap"]
    assert np.abs(heat_f - heat_u).max() < 1e-4


def test_four_bands_are_resized_band_by_band(kit: Path) -> None:
    """The fourth band is data: the first three come out as the RGB photo's own resize (no premultiplication by
    the fourth, which is 0 in a corner), and the fourth as that band resized alone."""
    session = CamSession(kit / "rgbn.onnx")
    prep = session.info.preprocessing
    _, image = session.prepare(kit / "rgbn.png")
    pixels = np.round((image * np.array(prep.std)[:, None, None] + np.array(prep.mean)[:, None, None]) * 255)
    size, box = prep.geometry(600, 400)
    rgba = Image.open(kit / "rgbn.png")
    rgb = np.asarray(rgba.convert("RGB").resize(size, Image.Resampling.BILINEAR).crop(box))
    fourth = np.asarray(rgba.getchannel("A").resize(size, Image.Resampling.BILINEAR).crop(box))
    assert np.array_equal(pixels[:3].transpose(1, 2, 0), rgb)
    assert np.array_equal(pixels[3], fourth)
    assert (fourth == 0).any() and (fourth == 200).any()


def test_explain_command_draws_gray_and_four_band_photos(kit: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "explain",
                str(kit / "gray.onnx"),
                str(kit / "coffee.png"),
                str(kit / "gray.png"),
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    overlay = Image.open(tmp_path / "g" / "gray_cam.jpg")
    assert overlay.mode == "RGB" and overlay.size == (600, 400)
    assert main(["explain", str(kit / "rgbn.onnx"), str(kit / "rgbn.png"), "--out", str(tmp_path / "r")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and Path(tmp_path / "r" / "rgbn_cam.jpg").is_file()
    assert main(["evaluate", str(kit / "rgbn.onnx"), str(kit / "rgbn.png"), "--steps", "4"]) == 0
    capsys.readouterr()


def test_bad_channel_inputs_get_one_line_each(kit: Path, tmp_path: Path, capsys) -> None:
    spec = f"{kit / 'nets.py'}:gray_net"
    out = tmp_path / "x.onnx"
    assert main(["build", spec, "--weights", "random", "--image-size", "32", "32", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "takes 1-channel images but its normalisation has 3 value(s)" in err and "--mean" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    assert (
        main(["build", spec, "--weights", "random", "--mean", "0.5", "--std", "0.2", "0.2", "--output", str(out)]) == 2
    )
    assert "mean has 1 value(s) and std 2" in capsys.readouterr().err and not out.exists()
    session = CamSession(kit / "rgbn.onnx")
    with pytest.raises(UserError, match="the image has 3 band"):
        session.prepare(kit / "coffee.png")
    with pytest.raises(UserError, match=r"the graph takes \[N, 4, 48, 40\]"):
        session.run(np.zeros((1, 3, *SIZE), np.float32))


@pytest.mark.slow
def test_node_example_reads_gray_and_four_band_graphs(kit: Path, node_example: Path, tmp_path: Path) -> None:
    for graph, photo in [("gray", "coffee.png"), ("gray8", "gray.png"), ("rgbn", "rgbn.png")]:
        session = CamSession(kit / f"{graph}.onnx")
        want = session.run(session.prepare(kit / photo)[1][None])["heatmap"][0]
        run_node(node_example, kit / f"{graph}.onnx", kit / photo, tmp_path / graph)
        assert np.abs(np.load(tmp_path / f"{graph}.npy") - want).max() < 1e-5, graph
    refused = subprocess.run(
        ["node", "explain.mjs", str(kit / "rgbn.onnx"), str(kit / "coffee.png"), str(tmp_path / "no")],
        cwd=node_example, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and "graph takes 4 channels" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.npy").exists()
