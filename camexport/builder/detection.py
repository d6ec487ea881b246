"""Detection graphs: a torchvision detector traced with every detection's gradient, and its validation.

The graph runs the detector once to the explained layer, then M copies of the layer's output on through the rest of
the network (the copy-major batch ``[M·N, ...]``): copy d's score is detection d's, so one backward pass gives each
detection its own gradient ``[N, M, C, h, w]``, never M runs of the graph. (``torch.autograd.grad`` with
``is_grads_batched`` would run the forward once and the backward M times, but its batching rules fix the batch size
while tracing; the copies keep it symbolic.) The detections are chosen on copy 0 by the detector's post-processing
(:func:`camexport.builder.detectors.select`). Each gradient method's map is computed per detection from ``(A, g)``.

Validation (:func:`validate`) holds the graph in onnxruntime against three references: the torchvision detector's own
``forward`` (boxes, scores, labels), each detection's score in float64 by central finite differences along random
directions of the layer's output (the gradients), and float64 eager autograd with the methods of
:mod:`camexport.builder.reference` (the gradients in whole, the maps).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from camexport.builder import nanodet, reference
from camexport.builder.comparison import Case, CaseResult, OutputCheck, compare_outputs, relative_l2
from camexport.builder.detectors import DenseDetector, Postprocess, family_of, one_hots, select
from camexport.builder.layers import LayerInfo, describe_layers
from camexport.builder.layouts import CHANNELS_FIRST
from camexport.builder.methods import REGISTRY as METHODS
from camexport.builder.methods import LayerPass, normalised_heatmap
from camexport.builder.tracing import TracedExplainer, exportable, model_state, network_input, symbolic_inputs
from camexport.builder.two_stage import EagerTwoStage, TwoStage
from camexport.builder.validation import SPREAD_FACTOR, raise_worst
from camexport.contract import DEFAULT_MAX_DETECTIONS, Detection, GraphSpec
from camexport.errors import ImageSizeError, UnknownLayerError, UserError
from camexport.runtime.preprocess import normalise, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession

# A detection's box and score against the detector's own forward pass: fractions of the image side and of 1.
BOX_TOLERANCE, SCORE_TOLERANCE = 1e-4, 1e-4
# Finite differences in float64: the step as a fraction of A's RMS, and the agreement wanted of <g, v>, as a
# fraction of |g|·|v| (the step's truncation error is O(step²) of smooth scores, ReLU kinks a step away aside).
FD_STEP, FD_TOLERANCE, FD_DIRECTIONS = 1e-6, 1e-4, 2
FD_CHECK = "gradients · v (finite differences)"
KINK_STEPS, KINK_DRAWS = (1e-6, 1e-5), 2


def detection_parts(loaded, image_size, max_detections: int, score_threshold: float | None):
    """The dense detector at the graph's size and its post-processing.

    Raises:
        ImageSizeError: a size the detector would pad (FPN detectors pad to multiples of 32).
    """
    detector, name = loaded.module, loaded.name
    size = tuple(image_size) if image_size is not None else loaded.preprocessing.image_size
    step = int(getattr(detector.transform, "size_divisible", 1))
    if any(side % step for side in size):
        raise ImageSizeError(
            f"image_size={size}: {name} pads images to multiples of {step}; use a size that is one "
            f"(e.g. {tuple(max(step, round(side / step) * step) for side in size)})"
        )
    family = family_of(detector)
    if family.kind == "NanoDet":
        nanodet.check_size(size)
    holder = detector.roi_heads if family.two_stage else detector  # where the thresholds are
    threshold = float(holder.score_thresh if score_threshold is None else score_threshold)
    found = Detection(max_detections, threshold, float(holder.nms_thresh))
    if family.two_stage:
        heads = detector.roi_heads
        if heads.has_mask() or heads.has_keypoint():
            kind = "Mask R-CNN's masks" if heads.has_mask() else "Keypoint R-CNN's keypoints"
            raise UserError(
                f"{name}: {kind} are not explained (only boxes are); load its weights into torchvision's FasterRCNN "
                "(strict=False) in a factory to explain its boxes"
            )
        dense = TwoStage(detector, size)
        return dense, Postprocess(int(detector.rpn.post_nms_top_n()), found, dense.level_sizes, per_class=True)
    dense = DenseDetector(detector, family, size)
    post = Postprocess(int(detector.topk_candidates), found, dense.level_sizes, family.per_class)
    candidates = post.candidates(dense.classes)
    if max_detections > candidates:
        raise UserError(
            f"max_detections={max_detections}: {name} keeps at most {candidates} candidates before NMS; "
            f"use at most {candidates}"
        )
    return dense, post


def default_detection_layer(dense: DenseDetector) -> str:
    """A map every detection depends on, before the levels split: an FPN detector's first backbone stage that the
    pyramid takes (stride 8: ``backbone.body.layer2``), every level computed from it; else (SSD) the backbone
    module that finishes the first source map last (``backbone.features.0``, VGG's ``backbone.features``); a family's
    own rule where it has one (:attr:`camexport.builder.detectors.Family.default_layer`)."""
    family = getattr(dense, "family", None)
    if family is not None and family.default_layer is not None:
        return dense.family.default_layer(dense)
    body = getattr(dense.backbone, "body", None)
    if body is not None and hasattr(body, "return_layers"):
        return f"backbone.body.{next(iter(body.return_layers))}"
    finished: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: finished.append((name, tuple(out.shape))))
        for name, module in dense.backbone.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            first = next(iter(dense.backbone(torch.zeros(1, 3, *dense.image_size)).values()))
    finally:
        for handle in handles:
            handle.remove()
    same = [name for name, shape in finished if shape == tuple(first.shape)]
    if not same:
        raise UnknownLayerError("no backbone module gives the detector's first feature map; pass `layer`")
    return f"backbone.{same[-1]}"


def describe_detector_layers(loaded, image_size: tuple[int, int] | None, everything: bool = False) -> list[str]:
    """``camexport layers`` for a detector: its backbone's and head's modules in execution order, the default marked."""
    dense, _ = detection_parts(loaded, image_size, DEFAULT_MAX_DETECTIONS, None)
    chosen = default_detection_layer(dense)
    return describe_layers(dense, dense.image_size, loaded.name, everything, loaded.preprocessing.channels, chosen)


def detection_layer(dense: DenseDetector, name: str) -> LayerInfo:
    """The explained layer: a module of the detector whose output is a map [N, C, h, w].

    Raises:
        UnknownLayerError: no such module, or its output is not a 4-D map.
    """
    names = [n for n, _ in dense.named_modules() if n and n != "anchors"]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'camexport layers MODEL' for the names"
        raise UnknownLayerError(f"layer '{name}' is not a module of the detector: {hint}")
    shapes: list[tuple[int, ...]] = []
    handle = dense.get_submodule(name).register_forward_hook(
        lambda _m, _i, out: shapes.append(tuple(out.shape) if isinstance(out, torch.Tensor) else ())
    )
    try:
        with torch.no_grad():
            dense(torch.zeros(1, 3, *dense.image_size))
    finally:
        handle.remove()
    if len(shapes) != 1 or len(shapes[0]) != 4:
        gives = f"runs {len(shapes)} times" if len(shapes) != 1 else f"gives {list(shapes[0]) or 'no tensor'}"
        raise UnknownLayerError(
            f"layer '{name}' {gives}: a detection is explained at a module that gives one map [N, C, h, w] "
            "(a backbone stage); leave `layer` out for the detector's default"
        )
    return LayerInfo(name, shapes[0], 1, 0)


@contextlib.contextmanager
def _copies(layer: nn.Module, copies: int, copy_input: bool) -> Iterator[list[torch.Tensor]]:
    """While open, the layer's output is replaced by a leaf that requires its gradient: its M copies (copy-major
    [M·N, ...]), or itself where the copies start at the image; the leaf is the yielded list's one item."""
    leaves: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        copied = output if copy_input else output.repeat(copies, 1, 1, 1)
        leaves.append(copied.detach().contiguous().requires_grad_(True))
        return leaves[0]

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad(), exportable():
            yield leaves
    finally:
        handle.remove()


