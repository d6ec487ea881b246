"""Export: the traced explainer becomes one ONNX graph with the camexport IO contract and metadata.

The contract (see README):

* inputs: ``image`` float32 [batch, 3, H, W]; ``target_class`` int64 [batch] or [1] (broadcast), −1 meaning
  the top-1 class. ``target_class`` has a default initializer ([-1]), so callers may omit it.
* outputs: ``logits`` [batch, K], ``class_index`` int64 [batch], ``heatmap`` float32 [batch, H, W] in [0, 1],
  ``cam`` [batch, h, w], ``activations`` and ``gradients`` [batch, C, h, w].
* metadata props ``camexport.*`` (model, layer, method, labels, mean, std, image_size, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from camexport._util import first_line, quiet
from camexport.errors import UnsupportedModelError, UserError
from camexport.tracing import INPUT_NAMES, OUTPUT_NAMES, TRACE_BATCH, ExplainerModule, TracedExplainer

BATCH_DIM = "batch"
TARGET_DIM = "target_batch"
MIN_OPSET = 18
_EXPANDED_TARGET = "target_class_expanded"
_FORBIDDEN_OPS = {"Gradient"}


def check_opset(opset: int | None) -> None:
    """Raises UserError for an opset outside what the exporter and the installed onnx support."""
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise UserError(
            f"--opset {opset}: camexport writes opsets {MIN_OPSET} to {newest} (the installed onnx's newest); "
            f"use --opset {MIN_OPSET} or leave it out"
        )


def to_onnx(traced: TracedExplainer, image_size: tuple[int, int], opset: int | None = None) -> onnx.ModelProto:
    """Exports the traced graph with a dynamic batch dimension.

    Raises:
        UserError: ``opset`` is below :data:`MIN_OPSET`.
        UnsupportedModelError: the exporter cannot lower an op of the graph.
    """
    check_opset(opset)
    module = ExplainerModule(traced)
    image = torch.zeros(TRACE_BATCH, 3, *image_size)
    target = torch.full((TRACE_BATCH,), -1, dtype=torch.int64)
    batch = torch.export.Dim(BATCH_DIM, min=1)
    try:
        with quiet():
            program = torch.export.export(
                module, (image, target), dynamic_shapes={"image": {0: batch}, "target_class": {0: batch}}
            )
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                optimize=True,
                verbose=False,
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


def fold_broadcast_matmuls(graph: onnx.GraphProto) -> int:
    """``MatMul(x, Expand(W2d, [B, K, N]))`` → ``MatMul(x, W2d)``: the same result by broadcasting.

    ``F.linear`` on a 3-D non-contiguous input (``nn.MultiheadAttention``) traces as a batched matmul with
    the weight expanded along the batch. In PyTorch that expand is a free view; in ONNX it materialises a
    copy of the weight per row (1.4 GB for one ViT-B projection). Returns how many were folded.
    """
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[1])
        if source is not None and source.op_type == "Expand" and _rank(graph, source.input[0]) == 2:
            node.input[1] = source.input[0]
            folded += 1
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Expand" and not any(o in used for o in n.output)]
    for node in dead:
        graph.node.remove(node)
    return folded


def finalise(model: onnx.ModelProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """Applies the IO contract: named batch dims, an optional ``target_class``, metadata; then checks it.

    ``target_class`` keeps its name as the graph input and gets a default initializer ``[-1]``; the graph
    broadcasts it to the batch with ``Expand``, so a caller may pass [batch], [1] or nothing.

    Raises:
        UnsupportedModelError: the graph uses non-standard operators or fails ``onnx.checker``.
    """
    graph = model.graph
    fold_broadcast_matmuls(graph)
    inputs = {vi.name: vi for vi in graph.input}
    outputs = {vi.name: vi for vi in graph.output}
    if set(inputs) != set(INPUT_NAMES) or set(outputs) != set(OUTPUT_NAMES):
        raise UnsupportedModelError(
            f"exported graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; this is a camexport bug"
        )

    for node in graph.node:
        node.input[:] = [_EXPANDED_TARGET if name == "target_class" else name for name in node.input]
    batch_shape = helper.make_node("Shape", ["image"], ["image_batch_size"], start=0, end=1)
    expand = helper.make_node("Expand", ["target_class", "image_batch_size"], [_EXPANDED_TARGET])
    nodes = [batch_shape, expand, *graph.node]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "target_class"))

    _set_dims(inputs["image"], {0: BATCH_DIM})
    _set_dims(inputs["target_class"], {0: TARGET_DIM})
    for name in OUTPUT_NAMES:
        _set_dims(outputs[name], {0: BATCH_DIM})

    if inputs["image"].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UnsupportedModelError("the exported image input is not float32; this is a camexport bug")

    domains = {node.domain for node in graph.node if node.domain not in ("", "ai.onnx")}
    local_functions = {f.domain for f in model.functions}
    foreign = domains - local_functions
    forbidden = {node.op_type for node in graph.node if node.op_type in _FORBIDDEN_OPS}
    if foreign or forbidden:
        raise UnsupportedModelError(f"graph uses non-standard operators {sorted(foreign | forbidden)}")

    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    model.producer_name = "camexport"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedModelError(f"onnx.checker rejects the graph: {first_line(exc)}") from None
    return model


def metadata_props(
    *,
    model: str,
    layer: str,
    method: str,
    labels: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: tuple[int, int],
    resize_size: int,
    interpolation: str,
    weights: str,
    version: str,
) -> dict[str, str]:
    """The ``camexport.*`` metadata props; lists and numbers are JSON."""
    return {
        "camexport.model": model,
        "camexport.layer": layer,
        "camexport.method": method,
        "camexport.labels": json.dumps(labels),
        "camexport.mean": json.dumps(list(mean)),
        "camexport.std": json.dumps(list(std)),
        "camexport.image_size": json.dumps(list(image_size)),
        "camexport.resize_size": json.dumps(resize_size),
        "camexport.interpolation": interpolation,
        "camexport.weights": weights,
        "camexport.version": version,
    }
