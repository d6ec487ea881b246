"""The fixture networks, in numpy: their weights and what their graphs must output (no torch here).

The run side's tests (tests/runtime) run small camexport graphs committed in tests/runtime/graphs/; the build
side makes them from torch networks with these same weights (tests/builder/fixture_graphs.py, which a builder test
keeps current). Each network is linear after an average pool, so every output has a closed form written here from
the papers' formulas (tests/numpy_cam.py): the graphs are checked against known answers without torch.

* ``linear``: ``A = feat(x) = AvgPool2d(2)(x)`` [N, C, 8, 8] for a 16x16 image, ``logits = Σ_kyx W[c]·A + b``; the
  gradient of class c's logit at ``feat`` is ``W[c]`` whatever the image.
* ``pooled``: the same ``A``, ``logits = W · mean_yx(A) + b``: any image size (``--dynamic-size``).
* ``segmenter``: the same ``A``, ``Z = W·A + b`` per position (a 1x1 convolution), logits = ``Z`` upsampled
  bilinearly (half-pixel) to the image: [N, K, 16, 16].
* ``red``: a detector of saturated red, whose faithfulness scores are known (see :data:`RED_GAIN`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy_cam

SIZE = 16  # image side; the explained map is 8x8
# The red detector (red.onnx, for the faithfulness metrics): class 1's logit is RED_GAIN · mean(ReLU(R − RED_THRESHOLD))
# over a 32x32 image of unnormalised pixels in [0, 1], class 0's is 0: only saturated red counts, a blurred object not.
RED_THRESHOLD, RED_GAIN = 0.5, 8.0
# The probe segmenter (probe-segmenter.onnx): logits = W·x per pixel, a 1x1 convolution of the image itself, at
# 24x20 with mean 0 and std 1: at its layer ``feat`` the activations are the image, and the gradient of class c's
# logits summed over a region M is exactly W[c] · M.
PROBE_WEIGHT = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (-0.5, -0.5, -0.5))
PROBE_SIZE = (24, 20)
LABELS = ("cat", "dog", "fox", "owl")
REGIONS = ("sky", "road", "car")
MEAN, STD = (0.5, 0.4, 0.3, 0.6), (0.25, 0.2, 0.3, 0.25)


@dataclass(frozen=True)
class Net:
    """A fixture network: ``kind`` (linear, pooled, segmenter), its channels and its weights."""

    kind: str
    channels: int
    weight: np.ndarray
    bias: np.ndarray

    @property
    def labels(self) -> tuple[str, ...]:
        return REGIONS if self.kind == "segmenter" else LABELS

    @property
    def mean(self) -> tuple[float, ...]:
        return MEAN[: self.channels]

    @property
    def std(self) -> tuple[float, ...]:
        return STD[: self.channels]


def net(kind: str, channels: int = 3) -> Net:
    """The network's weights, from a seed of its own (float32, as the graph holds them)."""
    rng = np.random.default_rng({"linear": 11, "pooled": 12, "segmenter": 13}[kind] * 10 + channels)
    classes = len(REGIONS if kind == "segmenter" else LABELS)
    shape = {"linear": (classes, channels, SIZE // 2, SIZE // 2)}.get(kind, (classes, channels))
    return Net(
        kind, channels, rng.normal(0, 1, shape).astype(np.float32), rng.normal(0, 0.5, classes).astype(np.float32)
    )


def normalised(pixels: np.ndarray, model: Net) -> np.ndarray:
    """uint8 pixels [N, H, W, C] → the normalised float input [N, C, H, W] (float64)."""
    scaled = pixels.astype(np.float64) / 255.0
    return ((scaled - np.array(model.mean)) / np.array(model.std)).transpose(0, 3, 1, 2)


def activations(image: np.ndarray) -> np.ndarray:
    """``feat``: a 2x2 average pool, [N, C, H, W] → [N, C, H/2, W/2]."""
    n, c, h, w = image.shape
    return np.asarray(image, dtype=np.float64).reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def logits(model: Net, A: np.ndarray) -> np.ndarray:
    """The network's logits from ``A``: [N, K], or [N, K, H, W] for the segmenter."""
    w, b = model.weight.astype(np.float64), model.bias.astype(np.float64)
    if model.kind == "linear":
        return np.einsum("kcyx,ncyx->nk", w, A) + b
    if model.kind == "pooled":
        return A.mean(axis=(2, 3)) @ w.T + b
    up_h, up_w = interpolation(2 * A.shape[2], A.shape[2]), interpolation(2 * A.shape[3], A.shape[3])
    z = np.einsum("kc,ncyx->nkyx", w, A) + b[:, None, None]
    return np.einsum("Hy,nkyx,Wx->nkHW", up_h, z, up_w)


def interpolation(out_size: int, in_size: int) -> np.ndarray:
    """[out, in]: 1-D bilinear interpolation with half-pixel centres (align_corners=False), edges clamped."""
    src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    matrix[np.arange(out_size), low] += 1 - (src - low)
    matrix[np.arange(out_size), high] += src - low
    return matrix


def gradients(model: Net, A: np.ndarray, classes: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """∂y_c/∂A for each image's class: ``W[c]`` (linear), ``W[c]/hw`` everywhere (pooled); for the segmenter,
    ``y_c = Σ region ⊙ logits[c]`` gives ``W[c, k] · U_Hᵀ region U_W``."""
    w = model.weight.astype(np.float64)
    h, wd = A.shape[2:]
    if model.kind == "linear":
        return w[classes]
    if model.kind == "pooled":
        return np.broadcast_to(w[classes][:, :, None, None] / (h * wd), A.shape).copy()
    up_h, up_w = interpolation(2 * h, h), interpolation(2 * wd, wd)
    back = np.einsum("Hy,nHW,Wx->nyx", up_h, region, up_w)
    return w[classes][:, :, None, None] * back[:, None]


def segmentation_region(model: Net, A: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The pixels predicted as each image's class (the segmenter's default region), float [N, H, W]."""
    predicted = logits(model, A).argmax(axis=1)
    return (predicted == classes[:, None, None]).astype(np.float64)


def default_classes(model: Net, A: np.ndarray) -> np.ndarray:
    """The class explained for −1: the top-1 logit; the segmenter's, the class predicted on the most pixels."""
    scores = logits(model, A)
    if model.kind != "segmenter":
        return scores.argmax(axis=1)
    predicted = scores.argmax(axis=1).reshape(len(A), -1)
    return np.array([np.bincount(p, minlength=scores.shape[1]).argmax() for p in predicted])


def cam(method: str, A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """A gradient method's map, from the papers' formulas (tests/numpy_cam.py)."""
    if method in ("layercam", "hirescam"):
        return getattr(numpy_cam, method)(A, g)
    return numpy_cam.cam(A, getattr(numpy_cam, f"{method}_weights")(A, g))


def reciprocam(model: Net, A: np.ndarray) -> np.ndarray:
    """ReciproCAM's every-class maps [N, K, h, w] (Byun & Lee 2022): at each position (i, j) the softmax of the
    logits of ``A``'s vector at (i, j) spread by the 3x3 Gaussian (1/4 centre, 1/8 edges, 1/16 corners)."""
    n, _, h, w = A.shape
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16.0
    maps = np.zeros((n, len(model.labels), h, w))
    for i in range(h):
        for j in range(w):
            stamp = np.zeros((h + 2, w + 2))
            stamp[i : i + 3, j : j + 3] = kernel
            masked = A[:, :, i, j][:, :, None, None] * stamp[1:-1, 1:-1]
            scores = logits(model, masked)
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            maps[:, :, i, j] = scores / scores.sum(axis=1, keepdims=True)
    return maps
