"""Every kind of graph camexport writes, run as a deployment runs it: the same outputs on every run and thread
count, no operator whose result depends on thread order (contract.NONDETERMINISTIC_OPS), and a CUDA kernel for
every node at the types it uses (camexport.builder.coverage, onnxruntime's table in camexport/builder/data).

Run after run at one thread count the outputs must be bit-identical. Across thread counts onnxruntime may
split a sum into other partial sums (GEMM blocking), so float32 rounding may differ: the heatmap by at most
1e-5 and every other float output by at most 1e-4 of its largest magnitude (a race over duplicate indices, which
these graphs no longer hold, moved the heatmap by 0.096 and gradients by 18 %); integer outputs never.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from building import built_graph
from test_build_channels import NETS, NORMALISATION
from test_dynamic_size import STRIDED_NET

from camexport.builder.coverage import uncovered_nodes
from camexport.builder.sources import ModelOverrides
from camexport.contract import NONDETERMINISTIC_OPS
from camexport.runtime.session import CamSession

RUNS = 20
THREADS = (1, 2, 4)
SQUEEZE = "squeezenet1_1"  # features.4's output crosses two 3x3 stride-2 max poolings with overlapping windows


def _factory(folder: Path, name: str, source: str, function: str) -> str:
    path = folder / f"{name}.py"
    if not path.exists():
        path.write_text(source)
    return f"{path}:{function}"


def _channels(folder: Path, net: str) -> Path:
    mean, std = NORMALISATION[net]
    overrides = ModelOverrides(mean=tuple(mean), std=tuple(std))
    factory = _factory(folder, "channels", NETS, net)
    return built_graph(folder, factory, None, "gradcam", image_size=(48, 40), overrides=overrides)


KINDS: dict[str, Callable[[Path], Path]] = {
    "classifier, default layer": lambda d: built_graph(d, "resnet18", None, "gradcampp"),
    "classifier, inner layer across max pooling": lambda d: built_graph(
        d, SQUEEZE, "features.4", "gradcampp", image_size=(96, 96)
    ),
    "several methods": lambda d: built_graph(d, "resnet18", "layer3", "gradcampp,layercam,hirescam"),
    "ReciproCAM": lambda d: built_graph(d, "resnet18", None, "reciprocam,gradcampp", image_size=(96, 96)),
    "ViT tokens": lambda d: built_graph(d, "timm:vit_tiny_patch16_224", None, "gradcampp"),
    "segmentation": lambda d: built_graph(d, "lraspp_mobilenet_v3_large", None, "gradcampp", image_size=(96, 96)),
    "uint8 pixels": lambda d: built_graph(d, "efficientnet_lite0", None, "gradcampp", "default", "uint8"),
    "dynamic size": lambda d: built_graph(
        d, _factory(d, "strided", STRIDED_NET, "factory"), "1", "gradcampp", image_size=(64, 64), dynamic_size=True
    ),
    "1 channel": lambda d: _channels(d, "gray_net"),
    "4 channels": lambda d: _channels(d, "rgbn_net"),
}


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request: pytest.FixtureRequest, graph_dir: Path) -> tuple[str, Path]:
    return request.param, KINDS[request.param](graph_dir)


def _batch(session: CamSession) -> tuple[np.ndarray, np.ndarray]:
    """Two unseen images (a graph of any size gets a size it was neither traced nor validated at), two targets."""
    spec, rng = session.spec, np.random.default_rng(2026)
    height, width = (50, 77) if spec.dynamic_size else spec.preprocessing.image_size
    channels = spec.preprocessing.channels
    if spec.takes_pixels:
        image = rng.integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    else:
        image = rng.standard_normal((2, channels, height, width)).astype(np.float32)
    return image, np.array([-1, 1])


@pytest.mark.slow
def test_same_outputs_on_every_run_and_thread_count(kind: tuple[str, Path]) -> None:
    name, path = kind
    first: dict[int, dict[str, np.ndarray]] = {}
    for threads in THREADS:
        session = CamSession(path, threads=threads)
        image, target = _batch(session)
        runs = [session.run(image, target) for _ in range(RUNS)]
        for i, run in enumerate(runs[1:], 2):
            for output, value in run.items():
                assert np.array_equal(value, runs[0][output]), (
                    f"{name}: {output} changed on run {i} of {threads} threads"
                )
        first[threads] = runs[0]
    base = first[1]
    assert base["heatmap"].max() > 0, f"{name}: an all-zero heatmap proves nothing"
    for threads in THREADS[1:]:
        for output, value in first[threads].items():
            want = base[output]
            if value.dtype.kind != "f":
                assert np.array_equal(value, want), f"{name}: {output} differs at {threads} threads"
                continue
            tolerance = 1e-5 if output.startswith("heatmap") else 1e-4 * max(float(np.abs(want).max()), 1e-30)
            gap = float(np.abs(value - want).max())
            assert gap <= tolerance, f"{name}: {output} differs by {gap:.3g} between 1 and {threads} threads"


@pytest.mark.slow
def test_no_order_dependent_operator_and_a_cuda_kernel_for_every_node(kind: tuple[str, Path]) -> None:
    name, path = kind
    model = onnx.load(str(path))
    listed = {op.op for op in NONDETERMINISTIC_OPS}
    assert not [n.op_type for n in model.graph.node if "Scatter" in n.op_type or n.op_type in listed], name
    assert [str(u) for u in uncovered_nodes(model)] == [], name
    assert ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # and it loads
