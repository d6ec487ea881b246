"""Each op of the ONNX import table, alone in a small file, against onnxruntime running the same file: the known
answer for the importer's forward pass (its backward pass is torch's autograd of these ops, checked on whole files by
finite differences in test_onnx_build.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from camexport.builder.onnx_file import OnnxImage
from camexport.builder.onnx_import import OnnxModule

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(3)


def _const(name: str, value) -> onnx.TensorProto:
    array = np.asarray(value)
    return numpy_helper.from_array(array.astype(np.float32) if array.dtype.kind == "f" else array, name)


def _weights(shape: tuple[int, ...], name: str = "w") -> onnx.TensorProto:
    return _const(name, RNG.standard_normal(shape) * 0.3)


# name: (nodes writing "y" from "x" [N, 4, 6, 6], initializers, opset)
CASES = {
    "conv-same-upper": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
                        [_weights((5, 4, 3, 3))], 11),
    "conv-asymmetric-grouped": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 1, 2], group=2,
                                                  dilations=[1, 2])],
                                [_weights((6, 2, 3, 3)), _weights((6,), "b")], 13),
    "maxpool-ceil-pads": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                            pads=[1, 0, 0, 1], ceil_mode=1)], [], 12),
    "averagepool-exclude-pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                  pads=[1, 1, 0, 0], count_include_pad=0)], [], 11),
    "averagepool-same-lower": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2],
                                                 auto_pad="SAME_LOWER")], [], 7),
    "globalmaxpool": ([helper.make_node("GlobalMaxPool", ["x"], ["y"])], [], 13),
    "leakyrelu-prelu": ([helper.make_node("LeakyRelu", ["x"], ["l"], alpha=0.2),
                         helper.make_node("PRelu", ["l", "s"], ["y"])], [_const("s", RNG.random((4, 1, 1)))], 13),
    "clip-11": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [_const("lo", -0.5), _const("hi", 0.7)], 11),
    "clip-7": ([helper.make_node("Clip", ["x"], ["y"], min=-0.3, max=0.4)], [], 7),
    "hardsigmoid-hardswish-tanh": ([helper.make_node("HardSigmoid", ["x"], ["a"], alpha=0.3),
                                    helper.make_node("HardSwish", ["a"], ["b"]),
                                    helper.make_node("Tanh", ["b"], ["y"])], [], 14),
    "erf-gelu-sigmoid": ([helper.make_node("Erf", ["x"], ["a"]), helper.make_node("Gelu", ["a"], ["b"]),
                          helper.make_node("Sigmoid", ["b"], ["y"])], [], 20),
    "gelu-tanh": ([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], [], 20),
    "batchnorm-lrn": ([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"]),
                            helper.make_node("LRN", ["n"], ["y"], size=5, alpha=0.01, beta=0.6, bias=1.5)],
                           [_weights((4,), "g"), _weights((4,), "b"), _weights((4,), "m"),
                            _const("v", RNG.random(4) + 0.5)], 13),
    "split-concat-sum": ([helper.make_node("Split", ["x", "parts"], ["a", "b"], axis=1),
                          helper.make_node("Sum", ["a", "b", "a"], ["s"]),
                          helper.make_node("Concat", ["s", "b"], ["y"], axis=1)], [_const("parts", [2, 2])], 13),
    "split-attribute": ([helper.make_node("Split", ["x"], ["a", "b"], axis=2, split=[2, 4]),
                         helper.make_node("Mul", ["a", "a"], ["y"])], [], 11),
    "pad-reflect-slice-steps": ([helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
                                 helper.make_node("Slice", ["p", "st", "en", "ax", "sp"], ["y"])],
                                [_const("pads", [0, 0, 1, 2, 0, 0, 2, 1]), _const("st", [7, 0]),
                                 _const("en", [-100, 9]), _const("ax", [2, 3]), _const("sp", [-2, 3])], 13),
    "pad-constant-2": ([helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 0, 0, 0, 0, 2], value=0.5)], [], 2 + 7),
    "resize-linear-half-pixel": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
                                 [_const("scales", [1.0, 1.0, 2.0, 1.5])], 13),
    "resize-nearest-sizes": ([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                                               coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                             [_const("sizes", [2, 4, 12, 18])], 13),
    "upsample-9": ([helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")],
                   [_const("scales", [1.0, 1.0, 2.0, 2.0])], 9),
    "softmax-13-logsoftmax": ([helper.make_node("Softmax", ["x"], ["a"], axis=1),
                               helper.make_node("LogSoftmax", ["a"], ["y"])], [], 13),
    "softmax-11-flattened": ([helper.make_node("Softmax", ["x"], ["y"], axis=2)], [], 11),
    "reducemean-18-input-axes": ([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)],
                                 [_const("axes", [1, 3])], 18),
    "reduce-13-attribute": ([helper.make_node("ReduceMax", ["x"], ["a"], axes=[2]),
                             helper.make_node("ReduceSum", ["a", "axes"], ["y"])], [_const("axes", [-1])], 13),
    "layernorm-transpose-matmul": ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                                    helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], epsilon=1e-3),
                                    helper.make_node("MatMul", ["n", "m"], ["y"])],
                                   [_weights((4,), "g"), _weights((4,), "b"), _weights((4, 3), "m")], 17),
    "flatten-gemm-transposed": ([helper.make_node("Flatten", ["x"], ["f"], axis=1),
                                 helper.make_node("Gemm", ["f", "m", "c"], ["y"], alpha=0.5, beta=2.0)],
                                [_weights((144, 3), "m"), _weights((3,), "c")], 13),
    "shapes-reshape-expand": ([helper.make_node("Shape", ["x"], ["s"]),
                               helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                               helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
                               helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0),
                               helper.make_node("Reshape", ["x", "shape"], ["r"]),
                               helper.make_node("Shape", ["r"], ["rs"]),
                               helper.make_node("Expand", ["one", "rs"], ["e"]),
                               helper.make_node("Add", ["r", "e"], ["y"])],
                              [_const("zero", np.int64(0)), _const("zero1", [0]), _const("rest", [-1, 9]),
                               _const("one", [[1.5]])], 13),
    "squeeze-unsqueeze-dropout": ([helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3]),
                                   helper.make_node("Squeeze", ["m"], ["s"], axes=[3, 2]),
                                   helper.make_node("Dropout", ["s"], ["d"], ratio=0.3),
                                   helper.make_node("Unsqueeze", ["d"], ["y"], axes=[-1])], [], 11),
    "pow-sqrt-div-sub-neg-abs-exp": ([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["r"]),
                                      helper.make_node("Pow", ["r", "three"], ["p"]),
                                      helper.make_node("Div", ["p", "two"], ["d"]),
                                      helper.make_node("Neg", ["d"], ["n"]), helper.make_node("Exp", ["n"], ["e"]),
                                      helper.make_node("Sub", ["e", "x"], ["s"]),
                                      helper.make_node("Reciprocal", ["three"], ["inv"]),
                                      helper.make_node("Max", ["s", "inv", "x"], ["mx"]),
                                      helper.make_node("Min", ["mx", "two"], ["y"])],
                                     [_const("three", 3.0), _const("two", 2.0)], 13),
}  # fmt: skip


def _file(name: str) -> onnx.ModelProto:
    """The case's nodes, their ``y`` passed on by an Identity (a final Softmax would be dropped as a classifier's)."""
    nodes, initializers, opset = CASES[name]
    nodes = [*(_renamed(node) for node in nodes), helper.make_node("Identity", ["y0"], ["y"])]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", FLOAT, None)], initializer=initializers)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _renamed(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.output[:] = ["y0" if name == "y" else name for name in node.output]
    return copy


@pytest.mark.parametrize("name", list(CASES))
def test_an_op_computes_what_onnxruntime_computes(name: str) -> None:
    model = _file(name)
    x = np.random.default_rng(7).standard_normal((2, 4, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module = OnnxModule(model, OnnxImage("x", "float32", "NCHW", 4, 6, 6), "y", name)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
