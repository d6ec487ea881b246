"""The graph contract: one typed description of a camexport graph, :class:`GraphSpec`. No torch here.

Both wings use this one module. The build side fills a :class:`GraphSpec` once and passes it along: tracing
computes the outputs it lists, export names the graph's inputs, outputs and dimensions after it and stores
:meth:`GraphSpec.to_props` as the graph's metadata, validation checks the written graph against it. The run side
reads it back (:meth:`GraphSpec.from_props`) and checks the loaded graph's inputs and outputs against it
(:meth:`GraphSpec.mismatches`). ``docs/contract.md``'s tables are generated from the records here
(``python docs/generate.py``; a test fails when they differ).

What varies between graphs is declared by two tables of records: :data:`TASKS` (what the network predicts, the
score explained, the inputs and outputs a task adds) and :data:`METHODS` (the CAM methods, their papers and
equations, and the outputs a method adds). The build side implements each record
(:mod:`camexport.builder.methods`, :mod:`camexport.builder.tasks`); the run side draws them
(:mod:`camexport.runtime.tasks`).

A graph carries ``camexport.contract``, the version of this contract. A reader refuses a version it does not
know with one line; graphs written before the key existed (camexport 0.1) follow version 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

from camexport.errors import ContractError, UserError

# Contract 2: ``target_class`` is a required input, int64 [N] or [1] (one class for the whole batch), −1 meaning
# each image's top-1 class. Contract 1 (graphs of camexport 0.1) made it optional with a default initializer
# [-1]; every onnxruntime warned on loading such a graph (an initializer that is also an input), and OpenVINO
# folded the default into a constant, so only the top-1 class could be explained there. A required input
# with one sentinel is as simple for C++, Java and JS callers (always pass [-1]) and every runtime honours it.
# Contract 3: a segmentation graph: logits [N, K, H, W], a ``region`` input and a ``segmentation`` output.
# Classifier graphs stay contract 2, so readers of contract 2 still read every classifier graph and refuse a
# segmentation graph with one line instead of misreading its logits. A task's record names its version.
# Contract 4: a detection graph: ``boxes``, ``scores`` and ``labels`` of M detection slots, and a map and a gradient
# per slot ([N, M, ...]) in place of the logits and the class.
READABLE_CONTRACTS = (1, 2, 3, 4)  # contract 1 graphs still run: an explicit target_class overrides their default

PREFIX = "camexport."

# ``heatmap`` is ``cam`` resized bilinearly (half-pixel centres) to the input size, then min-max scaled to
# [0, 1] per image; a map whose span is at most FLAT_MAP of its maximum (interpolation rounding) gives zeros.
FLAT_MAP = 1e-5

Dtype = Literal["float32", "int64", "uint8"]


@dataclass(frozen=True)
class OrderDependent:
    """An operator whose result may depend on the order threads or GPU blocks run in, or on a random draw.

    Attributes:
        op: the ONNX operator.
        why: the reason, for the build's refusal and the docs.
        with_reduction: refused only with a ``reduction`` other than ``none``. Without one, the exporter's scatters
            (slice and select assignments, a Swin window mask) write each index once, in any order alike.
    """

    op: str
    why: str
    with_reduction: bool = False

    def holds(self, op_type: str, reduction: str) -> bool:
        return op_type == self.op and (not self.with_reduction or reduction not in ("", "none"))


# What a camexport graph never holds, so that it gives the same outputs on every run, thread count and provider.
# Build refuses a graph with any of them and names the node (camexport.builder.export.check_deterministic);
# docs/contract.md lists them from here.
_ADDS = "adds duplicate indices in no fixed order (onnxruntime's CPU kernel splits them over threads"
NONDETERMINISTIC_OPS: tuple[OrderDependent, ...] = (
    OrderDependent("ScatterND", f"{_ADDS}: upstream issues #18048 and #23396; CUDA kernels use atomics)", True),
    OrderDependent("ScatterElements", f"{_ADDS}; CUDA kernels use atomics)", True),
    OrderDependent("MaxUnpool", "writes duplicate indices in no fixed order"),
    *(OrderDependent(op, "draws random numbers") for op in ("RandomNormal", "RandomNormalLike", "RandomUniform")),
    *(OrderDependent(op, "draws random numbers") for op in ("RandomUniformLike", "Multinomial", "Bernoulli")),
)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph.

    Attributes:
        name: its name in the graph.
        dtype: ``float32``, ``int64`` or ``uint8``.
        axes: the names of its dimensions (see :data:`AXES`): the spec resolves each to a number, a symbolic
            dimension of the graph, or None (any size).
        meaning: one line for the docs.
    """

    name: str
    dtype: Dtype
    axes: tuple[str, ...]
    meaning: str


