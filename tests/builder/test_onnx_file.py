"""``camexport layers FILE.onnx``: the candidate layers of ONNX files the suite writes — torchvision exports at
opsets 11 and 17, a Keras-style NHWC file, a Caffe2-era file (opset 9, weights in Constant nodes, LRN, Dropout, a
Softmax output), a token graph — with the default each should get; and bad files, one line each."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from support import assert_one_line

from camexport.builder.onnx_file import describe_onnx_layers, image_input, probe_tensors, read_onnx

FLOAT = TensorProto.FLOAT


def _export(module: torch.nn.Module, path: Path, size: int, opset: int) -> Path:
    example = (torch.randn(1, 3, size, size),)
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(module.eval(), example, str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False)  # fmt: skip
    return path


def _weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.NodeProto:
    """A weight as a Constant node, as Caffe2-era files hold them."""
    value = numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)
    return helper.make_node("Constant", [], [name], value=value)


def _caffe2_era(path: Path) -> Path:
    rng = np.random.default_rng(9)
    nodes = [
        _weight("w1", (8, 3, 3, 3), rng),
        _weight("w2", (16, 8, 3, 3), rng),
        _weight("fc", (5, 16), rng),
        _weight("fc_bias", (5,), rng),
        helper.make_node("Conv", ["data", "w1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("LRN", ["relu1"], ["norm1"], size=3),
        helper.make_node("MaxPool", ["norm1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Dropout", ["pool1"], ["drop1"], ratio=0.5),
        helper.make_node("Conv", ["drop1", "w2"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("AveragePool", ["relu2"], ["pool2"], kernel_shape=[16, 16]),
        helper.make_node("Flatten", ["pool2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["scores"], transB=1),
        helper.make_node("Softmax", ["scores"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "caffe2", [helper.make_tensor_value_info("data", FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("prob", FLOAT, [1, 5])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)]), str(path))
    return path


def _keras_style(path: Path, outputs: int = 1, image: tuple = ("N", 32, 32, 3)) -> Path:
    """NHWC in, a Transpose to NCHW for the convolutions and back, as tf2onnx writes Keras models."""
    rng = np.random.default_rng(4)
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.1).astype(np.float32), "k1"),
        numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(np.float32), "k2"),
        numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.1).astype(np.float32), "dense"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "k1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "k2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["nhwc", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "dense"], ["dense_1"]),
    ]
    outs = [helper.make_tensor_value_info("dense_1", FLOAT, ["N", 4])]
    if outputs == 2:
        outs.append(helper.make_tensor_value_info("pooled", FLOAT, ["N", 8]))
    graph = helper.make_graph(nodes, "keras", [helper.make_tensor_value_info("input_1", FLOAT, list(image))], outs,
                              initializer=weights)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_files")
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    return {
        "resnet18": _export(torchvision.models.resnet18(), folder / "resnet18.onnx", 224, 17),
        "squeezenet": _export(torchvision.models.squeezenet1_1(), folder / "squeezenet.onnx", 224, 11),
        "vit": _export(vit, folder / "vit.onnx", 32, 17),
        "keras": _keras_style(folder / "keras.onnx"),
        "caffe2": _caffe2_era(folder / "caffe2.onnx"),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "default", "shape", "writer"),
    [
        ("resnet18", "/layer4/layer4.1/relu_1/Relu_output_0", "[N, 512, 7, 7]", "Relu"),  # torch's layer4
        ("squeezenet", "/features/features.12/Concat_output_0", "[N, 512, 13, 13]", "Concat"),  # not class maps
        (
            "vit",
            "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0",
            "[N, 17, 16]",
            "LayerNormalization",
        ),
        ("keras", "nhwc", "[N, 16, 16, 8]", "Transpose"),
        ("caffe2", "relu2", "[N, 16, 16, 16]", "Relu"),
    ],
)
def test_the_default_layer_of_each_kind_of_file(files, name: str, default: str, shape: str, writer: str) -> None:
    lines = describe_onnx_layers(files[name])
    (marked,) = [line for line in lines if line.endswith("default")]
    assert re.split(r"\s{2,}", marked) == [default, shape, writer, "default"]


def test_the_listing_reads_layouts_and_skips_attention_scores(files) -> None:
    assert image_input(read_onnx(files["keras"]), "k").layout == "NHWC"
    vit = describe_onnx_layers(files["vit"])
    assert not any("Softmax" in line for line in vit)  # [N, 2, 17, 17] scores are neither maps nor tokens
    assert (
        describe_onnx_layers(files["caffe2"])[-1]
        == "image input data: NCHW, 3 channel(s), float32; logits prob: 5 classes"
    )
    everything = describe_onnx_layers(files["caffe2"], everything=True)
    assert any(line.startswith("flat ") and line.endswith("not a map or tokens") for line in everything)


def test_a_symbolic_size_runs_at_the_size_given(tmp_path: Path) -> None:
    path = _keras_style(tmp_path / "any.onnx", image=("N", "H", "W", 3))
    model = read_onnx(path)
    shapes = {t.name: t.shape for t in probe_tensors(model, image_input(model, path), (40, 24))}
    assert shapes["nhwc"] == (1, 20, 12, 8) and shapes["dense_1"] == (1, 4)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, files) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_onnx")
    (root / "notes.onnx").write_text("not a model")
    whole = files["caffe2"].read_bytes()
    (root / "cut.onnx").write_bytes(whole[: len(whole) // 2])
    model = onnx.load(str(files["keras"]))
    onnx.save(model, str(root / "external.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (root / "weights.bin").unlink()
    table = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "t", [helper.make_tensor_value_info("x", FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 10])],
    )  # fmt: skip
    onnx.save(helper.make_model(table), str(root / "table.onnx"))
    _keras_style(root / "two.onnx", outputs=2)
    return {"root": root, "caffe2": files["caffe2"]}


BAD = [
    ("missing", "layers {root}/none.onnx", "none.onnx: no such file"),
    ("not-onnx", "layers {root}/notes.onnx", "notes.onnx: not an ONNX model"),
    ("truncated", "layers {root}/cut.onnx", "cut.onnx: not an ONNX model"),
    ("external-data-missing", "layers {root}/external.onnx", "external data file, weights.bin, which is not beside"),
    ("no-image-input", "layers {root}/table.onnx", "its input is x [N, 10], not an image"),
    ("several-outputs", "layers {root}/two.onnx", "2 outputs (dense_1 [N, 4], pooled [N, 8])"),
    ("build-from-onnx", "build {caffe2}", "an ONNX file; this camexport builds from PyTorch models only"),
]


@pytest.mark.parametrize(("argv", "fragment"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_file_is_one_line(bad, tmp_path: Path, monkeypatch, capsys, argv: str, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line(argv, 2, fragment, bad, tmp_path, capsys)
