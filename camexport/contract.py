"""The graph contract: what a camexport graph takes, returns and says about itself. No torch here.

Both wings use this one module: the build side writes the contract (export names the inputs, outputs and
dimensions, and stores :meth:`GraphInfo.to_props` as the graph's metadata; validation checks the outputs by
these names), the run side reads it (:meth:`GraphInfo.from_props` in the session). The README's "graph
contract" section documents the same names.

A graph carries ``camexport.contract``, the version of this contract. A reader refuses a version it does not
know with one line; graphs written before the key existed (camexport 0.1) follow version 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from camexport.errors import ContractError, UserError

# Contract 2: ``target_class`` is a required input, int64 [N] or [1] (one class for the whole batch), −1 meaning
# each image's top-1 class. Contract 1 (graphs of camexport 0.1) made it optional with a default initializer
# [-1]; every onnxruntime warned on loading such a graph (an initializer that is also an input), and OpenVINO
# folded the default into a constant, so only the top-1 class could be explained there. A required input
# with one sentinel is as simple for C++, Java and JS callers (always pass [-1]) and every runtime honours it.
# Contract 3: a segmentation graph (``camexport.task`` = ``segmentation``): logits [N, K, H, W], a ``region``
# input and a ``segmentation`` output. Classifier graphs stay contract 2, so readers of contract 2 still read
# every classifier graph and refuse a segmentation graph with one line instead of misreading its logits.
CONTRACT_VERSION = 2
SEGMENTATION_CONTRACT = 3
READABLE_CONTRACTS = (1, 2, 3)  # contract 1 graphs still run: an explicit target_class overrides their default

# Inputs.
IMAGE = "image"
TARGET_CLASS = "target_class"
INPUT_NAMES = (IMAGE, TARGET_CLASS)
# A segmentation graph's third input: float32 [N, H, W], the weight of each pixel's logit in the explained score
# (a 0/1 mask, or soft weights); a negative value means "this pixel counts if the graph predicts the class
# there", so a region of −1 everywhere (what CamSession feeds by default) explains the predicted pixels.
REGION = "region"

# Outputs, in graph order; a graph of several methods adds ``heatmap_<m>`` and ``cam_<m>`` per method, and a
# segmentation graph then ``segmentation`` (int64 [N, H, W], each pixel's predicted class).
OUTPUT_NAMES = ("logits", "class_index", "heatmap", "cam", "activations", "gradients")
SEGMENTATION = "segmentation"
PER_METHOD_OUTPUTS = ("heatmap", "cam")
# A ReciproCAM graph built with every class's map: float32 [N, K, h, w], at each position the probability of each
# class when the map is masked there (the method's raw ``cam`` of every class, from the same masked pass).
CLASS_MAPS = "class_maps"
# ``heatmap`` is ``cam`` resized bilinearly (half-pixel centres) to the input size, then min-max scaled to
# [0, 1] per image; a map whose span is at most FLAT_MAP of its maximum (interpolation rounding) gives zeros.
FLAT_MAP = 1e-5

# Symbolic dimension names.
BATCH_DIM = "batch"
HEIGHT_DIM = "height"
WIDTH_DIM = "width"
TARGET_DIM = "target_batch"

# What the network does: classify an image (logits [N, K]) or each of its pixels (logits [N, K, H, W]).
Task = Literal["classification", "segmentation"]
TASKS: tuple[Task, ...] = ("classification", "segmentation")

# The CAM methods a graph may hold (the build side implements each; the first is the default).
METHODS = ("gradcampp", "gradcam", "xgradcam", "layercam", "hirescam", "reciprocam")
# The gradient-free one: ReciproCAM (Byun & Lee 2022) runs the rest of the network on masked feature maps.
RECIPROCAM = "reciprocam"
GRADIENT_METHODS = tuple(m for m in METHODS if m != RECIPROCAM)

# The image input: normalised float32 [N, C, H, W], or uint8 pixels [N, H, W, C] normalised inside; C is the
# number of values in the metadata's mean and std (3 for RGB classifiers).
InputKind = Literal["float32", "uint8"]
INPUT_KINDS: tuple[InputKind, ...] = ("float32", "uint8")

# The Pillow mode an image file is converted to for a graph of C channels: grayscale for 1, RGB for 3, and for
# 4 a four-band image (RGBA PNG or TIFF: the fourth band is data, not transparency). Other channel counts
# have no image file format; such graphs take arrays [H, W, C].
IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

PREFIX = "camexport."


def output_names(methods: Sequence[str], task: Task = "classification", class_maps: bool = False) -> tuple[str, ...]:
    """The graph's outputs: :data:`OUTPUT_NAMES` (``heatmap``/``cam`` of the first method), then, for a graph of
    several methods, ``heatmap_<method>`` and ``cam_<method>`` for each, then ``class_maps`` when asked for
    (:data:`CLASS_MAPS`), then ``segmentation`` for a segmentation graph."""
    names = OUTPUT_NAMES
    if len(methods) > 1:
        names += tuple(f"{kind}_{method}" for method in methods for kind in PER_METHOD_OUTPUTS)
    names += (CLASS_MAPS,) if class_maps else ()
    return names + ((SEGMENTATION,) if task == "segmentation" else ())


def input_names(task: Task = "classification") -> tuple[str, ...]:
    """The graph's inputs: ``image``, ``target_class``, and ``region`` for a segmentation graph."""
    return INPUT_NAMES + ((REGION,) if task == "segmentation" else ())


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