# What each axis name stands for (the docs' legend). ``batch`` and ``target_batch`` are symbolic dimensions of
# every graph; ``H``/``W`` are named ``height``/``width`` in a graph of any image size.
AXES = {
    "batch": "images in the batch (dynamic)",
    "target_batch": "1 (one class for all images) or batch",
    "C": "image channels: the length of the metadata's mean and std (3 for RGB)",
    "H": "input height (`height`, dynamic, in a `--dynamic-size` graph)",
    "W": "input width (`width`, dynamic, in a `--dynamic-size` graph)",
    "K": "classes: the length of the metadata's labels",
    "D": "the explained layer's channels",
    "4": "a box's coordinates: x1, y1, x2, y2",
    "M": "detection slots: the graph's `max_detections` (an empty slot has score 0 and label −1)",
    "h": "the explained map's height",
    "w": "the explained map's width",
}
BATCH_DIM, TARGET_DIM, HEIGHT_DIM, WIDTH_DIM = "batch", "target_batch", "height", "width"
_NOUNS = {
    "C": "channels",
    "H": "rows",
    "W": "columns",
    "K": "classes",
    "M": "detection slots",
    "4": "coordinates",
}  # the axes the metadata fixes

IMAGE = TensorSpec(
    "image", "float32", ("batch", "C", "H", "W"), "the image, normalised as the metadata's mean and std say"
)
PIXELS = TensorSpec(
    "image", "uint8", ("batch", "H", "W", "C"), "`--input uint8` graphs: the pixels, scaled and normalised inside"
)
TARGET_CLASS = TensorSpec(
    "target_class",
    "int64",
    ("target_batch",),
    "the class to explain, −1 = each image's top-1 (any negative value reads so); required",
)
CLASS_INDEX = TensorSpec("class_index", "int64", ("batch",), "the class explained")
HEATMAP = TensorSpec(
    "heatmap", "float32", ("batch", "H", "W"), "`cam` resized bilinearly to the input, min-max scaled to [0, 1]"
)
CAM = TensorSpec("cam", "float32", ("batch", "h", "w"), "the raw map at the layer's resolution")
ACTIVATIONS = TensorSpec("activations", "float32", ("batch", "D", "h", "w"), "the layer's output A")
GRADIENTS = TensorSpec("gradients", "float32", ("batch", "D", "h", "w"), "g = ∂y_c/∂A, y_c the explained score")
CLASS_MAPS = TensorSpec(
    "class_maps",
    "float32",
    ("batch", "K", "h", "w"),
    "`--class-maps` graphs: every class's map from the same pass (each class's probability per masked position)",
)
BOXES = TensorSpec(
    "boxes", "float32", ("batch", "M", "4"), "each detection's box (x1, y1, x2, y2) in the input's pixels"
)
SCORES = TensorSpec(
    "scores", "float32", ("batch", "M"), "each detection's score, as the detector reports it; the explained score"
)
LABELS = TensorSpec("labels", "int64", ("batch", "M"), "each detection's class, −1 for an empty slot")
DETECTION_HEATMAP = TensorSpec("heatmap", "float32", ("batch", "M", "H", "W"), "each detection's `cam`, as `heatmap`")
DETECTION_CAM = TensorSpec("cam", "float32", ("batch", "M", "h", "w"), "each detection's raw map")
DETECTION_GRADIENTS = TensorSpec(
    "gradients", "float32", ("batch", "M", "D", "h", "w"), "g = ∂s/∂A for each detection's score s"
)
PER_METHOD = ("heatmap", "cam")  # a graph of several methods has ``heatmap_<m>`` and ``cam_<m>`` for each


