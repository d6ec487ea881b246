"""Which nodes of a graph have no kernel in an onnxruntime execution provider.

A node that its provider has no kernel for runs on the CPU instead, silently, and its tensors travel between the
devices on every run. onnxruntime registers each kernel for an operator, a range of opset versions and, per
type constraint of the operator's schema (``T``, ``T1``, ``I``...), the element types it accepts; its
``docs/OperatorKernels.md`` lists them. ``data/onnxruntime-cuda-kernels.tsv`` holds the CUDA provider's rows (the
onnxruntime commit they come from is on its first line: domain, operator, first and last opset, constraints).

A node is covered when some row of its domain and operator spans the version of the operator's schema that the
graph's opset selects (onnxruntime registers kernels by that ``since_version``) and admits, for every type
constraint the row names, the element type the node binds it to: each input's and output's type from shape
inference, matched to the schema's formal parameter (the last formal one repeats for variadic inputs). ``Constant``
nodes need no kernel (onnxruntime turns them into initializers when it loads the graph). The check reads the table;
it does not see a kernel's own run-time limits (an attribute value a kernel refuses), which only a run on the
device shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnx
from onnx import defs, shape_inference

CUDA_KERNELS = Path(__file__).with_name("data") / "onnxruntime-cuda-kernels.tsv"
_DEFAULT_DOMAIN = "ai.onnx"


@dataclass(frozen=True)
class KernelRow:
    """One registered kernel: its opset range (``last`` None: open) and the types per constraint name."""

    since: int
    last: int | None
    types: dict[str, frozenset[str]]

    def spans(self, version: int) -> bool:
        return self.since <= version and (self.last is None or version <= self.last)

    def admits(self, binding: dict[str, str]) -> bool:
        return all(binding[name] in types for name, types in self.types.items() if name in binding)


@dataclass(frozen=True)
class Uncovered:
    """A node without a kernel: its name, operator, the schema version its opset selects, its types, and why."""

    node: str
    op: str
    version: int
    binding: dict[str, str]
    reason: str

    def __str__(self) -> str:
        types = ", ".join(f"{k}={v}" for k, v in sorted(self.binding.items()))
        return f"{self.op} (opset {self.version}{', ' + types if types else ''}) node {self.node!r}: {self.reason}"


@cache
def kernel_table(path: Path = CUDA_KERNELS) -> dict[tuple[str, str], tuple[KernelRow, ...]]:
    """``{(domain, operator): rows}`` from a table in the format of ``data/onnxruntime-cuda-kernels.tsv``."""
    table: dict[tuple[str, str], list[KernelRow]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        domain, op, since, last, constraints = line.split("\t")
        types = {}
        for constraint in filter(None, constraints.split("; ")):
            name, allowed = constraint.split("=", 1)
            types[name] = frozenset(allowed.split(","))
        table.setdefault((domain, op), []).append(KernelRow(int(since), int(last) if last else None, types))
    return {key: tuple(rows) for key, rows in table.items()}


def source_commit(path: Path = CUDA_KERNELS) -> str:
    """The table's first line: where its rows come from."""
    return path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")


def uncovered_nodes(model: onnx.ModelProto, table_path: Path = CUDA_KERNELS) -> list[Uncovered]:
    """The nodes of ``model`` (its main graph) that no kernel of the table covers."""
    table = kernel_table(table_path)
    inferred = shape_inference.infer_shapes(model)
    types = _element_types(inferred.graph)
    opsets = {(o.domain or _DEFAULT_DOMAIN): o.version for o in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = node.domain or _DEFAULT_DOMAIN
        if (domain, node.op_type) == (_DEFAULT_DOMAIN, "Constant"):
            continue
        try:
            schema = defs.get_schema(node.op_type, opsets.get(domain, 1), "" if domain == _DEFAULT_DOMAIN else domain)
        except defs.SchemaError:
            missing.append(Uncovered(node.name, node.op_type, opsets.get(domain, 0), {}, "no ONNX schema"))
            continue
        binding = _binding(node, schema, types)
        rows = [row for row in table.get((domain, node.op_type), ()) if row.spans(schema.since_version)]
        reason = None
        if not rows:
            reason = "no kernel for this operator at this opset"
        elif not any(row.admits(binding) for row in rows):
            reason = "no kernel for these element types"
        if reason:
            missing.append(Uncovered(node.name, node.op_type, schema.since_version, binding, reason))
    return missing


def _element_types(graph: onnx.GraphProto) -> dict[str, str]:
    """Each tensor's element type name as the kernel table spells it (``float``, ``int64``, ``bool``...)."""
    types = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = _type_name(value.type.tensor_type.elem_type)
    types.update({tensor.name: _type_name(tensor.data_type) for tensor in graph.initializer})
    for node in graph.node:  # Constant outputs, which shape inference may leave out of value_info
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            types.setdefault(node.output[0], _type_name(node.attribute[0].t.data_type))
    return types


def _type_name(code: int) -> str:
    return onnx.TensorProto.DataType.Name(code).lower()


def _binding(node: onnx.NodeProto, schema: defs.OpSchema, types: dict[str, str]) -> dict[str, str]:
    """Type constraint name → the element type the node gives it (from its inputs, then its outputs)."""
    binding: dict[str, str] = {}
    for formals, actuals in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for i, name in enumerate(actuals):
            if not formals or not name or name not in types:
                continue
            formal = formals[min(i, len(formals) - 1)]
            if not formal.type_str.startswith("tensor("):  # a constraint name such as T, not a fixed type
                binding.setdefault(formal.type_str, types[name])
    return binding