@dataclass(frozen=True)
class Preprocessing:
    """How an image is turned into the graph's ``image`` input (torchvision's and timm's eval transforms).

    Attributes:
        mean: per-channel mean subtracted after scaling pixels to [0, 1]; its length is the channel count.
        std: per-channel standard deviation divided by after subtracting the mean.
        image_size: (H, W) of the network input, i.e. of the centre crop.
        resize_size: length of the shorter image side after resizing, before the centre crop.
        interpolation: resampling filter for the resize: ``bilinear``, ``bicubic``, ``nearest`` or ``lanczos``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int]
    resize_size: int
    interpolation: str

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


@dataclass(frozen=True)
class GraphInfo:
    """What a camexport graph says about itself: its ``camexport.*`` metadata, typed.

    Attributes:
        model: the registry name or factory the graph was built from.
        layer: the explained layer's dotted name.
        methods: the CAM methods, the first being the plain ``heatmap``/``cam`` outputs.
        labels: class names, one per logit.
        preprocessing: what the weights expect of an input image.
        version: the camexport version that built the graph.
        weights: where the weights came from, for humans.
        random_weights: the weights are a seeded random initialisation: the labels name no real class.
        dynamic_size: the graph takes any image height and width.
        input: ``float32`` (normalised [N, C, H, W]) or ``uint8`` (pixels [N, H, W, C]).
        task: ``classification`` or ``segmentation`` (:data:`TASKS`).
        background: a segmentation graph's background class, explained by default only where no other class
            is predicted (None: every class counts alike).
        masked_block: the module whose input ReciproCAM masks along with the layer's output (a transformer block
            around its first normalisation: its skip connection), or None.
        class_maps: the graph outputs ReciproCAM's map of every class (:data:`CLASS_MAPS`).
        contract: the contract version (:data:`CONTRACT_VERSION`, :data:`SEGMENTATION_CONTRACT`).
    """

    model: str
    layer: str
    methods: tuple[str, ...]
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    version: str
    weights: str = ""
    random_weights: bool = False
    dynamic_size: bool = False
    input: InputKind = "float32"
    task: Task = "classification"
    background: int | None = None
    masked_block: str | None = None
    class_maps: bool = False
    contract: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        if self.task == "segmentation" and self.contract < SEGMENTATION_CONTRACT:
            object.__setattr__(self, "contract", SEGMENTATION_CONTRACT)

    @property
    def segments(self) -> bool:
        """True for a segmentation graph (logits [N, K, H, W], a ``region`` input)."""
        return self.task == "segmentation"

    @property
    def takes_pixels(self) -> bool:
        """True for a ``uint8`` graph: ``image`` is uint8 [N, H, W, C] pixels, normalised inside."""
        return self.input == "uint8"

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs (see :func:`output_names`)."""
        return output_names(self.methods, self.task, self.class_maps)

    def to_props(self) -> dict[str, str]:
        """The metadata props, the one writer of the contract: strings, lists and numbers as JSON."""
        prep = self.preprocessing
        return {
            f"{PREFIX}contract": str(self.contract),
            f"{PREFIX}model": self.model,
            f"{PREFIX}layer": self.layer,
            f"{PREFIX}method": ",".join(self.methods),
            f"{PREFIX}labels": json.dumps(list(self.labels)),
            f"{PREFIX}mean": json.dumps(list(prep.mean)),
            f"{PREFIX}std": json.dumps(list(prep.std)),
            f"{PREFIX}image_size": json.dumps(list(prep.image_size)),
            f"{PREFIX}resize_size": json.dumps(prep.resize_size),
            f"{PREFIX}interpolation": prep.interpolation,
            f"{PREFIX}weights": self.weights,
            f"{PREFIX}random_weights": json.dumps(self.random_weights),
            f"{PREFIX}version": self.version,
            f"{PREFIX}dynamic_size": json.dumps(self.dynamic_size),
            f"{PREFIX}input": self.input,
            f"{PREFIX}task": self.task,
            f"{PREFIX}background": json.dumps(self.background),
            f"{PREFIX}masked_block": json.dumps(self.masked_block),
            f"{PREFIX}class_maps": json.dumps(self.class_maps),
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: object = "graph") -> GraphInfo:
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
            return _read(cls, props, contract)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            reason = f"damaged camexport metadata ({exc})"
            raise UserError(f"{source}: {reason}; rebuild the graph with 'camexport build'") from None


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