@dataclass(frozen=True)
class TaskSpec:
    """What the network predicts and what a graph of it explains.

    Attributes:
        name: the task's name, ``camexport.task`` in the metadata.
        contract: the contract version its graphs follow.
        predictions: the network's outputs as the graph returns them, first (the logits and the class explained).
        score: what ``y_c``, the explained score, is (for the docs).
        inputs: the inputs the task adds after ``image`` and ``target_class``.
        outputs: the outputs it adds after the maps.
        maps: the heatmap, the raw map, A and g, in that order (a detection graph's are per detection).
    """

    name: str
    contract: int
    predictions: tuple[TensorSpec, ...]
    score: str
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    maps: tuple[TensorSpec, ...] = (HEATMAP, CAM, ACTIVATIONS, GRADIENTS)


REGION = TensorSpec(
    "region",
    "float32",
    ("batch", "H", "W"),
    "each pixel's weight in the explained score; −1 = the pixel counts where the graph predicts the class",
)
SEGMENTATION = TensorSpec("segmentation", "int64", ("batch", "H", "W"), "each pixel's predicted class")

CLASSIFICATION = TaskSpec(
    name="classification",
    contract=2,
    predictions=(TensorSpec("logits", "float32", ("batch", "K"), "the network's logits"), CLASS_INDEX),
    score="the explained class's logit (pre-softmax)",
)
SEGMENTATION_TASK = TaskSpec(
    name="segmentation",
    contract=3,
    predictions=(
        TensorSpec("logits", "float32", ("batch", "K", "H", "W"), "the network's logits per pixel"),
        CLASS_INDEX,
    ),
    score="the class's logits summed over the region (Seg-Grad-CAM, Vinogradova et al., AAAI 2020, eq. 1)",
    inputs=(REGION,),
    outputs=(SEGMENTATION,),
)
DETECTION_TASK = TaskSpec(
    name="detection",
    contract=4,
    predictions=(BOXES, SCORES, LABELS),
    score="each detection's score for its box and class, as the detector reports it (ODAM, Zhao et al., ICLR 2023)",
    maps=(DETECTION_HEATMAP, DETECTION_CAM, ACTIVATIONS, DETECTION_GRADIENTS),
)
TASKS: dict[str, TaskSpec] = {task.name: task for task in (CLASSIFICATION, SEGMENTATION_TASK, DETECTION_TASK)}
Task = Literal["classification", "segmentation", "detection"]


@dataclass(frozen=True)
class MethodSpec:
    """A CAM method, as the contract and the docs know it (its graph and reference are the build side's).

    Attributes:
        name: its name in ``--method``, ``camexport.method`` and ``heatmap_<name>``.
        title: the name the paper gives it.
        paper: authors, venue and year, and where to read it.
        equation: the formula, with the paper's equation number.
        gradient: computed from the gradient pass's A and g; False for a gradient-free method, which runs the
            rest of the network again.
        every_class: the method can give every class's map from its pass (the ``class_maps`` output).
    """

    name: str
    title: str
    paper: str
    equation: str
    gradient: bool = True
    every_class: bool = False


