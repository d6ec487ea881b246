"""The build side's bad-input matrix: every kind of user mistake across build, layers and models ends in one line
naming the problem (``camexport: error: ...``), exit status 2, no traceback, and no new file (the run side's matrix:
tests/runtime/test_bad_run_inputs.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from support import assert_one_line

TINY = """
from torch import nn


def factory(num_classes=3):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
    )


def plain(num_classes=3):
    return [num_classes]


def raises():
    raise RuntimeError("the factory broke")


def fixed():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())  # a half-size feature map, no logits
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A factory file, checkpoints and label files, made once."""
    root = tmp_path_factory.mktemp("kit")
    (root / "tiny.py").write_text(TINY)
    (root / "afile").write_text("a file, not a folder")
    (root / "empty.txt").write_text("")
    (root / "bad.json").write_text("[1, 2")
    (root / "two.txt").write_text("a\nb\n")
    with open(root / "plain.pth", "wb") as handle:
        pickle.dump({"w": [1]}, handle)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "ten.pth")
    nan = torchvision.models.resnet18().state_dict()
    nan["fc.bias"][0] = float("nan")
    torch.save(nan, root / "nan.pth")
    (root / "junk.pth").write_bytes(b"junk")
    torch.save(torchvision.models.resnet18(), root / "whole.pth")  # the module pickled, not its state_dict
    return {"root": root}


# (id, argv with {root} to fill in, exit status, a fragment of the one error line)
BUILD = [
    ("unknown-model", "build resnet19", 2, "unknown model 'resnet19': did you mean resnet18"),
    ("unknown-timm", "build timm:no_such_net_x", 2, "unknown timm model"),
    ("factory-no-file", "build {root}/nope.py:factory", 2, "no such file"),
    ("factory-no-module", "build no_such_module_x:factory", 2, "cannot import no_such_module_x"),
    ("factory-no-callable", "build {root}/tiny.py:missing", 2, "has no callable 'missing'"),
    ("factory-not-a-module", "build {root}/tiny.py:plain", 2, "returned list, not a torch.nn.Module"),
    ("factory-raises", "build {root}/tiny.py:raises", 2, "the factory raised RuntimeError: the factory broke"),
    (
        "factory-no-logits",
        "build {root}/tiny.py:fixed --image-size 16",
        2,
        "camexport explains models whose forward returns logits",
    ),
    ("layer-missing", "build resnet18 --weights random --layer layer9", 2, "--layer layer9: no such module"),
    ("layer-not-a-map", "build resnet18 --weights random --layer fc", 2, "--layer fc: its output is shape"),
    ("method-unknown", "build resnet18 --method scorecam", 2, "--method scorecam: unknown method"),
    ("method-twice", "build resnet18 --method gradcam,gradcam", 2, "a method is named twice"),
    ("method-empty", "build resnet18 --method ,", 2, "unknown method"),
    ("weights-missing", "build resnet18 --weights {root}/none.pth", 2, "none.pth: no such file"),
    ("weights-junk", "build resnet18 --weights {root}/junk.pth", 2, "cannot read the checkpoint"),
    ("weights-pickle", "build resnet18 --weights {root}/plain.pth", 2, "refused it: Unsupported operand"),
    (
        "weights-whole-module",
        "build resnet18 --weights {root}/whole.pth",
        2,
        "refused it: Unsupported global: GLOBAL torchvision.models.resnet.ResNet was not an allowed global by default)",
    ),
    ("weights-nan", "build resnet18 --weights {root}/nan.pth", 2, "1 tensor(s) hold NaN or Inf: fc.bias"),
    ("weights-other-shape", "build resnet18 --weights {root}/ten.pth", 2, "fc.weight (10, 512) vs (1000, 512)"),
    ("weights-offline", "build resnet18", 2, "--weights random"),
    ("seed-negative", "build resnet18 --weights random --seed -1", 2, "--seed -1: use a non-negative integer"),
    ("opset-old", "build resnet18 --weights random --opset 11", 2, "--opset 11: camexport writes opsets 18"),
    ("size-one-position", "build resnet18 --weights random --image-size 16", 2, "is 1x1 there"),
    ("size-three-numbers", "build resnet18 --image-size 1 2 3", 2, "--image-size takes H or H W"),
    ("size-zero", "build resnet18 --image-size 0", 2, "--image-size takes H or H W"),
    ("size-cannot-run", "build alexnet --weights random --image-size 16", 2, "cannot run on 16x16 images"),
    ("output-a-folder", "build resnet18 --weights random --output {root}", 2, "must end in .onnx"),
    ("output-not-onnx", "build resnet18 --weights random --output {root}/g.txt", 2, "must end in .onnx"),
    ("output-under-a-file", "build resnet18 --weights random --output {root}/afile/g.onnx", 2, "cannot write to"),
    ("labels-missing", "build resnet18 --weights random --labels {root}/none.txt", 2, "cannot read it"),
    ("labels-empty", "build resnet18 --weights random --labels {root}/empty.txt", 2, "no class names in it"),
    ("labels-bad-json", "build resnet18 --weights random --labels {root}/bad.json", 2, "not a valid JSON list"),
    ("labels-too-few", "build resnet18 --weights random --labels {root}/two.txt", 2, "2 labels for 1000 logits"),
    ("classes-zero", "build resnet18 --weights random --num-classes 0", 2, "--num-classes 0: use a positive"),
    ("classes-pretrained", "build resnet18 --num-classes 10", 2, "torchvision's pretrained resnet18 has 1000"),
    ("classes-not-taken", "build {root}/tiny.py:fixed --num-classes 3", 2, "takes no num_classes argument"),
    ("dynamic-vit", "build vit_b_32 --weights random --dynamic-size", 2, "--dynamic-size: encoder.layers"),
    ("input-kind", "build resnet18 --input float16", 2, "invalid choice: 'float16'"),
    ("no-model", "build", 2, "the following arguments are required: model"),
]
OTHERS = [
    ("layers-model", "layers resnet19", 2, "unknown model 'resnet19'"),
    ("layers-size", "layers resnet18 --image-size 0", 2, "--image-size takes H or H W"),
    ("models-pattern", "models 'zzz*'", 2, "no model matches 'zzz*'"),
]
MATRIX = BUILD + OTHERS


def test_the_matrix_holds_forty_kinds_or_more() -> None:
    assert len(MATRIX) >= 40 and len({case[0] for case in MATRIX}) == len(MATRIX)


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "code", "fragment"), [case[1:] for case in MATRIX], ids=[c[0] for c in MATRIX])
def test_a_bad_input_is_one_line(kit, tmp_path: Path, monkeypatch, capsys, argv: str, code: int, fragment: str):
    monkeypatch.chdir(tmp_path)  # default outputs (models/) would land here
    assert_one_line(argv, code, fragment, kit, tmp_path, capsys)
