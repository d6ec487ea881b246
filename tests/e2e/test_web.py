"""The browser page of examples/web in Debian's chromium (headless, driven by playwright-core): the top-5 and the
heatmap of coffee.png equal the Python session's; a bad file or graph shows an error on the page. And the page's
JavaScript preprocessing equals Pillow's byte for byte (in Node.js, no browser needed)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from building import built_graph
from PIL import Image
from support import ROOT, script_module

from camexport.contract import Preprocessing
from camexport.runtime.preprocess import normalise, open_image, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession

WEB = Path(__file__).resolve().parents[2] / "examples" / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _install_chromium() -> None:
    """Debian's chromium from apt, where this is a Debian machine run as root (CI); else the test is skipped."""
    if Path(CHROMIUM).exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"no browser at {CHROMIUM} and no apt-get as root to install Debian's chromium")
    quiet = {"capture_output": True, "timeout": 1200, "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
    if subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, **quiet)


@pytest.fixture(scope="module")
def web_example() -> Path:
    """The page with its npm dependencies (``npm ci``: onnxruntime-web, the decoders, playwright-core; no browser
    download)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    names = ("onnxruntime-web", "playwright-core", "fast-png", "@jsquash/jpeg", "wasm-vips")
    wanted = [WEB / "node_modules" / name for name in names]
    if not all(path.is_dir() for path in wanted):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True, timeout=600)
    return WEB


@pytest.fixture(scope="module")
def page(web_example: Path, graph_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page served on 127.0.0.1 by examples/web/serve.py, the graphs folder at /graphs/."""
    _install_chromium()
    built_graph(graph_dir, "efficientnet_lite0", None, "gradcampp", weights="default", input="uint8")
    with script_module(web_example / "serve.py", "web_serve") as serve:
        server = serve.make_server(0, graph_dir)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()


