"""Weights: the one choice between pretrained, seeded random and a checkpoint file, for every model source.

``weights="default"`` takes the source's pretrained weights, ``"random"`` its own seeded initialisation (with
all-zero ``nn.Linear`` weights drawn, see :func:`randomised`), anything else is the path of a ``state_dict``
checkpoint, read with ``torch.load(weights_only=True)`` and loaded as ``nn.Module.load_state_dict`` would,
versioned state (``_metadata``) included.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from camexport._util import ANSI, first_line
from camexport.errors import WeightsError

DEFAULT = "default"
RANDOM = "random"


@dataclass(frozen=True)
class Weighted:
    """A network with its weights in place, and where they came from (for humans and the graph metadata)."""

    module: nn.Module
    description: str

    @property
    def random(self) -> bool:
        """True for a seeded random initialisation."""
        return self.description.startswith(RANDOM)


def choose(
    weights: str | Path,
    seed: int,
    create: Callable[[], nn.Module],
    pretrained: Callable[[], Weighted],
    random_note: str = "",
) -> Weighted:
    """The default/random/path choice: ``pretrained()``, ``create()`` seeded, or ``create()`` plus a checkpoint.

    Raises:
        WeightsError: the checkpoint is missing, unreadable or does not fit.
    """
    if weights == DEFAULT:
        return pretrained()
    if weights == RANDOM:
        return Weighted(randomised(seed, create), f"random (seed {seed}{random_note})")
    module = seeded(seed, create)
    load_state_dict_strict(module, read_checkpoint(weights), str(weights))
    return Weighted(module, str(weights))


def _unwrap_checkpoint(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    raise WeightsError(
        f"weights={str(path)!r}: not a state_dict (a mapping of names to tensors); "
        "save one with torch.save(model.state_dict(), PATH)"
    )


def read_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Reads a state_dict with ``torch.load(weights_only=True)``; its ``_metadata`` (state versions) is kept.

    Raises:
        WeightsError: the file is missing, unreadable or not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights={str(path)!r}: no such file; give a state_dict checkpoint, 'default' or 'random'")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a file
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a corrupt file
        raise WeightsError(
            f"weights={str(path)!r}: cannot read the checkpoint ({_load_failure(exc)}); nothing in it was run; "
            "save one with torch.save(model.state_dict(), PATH)"
        ) from None
    state = _unwrap_checkpoint(obj, path)
    _check_finite(state, path)
    return state


def _load_failure(exc: BaseException) -> str:
    """The real cause of a refused checkpoint, in full. torch's weights-only refusal opens with a paragraph about
    ``weights_only`` (numbered options to load it anyway) and closes with a pointer to the docs; the cause is the
    line of its unpickler (``WeightsUnpickler error: Unsupported global: GLOBAL torchvision.models.resnet.ResNet
    was not an allowed global ...``, ``Unsupported operand 149`` for a plain pickle), whose first sentence is kept
    (the rest advises allow-listing the class, which camexport does not do)."""
    lines = [ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    if lines and lines[0].startswith("Weights only load failed"):
        causes = [line for line in lines if line.startswith("WeightsUnpickler error:")]
        boilerplate = ("(1)", "(2)", "Please file an issue", "Check the documentation")
        causes = causes or [line for line in lines[1:] if line and not line.startswith(boilerplate)]
        if causes:
            cause = causes[0].removeprefix("WeightsUnpickler error:").strip().split(". ")[0].rstrip(".")
            return f"torch.load(weights_only=True) refused it: {cause}"
    return first_line(exc)


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """A checkpoint with NaN or Inf weights is refused here, naming them, not after a failed validation."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(
            f"weights={str(path)!r}: {len(bad)} tensor(s) hold NaN or Inf: {_summarise(bad)}; "
            "pass a checkpoint of finite weights"
        )


def _summarise(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys, ``num_batches_tracked`` aside (older checkpoints lack it)."""
    counted = [k for k in expected if not k.endswith("num_batches_tracked")]
    offered = [k for k in given if not k.endswith("num_batches_tracked")]
    missing = [k for k in counted if k not in given]
    unexpected = [k for k in offered if k not in expected]
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in counted
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (checkpoint vs model): {_summarise(mismatched)}")
    return problems


def load_state_dict_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``module`` as ``module.load_state_dict(state)`` does, reporting every mismatch in
    one line first.

    The checkpoint's ``_metadata`` (the per-module state versions that ``_load_from_state_dict`` reads, e.g.
    MNASNet's) is kept; a checkpoint without one is read as written by this torch's own modules. A
    ``num_batches_tracked`` the checkpoint lacks keeps the module's value.

    Raises:
        WeightsError: keys are missing or unexpected, or shapes differ.
    """
    expected = module.state_dict()
    problems = _mismatches(expected, state)
    if problems:
        raise WeightsError(
            f"weights {source} do not fit {type(module).__name__}: "
            + "; ".join(problems)
            + "; pass a checkpoint saved from the same architecture, or weights='random'"
        )
    merged = OrderedDict(expected)
    merged.update((k, v) for k, v in state.items() if k in expected)
    merged._metadata = getattr(state, "_metadata", None) or getattr(expected, "_metadata", None)  # type: ignore[attr-defined]
    module.load_state_dict(merged, strict=True)


def seeded(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """Calls ``factory`` with torch's global generator seeded, leaving the caller's random state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def randomised(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``weights="random"``: the model's own seeded initialisation, with nothing left at zero.

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