def make_detect_function(
    dense: DenseDetector, spec: GraphSpec, post: Postprocess, names: list[str], copy_input: bool = False
):
    """``fn(state, image, target_class) -> outputs`` in :attr:`GraphSpec.output_names` order (see the module).

    ``copy_input``: the M copies start at the image, not at the layer (for a layer whose output the network joins
    with maps from before it: a level of a pyramid, a block inside a residual)."""
    copies = spec.detection.max_detections

    def explain(params: dict, given: torch.Tensor, target_class: torch.Tensor, n: object):
        boxes, scores = functional_call(dense, params, (given,))
        chosen = select(boxes[:n].detach(), scores[:n].detach(), target_class, post)
        at_anchor, at_class = one_hots(chosen, scores.shape[1], scores.shape[2], scores.dtype)
        per_copy = scores.reshape(copies, n, *scores.shape[1:]).transpose(0, 1)  # [N, M, A, K]
        explained = ((at_anchor.unsqueeze(2) @ per_copy).squeeze(2) * at_class).sum()
        return (at_anchor @ boxes[:n].detach(), chosen.score, chosen.label), explained

    return _with_copies(dense, spec, names, copy_input, explain)


def make_two_stage_function(dense: TwoStage, spec: GraphSpec, names: list[str], copy_input: bool = False):
    """:func:`make_detect_function` for a two-stage detector: the detections chosen on the first copy's maps,
    each copy's score at its detection's proposal and class (:meth:`TwoStage.forward`)."""

    def explain(params: dict, given: torch.Tensor, target_class: torch.Tensor, n: object):
        boxes, score, label, explained = functional_call(dense, params, (given, target_class, spec.detection, n))
        return (boxes, score, label), explained

    return _with_copies(dense, spec, names, copy_input, explain)


