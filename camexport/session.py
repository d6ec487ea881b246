"""Running a camexport graph with onnxruntime, with its metadata read back. No torch needed here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from camexport._util import first_line
from camexport.errors import CamExportError, UserError
from camexport.preprocess import Preprocessing

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class GraphInfo:
    """What a camexport graph says about itself (its ``camexport.*`` metadata)."""

    model: str
    layer: str
    method: str
    labels: list[str]
    preprocessing: Preprocessing
    version: str
    dynamic_size: bool = False


def _read_info(meta: dict[str, str], path: Path) -> GraphInfo:
    if "camexport.version" not in meta:
        raise UserError(
            f"{path}: not a graph built by camexport (no camexport.* metadata); build one with 'camexport build'"
        )
    try:
        size = json.loads(meta["camexport.image_size"])
        return GraphInfo(
            model=meta["camexport.model"],
            layer=meta["camexport.layer"],
            method=meta["camexport.method"],
            labels=list(json.loads(meta["camexport.labels"])),
            preprocessing=Preprocessing(
                mean=tuple(json.loads(meta["camexport.mean"])),
                std=tuple(json.loads(meta["camexport.std"])),
                image_size=(int(size[0]), int(size[1])),
                resize_size=int(json.loads(meta.get("camexport.resize_size", str(max(size))))),
                interpolation=meta.get("camexport.interpolation", "bilinear"),
            ),
            version=meta["camexport.version"],
            dynamic_size=bool(json.loads(meta.get("camexport.dynamic_size", "false"))),
        )
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise UserError(
            f"{path}: damaged camexport metadata ({exc}); rebuild the graph with 'camexport build'"
        ) from None


def resolve_providers(provider: str) -> list[str]:
    """Maps ``cpu``/``cuda`` to onnxruntime providers, checking that the build has them.

    Raises:
        UserError: unknown provider, or CUDA asked of an onnxruntime build without it.
    """
    if provider not in PROVIDERS:
        raise UserError(f"--provider {provider}: unknown; use one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise UserError(
            f"--provider {provider}: this onnxruntime has no {wanted} (it has "
            f"{', '.join(ort.get_available_providers())}); install a GPU build: pip install onnxruntime-gpu"
        )
    return [wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]


class CamSession:
    """An onnxruntime session over a camexport graph.

    Args:
        path: the ``.onnx`` file written by ``camexport build``.
        provider: ``cpu`` or ``cuda``.
        threads: intra-op threads (0: onnxruntime's default).

    Raises:
        UserError: the file is missing, not ONNX, or not built by camexport.
    """

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int = 0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such graph; build one with 'camexport build MODEL'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=resolve_providers(provider)
            )
        except UserError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)[:160]})") from None
        self.info = _read_info(self._session.get_modelmeta().custom_metadata_map, self.path)
        self.output_names = [o.name for o in self._session.get_outputs()]

    @property
    def num_classes(self) -> int:
        """Number of logits (and labels)."""
        return len(self.info.labels)

    def run(self, image: np.ndarray, target_class: np.ndarray | list[int] | int | None = None) -> dict[str, np.ndarray]:
        """Runs the graph on a normalised batch.

        Args:
            image: float32 [N, 3, H, W], normalised as the graph's metadata says; H x W is the graph's
                image size, or any size for a graph built with ``--dynamic-size``.
            target_class: None (top-1 class for every image), an int for all images, or [N] indices with
                −1 meaning top-1.

        Returns:
            Every graph output by name (``logits``, ``class_index``, ``heatmap``, ``cam``, ...).

        Raises:
            UserError: wrong shape or dtype, NaN/Inf values, class index out of range.
        """
        image = np.asarray(image)
        height, width = self.info.preprocessing.image_size
        if self.info.dynamic_size:
            if image.ndim != 4 or image.shape[1] != 3:
                raise UserError(f"image batch has shape {list(image.shape)}; the graph takes [N, 3, H, W]")
        elif image.ndim != 4 or image.shape[1:] != (3, height, width):
            raise UserError(f"image batch has shape {list(image.shape)}; the graph takes [N, 3, {height}, {width}]")
        if image.shape[0] == 0:
            raise UserError("image batch is empty; pass at least one image")
        image = np.ascontiguousarray(image, dtype=np.float32)
        if not np.isfinite(image).all():
            raise UserError("image batch holds NaN or Inf values; pass finite pixel values")
        feeds: dict[str, np.ndarray] = {"image": image}
        if target_class is not None:
            target = np.atleast_1d(np.asarray(target_class))
            if target.dtype.kind not in "iu" or target.ndim != 1 or target.shape[0] not in (1, image.shape[0]):
                raise UserError(f"target_class must be integers of shape [1] or [{image.shape[0]}]")
            bad = target[(target < -1) | (target >= self.num_classes)]
            if bad.size:
                raise UserError(
                    f"class index {int(bad[0])} is out of range; "
                    f"use 0..{self.num_classes - 1} or -1 for the top-1 class"
                )
            feeds["target_class"] = target.astype(np.int64)
        try:
            outputs = self._session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise CamExportError(
                f"{self.path}: onnxruntime failed on a [{', '.join(map(str, image.shape))}] batch "
                f"({first_line(exc)[-200:]}); rebuild the graph with 'camexport build'"
            ) from None
        return dict(zip(self.output_names, outputs, strict=True))
