"""``camexport serve``: a camexport graph behind HTTP (FastAPI on uvicorn), with dynamic batching.

Endpoints:

* ``POST /explain``: the image as the request body (``image/*`` or ``application/octet-stream``) or as the
  first file of a ``multipart/form-data`` form. Query parameters: ``class`` (an index or a label; default
  each image's top-1), ``top_k`` (default 5), ``heatmap`` (``overlay``: the photo with the heatmap blended
  over it, a base64 PNG at the photo's size, its longer side at most ``max_side``; ``cam``: the graph's raw
  low-resolution ``cam`` as numbers; ``none``), ``alpha``, ``colormap``, ``max_side``. Answers JSON: the top-k,
  the explained class and the heatmap.
* ``GET /metadata``: the graph's contract metadata and the server's batching settings.
* ``GET /healthz``: 200 once the graph is loaded.
* ``GET /metrics``: Prometheus text format (requests by status, latency, batch sizes, queue, process RSS).

Concurrent requests are batched into one graph run (:mod:`camexport.runtime.batching`); images are decoded and
overlays encoded on worker threads (``decoders`` at a time), so the event loop only routes. A bad request gets
a 4xx JSON ``{"error": "..."}`` naming the problem and the fix; SIGTERM (and Ctrl-C) stop accepting
connections, finish the requests in flight, then exit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

from camexport import checks
from camexport.errors import RequestError, UserError

try:
    import anyio
    import anyio.to_thread
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
except ImportError as exc:  # the run side without camexport[serve]
    raise UserError(f"camexport serve needs {exc.name}; pip install 'camexport[serve]'") from None
from camexport.runtime.batching import BatchStats, DynamicBatcher
from camexport.runtime.options import ExplainStyle, ServeOptions
from camexport.runtime.session import CamSession, Explanation
from camexport.runtime.visualize import draw_boxes, overlay_on_photo

HeatmapKind = Literal["overlay", "cam", "none"]
HEATMAP_KINDS: tuple[HeatmapKind, ...] = ("overlay", "cam", "none")
IMAGE_TYPES = ("image/", "application/octet-stream", "multipart/form-data")
ENDPOINTS = ("/explain", "/metadata", "/healthz", "/metrics")  # counted by name in /metrics; the rest as "other"
_ROUTES = ("POST /explain", "GET /metadata", "GET /healthz", "GET /metrics")


@dataclass(frozen=True)
class ExplainQuery:
    """One request's parameters, checked against the graph."""

    target: int
    top_k: int
    heatmap: HeatmapKind
    alpha: float
    colormap: str
    max_side: int

    @classmethod
    def parse(cls, session: CamSession, params: dict[str, str]) -> ExplainQuery:
        """Raises RequestError (400) naming the parameter and the fix."""
        unknown = sorted(set(params) - {"class", "top_k", "heatmap", "alpha", "colormap", "max_side"})
        if unknown:
            known = "class, top_k, heatmap, alpha, colormap, max_side"
            raise RequestError(f"unknown parameter {unknown[0]!r}; use {known}")
        try:
            target = session.class_index(params.get("class"))
            query = cls(
                target=target,
                top_k=_number(params, "top_k", min(ExplainStyle.top_k, session.num_classes), int),
                heatmap=params.get("heatmap", "overlay"),  # type: ignore[arg-type]
                alpha=_number(params, "alpha", ExplainStyle.alpha, float),
                colormap=params.get("colormap", ExplainStyle.colormap),
                max_side=_number(params, "max_side", 1024, int),
            )
            query.check(session.num_classes)
        except UserError as exc:
            raise RequestError(str(exc).replace("target=", "class=")) from None
        return query

    def check(self, classes: int) -> None:
        if not 1 <= self.top_k <= classes:
            raise UserError(f"top_k={self.top_k}: use 1..{classes}")
        if self.heatmap not in HEATMAP_KINDS:
            raise UserError(f"heatmap={self.heatmap!r}: use one of {', '.join(HEATMAP_KINDS)}")
        if not 1 <= self.max_side <= 8192:
            raise UserError(f"max_side={self.max_side}: use 1..8192 pixels")
        checks.style(self.alpha, self.colormap)


def _number(params: dict[str, str], name: str, default: float, kind: type) -> int | float:
    text = params.get(name)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{name}={text!r}: not {'an integer' if kind is int else 'a number'}") from None


@dataclass(frozen=True)
class Row:
    """Image ``index`` of one graph run's ``outputs`` (shared by the batch's requests, not copied)."""

    outputs: dict[str, np.ndarray]
    index: int


