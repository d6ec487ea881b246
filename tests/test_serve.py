"""``camexport serve``: answers equal CamSession's, concurrent requests share runs, bad requests get 4xx JSON,
SIGTERM drains, and a short run of the load benchmark (benchmarks/serve_load.py) holds its invariants."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import script_module
from PIL import Image
from starlette.testclient import TestClient

from camexport.runtime.samples import sample_photo
from camexport.runtime.serve import ServeOptions, create_app
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import overlay_on_photo

LOAD_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def jpeg(name: str = "coffee", size: tuple[int, int] | None = None) -> bytes:
    photo = sample_photo(name)
    if size:
        photo = photo.resize(size)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def session(efficientnet_graph: Path) -> CamSession:
    return CamSession(efficientnet_graph)


@pytest.fixture(scope="module")
def client(session: CamSession):
    options = ServeOptions(max_batch=4, max_wait_ms=50, max_upload_mb=2)
    with TestClient(create_app(session, options), raise_server_exceptions=False) as client:
        yield client


def _post(client: TestClient, data: bytes, query: str = "", kind: str = "image/jpeg"):
    return client.post(f"/explain{query}", content=data, headers={"content-type": kind})


@pytest.mark.slow
def test_an_answer_equals_the_python_sessions(client: TestClient, session: CamSession) -> None:
    """Top-5, explained class, raw cam and the overlay PNG: the same as CamSession.explain on the decoded upload."""
    data = jpeg()
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    (expected,) = session.explain(photo, top_k=5)
    answer = _post(client, data, "?heatmap=cam").json()
    assert answer["explained"] == {
        "index": 967,
        "label": "espresso",
        "probability": pytest.approx(expected.probability),
    }
    assert [t["index"] for t in answer["top"]] == [k for k, _, _ in expected.top]
    assert answer["image"] == {"width": 600, "height": 400} and answer["method"] == "gradcampp"
    cam = np.array(answer["cam"]["values"])
    assert answer["cam"]["shape"] == [7, 7] and np.abs(cam - expected.cam).max() <= 1e-5 * np.abs(expected.cam).max()
    shown = _post(client, data, "?max_side=300&alpha=0.4&colormap=viridis").json()["overlay"]
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown["base64"]))))
    own = overlay_on_photo(photo, expected.input_heatmap, expected.preprocessing, 0.4, "viridis", 300)
    assert (shown["width"], shown["height"]) == (300, 200) and shown["media_type"] == "image/png"
    assert np.abs(picture.astype(int) - np.asarray(own).astype(int)).max() <= 1  # batch-size rounding at most


@pytest.mark.slow
def test_multipart_and_class_by_name_or_index(client: TestClient, session: CamSession) -> None:
    data = jpeg()
    form = client.post("/explain?heatmap=none&top_k=2", files={"image": ("coffee.jpg", data, "image/jpeg")}).json()
    assert form["explained"]["label"] == "espresso" and len(form["top"]) == 2 and "overlay" not in form
    by_name = _post(client, data, "?class=cup&heatmap=cam").json()
    by_index = _post(client, data, "?class=968&heatmap=cam").json()
    assert by_name["explained"]["index"] == by_index["explained"]["index"] == 968
    (cup,) = session.explain(Image.open(io.BytesIO(data)), target=968)
    assert np.abs(np.array(by_name["cam"]["values"]) - cup.cam).max() <= 1e-5 * np.abs(cup.cam).max()


@pytest.mark.slow
def test_concurrent_requests_share_graph_runs_and_keep_their_own_class(client: TestClient, session: CamSession) -> None:
    """Eight requests at once, four classes: runs of up to --max-batch 4 images, each answer its own class's."""
    data = jpeg()
    classes = [967, 968, 504, 925] * 2
    before = _batches(client)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda k: _post(client, data, f"?class={k}&heatmap=cam").json(), classes))
    runs, images = (a - b for a, b in zip(_batches(client), before, strict=True))
    assert images == 8 and runs < 8  # batched: fewer runs than requests
    photo = Image.open(io.BytesIO(data))
    for k, answer in zip(classes, answers, strict=True):
        (alone,) = session.explain(photo, target=k)
        assert answer["explained"]["index"] == k
        assert np.abs(np.array(answer["cam"]["values"]) - alone.cam).max() <= 1e-4 * np.abs(alone.cam).max()


