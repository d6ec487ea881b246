"""Your own model: ``package.module:factory`` or ``path/to/file.py:factory``.

The factory is a callable that returns an ``nn.Module`` (a classifier taking [N, 3, H, W] and returning
logits [N, K]). Loading it imports and runs the user's code, exactly as ``python -c 'import ...'`` would.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from camexport.builder.weights import Weighted, choose, seeded
from camexport.errors import UserError


def _import_target(spec: str) -> Callable[..., object]:
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise UserError(f"model '{spec}': write a factory as package.module:factory or path/to/file.py:factory")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise UserError(f"model '{spec}': no such file {path}")
        name = "camexport_user_" + re.sub(r"\W", "_", str(path.resolve()))
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"model '{spec}': cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's code may raise anything while importing
            del sys.modules[name]
            raise UserError(f"model '{spec}': importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(location)
        except Exception as exc:  # ImportError, or anything the user's module raises
            raise UserError(f"model '{spec}': cannot import {location} ({type(exc).__name__}: {exc})") from None
    target = getattr(module, attribute, None)
    if not callable(target):
        raise UserError(f"model '{spec}': {location} has no callable '{attribute}'")
    return target


def load_factory_model(spec: str, weights: str | Path, seed: int, num_classes: int | None) -> Weighted:
    """Builds a model from a user factory.

    ``weights="default"`` keeps whatever the factory returns (its own pretrained weights, if any);
    ``"random"`` seeds the factory call; a path loads a state_dict on top.

    Raises:
        UserError: the factory cannot be imported, fails, or returns something other than an nn.Module.
    """
    factory = _import_target(spec)
    kwargs: dict[str, object] = {}
    if num_classes is not None:
        try:
            accepts = "num_classes" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepts = True
        if not accepts:
            raise UserError(f"num_classes={num_classes}: {spec} takes no num_classes argument; leave `num_classes` out")
        kwargs["num_classes"] = num_classes

    def create() -> nn.Module:
        try:
            model = factory(**kwargs)
        except Exception as exc:  # the user's code may raise anything
            raise UserError(f"model '{spec}': the factory raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"model '{spec}': the factory returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def as_returned() -> Weighted:
        return Weighted(seeded(seed, create), f"as returned by {spec}")

    return choose(weights, seed, create, as_returned, random_note=f", {spec} called under it")


def read_labels(path: str | Path) -> list[str]:
    """Class names from a file: a JSON list, or one name per line (blank lines ignored).

    Raises:
        UserError: the file is missing, empty or not text.
    """
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"labels={str(path)!r}: cannot read it ({exc})") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"labels={str(path)!r}: not a valid JSON list ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(labels, list) or not all(isinstance(x, (str, int, float)) for x in labels):
            raise UserError(f"labels={str(path)!r}: the JSON must be a list of names")
        labels = [str(x) for x in labels]
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise UserError(f"labels={str(path)!r}: no class names in it")
    return labels
