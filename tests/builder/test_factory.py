"""Your own model through a factory, with labels, normalisation and class count given on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from building import reference

from camexport.builder.factory import read_labels
from camexport.builder.pipeline import model_slug
from camexport.builder.sources import ModelOverrides, load_model
from camexport.cli import main
from camexport.errors import UserError
from camexport.runtime.session import CamSession

NETS = """
from torch import nn

def small_net(num_classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )

def not_a_model():
    return 42

def broken():
    raise RuntimeError("no GPU here")
"""


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


@pytest.mark.slow
def test_factory_graph_matches_reference(nets: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nbird\n")
    out = tmp_path / "small.onnx"
    spec = f"{nets}:small_net"
    code = main(
        [
            "build",
            spec,
            "--weights",
            "random",
            "--seed",
            "3",
            "--num-classes",
            "3",
            "--labels",
            str(labels),
            "--image-size",
            "48",
            "40",
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--std",
            "0.25",
            "0.25",
            "0.25",
            "--output",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    session = CamSession(out)
    assert session.spec.labels == ("cat", "dog", "bird")
    assert session.spec.preprocessing.mean == (0.5, 0.5, 0.5) and session.spec.preprocessing.image_size == (48, 40)
    model = load_model(spec, "random", seed=3, overrides=ModelOverrides(num_classes=3)).module
    layer = session.spec.layer
    image = np.random.default_rng(0).standard_normal((4, 3, 48, 40)).astype(np.float32)
    target = np.array([-1, 0, 1, 2])
    graph = session.run(image, target)
    ref = reference(model, layer, "gradcampp", image, target)
    assert graph["class_index"].tolist() == ref["class_index"].tolist()
    np.testing.assert_allclose(graph["logits"], ref["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(graph["heatmap"], ref["heatmap"], atol=4e-3)


def test_factory_errors(nets: Path) -> None:
    with pytest.raises(UserError, match="has no callable 'nope'"):
        load_model(f"{nets}:nope", "random")
    with pytest.raises(UserError, match=r"returned int, not a torch\.nn\.Module"):
        load_model(f"{nets}:not_a_model", "random")
    with pytest.raises(UserError, match="the factory raised RuntimeError: no GPU here"):
        load_model(f"{nets}:broken", "random")
    with pytest.raises(UserError, match="no such file"):
        load_model("missing.py:make", "random")
    with pytest.raises(UserError, match="cannot import no_such_package"):
        load_model("no_such_package.nets:make", "random")
    with pytest.raises(UserError, match="takes no num_classes"):
        load_model(f"{nets}:not_a_model", "random", overrides=ModelOverrides(num_classes=3))


def test_label_count_must_match_the_logits(nets: Path, tmp_path: Path, capsys) -> None:
    labels = tmp_path / "two.json"
    labels.write_text(json.dumps(["a", "b"]))
    code = main(
        [
            "build",
            f"{nets}:small_net",
            "--weights",
            "random",
            "--labels",
            str(labels),
            "--image-size",
            "32",
            "--output",
            str(tmp_path / "x.onnx"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "2 labels for 5 logits" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_read_labels_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('["x", "y", 3]')
    (tmp_path / "b.txt").write_text("x\n  y  \n\n")
    (tmp_path / "c.json").write_text("[1, 2")
    assert read_labels(tmp_path / "a.json") == ["x", "y", "3"]
    assert read_labels(tmp_path / "b.txt") == ["x", "y"]
    with pytest.raises(UserError, match="not a valid JSON list"):
        read_labels(tmp_path / "c.json")
    with pytest.raises(UserError, match="cannot read it"):
        read_labels(tmp_path / "none.txt")


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("resnet18", "resnet18"),
        ("timm:resnet50", "timm-resnet50"),
        ("nets/my.py:build", "my-build"),
        ("pkg.models:make_net", "models-make_net"),
        ("zoo/resnet50-v1-7.onnx", "resnet50-v1-7"),
        ("/tmp/Model.ONNX", "Model"),
    ],
)
def test_model_slug(name: str, slug: str) -> None:
    assert model_slug(name) == slug
