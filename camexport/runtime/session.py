"""Running a camexport graph with onnxruntime: metadata read back, photos in, explanations out. No torch here."""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import onnxruntime as ort
from PIL import Image

from camexport import checks
from camexport._util import first_line
from camexport.contract import BOXES, IMAGE, LABELS, SCORES, TARGET_CLASS, GraphSpec, Preprocessing, Signature
from camexport.errors import CamExportError, NonFiniteOutputError, UserError
from camexport.runtime.options import ExplainStyle, RunOptions
from camexport.runtime.preprocess import heatmap_to_original, normalise, open_image, seen_mask, to_pixels
from camexport.runtime.tasks import REGISTRY as TASKS

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# CUDA as camexport runs it: cuDNN's fixed default convolution algorithms (an exhaustive search may pick a
# backward-data algorithm that adds with atomics, and ConvTranspose runs on backward-data), and no TF32, whose
# 10-bit mantissa would move the maps by about 1e-3 away from the CPU's float32 (docs/runtimes.md).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0"}
Provider = str | tuple[str, dict[str, str]]


def resolve_providers(provider: str) -> list[Provider]:
    """Maps ``cpu``/``cuda`` to onnxruntime providers (CUDA with :data:`CUDA_OPTIONS`, then the CPU for any node
    without a CUDA kernel), checking that the build has them.

    Raises:
        UserError: unknown provider, or CUDA asked of an onnxruntime build without it.
    """
    if provider not in PROVIDERS:
        raise UserError(f"provider={provider!r}: unknown; use one of {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise UserError(
            f"provider={provider!r}: this onnxruntime has no {wanted} (it has "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu in place of onnxruntime: "
            "pip uninstall -y onnxruntime && pip install 'camexport[gpu]'"
        )
    return [(wanted, dict(CUDA_OPTIONS)), "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]


class CamSession:
    """An onnxruntime session over a camexport graph.

    Args:
        path: the ``.onnx`` file written by ``camexport build``.
        provider: ``cpu`` or ``cuda``.
        threads: intra-op threads (0: onnxruntime's default, one per core).
        spin: let onnxruntime's idle worker threads spin-wait for work (its own default) rather than sleep.
            camexport's default is False: measured on 2 cores, where the threads that read and draw
            photos need the cores too, explain ran faster with sleeping workers and the graph alone no
            slower (benchmarks/explain_dataset/explain_dataset.md).

    Raises:
        UserError: the file is missing, not ONNX, or not built by camexport.
    """

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int = 0, spin: bool = False) -> None:
        self.path = checks.path("path", path, "a graph written by 'camexport build'")
        checks.whole("threads", threads, 0, "use 0 for onnxruntime's default, or a positive number")
        checks.flag("spin", spin)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such graph; build one with 'camexport build MODEL'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        options.use_deterministic_compute = True  # onnxruntime's GPU reductions without atomics (no effect on CPU)
        self.options, self.providers = options, resolve_providers(provider)
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        except UserError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)[:160]})") from None
        self.spec = GraphSpec.from_props(self._session.get_modelmeta().custom_metadata_map, self.path)
        self.task = TASKS[self.spec.task]
        self.output_names = [o.name for o in self._session.get_outputs()]
        # A contract 1 graph's target_class has a default: onnxruntime lists it among the overridable initializers.
        inputs = [*self._session.get_inputs(), *self._session.get_overridable_initializers()]
        problems = self.spec.mismatches(_signatures(inputs), _signatures(self._session.get_outputs()))
        if problems:
            raise UserError(
                f"{self.path}: damaged camexport metadata (the graph's {problems[0]}); rebuild the graph with "
                "'camexport build'"
            )

    @property
    def num_classes(self) -> int:
        """Number of logits (and labels)."""
        return len(self.spec.labels)

    def run(
        self,
        image: np.ndarray,
        target_class: np.ndarray | list[int] | int | None = None,
        region: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs the graph on a prepared batch.

        Args:
            image: float32 [N, C, H, W], normalised as the graph's metadata says; for a ``--input uint8``
                graph, uint8 [N, H, W, C] pixels. H x W is the graph's image size, or any size for a
                graph built with ``--dynamic-size``.
            target_class: None (top-1 class for every image: [-1] is fed), an int for all images, or [N]
                indices with −1 meaning top-1 (for a segmentation graph: the class predicted on the most pixels).
            region: a segmentation graph's pixel weights, float [N, H, W] or [H, W] for all images: 1 (or any
                weight) where the class's logits count, 0 where not, −1 where they count if the graph predicts
                the class there; None (−1 everywhere) explains the pixels predicted as the class.

        Returns:
            Every graph output by name (``logits``, ``class_index``, ``heatmap``, ``cam``, ...;
            ``segmentation`` for a segmentation graph).

        Raises:
            UserError: wrong shape or dtype, NaN/Inf values, class index out of range, a region for a
                classifier or of the wrong shape.
            CamExportError: onnxruntime failed while running the graph.
        """
        image = np.asarray(image)
        feeds = self._feeds(image, target_class, region)
        try:
            outputs = self._session.run(self.output_names, feeds)
        except Exception as exc:  # onnxruntime's own exception types
            raise CamExportError(
                f"{self.path}: onnxruntime failed on a [{', '.join(map(str, image.shape))}] batch "
                f"({first_line(exc)[-200:]}); rebuild the graph with 'camexport build'"
            ) from None
        named = dict(zip(self.output_names, outputs, strict=True))
        broken = [name for name, value in named.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
        if broken:
            largest = float(np.abs(feeds[IMAGE.name]).max()) if feeds[IMAGE.name].size else 0.0
            raise NonFiniteOutputError(
                f"the graph's {', '.join(broken)} are not finite for this batch (largest input magnitude "
                f"{largest:.3g}); pass pixels normalised as the graph's metadata says"
            )
        return named

    def _feeds(self, image: np.ndarray, target_class, region: np.ndarray | None) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {IMAGE.name: self._check_batch(image)}
        feeds[TARGET_CLASS.name] = self._check_target(-1 if target_class is None else target_class, image.shape[0])
        return feeds | self.task.feeds(self.spec, region, image.shape[0])

    def logits(self, image: np.ndarray) -> np.ndarray:
        """The graph's ``logits`` for a prepared batch (as :meth:`run` takes it): what ``evaluate`` scores
        probabilities with. onnxruntime runs every node of a graph whatever outputs are asked for; a subclass with
        the build side at hand can run only the part that computes the logits (benchmarks/quality/quality.py does)."""
        return self.run(image)["logits"]

    def _check_target(self, target_class: np.ndarray | list[int] | int, batch: int) -> np.ndarray:
        """int64 [1] or [batch] class indices (−1: top-1), fed always: the graph's input is required (contract 2)."""
        target = np.atleast_1d(np.asarray(target_class))
        if target.dtype.kind not in "iu" or target.ndim != 1 or target.shape[0] not in (1, batch):
            raise UserError(f"target_class must be integers of shape [1] or [{batch}]")
        bad = target[(target < -1) | (target >= self.num_classes)]
        if bad.size:
            raise UserError(
                f"class index {int(bad[0])} is out of range; use 0..{self.num_classes - 1} or -1 for the top-1 class"
            )
        return target.astype(np.int64)

    def _check_batch(self, image: np.ndarray) -> np.ndarray:
        height, width = self.spec.preprocessing.image_size
        c = self.spec.preprocessing.channels
        if self.spec.takes_pixels:
            want = f"[N, H, W, {c}] uint8" if self.spec.dynamic_size else f"[N, {height}, {width}, {c}] uint8"
            fits = image.ndim == 4 and image.shape[3] == c
            fits = fits and (self.spec.dynamic_size or image.shape[1:3] == (height, width))
            if not fits or image.dtype != np.uint8:
                raise UserError(f"image batch is {list(image.shape)} {image.dtype}; the graph takes {want} pixels")
        else:
            want = f"[N, {c}, H, W]" if self.spec.dynamic_size else f"[N, {c}, {height}, {width}]"
            fits = image.ndim == 4 and image.shape[1] == c
            if not fits or not (self.spec.dynamic_size or image.shape[2:] == (height, width)):
                raise UserError(f"image batch has shape {list(image.shape)}; the graph takes {want}")
            image = np.ascontiguousarray(image, dtype=np.float32)
            if not np.isfinite(image).all():
                raise UserError("image batch holds NaN or Inf values; pass finite pixel values")
        if image.shape[0] == 0:
            raise UserError("image batch is empty; pass at least one image")
        return np.ascontiguousarray(image)

    def class_index(self, wanted: str | int | None) -> int:
        """A class given as an index or a label name → its index (−1 for None: the top-1 class).

        Raises:
            UserError: an index out of range or a name not among the labels.
        """
        if wanted is None:
            return -1
        if isinstance(wanted, bool) or not isinstance(wanted, (str, int, np.integer)):
            raise UserError(f"target={wanted!r}: pass a class index (an int, -1 for top-1) or a label (a str)")
        labels = self.spec.labels
        text = str(wanted).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not -1 <= index < len(labels):
                raise UserError(f"target={index}: out of range; the graph has classes 0..{len(labels) - 1}")
            return index
        matches = [i for i, name in enumerate(labels) if name.lower() == text.lower()]
        if not matches:
            close = difflib.get_close_matches(text, labels, n=3)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "pass an index instead"
            raise UserError(f"target={text!r}: not a label of this graph; {hint}")
        return matches[0]

    def require_preprocessing(self) -> None:
        """Raises UserError for a graph whose preprocessing is unknown (built from an ONNX file without
        ``--mean``/``--std``): images cannot become its input; arrays for :meth:`run` still can."""
        if not self.spec.preprocessing.known:
            raise UserError(
                f"{self.path}: built from an ONNX file without --mean/--std, so how an image becomes its input is "
                "unknown; rebuild it with --mean and --std (those the file's model was trained with)"
            )

    def prepare(
        self, image: ImageLike, name: str = "image", jpeg_draft: bool = False
    ) -> tuple[Image.Image, np.ndarray]:
        """One image (PIL image, file path, the bytes of a file, or uint8/float array [H, W], [H, W, 1|3|4]) → (photo,
        graph input).

        The photo is in the graph's image mode (RGB for 3 channels, L for 1, four bands for 4); the input is
        [C, H, W] normalised, or [H, W, C] uint8 for a ``--input uint8`` graph. ``jpeg_draft``: a large JPEG file
        is decoded at a reduced scale (:func:`camexport.runtime.preprocess.jpeg_draft`; classifier graphs only),
        and the photo returned is that smaller one.

        Raises:
            UserError: unreadable file, or an array of the wrong shape or with NaN/Inf values; ``jpeg_draft`` for
                a graph that places boxes or regions on the photo.
        """
        self.require_preprocessing()
        prep = self.spec.preprocessing
        if jpeg_draft:
            self.check_draft()
        photo = as_photo(image, name, prep.image_mode or "RGB", prep if jpeg_draft else None)
        pixels = to_pixels(photo, prep)
        return photo, pixels if self.spec.takes_pixels else normalise(pixels, prep)

    def check_draft(self) -> None:
        """Raises UserError unless JPEG drafting suits this graph: a classifier's heatmap is drawn on whatever
        photo was read; a detector's boxes and a segmentation's regions are numbers in the photo's own pixels."""
        if self.spec.task != "classification":
            raise UserError(
                f"`jpeg_draft`: for classifier graphs; a {self.spec.task} graph reports positions in the photo's own "
                "pixels, which a reduced decode would change: leave it off"
            )

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        target: str | int | None = None,
        top_k: int = ExplainStyle.top_k,
        batch_size: int = RunOptions.batch_size,
    ) -> list[Explanation]:
        """Explains photos: preprocessing (Pillow), batched runs, heatmaps back at each photo's size.

        Args:
            images: one image or a list (or tuple) of them: PIL images, file paths, an image file's bytes, or
                arrays [H, W] / [H, W, 3] / [H, W, 4] (uint8, or float in [0, 1]).
            target: the class to explain, by index or label name; None explains each image's top-1 class.
            top_k: how many classes to report per image.
            batch_size: images per onnxruntime run.

        Returns:
            One :class:`Explanation` per image, in order.

        Raises:
            UserError: a bad image (named by its path or position), class, ``top_k`` or ``batch_size``.
        """
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        checks.whole("top_k", top_k, 1, "use 1 or more")
        checks.whole("batch_size", batch_size, 1, "use 1 or more")
        index = self.class_index(target)
        if self.spec.provenance.random_weights:
            warnings.warn(random_weights_note(self), UserWarning, stacklevel=2)
        results: list[Explanation] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            prepared = [self.prepare(item, _name(item, start + i)) for i, item in enumerate(chunk)]
            results += self.explain_prepared(prepared, index, top_k)
        return results

    def explain_prepared(
        self,
        prepared: Sequence[tuple[Image.Image, np.ndarray]],
        target: int | Sequence[int] = -1,
        top_k: int = ExplainStyle.top_k,
    ) -> list[Explanation]:
        """Runs one batch of :meth:`prepare` results (the CLI's path, which prepares files one by one); ``target``
        is one class for all or one per image (−1: top-1)."""
        batch = np.stack([array for _, array in prepared])
        outputs = self.run(batch, np.asarray(target, dtype=np.int64).reshape(-1))
        return [self.explanation(outputs, i, photo.size, top_k) for i, (photo, _) in enumerate(prepared)]

    def explanation(
        self, outputs: dict[str, np.ndarray], i: int, photo_size: tuple[int, int], top_k: int = ExplainStyle.top_k
    ) -> Explanation:
        """Image ``i`` of a batch's :meth:`run` outputs as an :class:`Explanation` of a ``photo_size`` photo, its
        classes ranked and its region chosen by the graph's task (:mod:`camexport.runtime.tasks`: a segmentation's
        classes by their share of the predicted pixels, its region the pixels predicted as the explained class)."""
        checks.whole("top_k", top_k, 1, "use 1 or more")
        labels = self.spec.labels
        probs = self.task.ranking(outputs, i)
        order = np.argsort(-probs, kind="stable")[:top_k]
        top = [(int(k), labels[int(k)], float(probs[k])) for k in order]
        if self.spec.detection is not None:
            return self._detections(outputs, i, photo_size, top)
        chosen = int(outputs["class_index"][i])
        return Explanation(
            top=top,
            class_index=chosen,
            label=labels[chosen],
            probability=float(probs[chosen]),
            cam=outputs["cam"][i],
            input_heatmap=outputs["heatmap"][i],
            photo_size=photo_size,
            preprocessing=self.spec.preprocessing,
            region=self.task.region(outputs, i),
        )

    def _detections(
        self, outputs: dict[str, np.ndarray], i: int, photo_size: tuple[int, int], top: list
    ) -> Explanation:
        """A detection graph's image ``i``: each filled slot as a :class:`Detected` (its box on the photo), and as
        the image's own map the largest of the detections' maps at each pixel; the best detection is the
        explanation's class."""
        prep, labels = self.spec.preprocessing, self.spec.labels
        found = tuple(
            Detected(
                slot=d,
                class_index=int(outputs[LABELS.name][i, d]),
                label=labels[int(outputs[LABELS.name][i, d])],
                score=float(outputs[SCORES.name][i, d]),
                box=box_on_photo(outputs[BOXES.name][i, d], prep, *photo_size),
                cam=outputs["cam"][i, d],
                input_heatmap=outputs["heatmap"][i, d],
            )
            for d in range(outputs[LABELS.name].shape[1])
            if outputs[LABELS.name][i, d] >= 0
        )
        best = found[0] if found else None
        every = outputs["heatmap"][i, : len(found)].max(axis=0) if found else np.zeros(prep.image_size, np.float32)
        return Explanation(
            top=top,
            class_index=best.class_index if best else -1,
            label=best.label if best else "",
            probability=best.score if best else 0.0,
            cam=outputs["cam"][i, 0],
            input_heatmap=every,
            photo_size=photo_size,
            preprocessing=prep,
            detections=found,
        )