METHODS: dict[str, MethodSpec] = {
    method.name: method
    for method in (
        MethodSpec(
            "gradcampp",
            "Grad-CAM++",
            "Chattopadhyay et al., WACV 2018, arXiv 1710.11063",
            "eq. 19: α_kij = g² / (2g² + (Σ_ab A_kab)·g³), 0 where the denominator is 0; "
            "w_k = Σ_ij α_kij·ReLU(g_kij); cam = ReLU(Σ_k w_k A_k)",
        ),
        MethodSpec(
            "gradcam",
            "Grad-CAM",
            "Selvaraju et al., ICCV 2017, arXiv 1610.02391",
            "eq. 1: w_k = (1/hw) Σ_ij g_kij; cam = ReLU(Σ_k w_k A_k)",
        ),
        MethodSpec(
            "xgradcam",
            "XGrad-CAM",
            "Fu et al., BMVC 2020, arXiv 2008.02312",
            "eq. 9: w_k = Σ_ij (A_kij / Σ_ab A_kab)·g_kij, 0 where Σ_ab A_kab = 0; cam = ReLU(Σ_k w_k A_k)",
        ),
        MethodSpec(
            "layercam",
            "LayerCAM",
            "Jiang et al., IEEE TIP 2021",
            "eqs. 4-5: cam = ReLU(Σ_k ReLU(g_kij)·A_kij)",
        ),
        MethodSpec(
            "hirescam",
            "HiResCAM",
            "Draelos & Carin 2020, arXiv 2011.08891",
            "eq. 4: cam = ReLU(Σ_k g_kij·A_kij)",
        ),
        MethodSpec(
            "reciprocam",
            "ReciproCAM",
            "Byun & Lee, arXiv 2209.14074, CVPRW 2024; ViT-ReciproCAM: arXiv 2310.02588",
            "sec. 3: cam_ij = softmax(f(M_ij))_c, M_ij the layer's output masked by the 3x3 Gaussian at (i, j)",
            gradient=False,
            every_class=True,
        ),
    )
}
DEFAULT_METHOD = "gradcampp"
# A detector's default: HiResCAM's element-wise map, which ODAM (Zhao et al., ICLR 2023) uses to separate the
# detections of one class. Grad-CAM++'s and Grad-CAM's channel weights are global, so two detections of the same
# kind of object get the same map, over both (tests/runtime/test_detection.py shows either known answer).
DEFAULT_DETECTION_METHOD = "hirescam"


def parse_methods(spec: str) -> tuple[str, ...]:
    """``"gradcampp,layercam"`` (the command line's and the metadata's form) → ``("gradcampp", "layercam")``.

    Raises:
        UserError: empty, unknown or repeated names (see :func:`check_methods`).
    """
    return check_methods(tuple(part.strip() for part in spec.split(",")))


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods of one graph as a tuple, the first being the default (its map is also ``heatmap``/``cam``).

    Raises:
        UserError: empty, unknown or repeated names; the message names them and lists the known ones.
    """
    if isinstance(methods, str):
        raise UserError(f"methods={methods!r}: give a sequence of names, e.g. ({methods!r},)")
    names = tuple(methods)
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown or not all(names):
        shown = ", ".join(repr(n) for n in unknown) or repr(",".join(names))
        raise UserError(f"methods={shown}: unknown method(s); use one or more of {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise UserError(f"methods={','.join(names)!r}: a method is named twice; list each once")
    return names


# The image input: normalised float32 [N, C, H, W], or uint8 pixels [N, H, W, C] normalised inside; C is the
# number of values in the metadata's mean and std (3 for RGB classifiers).
InputKind = Literal["float32", "uint8"]
INPUT_KINDS: tuple[InputKind, ...] = ("float32", "uint8")

# The Pillow mode an image file is converted to for a graph of C channels: grayscale for 1, RGB for 3, and for
# 4 a four-band image (RGBA PNG or TIFF: the fourth band is data, not transparency). Other channel counts
# have no image file format; such graphs take arrays [H, W, C].
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class Preprocessing:
    """How an image is turned into the graph's ``image`` input (torchvision's and timm's eval transforms).

    Attributes:
        mean: per-channel mean subtracted after scaling pixels to [0, 1]; its length is the channel count.
        std: per-channel standard deviation divided by after subtracting the mean.
        image_size: (H, W) of the network input, i.e. of the centre crop.
        resize_size: length of the shorter image side after resizing, before the centre crop.
        interpolation: resampling filter for the resize: ``bilinear``, ``bicubic``, ``nearest`` or ``lanczos``.
        known: False for a graph built from an ONNX file without ``--mean``/``--std``: the graph takes its input
            as the file does, ``mean`` 0 and ``std`` 1 hold the place, and an image file is refused (arrays go in).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int]
    resize_size: int
    interpolation: str
    known: bool = True

    @property
    def channels(self) -> int:
        """The number of image channels the network takes (1 for grayscale, 3 for RGB)."""
        return len(self.mean)

    @property
    def image_mode(self) -> str | None:
        """The Pillow mode image files are converted to (:data:`IMAGE_MODES`); None: arrays only."""
        return IMAGE_MODES.get(self.channels)

    def with_image_size(self, size: tuple[int, int]) -> Preprocessing:
        """Returns a copy for another input size, keeping the resize-to-crop ratio."""
        ratio = self.resize_size / max(self.image_size)
        return replace(self, image_size=size, resize_size=round(max(size) * ratio))

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Resized size and crop box (in resized pixels) for an original ``width`` x ``height`` image."""
        scale = self.resize_size / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        crop_h, crop_w = self.image_size
        left = round((size[0] - crop_w) / 2.0)
        top = round((size[1] - crop_h) / 2.0)
        return size, (left, top, left + crop_w, top + crop_h)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of an original ``width`` x ``height`` image that the network sees, in its pixels.

        Returns:
            (left, top, right, bottom) in original-image coordinates (may reach outside the image when the
            crop is larger than the resized image).
        """
        (resized_w, resized_h), (left, top, right, bottom) = self.geometry(width, height)
        sx, sy = width / resized_w, height / resized_h
        return (left * sx, top * sy, right * sx, bottom * sy)