def _drive(web: Path, url: str, photo: Path, out: Path, screenshot: Path | None = None, tour: bool = False) -> dict:
    command = ["node", "drive.mjs", url, str(photo), str(out), str(screenshot) if screenshot else "-"]
    command += ["--tour"] if tour else []
    result = subprocess.run(
        command, cwd=web, capture_output=True, text=True, timeout=300, env={**os.environ, "CHROMIUM": CHROMIUM}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def _graph_name(graph_dir: Path) -> str:
    return built_graph(graph_dir, "efficientnet_lite0", None, "gradcampp", weights="default", input="uint8").name


@pytest.mark.slow
def test_the_page_shows_espresso_and_pythons_heatmap(
    page: str, web_example: Path, graph_dir: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "coffee.png"
    sample_photo("coffee").save(photo)  # 600 x 400: resized and cropped by the page's JavaScript
    shown = _drive(
        web_example,
        f"{page}?graph=graphs/{_graph_name(graph_dir)}",
        photo,
        tmp_path / "out.json",
        tmp_path / "page.png",
    )
    assert shown["error"] is None and shown["console"] == [], shown
    assert shown["top5"][0].startswith("espresso — 95") and len(shown["top5"]) == 5 and shown["explained"] == "espresso"
    session = CamSession(graph_dir / _graph_name(graph_dir))
    python = session.run(to_pixels(Image.open(photo), session.spec.preprocessing)[None])
    heatmap = np.array(shown["result"]["heatmap"], dtype=np.float32).reshape(224, 224)
    assert np.abs(heatmap - python["heatmap"][0]).max() <= 1e-3
    assert shown["result"]["explained"] == int(python["class_index"][0]) == 967
    assert [t["index"] for t in shown["result"]["top"]] == list(np.argsort(-python["logits"][0])[:5])
    assert shown["result"]["backend"] in ("wasm", "webgpu") and shown["isolated"]  # threaded WebAssembly allowed
    assert Image.open(tmp_path / "page.png").size[0] == 1000


@pytest.mark.slow
def test_a_bad_photo_or_graph_shows_an_error_on_the_page(
    page: str, web_example: Path, graph_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not a photo")
    shown = _drive(web_example, f"{page}?graph=graphs/{_graph_name(graph_dir)}", bad, tmp_path / "bad.json")
    assert shown["error"] == "notes.png: not an image this browser can decode; pick a JPEG, PNG, WebP, GIF or BMP photo"
    assert shown["result"] is None and shown["top5"] == []
    (graph_dir / "plain.onnx").write_bytes(b"\x08\x07\x12\x04test")  # a protobuf, but no camexport metadata
    sample_photo("coffee").save(tmp_path / "coffee.png")
    shown = _drive(web_example, f"{page}?graph=graphs/plain.onnx", tmp_path / "coffee.png", tmp_path / "plain.json")
    assert shown["error"].startswith("plain.onnx: not a graph built by camexport") and shown["result"] is None
    shown = _drive(web_example, f"{page}?graph=graphs/missing.onnx", tmp_path / "coffee.png", tmp_path / "missing.json")
    assert shown["error"] == "graphs/missing.onnx: HTTP 404; check the ?graph= address" and shown["result"] is None


@pytest.mark.slow
def test_every_control_of_the_page_works_as_python(
    page: str, web_example: Path, graph_dir: Path, tmp_path: Path
) -> None:
    """A graph of six methods (committed, float32 input): the page's first view is the top-1 with the first method;
    picking the same photo again explains it again; clicking the second of the top 5, or typing the third's label
    (in capitals), explains that class (Python's heatmap for it); the method menu shows the second method's map; the
    downloaded overlay (opacity 0.3, viridis) is byte for byte what overlay_on_photo draws from the page's heatmap;
    each stage is timed; a graph refused afterwards leaves nothing of the old one on screen."""
    from camexport.runtime.options import ExplainStyle
    from camexport.runtime.visualize import overlay_on_photo

    shutil.copy(ROOT / "tests" / "runtime" / "graphs" / "linear-methods.onnx", graph_dir / "linear-methods.onnx")
    photo = tmp_path / "coffee.jpg"
    sample_photo("coffee").save(photo, quality=90)
    url = f"{page}?graph=graphs/linear-methods.onnx"
    shown = _drive(web_example, url, photo, tmp_path / "out.json", None, tour=True)
    assert shown["error"] is None and shown["console"] == [], shown
    session = CamSession(graph_dir / "linear-methods.onnx")
    methods = session.spec.methods
    assert len(methods) > 1 and shown["methodShown"] == f"({methods[0]})"
    top = [t["index"] for t in shown["result"]["top"]]
    tour = shown["tour"]

    def python_heatmap(target: int, method: str) -> np.ndarray:
        pixels = to_pixels(open_image(photo), session.spec.preprocessing)[None]
        feed = normalise(pixels, session.spec.preprocessing)
        return session.run(feed, np.array([target]))[session.spec.heatmap_of(method)][0]

    def page_heatmap(view: dict) -> np.ndarray:
        return np.array(view["result"]["heatmap"], dtype=np.float32).reshape(session.spec.preprocessing.image_size)

    assert shown["result"]["explained"] == top[0] == tour["repicked"]["result"]["explained"]
    for view, target, method in [
        (shown, top[0], methods[0]),
        (tour["repicked"], top[0], methods[0]),
        (tour["clicked"], top[1], methods[0]),
        (tour["typed"], top[2], methods[0]),
        (tour["method"], top[2], methods[1]),
    ]:
        assert view["result"]["explained"] == target and view["result"]["method"] == method
        assert np.abs(page_heatmap(view) - python_heatmap(target, method)).max() <= 1e-4
    assert tour["method"]["methodShown"] == f"({methods[1]})"
    assert [tour["styled"]["result"][k] for k in ("alpha", "colormap")] == [0.3, "viridis"]
    for stage in ("decode", "resize", "graph", "draw", "total"):
        assert f"{stage} " in shown["timing"], shown["timing"]
    assert tour["download"]["name"] == "coffee_cam.png"
    want = overlay_on_photo(
        open_image(photo),
        page_heatmap(tour["styled"]),
        session.spec.preprocessing,
        ExplainStyle(alpha=0.3, colormap="viridis"),
    )
    assert np.array_equal(np.asarray(Image.open(tour["download"]["path"]).convert("RGB")), np.asarray(want))
    backend = shown["result"]["backend"]
    assert backend in ("wasm", "webgpu") and shown["backendInfo"]
    assert not (backend == "webgpu" and "software" in shown["backendInfo"])  # best available skips a software GPU
    offered = {b["value"]: not b["disabled"] for b in shown["backends"]}
    assert offered["auto"] and offered["wasm"] and offered["webgpu"] == ("no WebGPU here" not in shown["backendInfo"])
    rejected = tour["rejected"]
    assert (
        rejected["error"].startswith("notes.onnx: not an ONNX graph")
        or "not a graph built by camexport" in rejected["error"]
    )
    assert rejected["graphInfo"] == "No graph loaded." and not rejected["resultShown"] and rejected["result"] is None


def _canvas(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


@pytest.mark.slow
def test_the_page_shows_every_detection_and_each_ones_heatmap(
    page: str, web_example: Path, graph_dir: Path, tmp_path: Path
) -> None:
    """The committed red-blob detector on two red blobs (128 pixels, resized to 64 by the page): the list and the
    numbers behind it equal the Python session's detections (boxes on the photo, scores, heatmaps); each box is drawn
    in its slot's tab10 colour; clicking the second detection picks it (its box drawn twice as wide)."""
    from support import red_blobs

    shutil.copy(ROOT / "tests" / "runtime" / "graphs" / "red-detector.onnx", graph_dir / "red-detector.onnx")
    photo = Image.fromarray((red_blobs(128) * 255).round().astype(np.uint8))
    photo.save(tmp_path / "blobs.png")
    shown = _drive(web_example, f"{page}?graph=graphs/red-detector.onnx", tmp_path / "blobs.png", tmp_path / "d.json")
    assert shown["error"] is None and shown["console"] == [], shown
    assert shown["top5"] == ["red — 0.98", "red — 0.98"] and shown["explained"] == "detection 0: red"
    (python,) = CamSession(graph_dir / "red-detector.onnx").explain([photo])
    assert len(python.detections) == 2
    for mine, theirs in zip(shown["result"]["detections"], python.detections, strict=True):
        assert (mine["slot"], mine["label"]) == (theirs.slot, theirs.label)
        assert mine["score"] == pytest.approx(theirs.score, abs=1e-5)
        assert np.allclose(mine["box"], theirs.box, atol=0.011)
        heatmap = np.array(mine["heatmap"], dtype=np.float32).reshape(64, 64)
        assert np.abs(heatmap - theirs.input_heatmap).max() <= 1e-4
    first, picked = _canvas(shown["canvas"]), _canvas(shown["picked"]["canvas"])
    assert first.shape == (128, 128, 3) and shown["picked"]["explained"] == "detection 1: red"
    for slot, colour in ((0, [31, 119, 180]), (1, [255, 127, 14])):
        x1, y1, _, y2 = (round(v) for v in python.detections[slot].box)
        assert first[(y1 + y2) // 2, x1].tolist() == colour
    x1, y1, _, y2 = (round(v) for v in python.detections[1].box)
    assert picked[(y1 + y2) // 2, x1 + 1].tolist() == [255, 127, 14] != first[(y1 + y2) // 2, x1 + 1].tolist()


PILLOW_CASES = [("coffee", "bicubic", None, 3), ("astronaut", "bilinear", None, 3), ("chelsea", "lanczos", None, 3),
                ("coffee", "bicubic", (123, 77), 3), ("rocket", "bilinear", (33, 300), 3),
                ("astronaut", "bicubic", None, 1), ("chelsea", "bilinear", (123, 77), 4),
                ("rocket", "bicubic", (3000, 2000), 3), ("chelsea", "lanczos", (1999, 4001), 1),
                ("coffee", "bilinear", (329, 2070), 3), ("astronaut", "bicubic", (176, 1656), 3)]  # fmt: skip


@pytest.mark.parametrize(("name", "interpolation", "size", "channels"), PILLOW_CASES)
def test_the_javascript_resize_and_crop_equal_pillows(
    web_example: Path, tmp_path: Path, name: str, interpolation: str, size: tuple[int, int] | None, channels: int
) -> None:
    """camexport.mjs's toPixels against camexport.runtime.preprocess.to_pixels: every byte, for down- and
    upscaling, a crop wider than the photo, each filter (Pillow's fixed-point arithmetic ported), a colour photo
    turned to luma for a 1-channel graph, a four-band image whose fourth band varies, large photos, and photos over
    twice as tall as wide (which Pillow 13 resizes along y first when they shrink)."""
    photo = sample_photo(name).convert("RGB")
    photo = photo.resize(size) if size else photo
    if channels == 4:
        fourth = np.add.outer(np.arange(photo.height), np.arange(photo.width)) % 256
        photo = Image.fromarray(np.dstack([np.asarray(photo), fourth.astype(np.uint8)]), "RGBA")
    prep = Preprocessing(
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        image_size=(224, 224),
        resize_size=256,
        interpolation=interpolation,
    )
    np.asarray(photo.convert("RGBA")).tofile(tmp_path / "photo.rgba")
    script = (
        "import fs from 'node:fs'; import { toPixels } from './camexport.mjs';"
        f"const rgba = new Uint8Array(fs.readFileSync('{tmp_path / 'photo.rgba'}'));"
        f"const meta = {{ size: [224, 224], resize: 256, interpolation: '{interpolation}', mean: {list(prep.mean)} }};"
        f"fs.writeFileSync('{tmp_path / 'pixels.bin'}', toPixels(rgba, {photo.width}, {photo.height}, meta));"
    )
    subprocess.run(["node", "--input-type=module", "-e", script], cwd=web_example, check=True, timeout=120)
    ours = np.fromfile(tmp_path / "pixels.bin", dtype=np.uint8).reshape(224, 224, channels)
    assert np.array_equal(ours, to_pixels(photo, prep))


@pytest.mark.slow
def test_the_page_decodes_every_fixture_to_pythons_bytes(page: str, web_example: Path, graph_dir: Path) -> None:
    """The page's own decoder (decode.mjs with its codecs, as a picked photo goes) on tests/image_fixtures.py's files:
    16-bit, palette with transparency, alpha, EXIF orientations, progressive and CMYK JPEG, one pixel. Every byte
    equals Python's (whose own known answers are tests/runtime/test_decoding.py's)."""
    from image_fixtures import write_fixtures

    known = write_fixtures(graph_dir)  # served at /graphs/ beside the graphs
    out = graph_dir / "decoded.json"
    command = ["node", "drive.mjs", page, "--decode", str(out), *(f"graphs/{name}" for name in sorted(known))]
    env = {**os.environ, "CHROMIUM": CHROMIUM}
    result = subprocess.run(command, cwd=web_example, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = json.loads(out.read_text())
    assert shown["console"] == [], shown["console"]
    for name in sorted(known):
        decoded = shown["decoded"][f"graphs/{name}"]
        assert "error" not in decoded, (name, decoded)
        rgba = np.array(decoded["rgba"], dtype=np.uint8).reshape(decoded["height"], decoded["width"], 4)
        assert np.array_equal(rgba[..., :3], np.asarray(open_image(graph_dir / name))), name


def test_the_colormaps_module_holds_matplotlibs_palettes() -> None:
    """examples/web/colormaps.mjs is what examples/web/colormaps.py writes from camexport's palettes (matplotlib's
    colormaps): rerun the script after changing either."""
    with script_module(WEB / "colormaps.py", "web_colormaps") as colormaps:
        assert (WEB / "colormaps.mjs").read_text(encoding="utf-8") == colormaps.module()
        assert colormaps.NAMES[0] == "jet" and "viridis" in colormaps.NAMES


def test_detections_are_read_from_the_method_asked_for(web_example: Path, tmp_path: Path) -> None:
    """detectionsOf (camexport.mjs) on a detector's outputs of two methods: each slot's heatmap comes from the output
    of the method asked for (heatmap_<method>), the first by default; empty slots (label −1) are left out."""
    script = """
import { detectionsOf, heatmapOutput } from './camexport.mjs';
const meta = { methods: ['gradcam', 'hirescam'], size: [1, 2], labels: ['a', 'b'], resize: 2 };
const outputs = {
  scores: { dims: [1, 2], data: Float32Array.from([0.9, 0]) },
  labels: { data: BigInt64Array.from([1n, -1n]) },
  boxes: { data: Float32Array.from([0, 0, 1, 1, 0, 0, 0, 0]) },
  heatmap_gradcam: { data: Float32Array.from([0.1, 0.2, 0.3, 0.4]) },
  heatmap_hirescam: { data: Float32Array.from([0.5, 0.6, 0.7, 0.8]) },
};
const read = (method) => detectionsOf(outputs, meta, 2, 1, 0, method).map((d) => [d.label, Array.from(d.heatmap)]);
const names = [heatmapOutput(meta, 'hirescam'), heatmapOutput({ methods: ['x'] })];
console.log(JSON.stringify([read(undefined), read('hirescam'), ...names]));
"""
    done = subprocess.run(
        ["node", "--input-type=module", "-e", script], cwd=web_example, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    first, second, name, single = json.loads(done.stdout)
    assert [d[0] for d in first] == ["b"] and np.allclose(first[0][1], [0.1, 0.2])
    assert np.allclose(second[0][1], [0.5, 0.6]) and name == "heatmap_hirescam" and single == "heatmap"
