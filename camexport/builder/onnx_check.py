"""A graph built from an ONNX file, checked against the file itself, without PyTorch autograd: in onnxruntime, and in
onnx's float64 reference evaluator.

The build's own validation compares the graph with the eager float64 reference of the imported module; that
proves tracing and export, not the import. This check starts from the file, on inputs the build has not seen:

1. **Logits and activations**: the file's logits (before a final Softmax) and the layer's tensor, computed by
   onnxruntime from the file, against the graph's ``logits`` and ``activations``: equal to float32 rounding
   (:data:`FORWARD_TOLERANCE` of the largest magnitude: sums of thousands of float32 products, each rounded at
   2^-24, in another order).
2. **Gradients by finite differences**: the file from the layer on (the nodes that read the layer's tensor,
   directly or not; whatever else they read, such as a skip connection from before the layer, fed from the
   file's own run on the image) gives the explained score S(A) = logits[c]. It runs in float64 in onnx's
   reference evaluator (onnxruntime has no float64 convolution), its float32 weights widened. For
   :data:`DIRECTIONS` random directions v per image (standard normal, n elements), the central difference
   (S(A + h·v) - S(A - h·v)) / 2h must equal the graph's ⟨g, v⟩, measured against max(|⟨g, v⟩|, ‖g‖·‖v‖/√n) (the
   typical size of ⟨g, v⟩ for a random direction). The step h is :data:`STEP` of the layer's RMS per element: a
   perturbation that small almost never crosses a ReLU kink or a max-pool switch (central differences are exact
   on a linear piece and off by O(h²) on a smooth one), and float64 rounding of S then costs about
   1e-16·|S|/h of the difference; where the score hardly depends on the layer (activations of 1e-12, as in a
   randomly initialised GoogLeNet) h grows until the step moves S by :data:`ROUNDING` of |S|. The graph's
   gradient is float32: measured within 1e-9 to 1e-6 on torchvision, timm, ViT, Keras-style and Caffe2-era files;
   :data:`FD_TOLERANCE` leaves room for deeper float32 sums, while a gradient off by 1 % (a missed branch, a wrong
   scale) is off by 1 % of ⟨g, v⟩.
3. **Heatmaps from (A, g)**: every gradient method's heatmap recomputed in float64 from the graph's own A and g
   by :mod:`camexport.builder.reference`, against the graph's ``heatmap_<method>`` (:data:`HEATMAP_TOLERANCE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference.op_run import OpRun

from camexport._util import first_line
from camexport.builder import reference
from camexport.builder.layouts import Layout
from camexport.builder.methods import REGISTRY as METHODS
from camexport.builder.onnx_file import OnnxImage, image_input, read_onnx, session_with_outputs
from camexport.builder.onnx_import import explained_score
from camexport.contract import METHODS as METHOD_SPECS
from camexport.contract import GraphSpec
from camexport.errors import ValidationError
from camexport.runtime.preprocess import normalise
from camexport.runtime.session import CamSession

INPUTS, BATCH, DIRECTIONS = 2, 2, 3
STEP = 1e-6
ROUNDING = 1e-8  # the least change of S a step must make, relative to |S|
FORWARD_TOLERANCE = 1e-4
FD_TOLERANCE = 1e-3
HEATMAP_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FileCheck:
    """The largest differences found, each over its tolerance's scale (≤ 1 passes)."""

    logits: float
    activations: float
    gradients: float
    heatmaps: float
    directions: int

    def lines(self) -> list[str]:
        return [
            f"  against the file: logits {self.logits:.2g}, activations {self.activations:.2g} of their largest "
            f"magnitude; ⟨g, v⟩ by finite differences in {self.directions} directions, worst "
            f"{self.gradients:.2g} of ⟨g, v⟩; heatmaps from (A, g) in float64, max diff {self.heatmaps:.2g}"
        ]


