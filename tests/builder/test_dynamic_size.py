"""--dynamic-size: one graph for any H x W, checked at sizes it was neither traced nor validated at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from building import assert_matches_reference, reference
from test_cli import assert_user_error, run_cli

from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model
from camexport.runtime.session import CamSession

# Every backward decomposition with a size-dependent shape: strided, padded and dilated convolutions,
# max pooling with padding, average pooling; the explained layer is the first one, so all are crossed.
STRIDED_NET = """
from torch import nn


def factory(num_classes=5):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )
"""


@pytest.fixture(scope="module")
def strided_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("dynamic")
    (folder / "strided_net.py").write_text(STRIDED_NET)
    spec = f"{folder / 'strided_net.py'}:factory"
    out = folder / "strided.onnx"
    build(
        BuildOptions(model=spec, layer="1", weights="random", image_size=(64, 64), dynamic_size=True, output=out),
        log=lambda _: None,
    )
    return out, spec


def test_graph_declares_symbolic_height_and_width(strided_graph) -> None:
    path, _ = strided_graph
    model = onnx.load(str(path), load_external_data=False)
    image = next(i for i in model.graph.input if i.name == "image")
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert CamSession(path).spec.dynamic_size


@pytest.mark.parametrize(("height", "width"), [(64, 64), (50, 77), (97, 64), (33, 33)])
def test_any_size_matches_the_reference(strided_graph, height: int, width: int) -> None:
    path, spec = strided_graph
    session = CamSession(path)
    module = load_model(spec, "random").module
    image = np.random.default_rng(height * width).standard_normal((2, 3, height, width)).astype(np.float32)
    target = np.array([-1, 3])
    graph = session.run(image, target)
    ref = reference(module, "1", "gradcampp", image, target)
    assert graph["heatmap"].shape == (2, height, width)
    assert np.abs(ref["gradients"]).max() > 0 and ref["heatmap"].max() > 0
    assert_matches_reference(graph, module, "1", "gradcampp", image, target)


def test_fixed_size_graph_refuses_other_sizes(graph_dir: Path) -> None:
    from building import built_graph

    from camexport.errors import UserError

    session = CamSession(built_graph(graph_dir, "resnet18", None, "gradcampp"))
    with pytest.raises(UserError, match=r"the graph takes \[N, 3, 224, 224\]"):
        session.run(np.zeros((1, 3, 200, 224), dtype=np.float32))


def test_transformer_tokens_are_refused(capsys) -> None:
    code, _, err = run_cli(capsys, "build", "vit_b_32", "--weights", "random", "--dynamic-size", "--output", "x.onnx")
    assert_user_error(code, err, "--dynamic-size", "7x7 grid", "build without --dynamic-size")
    assert not Path("x.onnx").exists()


def test_fixed_grid_pooling_is_refused(capsys, tmp_path: Path) -> None:
    out = tmp_path / "vgg.onnx"
    code, _, err = run_cli(capsys, "build", "vgg11", "--weights", "random", "--dynamic-size", "--output", str(out))
    assert_user_error(code, err, "--dynamic-size", "adaptive average pooling to a fixed grid")
    assert not out.exists()
