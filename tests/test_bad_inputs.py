"""The bad-input matrix: every kind of user mistake across build, explain, evaluate, layers, models, bench and
samples ends in one line naming the problem (``camexport: error: ...``), the right exit status (2 for a bad
argument or input, 1 for a run in which no image could be explained), no traceback, and no new file."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from PIL import Image

from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.registry import ModelOverrides
from camexport.cli import main
from camexport.runtime.records import Record, RecordLog
from camexport.runtime.session import CamSession

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
    """A tiny graph, photos and broken files, made once."""
    root = tmp_path_factory.mktemp("kit")
    (root / "tiny.py").write_text(TINY)
    graph = root / "tiny.onnx"
    options = BuildOptions(
        model=f"{root / 'tiny.py'}:factory",
        image_size=(32, 32),
        overrides=ModelOverrides(labels=["cat", "dog", "bird"]),
        output=graph,
    )
    build(options, log=lambda _: None)
    (root / "photos").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "photos" / "red.png")
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("1", (12000, 12000)).save(root / "bomb.png")
    (root / "afile").write_text("a file, not a folder")
    (root / "text.onnx").write_text("not a graph")
    identity = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(identity), root / "foreign.onnx")
    for name, key, value in (("newer", "camexport.contract", "9"), ("short", "camexport.labels", '["cat"]')):
        model = onnx.load(str(graph))
        next(p for p in model.metadata_props if p.key == key).value = value
        onnx.save(model, root / f"{name}.onnx")
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
    (root / "earlier").mkdir()
    (root / "earlier" / "predictions.jsonl").write_text('{"image": "x.png"}\n')
    other = RecordLog(root / "empty", dataclasses.replace(CamSession(graph).info, model="other"))
    other.append([Record("x.png", None, None, 0, "cat", 1.0, [], np.zeros((2, 2), np.float32))])
    other.finish()
    (root / "othergraph").mkdir()
    for name in ("predictions.jsonl", "cams.parquet"):  # a finished run of another graph
        (root / "empty" / name).rename(root / "othergraph" / name)
    (root / "notparquet").mkdir()
    (root / "notparquet" / "cams.parquet").write_text("not parquet")
    return {"root": root, "graph": graph}


# (id, argv with {root} and {graph} to fill in, exit status, a fragment of the one error line)
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
EXPLAIN = [
    ("graph-missing", "explain {root}/none.onnx {root}/photos", 2, "none.onnx: no such graph"),
    ("graph-text", "explain {root}/text.onnx {root}/photos", 2, "onnxruntime cannot load it"),
    ("graph-foreign", "explain {root}/foreign.onnx {root}/photos", 2, "not a graph built by camexport"),
    ("graph-newer", "explain {root}/newer.onnx {root}/photos", 2, "graph contract '9'"),
    ("graph-short-labels", "explain {root}/short.onnx {root}/photos", 2, "1 labels for 3 logits"),
    ("class-name", "explain {graph} {root}/photos --class cow", 2, "--class cow: not a label of this graph"),
    ("class-index", "explain {graph} {root}/photos --class 3", 2, "--class 3: out of range"),
    ("class-negative", "explain {graph} {root}/photos --class -2", 2, "--class -2: out of range"),
    ("top-k", "explain {graph} {root}/photos --top-k 0", 2, "--top-k 0: use 1 or more"),
    ("batch-size", "explain {graph} {root}/photos --batch-size 0", 2, "--batch-size 0: use 1 or more"),
    ("threads", "explain {graph} {root}/photos --threads -1", 2, "--threads -1: use 0"),
    ("alpha", "explain {graph} {root}/photos --alpha 1.5", 2, "--alpha 1.5: use a value between 0 and 1"),
    ("colormap", "explain {graph} {root}/photos --colormap nope", 2, "--colormap nope: not a matplotlib colormap"),
    ("format", "explain {graph} {root}/photos --format gif", 2, "--format gif: use one of jpg, png, webp"),
    ("max-side", "explain {graph} {root}/photos --overlay-max-side 0", 2, "--overlay-max-side 0: use a positive"),
    ("provider-unknown", "explain {graph} {root}/photos --provider tpu", 2, "--provider tpu: unknown"),
    ("out-under-a-file", "explain {graph} {root}/photos --out {root}/afile/o", 2, "cannot create it"),
    ("folder-empty", "explain {graph} {root}/empty", 2, "no images found"),
    ("folder-no-images", "explain {graph} {root}/notes", 2, "no images found"),
    ("image-missing", "explain {graph} {root}/none.png", 1, "none of the 1 image(s) could be explained"),
    ("image-broken", "explain {graph} {root}/broken.png", 1, "none of the 1 image(s) could be explained"),
    ("image-bomb", "explain {graph} {root}/bomb.png", 1, "none of the 1 image(s) could be explained"),
    ("no-images-given", "explain {graph}", 2, "the following arguments are required: images"),
    ("resume-and-overwrite", "explain {graph} {root}/photos --resume --overwrite", 2, "not allowed with argument"),
    ("earlier-run", "explain {graph} {root}/photos --out {root}/earlier", 2, "an earlier run's output; pass --resume"),
    ("resume-other-graph", "explain {graph} {root}/photos --out {root}/othergraph --resume", 2, "of another graph"),
    ("ray-actors", "explain {graph} {root}/photos --ray --actors 0", 2, "--actors 0: use 1 or more"),
    ("ray-actor-cpus", "explain {graph} {root}/photos --ray --actor-cpus 0", 2, "--actor-cpus 0.0: use a positive"),
    ("render-nothing", "render {root}/empty", 2, "cams.parquet: no such file"),
    ("render-not-parquet", "render {root}/notparquet", 2, "not a cams.parquet written by 'camexport explain'"),
    ("render-format", "render {root}/othergraph --format gif", 2, "--format gif: use one of jpg, png, webp"),
    ("render-alpha", "render {root}/othergraph --alpha -1", 2, "--alpha -1.0: use a value between 0 and 1"),
]
OTHERS = [
    ("evaluate-steps", "evaluate {graph} {root}/photos --steps 1", 2, "--steps 1: use 2 or more"),
    ("evaluate-metric", "evaluate {graph} {root}/photos --metrics iou", 2, "--metrics iou: 'iou' is not a metric"),
    ("evaluate-metric-empty", "evaluate {graph} {root}/photos --metrics ,", 2, "no metric named"),
    ("evaluate-out-folder", "evaluate {graph} {root}/photos --out {root}", 2, "is a directory"),
    ("evaluate-out-under-file", "evaluate {graph} {root}/photos --out {root}/afile/s.json", 2, "cannot write it"),
    ("evaluate-no-images", "evaluate {graph} {root}/empty", 2, "no images found"),
    ("evaluate-class", "evaluate {graph} {root}/photos --class cow", 2, "--class cow: not a label"),
    ("evaluate-graph", "evaluate {root}/foreign.onnx {root}/photos", 2, "not a graph built by camexport"),
    ("layers-model", "layers resnet19", 2, "unknown model 'resnet19'"),
    ("layers-size", "layers resnet18 --image-size 0", 2, "--image-size takes H or H W"),
    ("models-pattern", "models 'zzz*'", 2, "no model matches 'zzz*'"),
    ("bench-runs", "bench resnet18 --runs 1", 2, "--runs 1: use 3 or more"),
    ("bench-threads", "bench resnet18 --threads -2", 2, "--threads -2: use 0 or more"),
    ("bench-contenders", "bench resnet18 --contenders z_magic", 2, "--contenders z_magic: unknown"),
    ("bench-batch-sizes", "bench resnet18 --batch-sizes 0", 2, "--batch-sizes [0]: use positive integers"),
    ("samples-into-a-file", "samples {root}/afile", 2, "cannot write the sample photos"),
    ("unknown-command", "frobnicate", 2, "invalid choice: 'frobnicate'"),
]
MATRIX = BUILD + EXPLAIN + OTHERS


def test_the_matrix_holds_sixty_kinds_or_more() -> None:
    assert len(MATRIX) >= 60 and len({case[0] for case in MATRIX}) == len(MATRIX)


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "code", "fragment"), [case[1:] for case in MATRIX], ids=[c[0] for c in MATRIX])
def test_a_bad_input_is_one_line(kit, tmp_path: Path, monkeypatch, capsys, argv: str, code: int, fragment: str):
    monkeypatch.chdir(tmp_path)  # default outputs (models/, explained/) would land here
    args = [a.strip("'").format(root=kit["root"], graph=kit["graph"]) for a in argv.split()]
    before = sorted(kit["root"].rglob("*"))
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == code, err
    assert "Traceback" not in err and err.endswith("\n")
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("camexport: error: ") and fragment in last, err
    assert all(line.startswith(("error: ", "camexport: error: ")) for line in err.rstrip("\n").splitlines()), err
    assert list(tmp_path.iterdir()) == []  # no file, no folder
    assert sorted(kit["root"].rglob("*")) == before  # nothing written beside the inputs either