def check_against_file(path: str, graph: Path, spec: GraphSpec, layout: Layout, seed: int) -> FileCheck:
    """Runs the three checks of the module docstring.

    Raises:
        ValidationError: any of them over its tolerance; nothing is written.
    """
    model = read_onnx(path)
    image = image_input(model, path)
    score = explained_score(model, model.graph.output[0].name)  # the file read again, not imported again
    cut = _Cut(model, spec.layer, score)
    full = _session(model, [score, spec.layer, *cut.reads])
    session = CamSession(graph, threads=1)
    rng = np.random.default_rng(seed + 777)
    worst = {"logits": 0.0, "activations": 0.0, "gradients": 0.0, "heatmaps": 0.0}
    for _ in range(INPUTS):
        feed, x = _inputs(spec, image, rng)
        out = session.run(feed, target_class=-1)
        logits, layer, *reads = _run(full, [score, spec.layer, *cut.reads], {image.name: x}, image.batch)
        worst["logits"] = max(worst["logits"], _relative(out["logits"], logits))
        file_map = reference.as_map(torch.from_numpy(layer), layout).numpy()
        worst["activations"] = max(worst["activations"], _relative(out["activations"], file_map))
        cut.around(layer, dict(zip(cut.reads, reads, strict=True)))
        worst["gradients"] = max(worst["gradients"], _worst_direction(cut, out, layout, rng))
        worst["heatmaps"] = max(worst["heatmaps"], _heatmaps(out, spec))
    _judge(worst)
    return FileCheck(directions=INPUTS * BATCH * DIRECTIONS, **worst)


def _judge(worst: dict[str, float]) -> None:
    limits = {"logits": FORWARD_TOLERANCE, "activations": FORWARD_TOLERANCE, "gradients": FD_TOLERANCE}
    limits["heatmaps"] = HEATMAP_TOLERANCE
    for name, limit in limits.items():
        if not worst[name] <= limit:
            raise ValidationError(
                f"the graph's {name} differ from the ONNX file's by {worst[name]:.3g} (tolerance {limit:.0e}); the "
                "graph was not written: report the file's ops at camexport's issues"
            )


def _session(model: onnx.ModelProto, names: list[str]):
    """The file in onnxruntime, ``names`` among its outputs (typed as shape inference says)."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return session_with_outputs(model, names, options, types)


def _inputs(spec: GraphSpec, image: OnnxImage, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An unseen batch as the graph takes it and as the file takes it."""
    height, width = spec.preprocessing.image_size
    pixels = rng.integers(0, 256, (BATCH, height, width, spec.preprocessing.channels), dtype=np.uint8)
    normalised = np.stack([normalise(p, spec.preprocessing) for p in pixels])
    if not spec.preprocessing.known:  # the file's own input space, unknown: a spread like a normalised image's
        normalised = rng.standard_normal(normalised.shape).astype(np.float32)
    feed = pixels if spec.takes_pixels else normalised
    x = np.transpose(normalised, (0, 2, 3, 1)) if image.layout == "NHWC" else normalised
    if image.dtype == "uint8":
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return feed, np.ascontiguousarray(x)


def _relative(graph: np.ndarray, file: np.ndarray) -> float:
    return float(np.abs(graph - file).max() / max(float(np.abs(file).max()), 1e-12))


def _run(session, names: list[str] | None, feeds: dict[str, np.ndarray], batch: int | None) -> list[np.ndarray]:
    """The session on the feeds, image by image where the file's batch is fixed."""
    step = batch or len(next(iter(feeds.values())))
    count = len(next(iter(feeds.values())))
    try:
        parts = [session.run(names, {k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, count, step)]
    except Exception as exc:  # onnxruntime's own exception types
        raise ValidationError(
            f"onnxruntime cannot run the file on the check's inputs ({first_line(exc)[:160]}); the graph was not "
            "written"
        ) from None
    if len(parts) == 1:
        return parts[0]
    batched = [np.ndim(first) > 0 and len(first) == step for first in parts[0]]  # else the same for every image
    return [np.concatenate(c) if b else c[0] for c, b in zip(zip(*parts, strict=True), batched, strict=True)]


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float64: float initializers, constants, casts and IO made double."""
    double = onnx.ModelProto()
    double.CopyFrom(model)
    graph = double.graph
    del graph.value_info[:]
    for tensor in [*graph.initializer, *_constant_tensors(graph)]:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.DOUBLE
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return double


def _constant_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    return [
        a.t
        for n in graph.node
        if n.op_type in ("Constant", "ConstantOfShape")
        for a in n.attribute
        if a.t.dims or a.t.data_type
    ]


class LayerNormalization(OpRun):
    """ONNX LayerNormalization in the input's precision (onnx's reference keeps its statistics in float32,
    ``stash_type`` 1, and implements no other)."""

    op_domain = ""

    def _run(self, x, scale, bias=None, axis=None, epsilon=None, stash_type=None):
        axes = tuple(range((-1 if axis is None else axis) % x.ndim, x.ndim))
        centred = x - x.mean(axis=axes, keepdims=True)
        variance = (centred**2).mean(axis=axes, keepdims=True)
        y = centred / np.sqrt(variance + (1e-5 if epsilon is None else epsilon)) * scale
        return (y if bias is None else y + bias,)


class Erf(OpRun):
    """ONNX Erf in float64 (onnx's reference rounds it through float32)."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


# onnx's reference ops that lose float64, replaced.
_FLOAT64_OPS = [LayerNormalization, Erf]


class _Cut:
    """The file from the layer on, in float64 (onnx's reference evaluator, weights widened): the nodes that read
    the layer's tensor, directly or not; what else they read (``reads``: a skip connection from before the layer,
    a shape) comes from the file's own run on the image in onnxruntime (:meth:`around`)."""

    def __init__(self, model: onnx.ModelProto, layer: str, logits: str) -> None:
        from onnx.reference import ReferenceEvaluator

        double = as_float64(model)
        after, reads, nodes = {layer}, [], []
        for node in double.graph.node:
            if any(name in after for name in node.input):
                nodes.append(node)
                after.update(o for o in node.output if o)
                reads.extend(name for name in node.input if name and name not in after)
        constants = {t.name for t in double.graph.initializer}
        self.reads = [name for name in dict.fromkeys(reads) if name not in constants]
        self.name, self.logits = layer, logits
        self.layer, self.fixed = np.zeros(0), {}
        typeless = [
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in [layer, *self.reads]
        ]
        outputs = [onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.DOUBLE, None)]
        used = {name for n in nodes for name in n.input}
        initializers = [t for t in double.graph.initializer if t.name in used]
        graph = onnx.helper.make_graph(nodes, "cut", typeless, outputs, initializer=initializers)
        cut = onnx.helper.make_model(graph, opset_imports=double.opset_import, ir_version=double.ir_version)
        self.evaluator = ReferenceEvaluator(cut, new_ops=_FLOAT64_OPS)

    def around(self, layer: np.ndarray, reads: dict[str, np.ndarray]) -> None:
        """The point to differentiate at: the layer's tensor and the rest the cut reads, from one run."""
        self.layer = layer.astype(np.float64)
        self.fixed = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in reads.items()}

    def scores(self, replaced: np.ndarray) -> np.ndarray:
        return np.asarray(self.evaluator.run([self.logits], {self.name: replaced, **self.fixed})[0], np.float64)