class Server:
    """The graph, its batcher and its metrics: what the endpoints share."""

    def __init__(self, session: CamSession, options: ServeOptions) -> None:
        self.session, self.options = session, options
        self.metrics = Metrics()
        self.arriving = 0  # /explain requests being read or decoded: the batcher waits for them
        self.batcher: DynamicBatcher[Row] = DynamicBatcher(
            self._run, options.max_batch, options.max_wait_ms / 1000.0, self.metrics.batch, lambda: self.arriving
        )
        self.workers: anyio.CapacityLimiter | None = None  # made in start(), on the server's event loop

    def start(self) -> None:
        self.workers = anyio.CapacityLimiter(self.options.decoders)
        self.batcher.start()

    def _run(self, pixels: np.ndarray, targets: np.ndarray) -> list[Row]:
        outputs = self.session.run(pixels, targets)
        return [Row(outputs, i) for i in range(len(pixels))]

    def prepare(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """Upload bytes → (photo, graph input); RequestError (400) for a file that is not a readable image."""
        try:
            return self.session.prepare(data, "the uploaded file")
        except UserError as exc:
            raise RequestError(f"{exc}; send a JPEG, PNG, WebP, BMP or TIFF photo") from None

    async def explain(self, request: Request) -> dict:
        """One /explain request: read, decode, batch, answer."""
        self.arriving += 1
        try:
            query = ExplainQuery.parse(self.session, dict(request.query_params))
            data = await image_bytes(request, self.options.max_upload_bytes)
            if await request.is_disconnected():  # sent its photo and left: no one to explain it to
                raise RequestError("the client disconnected before its answer", status=499)
            photo, pixels = await anyio.to_thread.run_sync(self.prepare, data, limiter=self.workers)
        finally:
            self.arriving -= 1
        row = await _unless_gone(request, self.batcher.submit(pixels, query.target))
        result = self.session.explanation(row.outputs, row.index, photo.size, query.top_k)
        if query.heatmap != "overlay":  # a few hundred numbers: not worth a trip to a thread
            return self.answer(photo, result, query)
        return await anyio.to_thread.run_sync(self.answer, photo, result, query, limiter=self.workers)

    def answer(self, photo: Image.Image, result: Explanation, query: ExplainQuery) -> dict:
        """The JSON body of one explained image."""
        body: dict = {
            "top": [{"index": k, "label": label, "probability": p} for k, label, p in result.top],
            "explained": {"index": result.class_index, "label": result.label, "probability": result.probability},
            "method": self.session.spec.methods[0],
            "image": {"width": photo.width, "height": photo.height},
        }
        if result.detections is not None:  # each detection: its box on the photo, class, score, and its own cam
            body["detections"] = [
                {"slot": f.slot, "box": list(f.box), "index": f.class_index, "label": f.label, "score": f.score}
                | ({"cam": _cam(f.cam)} if query.heatmap == "cam" else {})
                for f in result.detections
            ]
        if query.heatmap == "cam":
            body["cam"] = _cam(result.cam)
        elif query.heatmap == "overlay":
            style = ExplainStyle(alpha=query.alpha, colormap=query.colormap, overlay_max_side=query.max_side)
            picture = overlay_on_photo(photo, result.input_heatmap, result.preprocessing, style, result.region)
            if result.detections:
                draw_boxes(
                    picture, [(f.box, f"{f.label} {f.score:.2f}", f.slot) for f in result.detections], photo.size
                )
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", compress_level=1)
            body["overlay"] = {
                "media_type": "image/png",
                "width": picture.width,
                "height": picture.height,
                "base64": base64.b64encode(buffer.getvalue()).decode("ascii"),
            }
        return body

    def metadata(self) -> dict:
        """The graph's spec (its provenance's fields beside the others) and the server's batching settings."""
        spec = asdict(self.session.spec)
        provenance = spec.pop("provenance")
        settings = ("max_batch", "max_wait_ms", "max_upload_mb")
        return {**spec, **provenance, "server": {name: getattr(self.options, name) for name in settings}}


async def _unless_gone(request: Request, work: Awaitable[Row]) -> Row:
    """``work``'s result, or a 499 as soon as the client goes away; its work is then cancelled, so that an image
    still queued leaves before its batch runs (nothing computed, nothing held, for nobody)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise RequestError("the client disconnected before its answer", status=499)
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Metrics:
    """Prometheus metrics in a registry of their own (with the process's RSS, CPU and open files)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "camexport_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "camexport_request_seconds", "Time from request to answer", ["endpoint"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch_size = Histogram(
            "camexport_batch_size", "Images per graph run", registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64)
        )
        self.queue_seconds = Histogram("camexport_queue_seconds", "Oldest image's wait per run", registry=self.registry)
        self.run_seconds = Histogram("camexport_graph_run_seconds", "Time of one graph run", registry=self.registry)
        self.in_flight = Gauge("camexport_requests_in_flight", "Requests being answered", registry=self.registry)

    def batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.queue_seconds.observe(stats.waited_s)
        self.run_seconds.observe(stats.run_s)

    def text(self) -> bytes:
        return generate_latest(self.registry)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(_too_large(int(declared), limit), status=413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(_too_large(size, limit), status=413)
            chunks.append(chunk)
    except ClientDisconnect:  # nobody reads the answer; the request ends here
        raise RequestError("the client disconnected during its upload", status=499) from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (
        f"the upload is {size / 2**20:.1f} MB or more, over this server's {limit / 2**20:g} MB; "
        "send a smaller photo (or start the server with a larger --max-upload-mb)"
    )


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image of a request: its body, or the first file of its multipart form."""
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if not kind.startswith(IMAGE_TYPES):
        raise RequestError(
            f"content type {kind!r} is not an image; send the photo's bytes (image/jpeg, image/png, ...) or a "
            "multipart/form-data form with the photo as a file",
            status=415,
        )
    body = await read_body(request, limit)
    if kind == "multipart/form-data":
        body = await _first_file(request, body)
    if not body:
        raise RequestError("the request has no image; send the photo's bytes as the body")
    return body


async def _first_file(request: Request, body: bytes) -> bytes:
    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise RequestError(f"the multipart form is malformed ({exc.message}); send one photo as a file") from None
    upload = next((value for _, value in form.multi_items() if isinstance(value, UploadFile)), None)
    if upload is None:
        raise RequestError("the multipart form holds no file; attach the photo as a file field (e.g. 'image')")
    data = await upload.read()
    await form.close()
    return data


def create_app(session: CamSession, options: ServeOptions) -> FastAPI:
    """The FastAPI application over one loaded graph (one whose preprocessing is known: it takes images)."""
    session.require_preprocessing()
    server = Server(session, options)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        server.start()
        yield
        await server.batcher.stop()  # uvicorn calls this once the requests in flight are answered

    app = FastAPI(title="camexport", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    _routes(app, server)
    app.add_middleware(_Counted, metrics=server.metrics)
    return app


def _routes(app: FastAPI, server: Server) -> None:
    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def unrouted(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (no such path, a method the path does not take) in the ``{"error"}`` shape of
        every other refusal, naming what the server does take."""
        if exc.status_code == 404:
            message = f"{request.url.path}: no such endpoint; use {', '.join(_ROUTES)}"
        elif exc.status_code == 405:
            allowed = exc.headers.get("Allow", "") if exc.headers else ""
            message = f"{request.method} {request.url.path}: not allowed; use {allowed or 'another method'}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.post("/explain")
    async def explain(request: Request) -> JSONResponse:
        return JSONResponse(await server.explain(request))

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        return JSONResponse(server.metadata())

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "waiting": server.batcher.waiting})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")


