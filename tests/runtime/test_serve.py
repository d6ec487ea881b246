"""``camexport serve``: answers equal CamSession's, concurrent requests share runs, bad requests get 4xx JSON,
SIGTERM drains (on the committed linear graph; its load benchmark's short run is tests/e2e/test_serve_load.py)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="camexport serve needs camexport[serve]")
from starlette.testclient import TestClient

from camexport.runtime.options import ExplainStyle, ServeOptions
from camexport.runtime.samples import sample_photo
from camexport.runtime.serve import create_app
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import overlay_on_photo


def jpeg(name: str = "coffee", size: tuple[int, int] | None = None) -> bytes:
    photo = sample_photo(name)
    if size:
        photo = photo.resize(size)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def graph(graphs: dict[str, Path]) -> Path:
    return graphs["linear"]


@pytest.fixture(scope="module")
def session(graph: Path) -> CamSession:
    return CamSession(graph)


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
        "index": expected.class_index,
        "label": expected.label,
        "probability": pytest.approx(expected.probability),
    }
    assert [t["index"] for t in answer["top"]] == [k for k, _, _ in expected.top]
    assert answer["image"] == {"width": 600, "height": 400} and answer["method"] == "gradcampp"
    cam = np.array(answer["cam"]["values"])
    assert answer["cam"]["shape"] == [8, 8] and np.abs(cam - expected.cam).max() <= 1e-5 * np.abs(expected.cam).max()
    shown = _post(client, data, "?max_side=300&alpha=0.4&colormap=viridis").json()["overlay"]
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown["base64"]))))
    style = ExplainStyle(alpha=0.4, colormap="viridis", overlay_max_side=300)
    own = overlay_on_photo(photo, expected.input_heatmap, expected.preprocessing, style)
    assert (shown["width"], shown["height"]) == (300, 200) and shown["media_type"] == "image/png"
    assert np.abs(picture.astype(int) - np.asarray(own).astype(int)).max() <= 1  # batch-size rounding at most


@pytest.mark.slow
def test_multipart_and_class_by_name_or_index(client: TestClient, session: CamSession) -> None:
    data = jpeg()
    (top,) = session.explain(Image.open(io.BytesIO(data)))
    form = client.post("/explain?heatmap=none&top_k=2", files={"image": ("coffee.jpg", data, "image/jpeg")}).json()
    assert form["explained"]["label"] == top.label and len(form["top"]) == 2 and "overlay" not in form
    by_name = _post(client, data, "?class=Dog&heatmap=cam").json()
    by_index = _post(client, data, "?class=1&heatmap=cam").json()
    assert by_name["explained"]["index"] == by_index["explained"]["index"] == 1
    (dog,) = session.explain(Image.open(io.BytesIO(data)), target=1)
    assert np.abs(np.array(by_name["cam"]["values"]) - dog.cam).max() <= 1e-5 * np.abs(dog.cam).max()


@pytest.mark.slow
def test_concurrent_requests_share_graph_runs_and_keep_their_own_class(client: TestClient, session: CamSession) -> None:
    """Eight requests at once, four classes: runs of up to --max-batch 4 images, each answer its own class's."""
    data = jpeg()
    classes = [0, 1, 2, 3] * 2
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
    ("class out of range", "?class=4", b"", "image/jpeg", 400, "class=4: out of range"),
    ("bad top_k", "?top_k=0", b"", "image/jpeg", 400, "top_k=0: use 1..4"),
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
    assert meta["model"] == "tests/builder/fixture_graphs.py:linear" and meta["contract"] == 2
    assert meta["labels"] == ["cat", "dog", "fox", "owl"] and meta["task"] == "classification"
    assert "provenance" not in meta and meta["random_weights"] is False and meta["version"]
    assert meta["preprocessing"]["image_size"] == [16, 16] and meta["server"]["max_batch"] == 4
    assert client.get("/healthz").json()["status"] == "ok"
    _post(client, b"junk", "", "image/png")
    text = client.get("/metrics").text
    assert re.search(r'camexport_requests_total\{endpoint="/explain",status="400"\} [1-9]', text)
    assert "process_resident_memory_bytes" in text and "camexport_graph_run_seconds_bucket" in text
    nowhere = client.get("/nowhere")
    assert nowhere.status_code == 404 and nowhere.json() == {
        "error": "/nowhere: no such endpoint; use POST /explain, GET /metadata, GET /healthz, GET /metrics"
    }
    wrong = client.get("/explain")
    assert wrong.status_code == 405 and wrong.json() == {"error": "GET /explain: not allowed; use POST"}


def _start(graph: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "camexport.cli", "serve", str(graph), "--port", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"on http://127\.0\.0\.1:(\d+)$", line.strip())
    assert match, line + process.stderr.read()
    return process, int(match.group(1))


def _wait_until_in_flight(port: int, requests: int, seconds: float = 60.0) -> None:
    """Polls the server's metrics until ``requests`` requests (besides the poll) are being answered."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = re.search(r"^camexport_requests_in_flight (\S+)$", text, flags=re.M)
        if found and float(found.group(1)) >= requests + 1:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {requests} requests reached the server in {seconds:g} s")


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_then_exits(graph: Path) -> None:
    import httpx

    process, port = _start(graph, "--max-wait-ms", "3000", "--max-batch", "64")
    data = jpeg(size=(4000, 3000))  # 12 megapixels: decoding it and encoding its full-size PNG overlay take seconds

    def post(_: int) -> int:
        query = "heatmap=overlay&max_side=4000"
        return httpx.post(f"http://127.0.0.1:{port}/explain?{query}", content=data, timeout=120).status_code

    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(post, i) for i in range(6)]
            _wait_until_in_flight(port, 6)  # all six being answered (the /metrics request is a 7th)
            process.send_signal(signal.SIGTERM)
            statuses = [f.result() for f in pending]
        assert statuses == [200] * 6
        # the last answers can arrive before the server has finished stopping: wait, and signal nothing more (a
        # second SIGTERM while it drains would end it by the signal)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()  # a failed check must not leave a server behind
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
def test_a_taken_port_or_a_missing_graph_is_one_line(graph: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "camexport.cli", "serve", str(graph), "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [sys.executable, "-m", "camexport.cli", "serve", str(tmp_path / "none.onnx")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "no such graph" in missing.stderr