def box_on_photo(box: np.ndarray, prep: Preprocessing, width: int, height: int) -> tuple[float, ...]:
    """A box (x1, y1, x2, y2) in the network input's pixels → in a ``width`` x ``height`` photo's pixels (the input
    is the photo's centre crop, resized: :meth:`Preprocessing.crop_box`), rounded to 0.01 pixel."""
    left, top, right, bottom = prep.crop_box(width, height)
    in_h, in_w = prep.image_size
    sx, sy = (right - left) / in_w, (bottom - top) / in_h
    x1, y1, x2, y2 = (float(v) for v in box)
    return tuple(round(v, 2) for v in (left + x1 * sx, top + y1 * sy, left + x2 * sx, top + y2 * sy))


@dataclass(frozen=True)
class Detected:
    """One detection of a detection graph, explained.

    Attributes:
        slot: its place among the graph's M slots (0 is the best).
        class_index: its class; label: its name; score: the detector's score for it (the explained score).
        box: (x1, y1, x2, y2) in the photo's pixels.
        cam: its raw map [h, w]; input_heatmap: its heatmap [H, W] at the network input's size, in [0, 1].
    """

    slot: int
    class_index: int
    label: str
    score: float
    box: tuple[float, ...]
    cam: np.ndarray
    input_heatmap: np.ndarray


ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray]  # noqa: UP007 - a runtime alias


