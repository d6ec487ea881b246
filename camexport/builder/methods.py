"""The CAM methods as records in one registry, and their formulas as traceable torch functions: these are the
operations that end up in the ONNX graph.

Each method is one :class:`Method` record in :data:`REGISTRY`: its contract record (:data:`camexport.contract.METHODS`:
name, paper, equation), how the graph computes its map from the gradient pass (:class:`LayerPass`), its float64
reference for validation (in :mod:`camexport.builder.reference`, written separately), and, where a method cannot
explain every layer or needs something of the model first, a check and a preparation. Tracing and validation only
walk the registry; no method is a special case there.

Notation: ``A`` is the target layer's output [N, K, h, w], ``g = ∂y_c/∂A`` its gradient, where ``y_c`` is the
explained score (a classifier's pre-softmax logit of the class c).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from camexport.builder import reference
from camexport.builder.decompositions import interpolation_matrix
from camexport.builder.layers import enclosing_block
from camexport.builder.layouts import CHANNELS_FIRST, Layout, Windows
from camexport.contract import CLASSIFICATION, FLAT_MAP, METHODS, GraphSpec, MethodSpec


def gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights (Selvaraju et al., ICCV 2017, arXiv 1610.02391, eq. 1).

    ``w_k = (1 / hw) Σ_ij g_kij``

    Args:
        activations: A, [N, K, h, w] (unused; kept for a uniform signature).
        gradients: g = ∂y_c/∂A, [N, K, h, w].

    Returns:
        w, [N, K].
    """
    del activations
    return gradients.mean(dim=(2, 3))


def gradcampp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhyay et al., WACV 2018, arXiv 1710.11063, eq. 19).

    The paper: ``α_kij = g_kij² / (2 g_kij² + S_k g_kij³)`` with ``S_k = Σ_ab A_kab``, ``α = 0`` where the
    denominator is 0, and ``w_k = Σ_ij α_kij ReLU(g_kij)``. (A widely copied "minimal example" puts
    ``Σ_ab (A_kab g_kab³)`` in the denominator instead; that is a different quantity and is not used here.)

    Computed in the equal, cheaper form ``α_kij ReLU(g_kij) = ReLU(g_kij) / (2 + S_k g_kij)``, 0 where
    ``2 + S_k g_kij = 0``. Derivation, per position (drop the indices):

    * g ≤ 0: ReLU(g) = 0, so both sides are 0 (whatever α is).
    * g > 0: the denominator is ``g² (2 + S g)``. If ``2 + S g ≠ 0``, ``α = g² / (g² (2 + S g)) = 1 / (2 + S g)``
      and ``α ReLU(g) = g / (2 + S g)``; if ``2 + S g = 0`` the paper's α is 0, and so is the right side.

    The cheap form needs neither g² nor g³: three elementwise products fewer on [N, K, h, w], and no
    underflow: for tiny positive g (below ~4e-23 in float32, where g² falls under the smallest subnormal)
    g² and g³ are 0, the paper's denominator becomes 0 and its α 0, where the true α is 1/(2 + S g) ≈ 1/2;
    this form keeps it.

    Args:
        activations: A, [N, K, h, w].
        gradients: g = ∂y_c/∂A, [N, K, h, w].

    Returns:
        w, [N, K].
    """
    channel_sums = activations.sum(dim=(2, 3), keepdim=True)
    denominator = 2.0 + channel_sums * gradients
    # Masks as products, not Where (onnxruntime's Where with a scalar branch is ~8x slower than Mul): where
    # the denominator is 0 it becomes 1, and the share is multiplied by 0.
    zero = (denominator == 0).to(denominator.dtype)
    return (F.relu(gradients) / (denominator + zero) * (1.0 - zero)).sum(dim=(2, 3))


def xgradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM channel weights (Fu et al., BMVC 2020, arXiv 2008.02312, eq. 9).

    ``w_k = Σ_ij (A_kij / Σ_ab A_kab) g_kij``, with ``w_k = 0`` where ``Σ_ab A_kab = 0``.

    Args:
        activations: A, [N, K, h, w].
        gradients: g = ∂y_c/∂A, [N, K, h, w].

    Returns:
        w, [N, K].
    """
    sums = activations.sum(dim=(2, 3))
    weighted = (activations * gradients).sum(dim=(2, 3))
    return torch.where(sums != 0, weighted / sums, 0.0)  # a zero sum's inf or NaN is in the branch not taken


