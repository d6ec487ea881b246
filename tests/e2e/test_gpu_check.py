"""benchmarks/gpu/gpu_check.py where there is no CUDA (here): one line, exit 0; and its comparison, run CPU
against CPU, reads real photos and random batches and finds no difference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from building import built_graph

from benchmarks.gpu import gpu_check

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    command = [sys.executable, "-m", "benchmarks.gpu.gpu_check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("gpu_check: no CUDA here (") and done.stdout.count("\n") == 1


@pytest.mark.slow
def test_the_comparison_passes_cpu_against_cpu(graph_dir: Path) -> None:
    lines: list[str] = []
    graph = built_graph(graph_dir, "resnet18", "layer4", "gradcampp")
    assert gpu_check.compare(graph, lines.append, providers=("cpu", "cpu")) == []
    assert len(lines) == 4 and all("classes equal True, heatmap max diff 0.00e+00" in line for line in lines)