def _with_copies(dense: nn.Module, spec: GraphSpec, names: list[str], copy_input: bool, explain):
    """The traced function: the image normalised, the M copies from the layer (or the image) on, ``explain``'s
    detections and explained scores' sum, one backward pass to the copies, the maps."""
    layer, copies = dense.get_submodule(spec.layer), spec.detection.max_detections

    def detect(state: list[torch.Tensor], image: torch.Tensor, target_class: torch.Tensor):
        image = network_input(image, spec)
        n = image.shape[0]
        with _copies(layer, copies, copy_input) as leaves:
            given = image.repeat(copies, 1, 1, 1) if copy_input else image
            found, explained = explain(dict(zip(names, state, strict=True)), given, target_class, n)
            (gradients,) = torch.autograd.grad(explained, leaves[0])
        return _detection_outputs(spec, found, leaves[0].detach(), gradients, n)

    return detect


def _detection_outputs(spec: GraphSpec, found, activations, gradients, n) -> tuple[torch.Tensor, ...]:
    """The graph's outputs from the detections and the copies' activations and gradients [M·N, C, h, w]."""
    copies = spec.detection.max_detections
    done = LayerPass(found[2], activations, gradients, CHANNELS_FIRST, activations, None, _no_rerun)
    maps = [_per_detection(METHODS[m].graph(done).cam, copies, n, spec.preprocessing.image_size) for m in spec.methods]
    outputs = (*found, *maps[0], activations[:n], _per_copy(gradients, copies, n))
    return outputs + tuple(t.clone() for pair in maps for t in pair) if len(maps) > 1 else outputs


def _no_rerun(output: torch.Tensor, entry: torch.Tensor | None) -> torch.Tensor:
    raise AssertionError("gradient-free methods do not explain detections")


def _per_copy(t: torch.Tensor, copies: int, n: object) -> torch.Tensor:
    """Copy-major [M·N, ...] → [N, M, ...]."""
    return t.reshape(copies, n, *t.shape[1:]).transpose(0, 1)


def _per_detection(cam: torch.Tensor, copies: int, n: object, size) -> tuple[torch.Tensor, torch.Tensor]:
    """A method's maps of the copies → (heatmap [N, M, H, W], cam [N, M, h, w])."""
    heat = normalised_heatmap(cam, (int(size[0]), int(size[1])))
    return _per_copy(heat, copies, n), _per_copy(cam, copies, n)