class _Counted:
    """ASGI middleware: every HTTP request counted by endpoint and status, and timed (a plain ASGI wrapper:
    Starlette's BaseHTTPMiddleware costs a task and a stream per request)."""

    def __init__(self, app: Callable, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"

        async def counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.monotonic() - started)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one line, the chosen port (0: any) is known, and
    clients may connect as soon as it is announced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (else Nagle holds each answer's
    # body for the client's delayed ACK: 40 ms per request, measured)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them (uvicorn's own backlog)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None
    return sock


def serve(graph: str, options: ServeOptions, provider: str = "cpu", threads: int = 0, log=print) -> None:
    """Loads the graph and serves it until SIGTERM or Ctrl-C (then drains the requests in flight)."""
    options.check()
    session = CamSession(graph, provider=provider, threads=threads)
    app = create_app(session, options)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=options.access_log,
        timeout_graceful_shutdown=options.drain_s,
        lifespan="on",
    )
    log(f"serving {session.path} ({session.spec.provenance.model}, {session.spec.methods[0]}) on http://{host}:{port}")
    _DrainingServer(config).run(sockets=[sock])
    log("stopped: the requests in flight were answered")


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM and SIGINT end it with exit status 0 after the drain (uvicorn re-raises
    the signal once it has shut down, so the process would die of it and say nothing more)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _cam(cam: np.ndarray) -> dict:
    """A raw cam as JSON: its shape and its values, row-major, to 6 decimals."""
    return {"shape": list(cam.shape), "values": cam.astype(float).round(6).tolist()}