# A detection graph's slots: the default M, and the most (the graph carries M copies of the network after the layer).
DEFAULT_MAX_DETECTIONS, MAX_DETECTIONS = 10, 100


@dataclass(frozen=True)
class Detection:
    """What a detection graph keeps of the detector's output.

    Attributes:
        max_detections: M, the detection slots: the M best detections after non-maximum suppression.
        score_threshold: a detection's score must exceed it (the detector's own ``score_thresh`` by default).
        iou_threshold: non-maximum suppression's IoU above which the lower-scored box of a class goes (the
            detector's own).
    """

    max_detections: int
    score_threshold: float
    iou_threshold: float


@dataclass(frozen=True)
class Provenance:
    """Where a graph comes from, for humans and for ``--resume`` (a run is resumed with the same graph only).

    Attributes:
        model: the registry name or factory the graph was built from.
        weights: where the weights came from.
        random_weights: the weights are a seeded random initialisation: the labels name no real class.
        version: the camexport version that built the graph.
    """

    model: str
    weights: str = ""
    random_weights: bool = False
    version: str = ""


@dataclass(frozen=True)
class GraphSpec:
    """One camexport graph: what it explains, how, and what it takes and returns.

    Attributes:
        task: the network's task, a key of :data:`TASKS`.
        layer: the explained layer's dotted name.
        methods: the CAM methods (keys of :data:`METHODS`), the first being the plain ``heatmap``/``cam``.
        labels: class names, one per logit.
        preprocessing: what the network expects of an input image.
        provenance: the model, its weights, the camexport that built the graph.
        input: ``float32`` (normalised [N, C, H, W]) or ``uint8`` (pixels [N, H, W, C]).
        dynamic_size: the graph takes any image height and width.
        background: a segmentation graph's background class, explained by default only where no other class
            is predicted (None: every class counts alike).
        masked_block: the module whose input ReciproCAM masks along with the layer's output (a transformer
            block around its first normalisation: its skip connection), or None.
        class_maps: the graph outputs every class's map (:data:`CLASS_MAPS`; a method with ``every_class``).
        detection: a detection graph's slots and thresholds (None for other tasks).
        contract: the contract version; None takes the task's.
    """

    task: Task
    layer: str
    methods: tuple[str, ...]
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    provenance: Provenance
    input: InputKind = "float32"
    dynamic_size: bool = False
    background: int | None = None
    masked_block: str | None = None
    class_maps: bool = False
    detection: Detection | None = None
    contract: int | None = None

    def __post_init__(self) -> None:
        if self.contract is None:
            object.__setattr__(self, "contract", TASKS[self.task].contract)

    @property
    def task_spec(self) -> TaskSpec:
        """The task's record."""
        return TASKS[self.task]

    @property
    def segments(self) -> bool:
        """True for a segmentation graph (logits [N, K, H, W], a ``region`` input)."""
        return self.task == SEGMENTATION_TASK.name

    @property
    def takes_pixels(self) -> bool:
        """True for a ``uint8`` graph: ``image`` is uint8 [N, H, W, C] pixels, normalised inside."""
        return self.input == "uint8"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """``image``, ``target_class``, then the task's inputs."""
        return (PIXELS if self.takes_pixels else IMAGE, TARGET_CLASS, *self.task_spec.inputs)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The outputs in graph order: the logits, the class, the first method's maps, A and g; for several
        methods each one's ``heatmap_<m>`` and ``cam_<m>``; ``class_maps`` if asked; then the task's."""
        task = self.task_spec
        outputs = task.predictions + task.maps
        if len(self.methods) > 1:
            outputs += tuple(per_method(spec, m) for m in self.methods for spec in task.maps[:2])
        if self.class_maps:
            outputs += (CLASS_MAPS,)
        return outputs + self.task_spec.outputs

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def heatmap_of(self, method: str) -> str:
        """The output holding ``method``'s heatmap: ``heatmap`` in a graph of one method, else ``heatmap_<m>``."""
        return HEATMAP.name if len(self.methods) == 1 else f"{HEATMAP.name}_{method}"

    def cam_of(self, method: str) -> str:
        """The output holding ``method``'s raw map (see :meth:`heatmap_of`)."""
        return CAM.name if len(self.methods) == 1 else f"{CAM.name}_{method}"

    def axis(self, name: str) -> int | str | None:
        """One axis of :data:`AXES` in this graph: a number, a symbolic dimension's name, or None (any size)."""
        height, width = self.preprocessing.image_size
        size = {"H": HEIGHT_DIM, "W": WIDTH_DIM} if self.dynamic_size else {"H": height, "W": width}
        known = {"batch": BATCH_DIM, "target_batch": TARGET_DIM, "C": self.preprocessing.channels, "4": 4}
        slots = {"M": self.detection.max_detections} if self.detection else {}
        return {**known, **size, **slots, "K": len(self.labels)}.get(name)

    def dims(self, tensor: TensorSpec) -> tuple[int | str | None, ...]:
        """``tensor``'s dimensions in this graph (see :meth:`axis`)."""
        return tuple(self.axis(name) for name in tensor.axes)

    def mismatches(self, inputs: Mapping[str, Signature], outputs: Mapping[str, Signature]) -> list[str]:
        """How a graph's inputs and outputs (name → (dtype, dims)) differ from this spec: names, order of the
        outputs, dtypes, ranks, and every dimension the spec fixes. A symbolic dimension of the spec may be
        symbolic under any name in the graph, or a number only in a graph of contract 1."""
        if set(inputs) != set(self.input_names) or tuple(outputs) != self.output_names:
            want = f"inputs {sorted(self.input_names)} and outputs {list(self.output_names)}"
            return [f"inputs {sorted(inputs)} and outputs {list(outputs)}, not {want}"]
        found = {**inputs, **outputs}
        return [
            problem for spec in (*self.inputs, *self.outputs) for problem in self._differences(spec, found[spec.name])
        ]

    def _differences(self, tensor: TensorSpec, signature: Signature) -> list[str]:
        """How one tensor of a graph differs from the spec's (see :meth:`mismatches`)."""
        dtype, dims = signature
        want = self.dims(tensor)
        if dtype != tensor.dtype or len(dims) != len(want):
            return [f"{tensor.name} is {dtype} of rank {len(dims)}, not {tensor.dtype} of rank {len(want)}"]
        problems = []
        for axis, got, wanted in zip(tensor.axes, dims, want, strict=True):
            if isinstance(wanted, int) and isinstance(got, int) and got != wanted:
                problems.append(f"{tensor.name} has {got} {_NOUNS[axis]} where the metadata says {wanted}")
            if isinstance(wanted, str) and isinstance(got, int) and self.contract != 1:
                problems.append(f"{tensor.name}'s {axis} is fixed at {got}, not dynamic")
        return problems

    def to_props(self) -> dict[str, str]:
        """The metadata props, the one writer of the contract: strings, lists and numbers as JSON, one per
        :data:`METADATA` key, in its order (:func:`_written`; :func:`_read` reads them back)."""
        values = _written(self)
        return {f"{PREFIX}{key.name}": values[key.name] for key in METADATA}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: object = "graph") -> GraphSpec:
        """The one reader of the contract.

        Raises:
            UserError: not a camexport graph, or damaged metadata.
            ContractError: a contract version this camexport does not know.
        """
        if f"{PREFIX}version" not in props:
            raise UserError(
                f"{source}: not a graph built by camexport (no camexport.* metadata); build one with 'camexport build'"
            )
        contract = _contract_version(props, source)
        try:
            return _read(cls, {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}, contract)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            reason = f"damaged camexport metadata ({exc})"
            raise UserError(f"{source}: {reason}; rebuild the graph with 'camexport build'") from None