def _read(cls: type[GraphInfo], props: Mapping[str, str], contract: int) -> GraphInfo:
    size = json.loads(props[f"{PREFIX}image_size"])
    weights = props.get(f"{PREFIX}weights", "")
    random_default = json.dumps(weights.startswith("random"))  # graphs written before the key existed
    kind = props.get(f"{PREFIX}input", "float32")
    if kind not in INPUT_KINDS:
        raise ValueError(f"input kind {kind!r}")
    task = props.get(f"{PREFIX}task", "classification")
    if task not in TASKS:
        raise ValueError(f"task {task!r}")
    background = json.loads(props.get(f"{PREFIX}background", "null"))
    mean, std = json.loads(props[f"{PREFIX}mean"]), json.loads(props[f"{PREFIX}std"])
    if not mean or len(mean) != len(std):
        raise ValueError(f"{len(mean)} mean and {len(std)} std values")
    return cls(
        model=props[f"{PREFIX}model"],
        layer=props[f"{PREFIX}layer"],
        methods=check_methods(props[f"{PREFIX}method"].split(",")),
        labels=tuple(str(label) for label in json.loads(props[f"{PREFIX}labels"])),
        preprocessing=Preprocessing(
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            image_size=(int(size[0]), int(size[1])),
            resize_size=int(json.loads(props.get(f"{PREFIX}resize_size", str(max(size))))),
            interpolation=props.get(f"{PREFIX}interpolation", "bilinear"),
        ),
        version=props[f"{PREFIX}version"],
        weights=weights,
        random_weights=bool(json.loads(props.get(f"{PREFIX}random_weights", random_default))),
        dynamic_size=bool(json.loads(props.get(f"{PREFIX}dynamic_size", "false"))),
        input=kind,
        task=task,
        background=None if background is None else int(background),
        masked_block=_optional_name(json.loads(props.get(f"{PREFIX}masked_block", "null"))),
        class_maps=bool(json.loads(props.get(f"{PREFIX}class_maps", "false"))),
        contract=contract,
    )


def _optional_name(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"module name {value!r}")
    return value
