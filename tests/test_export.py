"""Graph rewrites of the export step."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from camexport.export import fold_broadcast_matmuls


def test_matmul_with_an_expanded_weight_uses_broadcasting() -> None:
    weight = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Expand", ["w", "shape"], ["w3"]),
        helper.make_node("MatMul", ["x", "w3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 5])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([3, 4, 5], dtype=np.int64), "shape"),
        ],
    )
    x = np.random.default_rng(1).standard_normal((3, 2, 4)).astype(np.float32)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert fold_broadcast_matmuls(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6)
    np.testing.assert_allclose(after, x @ weight, rtol=1e-5)
