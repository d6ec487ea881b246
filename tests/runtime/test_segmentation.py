"""Semantic segmentation on the run side: the committed probe segmenter (tests/fixtures.py: logits = W·x per pixel,
so the gradient over a region is known exactly), its region input, its outline on the overlay, its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import fixtures
import numpy as np
import pytest
from PIL import Image

from camexport.cli import main
from camexport.contract import GraphSpec
from camexport.errors import UserError
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import overlay_on_photo

WEIGHT, SIZE = fixtures.PROBE_WEIGHT, fixtures.PROBE_SIZE


@pytest.fixture(scope="module")
def probe_graph(graphs: dict[str, Path]) -> Path:
    return graphs["probe-segmenter"]


def _expected_gradient(image: np.ndarray, cls: int, region: np.ndarray | None) -> np.ndarray:
    weight = np.asarray(WEIGHT)
    predicted = np.einsum("kc,nchw->nkhw", weight, image).argmax(1)
    mask = (predicted == cls).astype(np.float64)
    if region is not None:
        mask = np.where(region < 0, mask, region)
    return weight[cls][None, :, None, None] * mask[:, None]


def test_probe_gradient_is_the_weight_row_over_the_region(probe_graph: Path) -> None:
    session = CamSession(probe_graph)
    assert session.spec.segments and session.spec.contract == 3 and session.spec.background is None
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


def test_bad_regions_get_one_line(probe_graph: Path, graphs: dict[str, Path]) -> None:
    session = CamSession(probe_graph)
    image = np.zeros((2, 3, *SIZE), np.float32)
    with pytest.raises(UserError, match=r"region has shape \[2, 5, 5\]"):
        session.run(image, -1, np.zeros((2, 5, 5)))
    with pytest.raises(UserError, match="NaN or Inf"):
        session.run(image, -1, np.full(SIZE, np.nan))
    with pytest.raises(UserError, match="explains a classifier"):
        CamSession(graphs["linear"]).run(np.zeros((1, 3, 16, 16), np.float32), -1, np.zeros((16, 16)))


def test_a_contract_2_reader_cannot_mistake_a_segmentation_graph(probe_graph: Path) -> None:
    import onnxruntime as ort

    props = ort.InferenceSession(str(probe_graph)).get_modelmeta().custom_metadata_map
    assert props["camexport.contract"] == "3" and props["camexport.task"] == "segmentation"
    assert GraphSpec.from_props(props).segments


def test_explain_outlines_the_explained_region(probe_graph: Path, tmp_path: Path, capsys) -> None:
    """The overlay of a segmentation graph carries the region's outline: white on its boundary, nowhere else."""
    session = CamSession(probe_graph)
    prep = session.spec.preprocessing
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


def test_classifier_graphs_stay_contract_2(graphs: dict[str, Path]) -> None:
    assert CamSession(graphs["linear"]).spec.contract == 2


def test_evaluate_scores_a_segmentation_by_its_region(probe_graph: Path, tmp_path: Path, capsys) -> None:
    """The probability a segmentation's metrics use: the class's per-pixel softmax, averaged over the region."""
    from camexport.runtime.metrics import class_probabilities, evaluate_images
    from camexport.runtime.options import Scoring

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
    (result,) = evaluate_images(session, [photo], scoring=Scoring(steps=4))
    assert all(np.isfinite(v) for v in (result.average_drop, result.deletion_auc, result.insertion_auc))
    assert main(["evaluate", str(probe_graph), str(photo), "--steps", "4"]) == 0
    assert "Deletion" in capsys.readouterr().out


def test_each_image_of_a_batch_outlines_its_own_region(probe_graph: Path) -> None:
    """In a batch, each explanation's region is its own image's pixels predicted as its own class."""
    from camexport.runtime.tasks import batch_regions

    session = CamSession(probe_graph)
    red, blue = np.zeros((*SIZE, 3), np.uint8), np.zeros((*SIZE, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    red[:6, :6] = (0, 0, 200)  # a blue corner on red
    results = session.explain([red, blue], batch_size=2)
    assert [r.label for r in results] == ["class_0", "class_2"]
    assert results[0].region.any() and not results[0].region[0, 0]  # the corner (cropped a little) is not red
    assert results[1].region.all()
    outputs = session.run(np.stack([session.prepare(p)[1] for p in (red, blue)]))
    assert np.array_equal(batch_regions(session.task, outputs), np.stack([r.region for r in results]))
