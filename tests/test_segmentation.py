"""Semantic segmentation (Seg-Grad-CAM): a probe whose gradient is known exactly, and torchvision's models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camexport.builder.reference import reference_explain
from camexport.builder.registry import load_model
from camexport.cli import main
from camexport.contract import GraphInfo
from camexport.errors import UserError
from camexport.runtime.preprocess import normalise, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import overlay_on_photo

# logits = W·x per pixel (a 1x1 convolution of the input itself): at the layer ``feat`` the activations are the
# image and the gradient of the class's logits summed over a region M is exactly W[c] · M.
PROBE = """
import torch
from torch import nn

class ProbeSegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = nn.Identity()
        self.head = nn.Conv2d(3, 4, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(WEIGHT)[:, :, None, None])

    def forward(self, x):
        return self.head(self.feat(x))

def probe():
    return ProbeSegmenter()
"""
WEIGHT = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-0.5, -0.5, -0.5]]
SIZE = (24, 20)


@pytest.fixture(scope="module")
def probe_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.py").write_text(PROBE.replace("WEIGHT", repr(WEIGHT)))
    out = folder / "probe.onnx"
    args = ["build", f"{folder / 'probe.py'}:probe", "--layer", "feat", "--image-size", *map(str, SIZE)]
    assert main([*args, "--mean", "0", "0", "0", "--std", "1", "1", "1", "--output", str(out)]) == 0
    return out


def _expected_gradient(image: np.ndarray, cls: int, region: np.ndarray | None) -> np.ndarray:
    weight = np.asarray(WEIGHT)
    predicted = np.einsum("kc,nchw->nkhw", weight, image).argmax(1)
    mask = (predicted == cls).astype(np.float64)
    if region is not None:
        mask = np.where(region < 0, mask, region)
    return weight[cls][None, :, None, None] * mask[:, None]


def test_probe_gradient_is_the_weight_row_over_the_region(probe_graph: Path) -> None:
    session = CamSession(probe_graph)
    assert session.info.segments and session.info.contract == 3 and session.info.background is None
    rng = np.random.default_rng(5)
    image = rng.standard_normal((2, 3, *SIZE)).astype(np.float32)
    weight = np.asarray(WEIGHT)
    predicted = np.einsum("kc,nchw->nkhw", weight, image).argmax(1)
    out = session.run(image)  # the default: the class predicted on most pixels, over its predicted pixels
    most = [int(np.bincount(p.ravel(), minlength=4).argmax()) for p in predicted]
    assert out["class_index"].tolist() == most
    assert np.array_equal(out["segmentation"], predicted)
    np.testing.assert_allclose(out["activations"], image, atol=1e-6)
    for i, cls in enumerate(most):
        np.testing.assert_allclose(
            out["gradients"][i : i + 1], _expected_gradient(image[i : i + 1], cls, None), atol=1e-6
        )
    region = np.zeros(SIZE, np.float32)
    region[3:10, 4:12] = 1.0
    region[15:, :] = -1.0  # there: the pixels predicted as the class
    given = session.run(image, [2, 0], region)
    for i, cls in enumerate([2, 0]):
        want = _expected_gradient(image[i : i + 1], cls, region[None])
        np.testing.assert_allclose(given["gradients"][i : i + 1], want, atol=1e-6)


def test_empty_region_gives_a_zero_heatmap_never_nan(probe_graph: Path) -> None:
    session = CamSession(probe_graph)
    image = np.random.default_rng(1).standard_normal((3, 3, *SIZE)).astype(np.float32)
    for method_output in ("heatmap", "cam", "gradients"):
        out = session.run(image, 1, np.zeros((3, *SIZE), np.float32))
        assert np.isfinite(out[method_output]).all() and not out[method_output].any()


def test_bad_regions_get_one_line(probe_graph: Path, efficientnet_graph: Path) -> None:
    session = CamSession(probe_graph)
    image = np.zeros((2, 3, *SIZE), np.float32)
    with pytest.raises(UserError, match=r"region has shape \[2, 5, 5\]"):
        session.run(image, -1, np.zeros((2, 5, 5)))
    with pytest.raises(UserError, match="NaN or Inf"):
        session.run(image, -1, np.full(SIZE, np.nan))
    with pytest.raises(UserError, match="explains a classifier"):
        CamSession(efficientnet_graph).run(np.zeros((1, 3, 224, 224), np.float32), -1, np.zeros((224, 224)))


def test_a_contract_2_reader_cannot_mistake_a_segmentation_graph(probe_graph: Path) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(probe_graph), load_external_data=False).metadata_props}
    assert props["camexport.contract"] == "3" and props["camexport.task"] == "segmentation"
    assert GraphInfo.from_props(props).segments


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"])
def test_torchvision_segmentation_matches_the_eager_reference_on_a_photo(graph_dir: Path, model: str) -> None:
    """Built (validated at build time on random inputs, a rectangle and an empty region), then compared on a real
    photo with the default region and with a given one, against the eager Seg-Grad-CAM written separately."""
    from dataclasses import replace

    from camexport.builder.pipeline import BuildOptions, build

    graph = graph_dir / f"{model}-seg.onnx"
    if not graph.exists():
        build(
            replace(BuildOptions(model=model, weights="random", image_size=(96, 96)), output=graph), log=lambda _: None
        )
    session = CamSession(graph)
    assert session.info.labels[0] == "__background__" and session.info.background == 0
    assert session.info.layer.startswith("backbone.")
    prep = session.info.preprocessing
    image = normalise(to_pixels(sample_photo("chelsea"), prep), prep)[None]
    module = load_model(model, "random").module
    region = np.zeros((1, 96, 96), np.float32)
    region[0, 20:70, 30:80] = 1.0
    for target, given in ((None, None), (np.array([8]), region)):
        out = session.run(image, target, given)
        want = reference_explain(module, session.info.layer, "gradcampp", image, target, region=given, background=0)
        assert out["class_index"].tolist() == want["class_index"].tolist()
        assert (out["segmentation"] != want["segmentation"]).mean() <= 1e-3
        assert np.abs(out["heatmap"] - want["heatmap"]).max() < 4e-3
        assert want["heatmap"].max() > 0.99  # a real map, not a flat one


def test_explain_outlines_the_explained_region(probe_graph: Path, tmp_path: Path, capsys) -> None:
    """The overlay of a segmentation graph carries the region's outline: white on its boundary, nowhere else."""
    session = CamSession(probe_graph)
    prep = session.info.preprocessing
    assert prep.resize_size == 27  # 24 x 20 at camexport's 256/224 ratio: a 27 x 33 photo is cropped, not resized
    pixels = np.zeros((33, 27, 3), np.uint8)
    pixels[...] = (0, 0, 200)
    pixels[10:18, 9:17] = (220, 10, 10)  # a red square on blue: class 0 there, class 2 around it
    photo = Image.fromarray(pixels)
    assert prep.geometry(27, 33) == ((27, 33), (4, 4, 24, 28))
    (result,) = session.explain(photo)
    assert result.label == "class_2" and result.region.sum() == SIZE[0] * SIZE[1] - 64
    red = session.explain(photo, target="class_0")[0]
    assert red.region.sum() == 64 and red.region[6:14, 5:13].all()
    plain = np.asarray(overlay_on_photo(photo, red.input_heatmap, prep))
    outlined = np.asarray(overlay_on_photo(photo, red.input_heatmap, prep, region=red.region))
    changed = (plain != outlined).any(-1)
    assert changed[10:18, 9:17].sum() == 28 and changed.sum() == 28  # the square's 1-pixel ring, 8x8 - 6x6
    assert (outlined[changed] == 255).all()
    photo.save(tmp_path / "square.png")
    assert main(["explain", str(probe_graph), str(tmp_path / "square.png"), "--out", str(tmp_path / "o")]) == 0
    row = json.loads((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["label"] == "class_2", row
    capsys.readouterr()


def test_classifier_graphs_stay_contract_2(efficientnet_graph: Path) -> None:
    assert CamSession(efficientnet_graph).info.contract == 2


def test_evaluate_scores_a_segmentation_by_its_region(probe_graph: Path, tmp_path: Path, capsys) -> None:
    """The probability a segmentation's metrics use: the class's per-pixel softmax, averaged over the region."""
    from camexport.runtime.metrics import class_probabilities, evaluate_images

    session = CamSession(probe_graph)
    pixels = np.random.default_rng(3).integers(0, 256, (2, *SIZE, 3)).astype(np.uint8)
    regions = np.zeros((2, *SIZE), bool)
    regions[0, :5] = True
    regions[1, 10:, 3:9] = True
    got = class_probabilities(session, pixels, np.array([1, 3]), regions=regions)
    logits = np.einsum("kc,nhwc->nkhw", np.asarray(WEIGHT), pixels / 255.0)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = [probs[0, 1][regions[0]].mean(), probs[1, 3][regions[1]].mean()]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    photo = tmp_path / "p.png"
    Image.fromarray(pixels[0]).save(photo)
    (result,) = evaluate_images(session, [photo], steps=4)
    assert all(np.isfinite(v) for v in (result.average_drop, result.deletion_auc, result.insertion_auc))
    assert main(["evaluate", str(probe_graph), str(photo), "--steps", "4"]) == 0
    assert "Deletion" in capsys.readouterr().out
