"""Tracing and export on hand-made tensors: the ONNX graph in onnxruntime against the numpy formulas.

The probe model makes ``A`` and ``g`` exact, so these checks pin the whole path (trace, decompositions,
export, IO contract) to the formulas, at batch sizes other than the tracing batch.
"""

from __future__ import annotations

import numpy as np
import numpy_cam
import onnxruntime as ort
import pytest
import torch
from building import ProbeModel, spec_of
from torch import nn

from camexport.builder.decompositions import adaptive_avg_pool2d_backward, conv_output_padding, convolution_backward
from camexport.builder.export import finalise, to_onnx
from camexport.builder.tracing import TRACE_BATCH, trace_explainer

OUTPUT_NAMES = ("logits", "class_index", "heatmap", "cam", "activations", "gradients")


def export_session(model: nn.Module, layer: str, method: str, size: tuple[int, int], classes: int):
    spec = spec_of(layer, (method,), size, classes)
    proto = finalise(to_onnx(trace_explainer(model, spec)), spec)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]), proto


@pytest.mark.parametrize("method", ["gradcampp", "gradcam"])
def test_probe_graph_matches_numpy_at_new_batch_sizes(method: str) -> None:
    rng = np.random.default_rng(5)
    classes, h, w = 4, 3, 5
    weight = torch.tensor(rng.normal(0, 1, size=(classes, 3, h, w)), dtype=torch.float32)
    model = ProbeModel(weight).eval()
    model.feat = nn.AvgPool2d(2)
    session, _ = export_session(model, "feat", method, (2 * h, 2 * w), classes)
    for batch in (1, 5):
        A = rng.uniform(-1.0, 2.0, size=(batch, 3, h, w)).astype(np.float32)
        image = np.repeat(np.repeat(A, 2, axis=2), 2, axis=3)
        target = rng.integers(0, classes, size=batch).astype(np.int64)
        outputs = dict(
            zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"image": image, "target_class": target}), strict=True)
        )
        g = weight.numpy()[target].astype(np.float64)
        A64 = A.astype(np.float64)
        weights = (numpy_cam.gradcampp_weights if method == "gradcampp" else numpy_cam.gradcam_weights)(A64, g)
        expected_cam = numpy_cam.cam(A64, weights)
        assert outputs["class_index"].tolist() == target.tolist()
        np.testing.assert_allclose(outputs["activations"], A, rtol=1e-6)
        np.testing.assert_allclose(outputs["gradients"], g, rtol=1e-6)
        np.testing.assert_allclose(outputs["cam"], expected_cam, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(outputs["heatmap"], numpy_cam.heatmap(expected_cam, 2 * h, 2 * w), atol=1e-4)


def test_target_class_is_a_required_input_broadcast_to_the_batch() -> None:
    """Contract 2: ``target_class`` is an input with no default initializer ([1] or [N], −1 = top-1)."""
    rng = np.random.default_rng(6)
    weight = torch.tensor(rng.normal(0, 1, size=(5, 3, 4, 4)), dtype=torch.float32)
    session, _ = export_session(ProbeModel(weight).eval(), "feat", "gradcam", (4, 4), 5)
    assert [i.name for i in session.get_inputs()] == ["image", "target_class"]
    assert session.get_overridable_initializers() == []
    image = rng.normal(0, 1, size=(3, 3, 4, 4)).astype(np.float32)
    top1 = session.run(["class_index", "logits"], {"image": image, "target_class": np.array([-1], dtype=np.int64)})
    assert top1[0].tolist() == top1[1].argmax(1).tolist()
    broadcast = session.run(["class_index"], {"image": image, "target_class": np.array([2], dtype=np.int64)})[0]
    assert broadcast.tolist() == [2, 2, 2]
    mixed = session.run(["class_index"], {"image": image, "target_class": np.array([-1, 4, 0], dtype=np.int64)})[0]
    assert mixed.tolist() == [top1[0][0], 4, 0]


def test_gradients_are_recomputed_not_frozen() -> None:
    """pytorch#89675: a trace must not bake the example's gradients in as constants."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, dilation=2, padding=2),
        nn.AdaptiveAvgPool2d((3, 2)),
        nn.Flatten(),
        nn.Linear(48, 7),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    size = (13, 11)  # odd sizes: strided convolutions need output_padding in their input gradient
    session, proto = export_session(model, "0", "gradcampp", size, 7)
    from building import reference

    rng = np.random.default_rng(2)
    previous = None
    for batch in (1, 3):
        image = rng.normal(0, 1, size=(batch, 3, *size)).astype(np.float32)
        feeds = {"image": image, "target_class": np.array([-1], dtype=np.int64)}
        got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds), strict=True))
        ref = reference(model, "0", "gradcampp", image)
        np.testing.assert_allclose(
            got["gradients"], ref["gradients"], rtol=1e-4, atol=1e-5 * np.abs(ref["gradients"]).max()
        )
        np.testing.assert_allclose(got["heatmap"], ref["heatmap"], atol=1e-3)
        if previous is not None:
            assert not np.allclose(previous[0], got["gradients"][0])
        previous = got["gradients"]
    assert TRACE_BATCH not in (1, 3)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} | {f.domain for f in proto.functions}


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [(13, 3, 2, 1, 1), (14, 3, 2, 1, 1), (7, 1, 2, 0, 1), (9, 3, 3, 2, 2)],
)
def test_conv_output_padding_restores_the_input_size(size, kernel, stride, padding, dilation) -> None:
    x = torch.randn(1, 2, size, size)
    w = torch.randn(3, 2, kernel, kernel)
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    extra = conv_output_padding(size, kernel, stride, padding, dilation)
    back = torch.nn.functional.conv_transpose2d(
        y, w, stride=stride, padding=padding, output_padding=extra, dilation=dilation
    )
    assert back.shape[-1] == size


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "groups"),
    [
        (8, 16, 3, 1, 1, 1, 1),  # stride 1: a flipped, channel-swapped Conv
        (8, 8, 3, 1, 1, 1, 8),  # depthwise
        (8, 16, 5, 1, 2, 2, 2),  # dilated, grouped
        (6, 4, 1, 1, 0, 1, 1),
        (4, 4, 3, 1, 0, 1, 1),  # no padding
        (8, 16, 3, 2, 1, 1, 1),  # strided: ConvTranspose with output_padding
        (8, 8, 3, 2, 1, 1, 8),  # strided depthwise: a stride-1 Conv over the zero-spread gradient
        (8, 8, 5, 2, 2, 1, 8),
        (6, 12, 3, 3, 1, 1, 3),  # stride 3, grouped, two outputs per group
        (4, 4, 3, 2, 2, 2, 4),  # dilated
        (4, 4, 3, 2, 3, 1, 4),  # padding beyond the kernel: ConvTranspose instead
    ],
)
def test_convolution_input_gradient_matches_autograd(cin, cout, kernel, stride, padding, dilation, groups) -> None:
    x = torch.randn(2, cin, 13, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin // groups, kernel, kernel, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups)
    grad_y = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, grad_y)
    mask = [True, False, False]
    args = (grad_y, x.detach(), w, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups, mask)
    ours, _, _ = convolution_backward(*args)
    assert ours.shape == x.shape and (ours - expected).abs().max() <= 1e-12


@pytest.mark.parametrize(("in_size", "out_size"), [((7, 7), (3, 2)), ((6, 9), (6, 9)), ((5, 5), (1, 1))])
def test_adaptive_avg_pool_backward_matches_autograd(in_size, out_size) -> None:
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.adaptive_avg_pool2d(x, out_size)
    grad = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(adaptive_avg_pool2d_backward(grad, x.detach()), expected)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "ceil_mode", "count_include_pad"),
    [(8, 2, 2, 0, False, True), (7, 3, 2, 1, False, False), (7, 3, 2, 1, True, True), (9, 3, 1, 1, False, False)],
)
def test_avg_pool_backward_matches_autograd(size, kernel, stride, padding, ceil_mode, count_include_pad) -> None:
    from camexport.builder.decompositions import avg_pool2d_backward

    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    args = (kernel, stride, padding, ceil_mode, count_include_pad)
    y = torch.nn.functional.avg_pool2d(x, *args)
    grad = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, grad)
    got = avg_pool2d_backward(grad, x.detach(), [kernel], [stride], [padding], ceil_mode, count_include_pad, None)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "ceil_mode"),
    [
        (8, 2, 2, 0, 1, False),
        (9, 3, 2, 1, 1, False),
        (9, 3, 2, 0, 1, True),
        (10, 3, 1, 1, 2, False),
        (7, 3, 2, 1, 1, True),
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_backward_matches_autograd_without_a_scatter(size, kernel, stride, padding, dilation, ceil_mode, ties):
    """Overlapping windows (stride < kernel) share inputs; with ties (an image of zeros but for two peaks, each the
    maximum of the windows that hold it) one input takes several windows' gradients, which must all
    arrive, exactly."""
    from camexport.builder.decompositions import max_pool2d_with_indices_backward

    x = torch.randn(2, 3, size, size + 1, dtype=torch.float64)
    if ties:
        x = torch.zeros_like(x)
        x[..., 3, 3] = x[..., 4, 4] = 1.0
    x.requires_grad_(True)
    args = ([kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2, ceil_mode)
    y, indices = torch.ops.aten.max_pool2d_with_indices(x, *args)
    grad = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, grad)
    got = max_pool2d_with_indices_backward(grad, x.detach(), *args, indices)
    assert (got - expected).abs().max() <= 1e-12
    if ties and stride < kernel:
        plane = indices[0, 0].flatten()
        assert len(plane.unique()) < len(plane)  # a peak won several windows


@pytest.mark.parametrize("mode", ["bilinear", "bilinear-corners", "nearest", "nearest-exact"])
@pytest.mark.parametrize(
    "call",
    [{"size": (17, 6)}, {"size": (12, 18)}, {"scale_factor": 1.7}, {"scale_factor": (3, 0.5)}, {"scale_factor": 2}],
)
def test_resizing_as_matrix_products_matches_pytorch(mode: str, call: dict) -> None:
    """Bilinear (half-pixel or corner-aligned) and nearest upsampling and downsampling as U_H·x·U_Wᵀ, against
    F.interpolate in float64, to rounding; and the same gradient, since the products are linear."""
    from camexport.builder.decompositions import resize_as_products

    kwargs = {"mode": mode.removesuffix("-corners"), **call}
    if mode.startswith("bilinear"):
        kwargs["align_corners"] = mode.endswith("corners")
    for shape in [(2, 3, 6, 9), (1, 2, 7, 7), (1, 1, 1, 4)]:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        want = torch.nn.functional.interpolate(x, **kwargs)
        got = resize_as_products(x, **kwargs)
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-12
        grad = torch.randn_like(want)
        (expected,) = torch.autograd.grad(want, x, grad)
        (ours,) = torch.autograd.grad(got, x, grad)
        assert (ours - expected).abs().max() <= 1e-12


def test_other_resizes_are_left_to_pytorch() -> None:
    from camexport.builder.decompositions import resize_as_products

    x = torch.randn(1, 2, 5, 5)
    assert resize_as_products(x, size=(9, 9), mode="bicubic") is None
    assert resize_as_products(x, size=(9, 9), mode="bilinear", antialias=True) is None
    assert resize_as_products(torch.randn(1, 2, 5), size=9, mode="linear") is None


@pytest.mark.parametrize(
    ("shape", "dim", "start", "end", "step"),
    [((2, 7, 5), 1, 1, None, 1), ((2, 7, 5), -1, 0, 3, 1), ((2, 9, 4), 1, 2, 8, 3), ((3, 6), 0, -2, None, 1)],
)
def test_slice_and_select_backward_match_autograd_without_a_scatter(shape, dim, start, end, step) -> None:
    """A class token dropped (x[:, 1:]), a crop, a strided slice, a negative start; and x.select (x[:, 0])."""
    from camexport.builder.decompositions import select_backward, slice_backward

    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    index = [slice(None)] * len(shape)
    index[dim] = slice(start, end, step)
    y = x[tuple(index)]
    grad = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, grad)
    stop = end if end is not None else 2**63 - 1
    assert torch.equal(slice_backward(grad, list(shape), dim, start, stop, step), expected)
    picked = x.select(dim, -1)
    grad = torch.randn_like(picked)
    (expected,) = torch.autograd.grad(picked, x, grad)
    assert torch.equal(select_backward(grad, list(shape), dim, -1), expected)
