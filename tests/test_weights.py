"""Checkpoints load as torch loads them: every torchvision classifier round-trips, versioned state included."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import built_graph

from camexport.builder.catalog import matching_models, skeleton
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.registry import EFFICIENTNET_LITE0, load_model
from camexport.builder.weights import load_state_dict_strict, read_checkpoint
from camexport.errors import WeightsError
from camexport.runtime.session import CamSession

TORCHVISION = [name for name in matching_models("*") if name != EFFICIENTNET_LITE0]


def test_every_torchvision_classifier_round_trips_its_state_dict(tmp_path: Path) -> None:
    """torch.save(model.state_dict()) → read_checkpoint → load into a fresh model, for all of them (on the meta
    device: keys, shapes and the ``_metadata`` versions that some modules' ``_load_from_state_dict`` read)."""
    assert len(TORCHVISION) >= 80
    for name in TORCHVISION:
        path = tmp_path / f"{name}.pth"
        torch.save(skeleton(name).module.state_dict(), path)
        state = read_checkpoint(path)
        assert getattr(state, "_metadata", None), name  # torch.save kept the versions
        load_state_dict_strict(skeleton(name).module, state, str(path))
        path.unlink()


def test_versioned_state_is_kept(tmp_path: Path) -> None:
    """MNASNet reads its state version; a real checkpoint of it loads and gives the same logits."""
    torch.manual_seed(3)
    source = torchvision.models.mnasnet0_5().eval()
    path = tmp_path / "m.pth"
    torch.save(source.state_dict(), path)
    loaded = load_model("mnasnet0_5", path).module
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(image), source(image))


def test_a_checkpoint_without_metadata_reads_as_this_torch_writes_it(tmp_path: Path) -> None:
    source = torchvision.models.mnasnet0_5()
    plain = OrderedDict(source.state_dict())  # a copy: no _metadata
    assert not hasattr(plain, "_metadata")
    target = torchvision.models.mnasnet0_5()
    load_state_dict_strict(target, plain, "plain dict")
    assert torch.equal(target.classifier[1].weight, source.classifier[1].weight)


def test_a_missing_num_batches_tracked_keeps_the_models_own(tmp_path: Path) -> None:
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if "num_batches_tracked" not in k}
    model = torchvision.models.resnet18()
    load_state_dict_strict(model, state, "old checkpoint")
    with pytest.raises(WeightsError, match="1 missing key"):
        load_state_dict_strict(model, {k: v for k, v in state.items() if k != "fc.bias"}, "broken")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mnasnet0_5", "resnet18", "mobilenet_v3_small"])
def test_build_with_a_checkpoint_file(tmp_path: Path, graph_dir: Path, model: str) -> None:
    """`camexport build MODEL --weights PATH` with torch.save(model.state_dict()): the graph holds those weights
    (its logits equal the checkpoint's model's), validated like any other."""
    torch.manual_seed(11)
    source = torchvision.models.get_model(model).eval()
    path = tmp_path / f"{model}.pth"
    torch.save(source.state_dict(), path)
    out = graph_dir / f"{model}-checkpoint.onnx"
    build(BuildOptions(model=model, weights=path, image_size=(96, 96), output=out), log=lambda _: None)
    session = CamSession(out)
    assert session.info.weights == str(path) and not session.info.random_weights
    image = np.random.default_rng(1).standard_normal((2, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        expected = source(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(session.run(image)["logits"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_random_graph_says_so(graph_dir: Path) -> None:
    assert CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp")).info.random_weights