Signature = tuple[str, Sequence[int | str | None]]  # a tensor's dtype and dimensions, as a graph declares them


def per_method(spec: TensorSpec, method: str) -> TensorSpec:
    """``heatmap_<method>`` or ``cam_<method>``: ``spec`` for one method of a graph of several."""
    return replace(spec, name=f"{spec.name}_{method}", meaning=f"as `{spec.name}`, for the method {method}")


@dataclass(frozen=True)
class MetadataKey:
    """One ``camexport.*`` metadata prop: its name without the prefix, the JSON kind of its value, its meaning."""

    name: str
    kind: str
    meaning: str


METADATA: tuple[MetadataKey, ...] = (
    MetadataKey("contract", "integer as text", "the contract version; readers refuse one they do not know"),
    MetadataKey("task", "text", f"the task: {', '.join(TASKS)} (absent: classification)"),
    MetadataKey("model", "text", "the model the graph was built from"),
    MetadataKey("layer", "text", "the explained layer's dotted name"),
    MetadataKey("method", "text", "the methods, comma-separated; the first is `heatmap`/`cam`"),
    MetadataKey("labels", "JSON list", "class names, one per logit"),
    MetadataKey("mean", "JSON list", "per-channel mean, after scaling pixels to [0, 1]; its length is C"),
    MetadataKey("std", "JSON list", "per-channel standard deviation"),
    MetadataKey("image_size", "JSON [H, W]", "the network input's size (the centre crop)"),
    MetadataKey("resize_size", "JSON integer", "the shorter side after resizing, before the centre crop"),
    MetadataKey("interpolation", "text", "the resize's filter: bilinear, bicubic, nearest or lanczos"),
    MetadataKey(
        "preprocessing_known",
        "JSON bool",
        "false: built from an ONNX file without --mean/--std; images are refused until it is rebuilt with them",
    ),
    MetadataKey("input", "text", f"the image input: {' or '.join(INPUT_KINDS)}"),
    MetadataKey("dynamic_size", "JSON bool", "the graph takes any image height and width"),
    MetadataKey("background", "JSON integer or null", "a segmentation graph's background class"),
    MetadataKey("masked_block", "JSON text or null", "the block whose input ReciproCAM masks along with the layer"),
    MetadataKey("class_maps", "JSON bool", "the graph outputs `class_maps`"),
    MetadataKey(
        "detection",
        "JSON object or null",
        "a detection graph's `max_detections`, `score_threshold` and `iou_threshold`",
    ),
    MetadataKey("weights", "text", "where the weights came from"),
    MetadataKey("random_weights", "JSON bool", "the weights are a seeded random initialisation"),
    MetadataKey("version", "text", "the camexport that built the graph"),
)


