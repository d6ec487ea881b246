"""Images of any channel count on the build side: a 1-channel (X-ray-like) and a 4-channel network built, their
graphs checked against the eager reference on a real photo; the checks of the normalisation against the network.
(The run side: tests/runtime/test_channels.py; Node.js: tests/e2e/test_node_channels.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from building import assert_matches_reference
from support import channel_photos

from camexport.builder.sources import ModelOverrides, load_model
from camexport.cli import main
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
    return channel_photos(folder)


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
    assert session.spec.preprocessing.channels == channels
    _, image = session.prepare(kit / photo)
    assert image.shape == (channels, *SIZE)
    outputs = session.run(image[None])
    assert_matches_reference(outputs, _model(kit, net), "4", "gradcampp", image[None], None)
    assert outputs["heatmap"].max() == pytest.approx(1.0) and np.isfinite(outputs["heatmap"]).all()


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
