"""Semantic segmentation on the build side: torchvision's models built, validated, and compared on a real photo with
the eager Seg-Grad-CAM written separately (the committed probe segmenter's known answers: tests/runtime/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from building import built_graph, reference

from camexport.builder.sources import load_model
from camexport.runtime.preprocess import normalise, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_segmentation_matches_the_eager_reference_on_a_photo(graph_dir: Path, model: str) -> None:
    """Built (validated at build time on random inputs, a rectangle and an empty region), then compared on a real
    photo with the default region and with a given one, against the eager Seg-Grad-CAM written separately."""
    session = CamSession(built_graph(graph_dir, model, None, "gradcampp", image_size=(96, 96)))
    assert session.spec.labels[0] == "__background__" and session.spec.background == 0
    assert session.spec.layer.startswith("backbone.")
    prep = session.spec.preprocessing
    image = normalise(to_pixels(sample_photo("chelsea"), prep), prep)[None]
    module = load_model(model, "random").module
    region = np.zeros((1, 96, 96), np.float32)
    region[0, 20:70, 30:80] = 1.0
    for target, given in ((None, None), (np.array([8]), region)):
        out = session.run(image, target, given)
        want = reference(
            module, session.spec.layer, "gradcampp", image, target, task="segmentation", region=given, background=0
        )
        assert out["class_index"].tolist() == want["class_index"].tolist()
        assert (out["segmentation"] != want["segmentation"]).mean() <= 1e-3
        assert np.abs(out["heatmap"] - want["heatmap"]).max() < 4e-3
        assert want["heatmap"].max() > 0.99  # a real map, not a flat one
