"""An ONNX classifier file as a torch module, so that today's tracing path (make_fx: the forward pass, the backward
pass to the layer and every method's maps) builds its explained graph.

Why an importer and not reverse-mode differentiation written over ONNX nodes: the backward pass, its
decompositions into deterministic ops, every method, every task, the determinism and CUDA checks and the float64
reference then apply to a file as they do to PyTorch code; what is new is only a forward pass per op (an op's
forward is a line of torch; its gradient rule would be a page of ONNX).

The file's graph becomes one :class:`OnnxNode` per node, each a submodule named by the node's first output tensor,
so that a layer is named as ``camexport layers FILE.onnx`` names it (``/layer4/layer4.1/relu_1/Relu_output_0``),
and a forward hook on it sees the tensor. Nodes whose inputs are all constants (initializers, ``Constant``,
``ConstantOfShape`` of a constant shape, and what follows from them) are computed once at import with the same op
functions: weights become buffers, small constants numpy numbers. While tracing, shapes are of two kinds:

- numbers known while tracing (the image's height and width, a head size, and what exporters compute from them:
  a SAME padding's ``Ceil``, a ``Pad``'s amounts reshaped and reversed) are computed on the spot, outside the
  trace, by the same op functions, and reach the graph as constants;
- numbers that follow the batch are :class:`~camexport.builder.onnx_ops.Ints`, symbolic ints that make_fx keeps
  through the small integer algebra exporters write for ``Reshape`` and ``Expand`` (``Shape``, ``Gather``,
  ``Concat``, ``Unsqueeze``, ``Slice``, arithmetic): the batch stays free, and a method that reruns the network
  after the layer on a larger batch (ReciproCAM) gets shapes of that batch.

Rules, each a one-line :class:`~camexport.errors.UnsupportedFileError` naming the node, its op and the opset:

- ops of the default ONNX domain, opset 7 and later, from :data:`~camexport.builder.onnx_ops.OPS` (the ops of
  classic and modern classifiers);
- quantized graphs (``QuantizeLinear``, ``DequantizeLinear``, ``QLinear*``, integer convolutions) are refused:
  their gradients are not those of the float model the team trained; build from the float model;
- a ``Conv``, ``MaxPool`` or ``AveragePool`` of 1 or 2 spatial dimensions; ``Resize`` in ``nearest``, ``linear`` or
  ``cubic`` mode without a region of interest;
- a file whose computation holds a fixed batch (a ``Reshape`` to [1, 512]): the graph's batch is free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from camexport.builder.onnx_file import OnnxImage
from camexport.builder.onnx_ops import OPS, SMALL, STATIC_INPUTS, Ints, OnnxNode, Value
from camexport.errors import UnsupportedFileError

MIN_OPSET = 7
_QUANTIZED = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger")


def file_opset(model: onnx.ModelProto) -> int:
    """The opset of the default domain the file declares."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_supported(model: onnx.ModelProto, path: str) -> int:
    """The file's opset, each node checked to be importable.

    Raises:
        UnsupportedFileError: an opset before 7, a quantized graph, or an op (or domain) camexport cannot import.
    """
    opset = file_opset(model)
    if opset < MIN_OPSET:
        raise UnsupportedFileError(
            f"{path}: opset {opset}; camexport imports opset {MIN_OPSET} and later: convert it with "
            "onnx.version_converter.convert_version(model, 13)"
        )
    for node in model.graph.node:
        where = f"{path}: node {node.name or node.output[0]!r} is a {node.op_type}"
        if node.op_type in _QUANTIZED or node.op_type.startswith("QLinear"):
            raise UnsupportedFileError(
                f"{where} (opset {opset}): the model is quantized, and its gradients are not those of the float "
                "model; build from the float model before quantization"
            )
        if node.domain not in ("", "ai.onnx") or (node.op_type not in OPS and node.op_type != "Constant"):
            domain = f" of domain {node.domain}" if node.domain not in ("", "ai.onnx") else ""
            raise UnsupportedFileError(
                f"{where}{domain} (opset {opset}), which camexport cannot import; see docs/onnx-files.md for the "
                "ops it imports"
            )
    return opset


def explained_score(model: onnx.ModelProto, logits: str) -> str:
    """The tensor whose class score is explained: the logits, or a final Softmax's (LogSoftmax's) input."""
    writer = next((node for node in model.graph.node if logits in node.output), None)
    return writer.input[0] if writer is not None and writer.op_type in ("Softmax", "LogSoftmax") else logits


def _constant(node: onnx.NodeProto) -> torch.Tensor:
    attr = node.attribute[0]
    if attr.name == "value":
        return torch.from_numpy(numpy_helper.to_array(attr.t).copy())
    value = helper.get_attribute_value(attr)
    return torch.tensor(value)


