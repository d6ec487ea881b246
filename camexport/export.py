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
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from camexport._util import first_line, quiet
from camexport.errors import UnsupportedModelError, UserError
from camexport.tracing import INPUT_NAMES, OUTPUT_NAMES, TRACE_BATCH, ExplainerModule, TracedExplainer, example_image

BATCH_DIM = "batch"
HEIGHT_DIM = "height"
WIDTH_DIM = "width"
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


def to_onnx(
    traced: TracedExplainer,
    image_size: tuple[int, int],
    opset: int | None = None,
    dynamic_size: bool = False,
    pixels: bool = False,
) -> onnx.ModelProto:
    """Exports the traced graph with a dynamic batch dimension (and dynamic height and width if asked).

    Raises:
        UserError: ``opset`` is below :data:`MIN_OPSET`.
        UnsupportedModelError: the exporter cannot lower an op of the graph.
    """
    check_opset(opset)
    module = ExplainerModule(traced)
    image = example_image(image_size, pixels)
    target = torch.full((TRACE_BATCH,), -1, dtype=torch.int64)
    batch = torch.export.Dim(BATCH_DIM, min=1)
    image_dims: dict[int, object] = {0: batch}
    if dynamic_size:
        h, w = (1, 2) if pixels else (2, 3)
        image_dims |= {h: torch.export.Dim.DYNAMIC, w: torch.export.Dim.DYNAMIC}
    try:
        with quiet():
            program = torch.export.export(
                module, (image, target), dynamic_shapes={"image": image_dims, "target_class": {0: batch}}
            )
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(traced.output_names),
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


def finalise(
    model: onnx.ModelProto, metadata: Mapping[str, str], dynamic_size: bool = False, pixels: bool = False
) -> onnx.ModelProto:
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
    per_method = [name for name in outputs if name not in OUTPUT_NAMES]
    if (
        set(inputs) != set(INPUT_NAMES)
        or not set(OUTPUT_NAMES) <= set(outputs)
        or not all(name.startswith(("heatmap_", "cam_")) for name in per_method)
    ):
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

    spatial = ({1: HEIGHT_DIM, 2: WIDTH_DIM} if pixels else {2: HEIGHT_DIM, 3: WIDTH_DIM}) if dynamic_size else {}
    _set_dims(inputs["image"], {0: BATCH_DIM, **spatial})
    _set_dims(inputs["target_class"], {0: TARGET_DIM})
    for name in outputs:
        _set_dims(outputs[name], {0: BATCH_DIM})
        if dynamic_size and name.startswith("heatmap"):
            _set_dims(outputs[name], {1: HEIGHT_DIM, 2: WIDTH_DIM})

    if inputs["image"].type.tensor_type.elem_type != (TensorProto.UINT8 if pixels else TensorProto.FLOAT):
        raise UnsupportedModelError("the exported image input has the wrong type; this is a camexport bug")

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
    if not needs_external_data(model):  # a larger graph is checked from its files by save_graph
        _check(model)
    return model


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
    dynamic_size: bool = False,
    input: str = "float32",
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
        "camexport.dynamic_size": json.dumps(dynamic_size),
        "camexport.input": input,
    }