def class_activation_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``cam = ReLU(Σ_k w_k A_k)``, [N, h, w]."""
    return F.relu((weights[:, :, None, None] * activations).sum(dim=1))


def channel_weighted(weights_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """``cam(A, g) = ReLU(Σ_k w_k A_k)`` for a method that weights each channel by ``weights_of(A, g)``."""

    def cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return class_activation_map(activations, weights_of(activations, gradients))

    return cam


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", eqs. 4-5): a weight per position, ``cam = ReLU(Σ_k ReLU(g_kij) A_kij)``, [N, h, w]."""
    return F.relu((F.relu(gradients) * activations).sum(dim=1))


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020, arXiv 2011.08891, eq. 4): the gradient itself as the weight at each
    position, ``cam = ReLU(Σ_k g_kij A_kij)``, [N, h, w]; unlike Grad-CAM's averaged weights, it shows
    exactly the locations that raise the score (right before a global-average-pooled head, where the gradient
    is constant per channel, it equals Grad-CAM)."""
    return F.relu((gradients * activations).sum(dim=1))


# ReciproCAM's spatial mask (Byun & Lee, arXiv 2209.14074; CVPRW 2024): a 3x3 Gaussian, as in the authors'
# implementation (openvinotoolkit/training_extensions, misc/pytorch_toolkit/recipro_cam).
RECIPRO_KERNEL = ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16))


def reciprocal_stamps(h: int, w: int) -> torch.Tensor:
    """[h·w, h, w]: for position p = (i, j), the Gaussian :data:`RECIPRO_KERNEL` centred at (i, j), cut at the
    map's border (a constant of the graph, built from Python numbers)."""
    stamps = [[[0.0] * (w + 2) for _ in range(h + 2)] for _ in range(h * w)]
    for p in range(h * w):
        i, j = divmod(p, w)
        for di in range(3):
            for dj in range(3):
                stamps[p][i + di][j + dj] = RECIPRO_KERNEL[di][dj]
    return torch.tensor(stamps, dtype=torch.float32)[:, 1:-1, 1:-1]


def reciprocal_mosaics(activations: torch.Tensor) -> torch.Tensor:
    """ReciproCAM's spatially masked feature maps (Byun & Lee 2022, sec. 3.1): [N, K, h, w] → [N·h·w, K, h, w].

    Map ``p = (i, j)`` of image ``n`` keeps only the feature vector ``A[n, :, i, j]``, spread over its 3x3
    neighbourhood with the Gaussian weights: ``M[n·hw + p, k, y, x] = A[n, k, i, j] · G_p[y, x]``.
    """
    n, k, h, w = activations.shape
    stamps = reciprocal_stamps(h, w).to(activations.dtype)
    vectors = activations.reshape(n, k, h * w).transpose(1, 2)  # [N, hw, K]
    return (vectors[:, :, :, None, None] * stamps[None, :, None]).reshape(n * h * w, k, h, w)


def token_mosaics(activations: torch.Tensor) -> torch.Tensor:
    """ViT-ReciproCAM's masked token maps (Byun & Lee, arXiv 2310.02588, sec. 3): [N, K, h, w] → [N·h·w, K, h, w].

    Map ``p = (i, j)`` of image ``n`` keeps every token of the 3x3 neighbourhood of (i, j), each weighted by the
    Gaussian there, and zeroes the rest: ``M[n·hw + p, k, y, x] = A[n, k, y, x] · G_p[y, x]`` (the tokens are
    masked in place, where :func:`reciprocal_mosaics` spreads the centre's vector). Prefix tokens (the class
    token) are the layout's to keep (:meth:`camexport.builder.layouts.Layout.from_maps`).
    """
    n, k, h, w = activations.shape
    stamps = reciprocal_stamps(h, w).to(activations.dtype)
    return (activations[:, None] * stamps[None, :, None]).reshape(n * h * w, k, h, w)


