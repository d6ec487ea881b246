"""``camexport layers FILE.onnx``: the candidate layers of ONNX files the suite writes — torchvision exports at
opsets 11 and 17, a Keras-style NHWC file, a Caffe2-era file (opset 9, weights in Constant nodes, LRN, Dropout, a
Softmax output), a token graph — with the default each should get; and the files ``layers`` and ``build`` refuse
(not ONNX, cut short, external data missing, no image input, several outputs, an op it cannot import, quantized, a
batch held in its shapes, opset 6) and the options a file does not take, one line each, exit 2, nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_files import keras_style
from support import assert_one_line

from camexport.builder.onnx_file import describe_onnx_layers, image_input, probe_tensors, read_onnx

FLOAT = TensorProto.FLOAT


@pytest.fixture(scope="module")
def files(onnx_files: dict[str, Path]) -> dict[str, Path]:
    return onnx_files


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
    path = keras_style(tmp_path / "any.onnx", image=("N", "H", "W", 3))
    model = read_onnx(path)
    shapes = {t.name: t.shape for t in probe_tensors(model, image_input(model, path), (40, 24))}
    assert shapes["nhwc"] == (1, 20, 12, 8) and shapes["dense_1"] == (1, 4)


def _single(path: Path, nodes: list, opset: int = 13, inits: list | None = None, batch: object = "N") -> Path:
    """A file of one image input [batch, 3, 8, 8] and one logits output [batch, 4]."""
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", FLOAT, [batch, 4])], initializer=inits or [],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


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
    keras_style(root / "two.onnx", outputs=2)
    w = numpy_helper.from_array(np.ones((4, 3, 8, 8), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    _single(root / "topk.onnx", [conv, helper.make_node("Flatten", ["c"], ["f"]),
            helper.make_node("Hardmax", ["f"], ["y"], name="pick")], inits=[w])  # fmt: skip
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")
    _single(root / "qdq.onnx", [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
            helper.make_node("Conv", ["d", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["y"])],
            inits=[w, scale, zero])  # fmt: skip
    _single(root / "fixed.onnx", [conv, helper.make_node("Reshape", ["c", "shape"], ["y"])],
            inits=[w, _int64("shape", [1, 4])], batch=1)  # fmt: skip
    _single(root / "old.onnx", [conv, helper.make_node("Flatten", ["c"], ["y"])], opset=6, inits=[w])
    keras_style(root / "keras.onnx")
    return {"root": root, "caffe2": files["caffe2"]}


BAD = [
    ("missing", "layers {root}/none.onnx", "none.onnx: no such file"),
    ("not-onnx", "layers {root}/notes.onnx", "notes.onnx: not an ONNX model"),
    ("truncated", "layers {root}/cut.onnx", "cut.onnx: not an ONNX model"),
    ("external-data-missing", "layers {root}/external.onnx", "external data file, weights.bin, which is not beside"),
    ("no-image-input", "layers {root}/table.onnx", "its input is x [N, 10], not an image"),
    ("several-outputs", "layers {root}/two.onnx", "2 outputs (dense_1 [N, 4], pooled [N, 8])"),
    ("unsupported-op", "build {root}/topk.onnx", "node 'pick' is a Hardmax (opset 13), which camexport cannot import"),
    ("quantized", "build {root}/qdq.onnx", "the model is quantized"),
    ("batch-in-shapes", "build {root}/fixed.onnx", "its batch is fixed at 1 and its computation holds it"),
    ("opset-6", "build {root}/old.onnx", "opset 6; camexport imports opset 7 and later"),
    ("weights", "build {root}/keras.onnx --weights random", "--weights random: an ONNX file holds its own weights"),
    ("half-preprocessing", "build {root}/keras.onnx --mean 0.5 0.5 0.5", "give both --mean and --std"),
    ("onto-itself", "build {root}/keras.onnx --output {root}/keras.onnx", "that is the model file itself"),
    ("other-size", "build {root}/keras.onnx --image-size 48", "cannot run on 48x48 images (the file takes 32x32"),
    ("dynamic-size", "build {root}/keras.onnx --dynamic-size", "a graph from an ONNX file has one image size"),
]


@pytest.mark.parametrize(("argv", "fragment"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_file_is_one_line(bad, tmp_path: Path, monkeypatch, capsys, argv: str, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line(argv, 2, fragment, bad, tmp_path, capsys)


@pytest.mark.parametrize(
    ("shape", "size", "kind"),
    [
        ((1, 200, 2, 96), (48, 192), "map"),  # PP-OCR's text-direction classifier: strides 24 and 2
        ((1, 16, 16, 8), (32, 32), "map"),  # NHWC, the same stride both ways
        ((1, 8, 5, 7), (32, 32), "other"),  # strides that differ and divide nothing: no grid of the image
        ((1, 512, 1, 1), (224, 224), "other"),  # pooled
        ((1, 197, 768), (224, 224), "tokens"),
    ],
)
def test_what_counts_as_a_map(shape: tuple, size: tuple, kind: str) -> None:
    from camexport.builder.onnx_file import _kind

    assert _kind(shape, *size) == kind
