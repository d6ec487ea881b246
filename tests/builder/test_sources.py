"""Model registry: names, weights (default, random, checkpoints) and the offline real-weights model."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from camexport.builder import sources
from camexport.builder.sources import available_models, load_model
from camexport.errors import UnknownModelError, WeightsError
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession


def test_available_models_include_torchvision_and_the_offline_model() -> None:
    names = available_models()
    assert {"resnet18", "vgg16", "efficientnet_lite0"} <= set(names)
    assert names == sorted(names)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="did you mean resnet18"):
        load_model("resnet19")


def test_random_weights_are_seeded() -> None:
    a = load_model("resnet18", "random", seed=3).module.fc.weight
    b = load_model("resnet18", "random", seed=3).module.fc.weight
    c = load_model("resnet18", "random", seed=4).module.fc.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_weights_unavailable_names_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match=r"weights='random'.*weights=PATH"):
        load_model("resnet18", "default")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    source = load_model("resnet18", "random", seed=5).module
    path = tmp_path / "r.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model("resnet18", str(path)).module
    assert torch.equal(loaded.fc.weight, source.fc.weight)


def test_checkpoint_mismatch_is_reported_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError) as caught:
        load_model("resnet18", str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert "shape mismatch" in message and "fc.weight (10, 512) vs (1000, 512)" in message


def test_checkpoint_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing key\(s\): layer1.0.conv1.weight; 1 unexpected key\(s\)"):
        load_model("resnet18", str(path))


def test_unreadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read the checkpoint"):
        load_model("resnet18", str(path))
    with pytest.raises(WeightsError, match="no such file"):
        load_model("resnet18", str(tmp_path / "missing.pt"))


def test_efficientnet_lite0_real_weights_verify_their_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "EFFICIENTNET_LITE0_SHA256", "0" * 64)
    with pytest.raises(WeightsError, match="sha256"):
        load_model("efficientnet_lite0")


def test_efficientnet_lite0_preprocessing_comes_from_timm() -> None:
    loaded = load_model("efficientnet_lite0", "random")
    prep = loaded.preprocessing
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.5, 0.5, 0.5)
    assert prep.image_size == (224, 224) and prep.resize_size == 256 and prep.interpolation == "bicubic"
    assert len(loaded.labels) == 1000


@pytest.mark.slow
def test_efficientnet_lite0_calls_coffee_espresso_and_looks_at_the_cup(efficientnet_graph: Path) -> None:
    session = CamSession(efficientnet_graph)
    photo = sample_photo("coffee")  # 600 x 400
    (result,) = session.explain(photo)
    _, label, probability = result.top[0]
    assert label == "espresso" and probability > 0.9
    assert result.label == "espresso"
    # The cup (with its coffee) spans about x 130..470, y 10..330 in scikit-image's coffee() photo.
    y, x = np.unravel_index(result.heatmap.argmax(), result.heatmap.shape)
    assert 130 <= x <= 470 and 10 <= y <= 330
    # and most of the heat lies on it
    cup = result.heatmap[10:330, 130:470].sum()
    assert cup / result.heatmap.sum() > 0.6


def test_unknown_timm_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="did you mean timm:resnet18"):
        load_model("timm:resnet18x")


def test_num_classes_with_torchvision_pretrained_is_refused() -> None:
    from camexport.builder.sources import ModelOverrides

    with pytest.raises(WeightsError, match="num_classes=10: torchvision's pretrained resnet18 has 1000 classes"):
        load_model("resnet18", "default", overrides=ModelOverrides(num_classes=10))


@pytest.mark.slow
def test_timm_model_builds_and_matches_the_reference(graph_dir: Path) -> None:
    from building import reference

    from camexport.builder.pipeline import BuildOptions, build

    out = graph_dir / "timm-resnet18.onnx"
    build(BuildOptions(model="timm:resnet18", weights="random", image_size=(96, 96), output=out), log=lambda _: None)
    session = CamSession(out)
    assert session.spec.provenance.model == "timm:resnet18" and session.spec.labels[0] == "tench"
    assert session.spec.preprocessing.interpolation == "bicubic"
    module = load_model("timm:resnet18", "random").module
    image = np.random.default_rng(4).standard_normal((2, 3, 96, 96)).astype(np.float32)
    graph = session.run(image, [5, -1])
    ref = reference(module, session.spec.layer, "gradcampp", image, [5, -1])
    assert graph["class_index"].tolist() == ref["class_index"].tolist()
    np.testing.assert_allclose(graph["heatmap"], ref["heatmap"], atol=4e-3)