def _worst_direction(cut: _Cut, out: dict, layout: Layout, rng: np.random.Generator) -> float:
    """The worst |finite difference - ⟨g, v⟩| / max(|⟨g, v⟩|, ‖g‖·‖v‖/√n) over the directions and images (the
    second term: the typical size of ⟨g, v⟩ for a random direction of n elements)."""
    classes = out["class_index"].astype(np.int64)
    rows = np.arange(len(classes))
    flat_g = out["gradients"].astype(np.float64).reshape(len(classes), -1)
    size = np.abs(cut.scores(cut.layer)[rows, classes]).max()
    typical_norm = np.linalg.norm(flat_g, axis=1).min() + 1e-300  # ⟨g, v⟩'s typical size, v of unit RMS
    step = max(STEP * float(np.sqrt(np.mean(cut.layer**2))), ROUNDING * size / typical_norm)
    worst = 0.0
    for _ in range(DIRECTIONS):
        v_map = torch.from_numpy(rng.standard_normal(out["gradients"].shape))
        v = layout.from_map(v_map, torch.zeros_like(torch.from_numpy(cut.layer))).numpy()
        plus, minus = cut.scores(cut.layer + step * v), cut.scores(cut.layer - step * v)
        difference = (plus[rows, classes] - minus[rows, classes]) / (2 * step)
        flat_v = v_map.reshape(len(classes), -1).numpy()
        directional = np.sum(flat_g * flat_v, axis=1)
        typical = np.linalg.norm(flat_g, axis=1) * np.linalg.norm(flat_v, axis=1) / np.sqrt(flat_v.shape[1])
        errors = np.abs(difference - directional) / np.maximum(np.maximum(np.abs(directional), typical), 1e-300)
        worst = max(worst, float(errors.max()))
    return worst


def _heatmaps(out: dict, spec: GraphSpec) -> float:
    """Every gradient method's heatmap from the graph's A and g in float64, against the graph's."""
    done = _FromGraph(torch.from_numpy(out["activations"]).double(), torch.from_numpy(out["gradients"]).double())
    worst = 0.0
    for name in spec.methods:
        if not METHOD_SPECS[name].gradient:
            continue
        cam = METHODS[name].reference(done).cam
        want = reference.heatmap(cam, spec.preprocessing.image_size)
        worst = max(worst, float(np.abs(out[spec.heatmap_of(name)] - want).max()))
    return worst


@dataclass(frozen=True)
class _FromGraph:
    """A gradient method's reference reads only A and g."""

    activations: torch.Tensor
    gradients: torch.Tensor