class OnnxModule(nn.Module):
    """The file's forward pass: the image [N, C, H, W] (transposed to the file's [N, H, W, C] where it takes
    that, rounded to whole pixel values where it takes uint8) in, the logits out (a final Softmax's input, where
    the file ends with one: ``softmax_dropped``). Each computed node is a submodule named by its first output
    tensor."""

    def __init__(self, model: onnx.ModelProto, image: OnnxImage, logits: str, path: str) -> None:
        super().__init__()
        opset = check_supported(model, path)
        self.image, self.opset = image, opset
        self.logits = explained_score(model, logits)
        self.softmax_dropped = self.logits != logits
        constants = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
        self.steps: list[str] = []
        for node in model.graph.node:
            self._add(node, constants)
        self._keep(constants)

    def _keep(self, constants: dict[str, torch.Tensor]) -> None:
        """Weights become buffers (make_fx takes them as inputs, export binds them back); integer constants (shapes,
        axes, indices) and small float ones (a padding's 2.0, an epsilon) stay numpy: numbers known while tracing.
        Each node's attribute-like inputs (:data:`STATIC_INPUTS`) that are constants are fixed on the node."""
        used = {name for step in self.steps for name in self._modules[step].inputs}
        self.constant_names: dict[str, str] = {}
        self.fixed: dict[str, np.ndarray] = {}
        for key in self.steps:
            module = self._modules[key]
            wanted = STATIC_INPUTS.get(module.op, set())
            module.static = {
                i: constants[n].numpy().copy() for i, n in enumerate(module.inputs) if i in wanted and n in constants
            }
        for i, name in enumerate(n for n in constants if n in used or n == self.logits):
            value = constants[name]
            if value.is_floating_point() and value.numel() > SMALL:
                buffer = f"constant_{i}"
                while buffer in self._modules:  # a tensor of the file may hold the name
                    buffer += "_"
                self.register_buffer(buffer, value)
                self.constant_names[name] = buffer
            else:
                self.fixed[name] = (value.float() if value.dtype == torch.float64 else value).numpy().copy()

    def _add(self, node: onnx.NodeProto, constants: dict[str, torch.Tensor]) -> None:
        if node.op_type == "Constant":
            constants[node.output[0]] = _constant(node)
            return
        module = OnnxNode(node, self.opset)
        if all(not name or name in constants for name in node.input):  # folded once, here
            with torch.no_grad():
                result = module(*(constants.get(name) for name in node.input))
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.output, results, strict=False):
                is_ints = isinstance(value, Ints)
                constants[name] = torch.tensor(list(value.values), dtype=torch.int64) if is_ints else value
            return
        key = node.output[0]
        self._modules[key] = module  # a tensor name may hold dots: named_modules lists it whole
        self.steps.append(key)

    def get_submodule(self, target: str) -> nn.Module:
        """A node by its tensor name (dots and all), else torch's dotted lookup."""
        return self._modules[target] if target in self._modules else super().get_submodule(target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed = (self.image.height, self.image.width)
        if any(want is not None and got != want for want, got in zip(fixed, x.shape[2:], strict=True)):
            raise ValueError(f"the file takes {fixed[0]}x{fixed[1]} images only")
        if self.image.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        if self.image.dtype == "uint8":  # pixels as the file takes them, kept float so that autograd runs through
            x = torch.round(x).clamp(0, 255)  # (a file casts its uint8 input to float first; the check compares)
        values: dict[str, Value] = {self.image.name: x}
        values.update(self.fixed)
        values.update({name: getattr(self, buffer) for name, buffer in self.constant_names.items()})
        for key in self.steps:
            module = self._modules[key]
            args = (module.static.get(i, values.get(name)) if name else None for i, name in enumerate(module.inputs))
            result = module(*args)
            results = result if isinstance(result, tuple) else (result,)
            values.update((name, value) for name, value in zip(module.outputs, results, strict=False) if name)
        out = values[self.logits]
        return out.float() if isinstance(out, torch.Tensor) else out


def load_onnx_file(path: str, weights: object, num_classes: int | None) -> tuple[OnnxModule, str, str | None]:
    """The file as a module, the description of its weights for the metadata, and its default layer.

    Raises:
        UserError: a bad file (:mod:`camexport.builder.onnx_file`), or weights or num_classes given for it.
        UnsupportedFileError: an op camexport cannot import.
    """
    from camexport._util import sha256_of
    from camexport.builder.onnx_file import default_tensor, image_input, logits_output, probe_tensors, read_onnx
    from camexport.errors import UserError

    if str(weights) != "default" or num_classes is not None:
        given = "num_classes" if num_classes is not None else f"weights={weights}"
        raise UserError(f"{given}: an ONNX file holds its own weights and classes; leave out {given.split('=')[0]}")
    model = read_onnx(path)
    image, logits = image_input(model, path), logits_output(model, path)
    module = OnnxModule(model, image, logits, path)
    _check_free_batch(module, image, path)
    tensors = probe_tensors(model, image, None)
    classes = next((t.shape[1] for t in tensors if t.name == logits), 0)
    chosen = default_tensor(tensors, classes)
    described = f"the file's own (sha256 {sha256_of([Path(path)])[:12]})"
    if module.softmax_dropped:
        described += f"; its final Softmax dropped: the explained score is the logit {module.logits}"
    return module, described, None if chosen is None else chosen.name


def _check_free_batch(module: OnnxModule, image: OnnxImage, path: str) -> None:
    """The graph takes any batch; a file whose shapes hold its fixed batch (a Reshape to [1, 512]) cannot.

    Raises:
        UnsupportedFileError: the module fails on a batch of 2, naming how to re-export the file.
    """
    channels_first = (2, image.channels, *image.size(None))
    try:
        with torch.no_grad():
            module(torch.zeros(channels_first))
    except (RuntimeError, ValueError, IndexError) as exc:
        fixed = f"its batch is fixed at {image.batch}" if image.batch else "it fails on a batch of 2"
        raise UnsupportedFileError(
            f"{path}: {fixed} and its computation holds it ({str(exc).splitlines()[0][:120]}); re-export it with a "
            "free batch (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}), or tf2onnx's --inputs "
            "name:0[-1,H,W,C])"
        ) from None
