"""Inner layers across CNN families: each family's backward ops (max-pool, depthwise and grouped convolutions,
ReLU6, SiLU and squeeze-excitation, LayerNorm with permutes, GELU) go through the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from building import assert_matches_reference, reference

from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model
from camexport.runtime.session import CamSession

CASES = [
    ("vgg11", "features.10"),
    ("mobilenet_v2", "features.10"),
    ("efficientnet_b0", "features.4"),
    ("convnext_tiny", "features.5"),
]
SIZE = (96, 96)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "layer"), CASES)
def test_inner_layer_graph_matches_reference(graph_dir: Path, model: str, layer: str) -> None:
    out = graph_dir / f"{model}-inner.onnx"
    build(
        BuildOptions(model=model, layer=layer, methods=("gradcam",), weights="random", image_size=SIZE, output=out),
        log=lambda _: None,
    )
    session = CamSession(out)
    module = load_model(model, "random").module
    image = np.random.default_rng(77).standard_normal((2, 3, *SIZE)).astype(np.float32)
    target = np.array([-1, 123])
    assert_matches_reference(session.run(image, target), module, layer, "gradcam", image, target)
    ref = reference(module, layer, "gradcam", image, target)
    assert np.abs(ref["gradients"]).max() > 0 and ref["heatmap"].max() > 0  # something to compare
