"""An ONNX classifier file as the build side reads it: the file checked, its image input and logits output found,
and its candidate layers (``camexport layers FILE.onnx``): every tensor shaped like a feature map or a token
sequence, with the op that writes it, and the default the build explains.

Validation rules, each a one-line UserError naming the file and the fix:

- the file exists, parses as ONNX (a truncated or foreign file does not), and its external data files are there;
- exactly one graph input that is not an initializer, of rank 4 and float or uint8: the image, laid out
  [N, C, H, W] (C of 1, 3 or 4 second) or [N, H, W, C] (Keras and tf2onnx exports: C last);
- exactly one output, of rank 2: the logits [N, K] (a final Softmax's input is what a build explains).

Shapes come from one onnxruntime run on a zero image at the file's size (a symbolic batch runs as 1; a symbolic
height or width as the ``image_size`` given, else 224): every float tensor of the graph becomes an output of that
run, so the shapes are those the model computes, not inferred ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from camexport._util import first_line
from camexport.errors import UserError

DEFAULT_SIZE = 224  # a symbolic height or width runs at this size unless one is given
_IMAGE_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8"}


@dataclass(frozen=True)
class OnnxImage:
    """The file's image input: its name, dtype, layout, channels, and height and width (None where symbolic)."""

    name: str
    dtype: str
    layout: str  # "NCHW" or "NHWC"
    channels: int
    height: int | None
    width: int | None
    batch: int | None = None  # None: symbolic

    def size(self, given: tuple[int, int] | None) -> tuple[int, int]:
        """(H, W): the file's, the given size where the file's is symbolic, else :data:`DEFAULT_SIZE`."""
        return (
            self.height or (given[0] if given else DEFAULT_SIZE),
            self.width or (given[1] if given else DEFAULT_SIZE),
        )

    def shape(self, size: tuple[int, int] | None) -> tuple[int, int, int, int]:
        """The input's shape at batch 1 (the given size where the file's is symbolic)."""
        height, width = self.size(size)
        if self.layout == "NHWC":
            return (1, height, width, self.channels)
        return (1, self.channels, height, width)