def _contract_version(props: Mapping[str, str], source: object) -> int:
    text = props.get(f"{PREFIX}contract", "1")
    if text.strip() not in {str(v) for v in READABLE_CONTRACTS}:
        *first, last = map(str, READABLE_CONTRACTS)
        readable = f"{', '.join(first)} and {last}" if first else last
        raise ContractError(
            f"{source}: the graph follows camexport graph contract {text!r}, this camexport "
            f"reads contracts {readable}; install the camexport that built it, or rebuild the graph"
        )
    return int(text)


def _written(spec: GraphSpec) -> dict[str, str]:
    """The metadata's values by key name (without the prefix)."""
    prep, source = spec.preprocessing, spec.provenance
    return {
        "contract": str(spec.contract),
        "task": spec.task,
        "model": source.model,
        "layer": spec.layer,
        "method": ",".join(spec.methods),
        "labels": json.dumps(list(spec.labels)),
        "mean": json.dumps(list(prep.mean)),
        "std": json.dumps(list(prep.std)),
        "image_size": json.dumps(list(prep.image_size)),
        "resize_size": json.dumps(prep.resize_size),
        "interpolation": prep.interpolation,
        "preprocessing_known": json.dumps(prep.known),
        "input": spec.input,
        "dynamic_size": json.dumps(spec.dynamic_size),
        "background": json.dumps(spec.background),
        "masked_block": json.dumps(spec.masked_block),
        "class_maps": json.dumps(spec.class_maps),
        "detection": json.dumps(None if spec.detection is None else asdict(spec.detection)),
        "weights": source.weights,
        "random_weights": json.dumps(source.random_weights),
        "version": source.version,
    }


