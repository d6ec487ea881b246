"""Checkpoints load as torch loads them: every torchvision classifier round-trips, versioned state included."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from building import built_graph

from camexport.builder.catalog import matching_models, skeleton
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import EFFICIENTNET_LITE0, load_model
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
    assert session.spec.provenance.weights == str(path) and not session.spec.provenance.random_weights
    image = np.random.default_rng(1).standard_normal((2, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        expected = source(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(session.run(image)["logits"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_random_graph_says_so(graph_dir: Path) -> None:
    assert CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp")).spec.provenance.random_weights


def test_a_plain_pickle_is_one_line_with_its_cause(tmp_path: Path, capsys) -> None:
    import pickle

    from camexport.cli import main

    with open(tmp_path / "plain.pth", "wb") as handle:
        pickle.dump({"weight": [1.0, 2.0]}, handle)
    assert (
        main(["build", "resnet18", "--weights", str(tmp_path / "plain.pth"), "--output", str(tmp_path / "g.onnx")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused it: Unsupported operand" in err and "nothing in it was run" in err
    assert not (tmp_path / "g.onnx").exists()


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PAYLOAD_RAN",))


def test_a_malicious_checkpoint_names_the_blocked_global_and_never_runs(tmp_path: Path, monkeypatch) -> None:
    import pickle

    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"weight": _Payload()}, handle, protocol=2)
    with pytest.raises(WeightsError, match=r"unsupported GLOBAL posix\.system") as caught:
        read_checkpoint(tmp_path / "evil.pth")
    assert "\n" not in str(caught.value) and not (tmp_path / "PAYLOAD_RAN").exists()


def test_non_finite_weights_are_named(tmp_path: Path, capsys) -> None:
    from camexport.cli import main

    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["fc.bias"][3] = float("inf")
    torch.save(state, tmp_path / "nan.pth")
    assert (
        main(["build", "resnet18", "--weights", str(tmp_path / "nan.pth"), "--output", str(tmp_path / "g.onnx")]) == 2
    )
    err = capsys.readouterr().err
    assert "2 tensor(s) hold NaN or Inf: layer2.0.conv1.weight, fc.bias" in err and err.count("\n") == 1