def trace_detector(dense: DenseDetector, spec: GraphSpec, post: Postprocess, seed: int = 0) -> TracedExplainer:
    """Traces the detection graph with a symbolic batch (as :func:`camexport.builder.tracing.trace_explainer`): the
    M copies from the layer on, or, where the network joins the layer's output with maps from before it (tracing
    then fails on the batch sizes), from the image on (the part before the layer then runs M times too)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from camexport.builder.decompositions import backward_decompositions

    names, state = model_state(dense)
    inputs = symbolic_inputs(spec, state, seed)
    one_stage = functools.partial(make_detect_function, post=post)
    make = make_two_stage_function if isinstance(dense, TwoStage) else one_stage
    try:
        detect = make(dense, spec, names=names)
        graph = make_fx(detect, tracing_mode="symbolic", decomposition_table=backward_decompositions())(*inputs)
    except RuntimeError:  # the network joins the layer's copies with maps from before it: copy from the image
        inputs = symbolic_inputs(spec, state, seed)
        detect = make(dense, spec, names=names, copy_input=True)
        graph = make_fx(detect, tracing_mode="symbolic", decomposition_table=backward_decompositions())(*inputs)
    return TracedExplainer(graph, state, names, spec)


@dataclass
class Reference:
    """The float64 references of one case: the detector's own detections, and per detection the eager gradient."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def detector_forward(detector: nn.Module, spec: GraphSpec, image: np.ndarray, target: np.ndarray | None) -> Reference:
    """The torchvision detector's own ``forward`` (``detector``: its float64 copy) on the un-normalised images (its
    transform at the graph's size, so that it resizes nothing), its first M detections over the graph's threshold (of
    the ``target`` class where one is given: NMS is per class, so filtering after it is filtering before), padded as
    the graph pads. In float64: a float32 forward is no nearer the exact scores than the graph (measured: Faster
    R-CNN v2 at 256, torchvision's float32 scores 1.1e-4 off its float64 ones, the graph's 6e-5)."""
    prep, detection = spec.preprocessing, spec.detection
    mean, std = (np.asarray(v, np.float64).reshape(1, -1, 1, 1) for v in (prep.mean, prep.std))
    pixels = torch.from_numpy(image.astype(np.float64) * std + mean)
    slots = detection.max_detections
    boxes, scores = np.zeros((len(image), slots, 4), np.float32), np.zeros((len(image), slots), np.float32)
    labels = np.full((len(image), slots), -1, np.int64)
    with torch.no_grad(), _as_graph(detector, spec):
        found = detector(list(pixels.to(next(detector.parameters()).dtype)))
    for i, one in enumerate(found):
        wanted = -1 if target is None else int(target[min(i, len(target) - 1)])
        keep = (one["labels"] == wanted) | (wanted < 0)
        k = min(slots, int(keep.sum()))
        for out, key in ((boxes, "boxes"), (scores, "scores"), (labels, "labels")):
            out[i, :k] = one[key][keep][:k].numpy()
    return Reference(boxes, scores, labels)


class _as_graph:
    """The detector set to the graph's size and thresholds for the duration (its transform resizes nothing)."""

    def __init__(self, detector: nn.Module, spec: GraphSpec) -> None:
        self.detector, self.spec = detector, spec

    def __enter__(self) -> None:
        d, (h, w), detection = self.detector, self.spec.preprocessing.image_size, self.spec.detection
        t, holder = d.transform, getattr(d, "roi_heads", d)  # a two-stage detector's thresholds are its heads'
        self.saved = (t.min_size, t.max_size, t.fixed_size, holder.score_thresh, holder.detections_per_img)
        t.min_size, t.max_size = (min(h, w),), max(h, w)
        if t.fixed_size is not None:
            t.fixed_size = (w, h)
        holder.score_thresh = detection.score_threshold
        holder.detections_per_img = 10**9  # every detection: a class's may lie past the detector's own cut

    def __exit__(self, *exc: object) -> None:
        t, holder = self.detector.transform, getattr(self.detector, "roi_heads", self.detector)
        t.min_size, t.max_size, t.fixed_size, holder.score_thresh, holder.detections_per_img = self.saved