@dataclass(frozen=True)
class OnnxTensor:
    """A tensor of the graph as a candidate layer: its name, its shape at batch 1, the op that writes it, and
    ``kind``: ``map`` (4-D, spatial dims that follow the image), ``tokens`` ([N, T, D], T a grid of positions
    plus up to 4 prefix tokens) or ``other``."""

    name: str
    shape: tuple[int, ...]
    op: str
    kind: str


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """The file's model, with its external data.

    Raises:
        UserError: no such file, not ONNX (or truncated), or an external data file missing.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass an .onnx model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise UserError(
            f"{path}: not an ONNX model ({first_line(exc)[:120]}); pass an .onnx file, whole (a copy cut short does "
            "not parse)"
        ) from None
    if not model.graph.node:
        raise UserError(f"{path}: not an ONNX model (no graph nodes); pass an .onnx model file")
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            if not (path.parent / location).is_file():
                raise UserError(
                    f"{path}: its weights are in an external data file, {location}, which is not beside it; copy "
                    f"{location} into {path.parent}"
                )
    onnx.load_external_data_for_model(model, str(path.parent))
    return model


def image_input(model: onnx.ModelProto, path: str | Path) -> OnnxImage:
    """The file's one image input.

    Raises:
        UserError: no input, several, or one that is not a float or uint8 image of rank 4.
    """
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initialisers]
    described = ", ".join(f"{v.name} {_shape_text(v)}" for v in inputs) or "none"
    if len(inputs) != 1:
        raise UserError(
            f"{path}: {len(inputs)} inputs ({described}); camexport explains models with one image input "
            "[N, C, H, W] or [N, H, W, C]"
        )
    value = inputs[0]
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]  # -1: free
    if tensor.elem_type not in _IMAGE_TYPES or len(dims) != 4:
        raise UserError(
            f"{path}: its input is {value.name} {_shape_text(value)}, not an image; camexport explains models with "
            "one float or uint8 image input [N, C, H, W] or [N, H, W, C]"
        )
    if dims[1] in (1, 3, 4) and dims[3] not in (1, 3, 4):
        layout, channels, height, width = "NCHW", dims[1], dims[2], dims[3]
    elif dims[3] in (1, 3, 4):
        layout, channels, height, width = "NHWC", dims[3], dims[1], dims[2]
    else:
        raise UserError(
            f"{path}: its input {value.name} {_shape_text(value)} has no channel axis of 1, 3 or 4 (second or last); "
            "camexport explains image models"
        )
    return OnnxImage(value.name, _IMAGE_TYPES[tensor.elem_type], layout, channels, height, width, dims[0])


def logits_output(model: onnx.ModelProto, path: str | Path) -> str:
    """The file's one output, the logits [N, K].

    Raises:
        UserError: several outputs, or one that is not of rank 2.
    """
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        named = ", ".join(f"{v.name} {_shape_text(v)}" for v in outputs)
        raise UserError(
            f"{path}: {len(outputs)} outputs ({named}); camexport explains classifiers with one logits output "
            "[N, K]: export the model with that output alone"
        )
    rank = len(outputs[0].type.tensor_type.shape.dim)
    if rank != 2:
        raise UserError(
            f"{path}: its output {outputs[0].name} {_shape_text(outputs[0])} is not logits [N, K]; camexport "
            "explains classifiers"
        )
    return outputs[0].name


def probe_tensors(model: onnx.ModelProto, image: OnnxImage, size: tuple[int, int] | None) -> list[OnnxTensor]:
    """Every float tensor the graph computes, in the order its nodes run, with its shape at batch 1."""
    import onnxruntime as ort

    writers = {out: node.op_type for node in model.graph.node for out in node.output if out}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor, as written
    try:
        session = session_with_outputs(model, list(writers), options)
    except Exception:  # an output that is not float (a Shape's int64): only those shape inference calls float
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
        floats = [name for name in writers if types.get(name) == onnx.TensorProto.FLOAT]
        try:
            session = session_with_outputs(model, floats, options)
        except Exception as exc:  # onnxruntime's own exception types
            raise UserError(
                f"onnxruntime cannot load the file ({first_line(exc)[:200]}); check the file with onnx.checker"
            ) from None
    feed = np.zeros(image.shape(size), dtype=np.uint8 if image.dtype == "uint8" else np.float32)
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {image.name: feed})
    except Exception as exc:  # onnxruntime's own exception types
        raise UserError(
            f"onnxruntime cannot run the file on a {list(feed.shape)} image ({first_line(exc)[:160]}); check that it "
            "runs in onnxruntime, or pass its own size with --image-size"
        ) from None
    shapes = {name: tuple(np.shape(v)) for name, v in zip(names, values, strict=True)}
    height, width = feed.shape[1:3] if image.layout == "NHWC" else feed.shape[2:4]
    kinds = {name: _kind(shapes[name], height, width) if writers[name] != "Constant" else "other" for name in writers
             if name in shapes}  # fmt: skip
    # An attention's scores [N, heads, T, T] are no map: T is a token count of the graph.
    counts = {shapes[name][1] for name, kind in kinds.items() if kind == "tokens"}
    for name, kind in kinds.items():
        if kind == "map" and shapes[name][-1] == shapes[name][-2] and shapes[name][-1] in counts:
            kinds[name] = "other"
    return [OnnxTensor(name, shapes[name], writers[name], kind) for name, kind in kinds.items()]


def session_with_outputs(model: onnx.ModelProto, names: Sequence[str], options, types: dict[str, int] | None = None):
    """An onnxruntime session of ``model`` that also outputs the tensors ``names``, declared of ``types`` (by name;
    float where not given)."""
    import onnxruntime as ort

    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    outputs = {value.name for value in probed.graph.output}
    probed.graph.output.extend(
        helper.make_tensor_value_info(name, (types or {}).get(name) or onnx.TensorProto.FLOAT, None)
        for name in dict.fromkeys(names)
        if name not in outputs
    )
    return ort.InferenceSession(probed.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _kind(shape: Sequence[int], height: int, width: int) -> str:
    """``map`` for [1, C, h, w] or [1, h, w, C] whose grid follows the image (h <= H and w <= W, the same stride
    both ways, h and w at least 2; or [1, C, h, w] whose strides differ by axis but divide the image exactly, as a
    text model's), ``tokens`` for [1, T, D] with T a grid of the image's proportions plus up to 4
    prefix tokens, else ``other``."""
    if len(shape) == 4 and shape[0] == 1:
        for h, w in ((shape[2], shape[3]), (shape[1], shape[2])):
            if 2 <= h <= height and 2 <= w <= width and abs(height / h - width / w) <= max(height / h, width / w) / 4:
                return "map"
        h, w = shape[2], shape[3]  # strides that differ by axis (a text model's 48 x 192 → 2 x 96): read as NCHW
        if 2 <= h <= height and 2 <= w <= width and height % h == 0 and width % w == 0:
            return "map"
    if len(shape) == 3 and shape[0] == 1 and shape[1] >= 4 and shape[2] >= 8:
        for prefix in range(5):
            grid = shape[1] - prefix
            rows = round((grid * height / width) ** 0.5)
            if rows >= 2 and grid % rows == 0 and abs(rows / (grid // rows) - height / width) <= 0.25 * height / width:
                return "tokens"
    return "other"


def default_tensor(tensors: Sequence[OnnxTensor], classes: int) -> OnnxTensor | None:
    """The default layer: the last feature map before the global pooling (a map of as many channels as the logits,
    a squeezenet's class-score map, skipped); where token sequences come after the last map (a ViT), the last one
    of the model's width that an attention's Softmax still reads."""
    maps = [t for t in tensors if t.kind == "map" and classes not in (t.shape[1], t.shape[3])]
    tokens = [t for t in tensors if t.kind == "tokens"]
    last_map = max((tensors.index(t) for t in maps), default=-1)
    later_tokens = [t for t in tokens if tensors.index(t) > last_map]
    if later_tokens:
        width = max({t.shape[2] for t in later_tokens}, key=[t.shape[2] for t in later_tokens].count)
        softmaxes = [i for i, t in enumerate(tensors) if t.op == "Softmax" and len(t.shape) >= 3]
        before = [t for t in later_tokens if t.shape[2] == width and softmaxes and tensors.index(t) < softmaxes[-1]]
        normed = [t for t in before if t.op in ("LayerNormalization", "Add")]
        return (normed or before or later_tokens)[-1]
    return maps[-1] if maps else None


def describe_onnx_layers(path: str | Path, size: tuple[int, int] | None = None, everything: bool = False) -> list[str]:
    """Lines for ``camexport layers FILE.onnx``: each candidate tensor's shape and writer, in the order the graph
    computes them, the default marked."""
    model = read_onnx(path)
    image = image_input(model, path)
    logits = logits_output(model, path)
    tensors = probe_tensors(model, image, size)
    classes = next((t.shape[1] for t in tensors if t.name == logits), 0)
    chosen = default_tensor(tensors, classes)
    rows = [t for t in tensors if everything or t.kind in ("map", "tokens")]
    shapes = ["[N, " + ", ".join(map(str, t.shape[1:])) + "]" for t in rows]
    width = max([len("tensor"), *(len(t.name) for t in rows)])
    shape_width = max([len("shape [N, ...]"), *map(len, shapes)])
    op_width = max([len("written by"), *(len(t.op) for t in rows)])
    lines = [
        f"{'tensor':{width}}  {'shape [N, ...]':{shape_width}}  {'written by':{op_width}}  note",
        f"{'-' * width}  {'-' * shape_width}  {'-' * op_width}  ----",
    ]
    for tensor, shape in zip(rows, shapes, strict=True):
        note = "default" if chosen is not None and tensor.name == chosen.name else ""
        if tensor.kind == "other":
            note = "not a map or tokens"
        lines.append(f"{tensor.name:{width}}  {shape:{shape_width}}  {tensor.op:{op_width}}  {note}".rstrip())
    lines.append(
        f"image input {image.name}: {image.layout}, {image.channels} channel(s), {image.dtype}; logits {logits}: "
        f"{classes} classes"
    )
    return lines


def _shape_text(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"