def _read(cls: type[GraphSpec], props: Mapping[str, str], contract: int) -> GraphSpec:
    """The spec from the metadata without its prefix; keys that older graphs lack take their old meaning."""
    size = json.loads(props["image_size"])
    mean, std = json.loads(props["mean"]), json.loads(props["std"])
    if not mean or len(mean) != len(std):
        raise ValueError(f"{len(mean)} mean and {len(std)} std values")
    weights = props.get("weights", "")
    random_default = json.dumps(weights.startswith("random"))  # graphs written before the key existed
    kind, task = props.get("input", "float32"), props.get("task", CLASSIFICATION.name)
    if kind not in INPUT_KINDS or task not in TASKS:
        raise ValueError(f"input kind {kind!r}, task {task!r}")
    background = json.loads(props.get("background", "null"))
    detection = _detection(json.loads(props.get("detection", "null")))
    if (detection is None) != (task != DETECTION_TASK.name):
        raise ValueError(f"task {task!r} with detection slots {detection}")
    return cls(
        task=task,
        layer=props["layer"],
        methods=check_methods(props["method"].split(",")),
        labels=tuple(str(label) for label in json.loads(props["labels"])),
        preprocessing=Preprocessing(
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            image_size=(int(size[0]), int(size[1])),
            resize_size=int(json.loads(props.get("resize_size", str(max(size))))),
            interpolation=props.get("interpolation", "bilinear"),
            known=bool(json.loads(props.get("preprocessing_known", "true"))),
        ),
        provenance=Provenance(
            model=props["model"],
            weights=weights,
            random_weights=bool(json.loads(props.get("random_weights", random_default))),
            version=props["version"],
        ),
        input=kind,
        dynamic_size=bool(json.loads(props.get("dynamic_size", "false"))),
        background=None if background is None else int(background),
        masked_block=_optional_name(json.loads(props.get("masked_block", "null"))),
        class_maps=bool(json.loads(props.get("class_maps", "false"))),
        detection=detection,
        contract=contract,
    )


def _detection(value: object) -> Detection | None:
    if value is None:
        return None
    return Detection(int(value["max_detections"]), float(value["score_threshold"]), float(value["iou_threshold"]))


def _optional_name(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"module name {value!r}")
    return value