def _check_predictions(graph: dict[str, np.ndarray], want: Reference, size: int) -> list[OutputCheck]:
    labels_equal = np.array_equal(graph["labels"], want.labels)
    box_diff = float(np.abs(graph["boxes"] - want.boxes).max()) / size
    score_diff = float(np.abs(graph["scores"] - want.scores).max())
    return [
        OutputCheck("labels", 0.0 if labels_equal else 1.0, 0.0, 0.0, labels_equal),
        OutputCheck(
            "boxes", box_diff, float(np.abs(want.boxes).max()) / size, BOX_TOLERANCE, box_diff <= BOX_TOLERANCE
        ),
        OutputCheck("scores", score_diff, float(want.scores.max()), SCORE_TOLERANCE, score_diff <= SCORE_TOLERANCE),
    ]


class EagerDetector:
    """The dense detector in float64 with the layer's output replaceable: each detection's score as a function of
    A, its eager autograd gradient, and central finite differences of it."""

    def __init__(self, dense: DenseDetector, spec: GraphSpec) -> None:
        self.dense = _float64_copy(dense)
        self.layer = self.dense.get_submodule(spec.layer)
        self.spec = spec

    def layer_output(self, image: np.ndarray) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
        try:
            with torch.no_grad():
                self.dense(torch.from_numpy(image).double())
        finally:
            handle.remove()
        return captured[0]

    def scores(self, image: np.ndarray, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every anchor's (box, class scores) with the layer's output replaced by ``A``."""
        handle = self.layer.register_forward_hook(lambda _m, _i, _out: A)
        try:
            return self.dense(torch.from_numpy(image).double())
        finally:
            handle.remove()

    def identify(self, image: np.ndarray, A: torch.Tensor, graph: dict[str, np.ndarray]) -> np.ndarray:
        """Each filled slot's anchor (−1 for an empty slot): the anchor whose box and score in the slot's class are
        nearest the graph's."""
        with torch.no_grad():
            boxes, scores = (t.numpy() for t in self.scores(image, A))
        anchors = np.full(graph["labels"].shape, -1, np.int64)
        for n, d in zip(*np.nonzero(graph["labels"] >= 0), strict=True):
            k = graph["labels"][n, d]
            distance = np.abs(boxes[n] - graph["boxes"][n, d]).sum(1) + 1e3 * np.abs(
                scores[n, :, k] - graph["scores"][n, d]
            )
            anchors[n, d] = int(distance.argmin())
        return anchors


def _float64_copy(dense: DenseDetector) -> DenseDetector:
    return copy.deepcopy(dense).double()


def eager_gradients(eager: EagerDetector, image: np.ndarray, A: torch.Tensor, anchors: np.ndarray, labels):
    """Each filled slot's ∂s/∂A by float64 autograd, [N, M, C, h, w] (zeros for an empty slot): one backward pass
    per slot, over the batch (the images' scores are independent)."""
    gradients = torch.zeros((*anchors.shape, *A.shape[1:]), dtype=torch.float64)
    rows = torch.arange(len(image))
    for d in range(anchors.shape[1]):
        filled = torch.from_numpy(anchors[:, d] >= 0)
        if not filled.any():
            continue
        leaf = A.clone().requires_grad_(True)
        _, scores = eager.scores(image, leaf)
        picked = scores[rows, torch.from_numpy(anchors[:, d]).clamp(min=0), torch.from_numpy(labels[:, d]).clamp(min=0)]
        (g,) = torch.autograd.grad((picked * filled).sum(), leaf)
        gradients[:, d] = g
    return gradients


def finite_differences(
    eager: EagerDetector, image: np.ndarray, A: torch.Tensor, anchors: np.ndarray, labels: np.ndarray, v: torch.Tensor
) -> np.ndarray:
    """Each slot's directional derivative of its score along ``v`` [N, C, h, w], by central differences [N, M]."""
    step = FD_STEP * float(A.pow(2).mean().sqrt()) / max(float(v.pow(2).mean().sqrt()), 1e-30)
    rows = np.arange(len(image))[:, None]
    with torch.no_grad():
        up, down = (eager.scores(image, A + sign * step * v)[1].numpy() for sign in (1.0, -1.0))
    a, k = np.maximum(anchors, 0), np.maximum(labels, 0)
    return np.where(anchors >= 0, (up[rows, a, k] - down[rows, a, k]) / (2 * step), 0.0)


def check_case(graph: dict[str, np.ndarray], detector: nn.Module, eager: EagerDetector, case: Case, seed: int):
    """Every check of one case (see the module)."""
    spec, image = eager.spec, case.reference_input
    want = detector_forward(detector, spec, image, case.target_class)
    checks = _check_predictions(graph, want, max(spec.preprocessing.image_size))
    A = eager.layer_output(image)
    anchors = eager.identify(image, A, graph)
    g_ref = eager_gradients(eager, image, A, anchors, graph["labels"])
    checks += compare_outputs(graph, {"activations": A.numpy()})
    checks.append(_gradient_check(graph, eager, image, A, anchors, g_ref, seed))
    checks.append(_directional_check(graph, eager, image, A, anchors, seed))
    checks += compare_outputs(graph, reference_maps(spec, A, graph["gradients"]))
    found = [int(label) for label in graph["labels"].ravel() if label >= 0]
    return CaseResult(case.description, len(image), case.target_class is not None, found, checks)


def _gradient_check(graph, eager: EagerDetector, image, A, anchors, g_ref: torch.Tensor, seed: int) -> OutputCheck:
    """The gradients against float64 autograd. Where they differ over the tolerance, the reference's own spread
    decides, image by image: its gradients at A moved by :data:`KINK_STEPS` of A's RMS (from float32 rounding's
    scale up), :data:`KINK_DRAWS` random moves each. A ReLU kink near zero flips under such a move, and a float32
    pass may meet it on the other side (measured: FCOS, random weights, 256 x 256: one image's gradients 0.17% off
    the reference in relative L2 around one place, torchvision's own float32 autograd agreeing to 1.5e-6, and a
    1e-6 move of A moving the float64 reference by 0.24%). An image passes when its difference is within
    SPREAD_FACTOR x the largest spread found (finite differences must agree too: a separate check)."""
    (check,) = compare_outputs(graph, {"gradients": g_ref.numpy()})
    if check.passed:
        return check
    got, want = graph["gradients"], g_ref.numpy()
    errors = [relative_l2(got[n], want[n]) for n in range(len(want))]
    spreads = [0.0] * len(want)
    generator = torch.Generator().manual_seed(seed)
    scale = float(A.pow(2).mean().sqrt())
    for step in KINK_STEPS:
        for _ in range(KINK_DRAWS):
            moved = A + step * scale * torch.randn(A.shape, generator=generator, dtype=A.dtype)
            again = eager_gradients(eager, image, moved, anchors, graph["labels"]).numpy()
            spreads = [max(spreads[n], relative_l2(again[n], want[n])) for n in range(len(want))]
        if all(e <= SPREAD_FACTOR * s for e, s in zip(errors, spreads, strict=True)):
            break
    check.reference_spread = max(spreads)
    check.passed = all(e <= SPREAD_FACTOR * s for e, s in zip(errors, spreads, strict=True))
    return check


def reference_maps(spec: GraphSpec, A: torch.Tensor, gradients: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's cam and heatmap per detection in float64 (:mod:`camexport.builder.reference`) from A and the
    graph's gradients (checked on their own against autograd and finite differences): the maps' formulas and
    resizing, apart from the ReLU kinks a float32 pass may take on the other side."""
    n, m = gradients.shape[:2]
    flat_a = A[:, None].expand(n, m, *A.shape[1:]).reshape(n * m, *A.shape[1:])
    flat_g = torch.from_numpy(gradients).double().reshape(n * m, *A.shape[1:])
    size = spec.preprocessing.image_size
    maps = {}
    for method in spec.methods:
        cam = getattr(reference, method)(flat_a, flat_g)
        maps[spec.cam_of(method)] = cam.reshape(n, m, *cam.shape[1:]).numpy()
        maps[spec.heatmap_of(method)] = reference.heatmap(cam, size).reshape(n, m, *size)
    return maps


def _directional_check(graph, eager: EagerDetector, image, A, anchors, seed: int) -> OutputCheck:
    """⟨g, v⟩ of the graph's gradients against central differences, along FD_DIRECTIONS random directions."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.from_numpy(graph["gradients"]).double()
    worst = 0.0
    for _ in range(FD_DIRECTIONS):
        v = torch.randn(A.shape, generator=generator, dtype=torch.float64)
        fd = finite_differences(eager, image, A, anchors, graph["labels"], v)
        projected = (g * v[:, None]).sum(dim=(2, 3, 4)).numpy()
        scale = g.flatten(2).norm(dim=2).numpy() * v.flatten(1).norm(dim=1).numpy()[:, None]
        worst = max(worst, float((np.abs(projected - fd) / np.maximum(scale, 1e-30)).max()))
    return OutputCheck(FD_CHECK, worst, 1.0, FD_TOLERANCE, worst <= FD_TOLERANCE)


PHOTO_CASE = "Grace Hopper's photo mirrored and as is"


def _photos(spec: GraphSpec) -> tuple[np.ndarray, np.ndarray]:
    """The photo that ships with matplotlib, mirrored and as is, at the graph's size: the images (as the graph takes
    them) and normalised."""
    pixels = to_pixels(sample_photo("grace_hopper"), spec.preprocessing)
    both = np.stack([pixels[:, ::-1], pixels])
    normalised = normalise(both, spec.preprocessing)
    return (both if spec.takes_pixels else normalised), normalised


def validate(session: CamSession, detector: nn.Module, dense: DenseDetector, seed: int) -> tuple[list[CaseResult], int]:
    """Two cases on fresh random images: a batch of 2, every class; a batch of 1, the class of the first case's best
    detection only (``target_class``). Where the random images give no detection at all (real weights see nothing
    in noise), the cases take a real photo instead (:data:`PHOTO_CASE`).

    Returns:
        The cases' results, and how many of the first case's detections have an all-zero gradient (the layer does
        not reach their score: a level of a pyramid after the levels split, say).

    Raises:
        ValidationError: naming the worst failed check.
    """
    spec, rng = session.spec, np.random.default_rng(seed)
    prep = spec.preprocessing
    if spec.takes_pixels:  # uint8 pixels in; the references take them normalised
        pixels = rng.integers(0, 256, size=(2, *prep.image_size, prep.channels), dtype=np.uint8)
        images, normalised = pixels, normalise(pixels, prep)
    else:
        images = normalised = rng.standard_normal((2, prep.channels, *prep.image_size)).astype(np.float32)
    described = "random batch of 2"
    graph = session.run(images, None)
    if not (graph["labels"] >= 0).any() and prep.image_mode == "RGB":  # real weights find nothing in noise
        images, normalised = _photos(spec)
        described, graph = PHOTO_CASE, session.run(images, None)
    eager = EagerTwoStage(dense, spec) if isinstance(dense, TwoStage) else EagerDetector(dense, spec)
    detector = copy.deepcopy(detector).double()
    first = Case(f"{described}, every class (target_class [-1])", images, None, normalised)
    results = [check_case(graph, detector, eager, first, seed)]
    found = graph["labels"][1][graph["labels"][1] >= 0]
    best = int(found[0]) if found.size else -1
    one = "random batch of 1" if described != PHOTO_CASE else "the photo"
    second = Case(f"{one}, only class {best} (target_class [{best}])", images[1:], np.array([best]), normalised[1:])
    results.append(check_case(session.run(second.image, second.target_class), detector, eager, second, seed + 1))
    raise_worst(results)
    filled = graph["labels"] >= 0
    unreached = int((filled & ~graph["gradients"].reshape(*filled.shape, -1).any(axis=2)).sum())
    return results, unreached
