"""Export: the traced explainer becomes one ONNX graph with the inputs, outputs and metadata of its
:class:`~camexport.contract.GraphSpec`.

``image`` and ``target_class`` in (the latter required, [N] or [1], broadcast to the batch with ``Expand``; see the
contract versions in :mod:`camexport.contract`), then the task's inputs; the outputs by the spec's names with a
symbolic ``batch``; the spec as metadata props; then ``onnx.checker`` with ``full_check``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from onnx import helper, numpy_helper

from camexport._util import first_line, quiet
from camexport.builder.detectors import nms_to_onnx
from camexport.builder.tracing import ExplainerModule, TracedExplainer, example_inputs
from camexport.contract import (
    BATCH_DIM,
    IMAGE,
    NONDETERMINISTIC_OPS,
    TARGET_CLASS,
    TARGET_DIM,
    GraphSpec,
    Signature,
    TensorSpec,
)
from camexport.errors import UnsupportedModelError, UserError

MIN_OPSET = 18
_EXPANDED_TARGET = "target_class_expanded"
_FORBIDDEN_OPS = {"Gradient"}


def check_opset(opset: int | None) -> None:
    """Raises UserError for an opset outside what the exporter and the installed onnx support."""
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise UserError(
            f"opset={opset}: camexport writes opsets {MIN_OPSET} to {newest} (the installed onnx's newest); "
            f"use opset={MIN_OPSET} or leave `opset` out"
        )


def to_onnx(traced: TracedExplainer, opset: int | None = None) -> onnx.ModelProto:
    """Exports the traced graph with the spec's inputs and outputs, a dynamic batch dimension and, for a spec of any
    image size, dynamic height and width.

    Raises:
        UserError: ``opset`` is below :data:`MIN_OPSET`.
        UnsupportedModelError: the exporter cannot lower an op of the graph.
    """
    check_opset(opset)
    spec = traced.spec
    batch = torch.export.Dim(BATCH_DIM, min=1)  # one symbol: target_class is exported at the batch's size

    def dims(tensor: TensorSpec) -> dict[int, object]:
        sizes = [spec.axis(name) for name in tensor.axes]
        return {
            i: batch if size in (BATCH_DIM, TARGET_DIM) else torch.export.Dim.DYNAMIC
            for i, size in enumerate(sizes)
            if isinstance(size, str)
        }

    try:
        with quiet():
            program = torch.export.export(
                ExplainerModule(traced),
                tuple(example_inputs(spec)),
                dynamic_shapes={"inputs": tuple(dims(tensor) for tensor in spec.inputs)},
            )
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=opset,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                optimize=True,
                verbose=False,
                custom_translation_table={torch.ops.camexport.batched_nms.default: nms_to_onnx},
            )
    except UserError:
        raise
    except Exception as exc:  # the exporter's failures have many types; report them as one
        raise UnsupportedModelError(f"the ONNX exporter failed on this model/layer: {first_line(exc)}") from None
    return onnx_program.model_proto


def _set_dims(value_info: onnx.ValueInfoProto, dims: Mapping[int, str]) -> None:
    shape = value_info.type.tensor_type.shape
    for index, name in dims.items():
        dim = shape.dim[index]
        dim.ClearField("dim_value")
        dim.dim_param = name


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return len(tensor.dims)
    for info in [*graph.value_info, *graph.input]:
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _swaps_last_two(node: onnx.NodeProto) -> bool:
    """A Transpose whose ``perm`` keeps the leading axes and swaps the last two ([0, 2, 1], ...)."""
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [])
    return len(perm) >= 2 and perm == [*range(len(perm) - 2), len(perm) - 1, len(perm) - 2]


def fold_broadcast_matmuls(graph: onnx.GraphProto) -> int:
    """``MatMul(x, Expand(W2d, [B, K, N]))`` → ``MatMul(x, W2d)``: the same result by broadcasting.

    Also ``MatMul(x, Transpose(Expand(W2d), perm=[0, 2, 1]))`` → ``MatMul(x, Transpose(W2d))``.

    ``F.linear`` on a 3-D non-contiguous input (``nn.MultiheadAttention``, sequence first) traces as a
    batched matmul with the weight expanded along the sequence, and its backward as the transposed
    expand. In PyTorch that expand is a free view; in ONNX it materialises a copy of the weight per row
    (1.4 GB for one ViT-B/16 projection, 27 GB for ViT-H/14 at batch 3). Returns how many were folded.
    """
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    added: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[1])
        transpose = None
        if source is not None and source.op_type == "Transpose" and _swaps_last_two(source):
            transpose, source = source, producers.get(source.input[0])
        if source is None or source.op_type != "Expand" or _rank(graph, source.input[0]) != 2:
            continue
        if transpose is None:
            node.input[1] = source.input[0]
        else:
            flipped = helper.make_node(
                "Transpose", [source.input[0]], [f"{node.input[1]}_2d"], name=f"{transpose.name}_2d", perm=[1, 0]
            )
            node.input[1] = flipped.output[0]
            added.append((node, flipped))
        folded += 1
    for consumer, flipped in added:  # before its consumer, so the graph stays topologically sorted
        nodes = list(graph.node)
        nodes.insert(nodes.index(consumer), flipped)
        graph.ClearField("node")
        graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    while True:  # the Expands (and Transposes of them) left without consumers
        dead = [n for n in graph.node if n.op_type in ("Expand", "Transpose") and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    return folded


def fold_weight_transposes(graph: onnx.GraphProto) -> int:
    """``Transpose(W)`` of an initializer → an initializer holding ``Wᵀ``, as onnxruntime folds it on loading.

    The backward pass of ``x @ W`` is ``g @ Wᵀ``: the traced graph transposes the forward weight at run time.
    OpenVINO's CPU plugin (2026.4, f32) fuses ``MatMul(g, Transpose(W))`` into a FullyConnected node on ``W``
    and, where ``W`` also feeds a MatMul without bias (ViT's attention output projection), computes
    ``g @ W`` instead: ViT gradients off by 100 %. A stored ``Wᵀ`` gives OpenVINO nothing to fuse (its
    heatmaps then equal onnxruntime's to 2e-6, tested). The file grows by the transposed weights on the
    backward path (ViT-B/16: 31 MB on 347 MB); onnxruntime's memory does not, since it folded them anyway.
    Returns how many were folded.
    """
    weights = {tensor.name: tensor for tensor in graph.initializer}
    folded = [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in weights]
    for node in folded:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        value = numpy_helper.to_array(weights[node.input[0]]).transpose(perm)
        graph.initializer.append(numpy_helper.from_array(value.copy(), node.output[0]))
        graph.node.remove(node)
    return len(folded)


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Initializers no node reads (onnxruntime warns about each one on loading). Returns how many went."""
    used = _read_names(graph)
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return len(unused)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node reads or the graph returns, subgraphs (If, Loop, Scan) included."""
    names = {output.name for output in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                names |= _read_names(subgraph)
    return names


def finalise(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """Applies the spec: ``target_class`` broadcast, the graph's inputs and outputs checked against the spec (as the
    exporter wrote them: a dimension it fixed where the spec wants it free is an error), then named, the spec as
    metadata; then the operators and ``onnx.checker``.

    Raises:
        UnsupportedModelError: the graph's IO is not the spec's, it uses non-standard operators, or it fails
            ``onnx.checker``.
    """
    graph = model.graph
    fold_broadcast_matmuls(graph)
    fold_weight_transposes(graph)
    drop_unused_initializers(graph)
    _broadcast_target(graph)
    check_io(graph, spec)
    _name_dims(graph, spec)
    _check_operators(model)
    del model.metadata_props[:]
    for key, value in spec.to_props().items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    model.producer_name = "camexport"
    if not needs_external_data(model):  # a larger graph is checked from its files by save_graph
        _check(model)
    return model


def signature(value: onnx.ValueInfoProto) -> Signature:
    """A graph input's or output's dtype name and dimensions (a number, a symbolic name, or None)."""
    tensor = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return dtype, dims


def check_io(graph: onnx.GraphProto, spec: GraphSpec) -> None:
    """Raises UnsupportedModelError where the graph's inputs and outputs are not the spec's
    (:meth:`GraphSpec.mismatches`)."""
    problems = spec.mismatches(
        {value.name: signature(value) for value in graph.input},
        {value.name: signature(value) for value in graph.output},
    )
    if problems:
        raise UnsupportedModelError(f"the exported graph's {'; '.join(problems)}; this is a camexport bug")


def _broadcast_target(graph: onnx.GraphProto) -> None:
    """``target_class`` keeps its name as the graph input, which the graph broadcasts to the batch with
    ``Expand``, so a caller passes [batch] or [1]. No default initializer: an initializer that is also an input
    makes every onnxruntime warn on loading, and OpenVINO fold it into a constant (contract 1 did that)."""
    for node in graph.node:
        node.input[:] = [_EXPANDED_TARGET if name == TARGET_CLASS.name else name for name in node.input]
    batch_shape = helper.make_node("Shape", [IMAGE.name], ["image_batch_size"], start=0, end=1)
    expand = helper.make_node("Expand", [TARGET_CLASS.name, "image_batch_size"], [_EXPANDED_TARGET])
    nodes = [batch_shape, expand, *graph.node]
    graph.ClearField("node")
    graph.node.extend(nodes)


def _name_dims(graph: onnx.GraphProto, spec: GraphSpec) -> None:
    """The spec's symbolic dimensions by name: ``batch``, ``target_batch``, and ``height``/``width`` in a graph of
    any image size."""
    tensors = {tensor.name: tensor for tensor in (*spec.inputs, *spec.outputs)}
    for value in [*graph.input, *graph.output]:
        if value.name in tensors:
            dims = spec.dims(tensors[value.name])
            _set_dims(value, {i: name for i, name in enumerate(dims) if isinstance(name, str)})


def _check_operators(model: onnx.ModelProto) -> None:
    domains = {node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx")}
    foreign = domains - {f.domain for f in model.functions}
    forbidden = {node.op_type for node in model.graph.node if node.op_type in _FORBIDDEN_OPS}
    if foreign or forbidden:
        raise UnsupportedModelError(f"graph uses non-standard operators {sorted(foreign | forbidden)}")
    check_deterministic(model)


def check_deterministic(model: onnx.ModelProto) -> None:
    """Raises UnsupportedModelError naming the first node (in the graph, its functions or any subgraph) that
    :data:`camexport.contract.NONDETERMINISTIC_OPS` lists."""
    graphs = [model.graph, *model.functions]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "")
            found = next((op for op in NONDETERMINISTIC_OPS if op.holds(node.op_type, reduction)), None)
            if found is not None:
                how = f" (reduction {reduction})" if reduction else ""
                raise UnsupportedModelError(
                    f"the graph holds {node.op_type} node {node.name or '(unnamed)'!r}{how}, which {found.why}: its "
                    "outputs would change from run to run; choose a layer after the op that traced to it, or report "
                    "the model (it needs a deterministic lowering)"
                )
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]


# Protobuf cannot serialise a message over 2 GB; well below that, the weights go to a companion file.
EXTERNAL_DATA_BYTES = 1_500_000_000


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's weights (initializers held in the proto)."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the weights are too large for one protobuf file (ONNX external data is used instead)."""
    return initializer_bytes(model) > EXTERNAL_DATA_BYTES


def data_path(graph: Path) -> Path:
    """The external-data file of a graph: ``x.onnx`` → ``x.onnx.data``, beside it."""
    return graph.with_name(graph.name + ".data")


def save_graph(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Writes the graph; one over :data:`EXTERNAL_DATA_BYTES` keeps its weights in ``<name>.onnx.data``.

    Returns:
        The files written, the graph first.

    Raises:
        UnsupportedModelError: ``onnx.checker`` rejects a graph saved with external data.
    """
    if not needs_external_data(model):
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path(path).name,
        size_threshold=1024,
    )
    _check(str(path))
    return [path, data_path(path)]


def _check(model: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedModelError(f"onnx.checker rejects the graph: {first_line(exc)}") from None