def reciprocal_probabilities(masked_logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Every class's ReciproCAM map (sec. 3.2): ``P[n, c, i, j] = softmax(f(M[n·hw + p]))_c`` for the mosaic
    masked at p = (i, j), [N, K, h, w] (one pass gives every class)."""
    probs = torch.softmax(masked_logits, dim=1)
    return probs.reshape(-1, h, w, masked_logits.shape[1]).permute(0, 3, 1, 2)


def reciprocal_cam(probabilities: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """ReciproCAM's map of each image's class, [N, h, w], from :func:`reciprocal_probabilities`."""
    h, w = probabilities.shape[2], probabilities.shape[3]
    return probabilities.gather(1, class_index[:, None, None, None].expand(-1, 1, h, w))[:, 0]


def normalised_heatmap(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling to ``size`` (half-pixel, align_corners=False), then per-image min-max to [0, 1].

    An image whose upsampled map is constant (for example an all-zero cam), or varies by less than
    ``FLAT_MAP`` of its maximum (interpolation rounding), gets zeros, never NaN.
    """
    h, w = cam.shape[-2:]
    if all(isinstance(v, int) for v in (h, w, *size)):
        # Bilinear resizing is separable and linear: U_H · cam · U_Wᵀ with constant [H, h] and [W, w]
        # matrices. Symbolic tracing would otherwise decompose the resize into four gathers and lerps
        # (10% of a resnet18 graph's time in onnxruntime); two small MatMuls cost far less.
        up = interpolation_matrix(size[0], h).to(cam.dtype) @ cam @ interpolation_matrix(size[1], w).to(cam.dtype).T
    else:  # symbolic sizes (--dynamic-size)
        up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    high = up.amax(dim=(1, 2), keepdim=True)
    span = high - low
    # A span at rounding level (interpolating a constant map) is noise, not structure: give zeros.
    positive = span > FLAT_MAP * high.abs()
    # One factor per image, chosen on [N, 1, 1] (a zero span's inf stays in the branch not taken), then one Mul
    # over the map: cheaper than choosing per pixel.
    scale = torch.where(positive, 1.0 / span, 0.0)
    return (up - low) * scale


@dataclass(frozen=True)
class LayerPass:
    """What the graph's forward and backward pass gives each method (built by :mod:`camexport.builder.tracing`).

    Attributes:
        class_index: the explained class of each image, [N].
        activations: A as [N, D, h, w] (the layer's output read through its layout).
        gradients: g = ∂y_c/∂A, as A.
        layout: how the layer's output is read as A.
        output: the layer's output as the network made it.
        block_input: the input of the spec's ``masked_block`` (None without one).
        rerun: the network's logits with the layer's output (and the block's input) replaced, without gradients.
    """

    class_index: torch.Tensor
    activations: torch.Tensor
    gradients: torch.Tensor
    layout: Layout
    output: torch.Tensor
    block_input: torch.Tensor | None
    rerun: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Maps:
    """A method's maps for a batch: ``cam`` [N, h, w] of each image's class and, for a method that has them, every
    class's map [N, K, h, w] (the ``class_maps`` output)."""

    cam: torch.Tensor
    every_class: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    """One CAM method, whole.

    Attributes:
        spec: its contract record (name, paper, equation, gradient or gradient-free).
        graph: how the graph computes its maps from the pass (traced into the ONNX graph).
        reference: its float64 maps from the eager reference's pass, for validation.
        unfit: why it cannot explain a layer of this layout in a graph of this spec, or None.
        prepare: what it needs of the model before tracing, set in the spec (given an example input).
    """

    spec: MethodSpec
    graph: Callable[[LayerPass], Maps]
    reference: Callable[[reference.ReferencePass], Maps]
    unfit: Callable[[Layout, GraphSpec], str | None] = lambda _layout, _spec: None
    prepare: Callable[[nn.Module, GraphSpec, torch.Tensor], GraphSpec] = lambda _model, spec, _image: spec


def _from_gradients(cam: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[object], Maps]:
    """A gradient method's maps from either pass (the graph's :class:`LayerPass` or the reference's): ``cam(A, g)``."""
    return lambda done: Maps(cam(done.activations, done.gradients))


def reciprocam_maps(done: LayerPass) -> Maps:
    """ReciproCAM's second pass: the network run again with the layer's output replaced by its h·w masked maps per
    image, one batch of N·h·w without gradients. A convolutional map gets ReciproCAM's mosaics (Byun & Lee 2022), a
    transformer's tokens ViT-ReciproCAM's (Byun & Lee 2023). With a masked block, the block's input is masked
    alike, so that its skip connection carries masked maps too. The masked copies are made from the gradient pass's
    tensors, so that nothing before them runs twice."""
    h, w = done.activations.shape[2:]

    def masked(output: torch.Tensor) -> torch.Tensor:
        maps = done.layout.to_map(output)
        mosaics = reciprocal_mosaics(maps) if done.layout == CHANNELS_FIRST else token_mosaics(maps)
        return done.layout.from_maps(mosaics, output, h * w)

    entry = None if done.block_input is None else masked(done.block_input)
    probabilities = reciprocal_probabilities(done.rerun(masked(done.output), entry), h, w)
    return Maps(reciprocal_cam(probabilities, done.class_index), probabilities)


def _reciprocam_reference(done: reference.ReferencePass) -> Maps:
    cam, every_class = reference.reciprocam(done)
    return Maps(cam, every_class)


def _reciprocam_unfit(layout: Layout, spec: GraphSpec) -> str | None:
    """ReciproCAM masks a map of a fixed size, laid out as a grid, and reads a classifier's probabilities."""
    if isinstance(layout, Windows):
        return f"{spec.layer} is {layout.describe()}, which it cannot mask; choose a block's output"
    if spec.task != CLASSIFICATION.name:
        return f"it reads a classifier's class probabilities, and this model's task is {spec.task}"
    if spec.dynamic_size:
        return "its masks are made for one map size; build without `dynamic_size`"
    return None


def _reciprocam_block(model: nn.Module, spec: GraphSpec, image: torch.Tensor) -> GraphSpec:
    """Where a skip connection goes around the layer, the block whose input is masked too
    (:func:`camexport.builder.layers.enclosing_block`)."""
    return replace(spec, masked_block=enclosing_block(model, spec.layer, image))


def _gradient(name: str, cam: Callable, paper: Callable) -> Method:
    """A gradient method's record: its map from A and g in the graph (``cam``) and in the reference (``paper``)."""
    return Method(METHODS[name], _from_gradients(cam), _from_gradients(paper))


# Every method of :data:`camexport.contract.METHODS`, in its order.
REGISTRY: dict[str, Method] = {
    method.spec.name: method
    for method in (
        _gradient("gradcampp", channel_weighted(gradcampp_weights), reference.gradcampp),
        _gradient("gradcam", channel_weighted(gradcam_weights), reference.gradcam),
        _gradient("xgradcam", channel_weighted(xgradcam_weights), reference.xgradcam),
        _gradient("layercam", layercam, reference.layercam),
        _gradient("hirescam", hirescam, reference.hirescam),
        Method(
            METHODS["reciprocam"],
            reciprocam_maps,
            _reciprocam_reference,
            unfit=_reciprocam_unfit,
            prepare=_reciprocam_block,
        ),
    )
}