@dataclass
class Explanation:
    """One photo's explanation.

    Attributes:
        top: the top-k classes as (index, label, probability), most probable first (segmentation: the share of
            the pixels predicted as the class, largest first).
        class_index: the class the heatmap explains.
        label: its name.
        probability: its softmax probability (segmentation: its share of the predicted pixels).
        cam: the graph's raw ``cam`` [h, w] (float32, at the explained layer's resolution).
        input_heatmap: the graph's ``heatmap`` [H, W] in [0, 1], at the network input's size.
        photo_size: (width, height) of the photo.
        preprocessing: how the photo became the network input (for placing the heatmap back).
        region: segmentation only: bool [H, W] at the network input's size, the explained pixels.
        detections: a detection graph's detections, best first, each with its own map (the explanation's class and
            maps are then the best detection's class and, per pixel, the largest of the detections' maps); None
            for other graphs.
    """

    top: list[tuple[int, str, float]]
    class_index: int
    label: str
    probability: float
    cam: np.ndarray
    input_heatmap: np.ndarray
    photo_size: tuple[int, int]
    preprocessing: Preprocessing
    region: np.ndarray | None = None
    detections: tuple[Detected, ...] | None = None

    @functools.cached_property
    def heatmap(self) -> np.ndarray:
        """Float32 [height, width] in [0, 1] at the photo's own resolution (0 outside what the network saw)."""
        return self.heatmap_at(*self.photo_size)

    @functools.cached_property
    def seen(self) -> np.ndarray:
        """Bool [height, width], True where the network saw the photo (inside the centre crop)."""
        return seen_mask(self.preprocessing, *self.photo_size)

    def heatmap_at(self, width: int, height: int) -> np.ndarray:
        """The heatmap placed on the photo resized to ``width`` x ``height`` (e.g. a downscaled overlay)."""
        checks.whole("width", width, 1, "use a positive number of pixels")
        checks.whole("height", height, 1, "use a positive number of pixels")
        return heatmap_to_original(self.input_heatmap, self.preprocessing, width, height)


