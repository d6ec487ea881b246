"""The machine a benchmark ran on, for its results: CPU, cores, memory, GPU, onnxruntime's providers, versions.

Torch-free: package versions from their installed metadata, the CPU and memory from Linux's /proc, the GPU's
name from ``nvidia-smi`` where that binary exists. Runtime benchmarks can describe their machine without the
build side.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import onnxruntime as ort

# The packages whose versions a result records (``not installed`` where absent).
PACKAGES = (
    "camexport",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "openvino",
    "grad-cam",
    "torchcam",
)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    """Total memory in GB (GiB, as /proc/meminfo counts it), or None where /proc is missing."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    total = [line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")]
    return round(int(total[0]) / 1024**2, 1) if total else None


def gpu_name() -> str | None:
    """The first GPU's name from ``nvidia-smi``, or None without that binary (or when it finds no GPU)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return names[0] if done.returncode == 0 and names else None


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Each package's installed version, or ``not installed``."""
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine() -> dict:
    """CPU model, cores, memory, Python, GPU (None without one), onnxruntime providers, package versions."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "python": platform.python_version(),
        "gpu": gpu_name(),
        "onnxruntime_providers": ort.get_available_providers(),
        "versions": versions(),
    }


def machine_line(info: dict | None = None) -> str:
    """One line for a report: CPU, cores, memory, GPU, Python, versions."""
    info = info or machine()
    memory = f", {info['memory_gb']} GB RAM" if info.get("memory_gb") else ""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    listed = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return f"{info['cpu']}, {info['cores']} cores{memory}{gpu}, Python {info['python']}; {listed}"
