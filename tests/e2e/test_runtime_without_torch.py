"""The run wing never needs torch: explaining imports none of the build side, and an install without extras
explains photos and names ``camexport[build]`` for the rest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SIDE = ("torch", "torchvision", "onnx", "onnxscript", "timm")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_the_run_side_imports_nothing_of_the_build_side() -> None:
    done = _python(
        f"""
        import sys
        import camexport.cli, camexport.contract
        import camexport.runtime.explain, camexport.runtime.metrics, camexport.runtime.samples
        import camexport.runtime.serve, camexport.runtime.render, camexport.runtime.distributed
        loaded = [m for m in sys.modules if m.split(".")[0] in {BUILD_SIDE!r} or m.startswith("camexport.builder")]
        assert not loaded, loaded
        """
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_explaining_a_photo_never_imports_torch(efficientnet_graph: Path, tmp_path: Path) -> None:
    done = _python(
        f"""
        import sys
        from camexport.cli import main
        from camexport.runtime.samples import write_samples
        photos = write_samples(sys.argv[2])
        assert main(["explain", sys.argv[1], str(photos[0]), "--out", sys.argv[3], "--quiet"]) == 0
        assert main(["evaluate", sys.argv[1], str(photos[0]), "--metrics", "average_drop"]) == 0
        loaded = [m for m in sys.modules if m.split(".")[0] in {BUILD_SIDE!r} or m.startswith("camexport.builder")]
        assert not loaded, loaded
        """,
        str(efficientnet_graph),
        str(tmp_path / "photos"),
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "coffee_cam.jpg").is_file()
    assert "random weights" not in done.stderr  # real weights: no note


@pytest.mark.parametrize("command", [["build", "resnet18"], ["layers", "resnet18"], ["models"]])
def test_build_commands_without_the_build_side_name_the_extra(command: list[str]) -> None:
    """As on an install without ``camexport[build]``: torch cannot be imported."""
    done = _python(
        """
        import sys
        sys.modules["torch"] = None  # import torch fails, as where it is not installed
        from camexport.cli import main
        sys.exit(main(sys.argv[1:]))
        """,
        *command,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pip install 'camexport[build]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_install_without_extras_explains_photos(efficientnet_graph: Path, tmp_path: Path) -> None:
    """``pip install camexport`` into a fresh virtual environment: no torch, explain works, build says what to add,
    and the run side's tests (tests/runtime) pass there."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    bin_dir = env / "bin"
    install = subprocess.run(
        [bin_dir / "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = "import importlib.util as u; print([m for m in ('torch', 'onnx', 'timm') if u.find_spec(m)])"
    assert subprocess.run([bin_dir / "python", "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    camexport = bin_dir / "camexport"
    photos = subprocess.run([camexport, "samples", tmp_path / "photos"], capture_output=True, text=True)
    assert photos.returncode == 0, photos.stderr
    out = tmp_path / "explained"
    done = subprocess.run(
        [camexport, "explain", efficientnet_graph, tmp_path / "photos" / "coffee.png", "--out", out],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "espresso" in (out / "predictions.jsonl").read_text()
    refused = subprocess.run([camexport, "build", "resnet18"], capture_output=True, text=True)
    assert refused.returncode == 2 and "camexport[build]" in refused.stderr
    unserved = subprocess.run([camexport, "serve", efficientnet_graph], capture_output=True, text=True, timeout=120)
    assert unserved.returncode == 2 and unserved.stderr.count("\n") == 1
    assert "camexport serve needs " in unserved.stderr and "; pip install 'camexport[serve]'" in unserved.stderr
    # the run side's own tests pass there (serve and Ray tests skip without their extras)
    tests = subprocess.run(
        [bin_dir / "pip", "install", "-q", "--disable-pip-version-check", "pytest>=8"], capture_output=True, text=True
    )
    assert tests.returncode == 0, tests.stderr[-2000:]
    runtime = subprocess.run(
        [bin_dir / "python", "-m", "pytest", "tests/runtime", "-q", "-p", "no:cacheprovider", "-o", "addopts="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert runtime.returncode == 0, runtime.stdout[-3000:]
    assert " passed" in runtime.stdout and " failed" not in runtime.stdout and " error" not in runtime.stdout