def random_weights_note(session: CamSession) -> str:
    """What to tell a user whose graph has random weights (said once per run)."""
    return (
        f"{session.path} was built with random weights ({session.spec.provenance.weights}): its predictions and labels "
        "mean nothing; rebuild it with real weights (camexport build MODEL --weights default or PATH) to "
        "explain real classes"
    )


def _name(item: ImageLike, position: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"image {position}"


def as_photo(
    image: ImageLike, name: str = "image", mode: str = "RGB", draft: Preprocessing | None = None
) -> Image.Image:
    """A PIL image, a file path or an array → an 8-bit PIL image in ``mode`` (see
    :func:`camexport.runtime.preprocess.open_image`, which also says what ``draft`` does to a JPEG file).

    Arrays: [H, W] or [H, W, 1] (grayscale), [H, W, 3] (RGB) or [H, W, 4] (four bands: RGBA, whose alpha an
    RGB graph drops); uint8, or float in [0, 1].

    Raises:
        UserError: unreadable file; wrong array shape or dtype; NaN or Inf; float values outside [0, 1].
    """
    if isinstance(image, (str, Path, bytes, Image.Image)):
        return open_image(image, name if isinstance(image, bytes) else None, mode, draft)
    if not isinstance(image, np.ndarray):
        raise UserError(
            f"{name}: {type(image).__name__} is not an image; pass a PIL image, a file path or an array of pixels"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or 0 in image.shape:
        raise UserError(f"{name}: array of shape {list(image.shape)}; pass [H, W], [H, W, 1|3|4] pixels")
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise UserError(f"{name}: the array holds NaN or Inf; pass finite pixel values")
        if image.min() < 0.0 or image.max() > 1.0:
            raise UserError(f"{name}: float pixels must lie in [0, 1] (or pass uint8 0..255)")
        image = np.round(image * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UserError(f"{name}: array of {image.dtype}; pass uint8 (0..255) or float (0..1) pixels")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    return open_image(Image.fromarray(np.ascontiguousarray(image)), name, mode)


_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(uint8)": "uint8"}


def _signatures(values: Sequence[ort.NodeArg]) -> dict[str, Signature]:
    """onnxruntime's view of a graph's inputs or outputs: name → (dtype, dimensions)."""
    return {value.name: (_DTYPES.get(value.type, value.type), list(value.shape)) for value in values}
