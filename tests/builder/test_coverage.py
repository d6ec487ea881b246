"""camexport.builder.coverage on hand-made graphs with known answers: the operator, its opset range and its element
types each decide whether onnxruntime's CUDA provider has a kernel (the table in camexport/builder/data)."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from camexport.builder.coverage import CUDA_KERNELS, kernel_table, source_commit, uncovered_nodes

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _model(op: str, dtype: int, opset: int, out_dtype: int | None = None, **attributes: object):
    node = helper.make_node(op, ["x"], ["y"], name=f"the_{op.lower()}", **attributes)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["unused"], value_float=1.0), node],
        "g",
        [helper.make_tensor_value_info("x", dtype, [2, 3])],
        [helper.make_tensor_value_info("y", dtype if out_dtype is None else out_dtype, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(
    ("op", "dtype", "opset", "out", "reason"),
    [
        ("Relu", FLOAT, 18, None, None),
        ("ArgMax", FLOAT, 18, INT64, None),
        ("ArgMax", INT64, 18, INT64, "no kernel for these element types"),  # CUDA's ArgMax: float types only
        ("Neg", INT64, 18, None, None),
        ("Det", FLOAT, 18, None, "no kernel for this operator at this opset"),  # no CUDA kernel at all
        ("Mish", FLOAT, 18, None, "no kernel for this operator at this opset"),
    ],
)
def test_known_answers(op: str, dtype: int, opset: int, out: int | None, reason: str | None) -> None:
    missing = uncovered_nodes(_model(op, dtype, opset, out))
    if reason is None:
        assert missing == []
    else:
        (only,) = missing  # the Constant node never counts
        assert (only.node, only.op, only.reason) == (f"the_{op.lower()}", op, reason)
        assert str(only).startswith(f"{op} (opset ")


def test_an_opset_selects_its_schema_version() -> None:
    """Equal at opset 10 takes only bool and integer types on CUDA (float from opset 11): a float Equal is
    uncovered at 10, covered at 11."""

    def equal(opset: int):
        graph = helper.make_graph(
            [helper.make_node("Equal", ["x", "x"], ["y"], name="eq")],
            "g",
            [helper.make_tensor_value_info("x", FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.BOOL, [2])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    assert [u.version for u in uncovered_nodes(equal(10))] == [7]
    assert uncovered_nodes(equal(11)) == []


def test_the_table_says_where_it_comes_from() -> None:
    assert source_commit().startswith("onnxruntime docs/OperatorKernels.md, CUDAExecutionProvider, commit ")
    table = kernel_table(CUDA_KERNELS)
    assert len(table) > 200 and ("ai.onnx", "Conv") in table and ("ai.onnx", "NonMaxSuppression") not in table