def _batches(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    count = float(re.search(r"(?m)^camexport_batch_size_count (\S+)", text).group(1))
    total = float(re.search(r"(?m)^camexport_batch_size_sum (\S+)", text).group(1))
    return count, total


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS = [
    # (name, query, body, content type, status, message part)
    ("not an image", "", b"hello, not a photo", "image/png", 400, "not a readable image"),
    ("truncated jpeg", "", None, "image/jpeg", 400, "not a readable image"),
    ("empty body", "", b"", "image/jpeg", 400, "has no image"),
    ("a form, not a photo", "", b"a=1", "application/x-www-form-urlencoded", 415, "is not an image"),
    ("too large", "", b"\xff" * (2 * 2**20 + 1), "image/jpeg", 413, "over this server's 2 MB"),
    ("unknown class", "?class=unicorn", b"", "image/jpeg", 400, "class='unicorn': not a label of this graph"),
    ("class out of range", "?class=1000", b"", "image/jpeg", 400, "class=1000: out of range"),
    ("bad top_k", "?top_k=0", b"", "image/jpeg", 400, "top_k=0: use 1..1000"),
    ("top_k not a number", "?top_k=five", b"", "image/jpeg", 400, "top_k='five': not an integer"),
    ("bad heatmap kind", "?heatmap=jpeg", b"", "image/jpeg", 400, "heatmap='jpeg': use one of overlay, cam, none"),
    ("bad colormap", "?colormap=rainbowz", b"", "image/jpeg", 400, "not a matplotlib colormap"),
    ("unknown parameter", "?klass=3", b"", "image/jpeg", 400, "unknown parameter 'klass'"),
    ("decompression bomb", "", "bomb", "image/png", 400, "a decompression bomb?"),
    ("form without a file", "", b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400, "holds no file"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "query", "body", "kind", "status", "message"), BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS]
)
def test_a_bad_request_gets_a_4xx_json_line(
    client: TestClient, name: str, query: str, body: bytes | str | None, kind: str, status: int, message: str
) -> None:
    if body is None:
        body = jpeg()[:3000]
    elif body == "bomb":
        body = _bomb()
    response = _post(client, body, query, kind)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert _post(client, jpeg(size=(300, 200)), "?heatmap=none").status_code == 200  # the server goes on


@pytest.mark.slow
def test_metadata_health_and_metrics(client: TestClient, session: CamSession) -> None:
    meta = client.get("/metadata").json()
    assert meta["model"] == "efficientnet_lite0" and meta["contract"] == 2 and len(meta["labels"]) == 1000
    assert meta["preprocessing"]["image_size"] == [224, 224] and meta["server"]["max_batch"] == 4
    assert client.get("/healthz").json()["status"] == "ok"
    _post(client, b"junk", "", "image/png")
    text = client.get("/metrics").text
    assert re.search(r'camexport_requests_total\{endpoint="/explain",status="400"\} [1-9]', text)
    assert "process_resident_memory_bytes" in text and "camexport_graph_run_seconds_bucket" in text
    assert client.get("/nowhere").status_code == 404


def _start(graph: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "camexport.cli", "serve", str(graph), "--port", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"on http://127\.0\.0\.1:(\d+)$", line.strip())
    assert match, line + process.stderr.read()
    return process, int(match.group(1))


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_then_exits(efficientnet_graph: Path) -> None:
    import httpx

    process, port = _start(efficientnet_graph, "--max-wait-ms", "300", "--max-batch", "64")
    data = jpeg()

    def post(_: int) -> int:
        return httpx.post(f"http://127.0.0.1:{port}/explain?heatmap=overlay", content=data, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(post, i) for i in range(6)]
        time.sleep(0.2)  # in flight: waiting up to 300 ms for company
        process.send_signal(signal.SIGTERM)
        statuses = [f.result() for f in pending]
    assert statuses == [200] * 6
    assert process.wait(60) == 0
    assert process.stdout.read().strip() == "stopped: the requests in flight were answered"
    assert process.stderr.read() == ""
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-batch", "0"], "--max-batch 0: use 1 or more"),
        (["--port", "70000"], "--port 70000: use 1..65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0: use a positive number"),
    ],
)
def test_bad_settings_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "camexport.cli", "serve", str(tmp_path / "none.onnx"), *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_taken_port_or_a_missing_graph_is_one_line(efficientnet_graph: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "camexport.cli", "serve", str(efficientnet_graph), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [sys.executable, "-m", "camexport.cli", "serve", str(tmp_path / "none.onnx")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "no such graph" in missing.stderr


@pytest.fixture(scope="module")
def serve_load():
    with script_module(LOAD_SCRIPT, "serve_load") as module:
        yield module


@pytest.mark.slow
def test_the_load_benchmark_in_short(serve_load, efficientnet_graph: Path) -> None:
    """benchmarks/serve_load.py with a few hundred requests: no 5xx, no client error, the malformed requests all
    refused with their 4xx, the good answers unchanged by them, no file descriptor left by gone clients."""
    result = serve_load.run(efficientnet_graph, serve_load.QUICK, log=lambda _line: None)
    json.dumps(result)  # what the full run commits
    for level in result["levels"]:
        assert (
            level["server_errors"] == 0
            and level["client_errors"] == 0
            and level["statuses"] == {"200": level["requests"]}
        )
    assert max(level["batches"]["mean_batch"] for level in result["levels"]) > 2  # batching happened
    mixed = result["malformed"]["mixed"]
    assert mixed["statuses"] == {"200": 120, "400": 18, "413": 6, "415": 6} and mixed["client_errors"] == 0
    assert result["malformed"]["good_answers_differing"] == 0 and result["malformed"]["good_answers_checked"] == 270
    assert result["soak"]["server_or_client_errors"] == 0
    assert result["disconnects"]["open_files_growth"] == 0 and result["disconnects"]["answers_after_ok"]
