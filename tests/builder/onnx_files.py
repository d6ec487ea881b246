"""ONNX files the suite writes, as teams hold them: torchvision and timm exports at several opsets, a Keras-style
NHWC file (tf2onnx's Transposes), a Caffe2-era file (opset 9, weights in Constant and ConstantOfShape nodes, LRN,
Dropout, a Softmax output, a fixed batch of 1), a token graph; and small files that break one rule each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def export(module: torch.nn.Module, path: Path, size: int, opset: int) -> Path:
    example = (torch.randn(1, 3, size, size),)
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(module.eval(), example, str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False)  # fmt: skip
    return path


def weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.NodeProto:
    """A weight as a Constant node, as Caffe2-era files hold them."""
    value = numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)
    return helper.make_node("Constant", [], [name], value=value)


BIAS = np.array([0.05], np.float32)


def caffe2_era(path: Path) -> Path:
    rng = np.random.default_rng(9)
    nodes = [
        weight("w1", (8, 3, 3, 3), rng),
        weight("w2", (16, 8, 3, 3), rng),
        weight("fc", (5, 16), rng),
        helper.make_node("Constant", [], ["fc_bias_shape"], value=numpy_helper.from_array(np.array([5], np.int64))),
        # a weight as a ConstantOfShape, which onnx2torch cannot read
        helper.make_node("ConstantOfShape", ["fc_bias_shape"], ["fc_bias"], value=numpy_helper.from_array(BIAS)),
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


def keras_style(
    path: Path, outputs: int = 1, image: tuple = ("N", 32, 32, 3), pixels: bool = False, opset: int = 18, **save
) -> Path:
    """NHWC in, a Transpose to NCHW for the convolutions and back, as tf2onnx writes Keras models; ``pixels``: uint8
    in, cast and scaled to [-1, 1] inside (a Keras preprocessing layer); ``save``: onnx.save's options (external
    data)."""
    rng = np.random.default_rng(4)
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.1).astype(np.float32), "k1"),
        numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(np.float32), "k2"),
        numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.1).astype(np.float32), "dense"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
    ]
    nodes = [helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2])]
    if pixels:
        weights.append(numpy_helper.from_array(np.float32(1 / 127.5), "scale"))
        weights.append(numpy_helper.from_array(np.float32(1), "one"))
        nodes = [
            helper.make_node("Cast", ["input_1"], ["floats"], to=FLOAT),
            helper.make_node("Mul", ["floats", "scale"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "one"], ["centred"]),
            helper.make_node("Transpose", ["centred"], ["nchw"], perm=[0, 3, 1, 2]),
        ]
    nodes += [
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
    kind = TensorProto.UINT8 if pixels else FLOAT
    graph = helper.make_graph(nodes, "keras", [helper.make_tensor_value_info("input_1", kind, list(image))], outs,
                              initializer=weights)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path), **save)
    return path


NEWEST_OPSET = onnx.defs.onnx_opset_version()  # the newest the installed onnx knows


def tiny_vit(classes: int = 5) -> torch.nn.Module:
    """A two-block torchvision ViT on 32 x 32 images (16 tokens of 8 x 8 patches and a class token), its head
    drawn so that its gradients are not zero (torchvision zero-initialises it)."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=classes
    )
    torch.nn.init.normal_(vit.heads.head.weight, std=0.5)
    return vit.eval()


def write_files(folder: Path) -> dict[str, Path]:
    """The suite's good files, by name."""
    import timm

    torch.manual_seed(0)
    mobilenet = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7)
    return {
        "resnet18": export(torchvision.models.resnet18(), folder / "resnet18.onnx", 224, 17),
        "squeezenet": export(torchvision.models.squeezenet1_1(), folder / "squeezenet.onnx", 224, 11),
        "squeezenet-opset7": export(torchvision.models.squeezenet1_1(num_classes=6), folder / "sq7.onnx", 64, 7),
        "timm-mobilenetv3": export(mobilenet, folder / "mobilenetv3.onnx", 64, 14),
        "vit": export(tiny_vit(), folder / "vit.onnx", 32, 17),
        "keras": keras_style(folder / "keras.onnx"),
        "keras-uint8-external-newest": keras_style(  # uint8 pixels in, weights in w.bin, the newest opset
            folder / "pixels.onnx",
            pixels=True,
            opset=NEWEST_OPSET,
            save_as_external_data=True,
            location="w.bin",
            size_threshold=100,  # the weights in w.bin, the int64 axes inline (onnxruntime reads them for its shapes)
        ),
        "caffe2": caffe2_era(folder / "caffe2.onnx"),
    }
