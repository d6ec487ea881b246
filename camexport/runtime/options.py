"""The run side's options, each default written once: what an explained image becomes (:class:`ExplainStyle`),
how a run goes (:class:`RunOptions`), where it runs (:class:`Local` or :class:`Ray`), how a server listens
(:class:`ServeOptions`) and how heatmaps are scored (:class:`Scoring`). Plain data with their checks; the command
line takes its defaults from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from camexport import checks
from camexport.checks import number as _number
from camexport.checks import whole as _whole
from camexport.errors import UserError

# Overlay file formats: (Pillow format, file suffix, save options). JPEG is the default: measured on a
# 12-megapixel overlay, JPEG (quality 90) encodes in 0.02 s and 0.95 MB, WebP in 0.14 s and 0.3 MB, PNG in
# 2.2 s and 7.6 MB (benchmarks/overlay_formats/overlay_formats.md).
OVERLAY_FORMATS = {
    "jpg": ("JPEG", ".jpg", {"quality": 90}),
    "png": ("PNG", ".png", {}),
    "webp": ("WEBP", ".webp", {"quality": 80, "method": 0}),
}
DEFAULT_FORMAT = "jpg"


@dataclass(frozen=True)
class ExplainStyle:
    """What each explained image becomes: the class, how many predictions, the overlay, the saved heatmap.

    Attributes:
        target: the class to explain, by index or label; None (or −1) explains each image's top-1 class.
        top_k: how many classes to report per image.
        alpha: the heatmap's opacity over the photo, in [0, 1].
        colormap: a matplotlib colormap.
        save_heatmap: also save each heatmap (at the photo's size) as ``<stem>_heatmap.npy``.
        overlay_format: a key of :data:`OVERLAY_FORMATS`, or None for no overlays.
        overlay_max_side: downscale overlays whose longer side exceeds this (None: the photo's own size).
        jpeg_draft: decode a JPEG at 1/2, 1/4 or 1/8 scale where the decoded image is still at least twice the
            size the graph resizes it to, so from four times that size up
            (:func:`camexport.runtime.preprocess.jpeg_draft`): faster, near but not equal to the exact pixels, and
            its overlay and heatmap at that smaller size; classifier graphs only.
    """

    target: str | int | None = None
    top_k: int = 5
    alpha: float = 0.5
    colormap: str = "jet"
    save_heatmap: bool = False
    overlay_format: str | None = DEFAULT_FORMAT
    overlay_max_side: int | None = None
    jpeg_draft: bool = False

    def check(self) -> None:
        """Raises UserError for a bad option (the class is checked against a graph's labels when a run starts)."""
        _whole("top_k", self.top_k, 1, "use 1 or more")
        checks.style(self.alpha, self.colormap)
        if self.overlay_format is not None and self.overlay_format not in OVERLAY_FORMATS:
            raise UserError(f"overlay_format={self.overlay_format!r}: use one of {', '.join(OVERLAY_FORMATS)}")
        if self.overlay_max_side is not None:
            _whole("overlay_max_side", self.overlay_max_side, 1, "use a positive number of pixels")
        checks.flag("jpeg_draft", self.jpeg_draft)

    @property
    def overlay_suffix(self) -> str:
        """The overlay files' suffix (the default format's when there are none)."""
        return OVERLAY_FORMATS[self.overlay_format or DEFAULT_FORMAT][1]


@dataclass(frozen=True)
class RunOptions:
    """How one explain run goes.

    Attributes:
        batch_size: images per graph run.
        progress: a progress bar on stderr (for more than one image).
        log: where the line per explained image goes.
        resume: finish the output folder's earlier run: skip the images it has recorded.
        overwrite: replace the output folder's earlier run (once this run records its first batch).
    """

    batch_size: int = 8
    progress: bool = True
    log: Callable[[str], None] = field(default=print, compare=False)
    resume: bool = False
    overwrite: bool = False

    def check(self) -> None:
        """Raises UserError for a bad option."""
        _whole("batch_size", self.batch_size, 1, "use 1 or more")
        if self.resume and self.overwrite:
            raise UserError("`resume` and `overwrite` exclude each other: pass one of them")


@dataclass(frozen=True)
class Local:
    """Explain in this process: reading, the graph and drawing overlap on threads (:mod:`camexport.runtime.local`)."""


@dataclass(frozen=True)
class Ray:
    """Explain on a Ray cluster (:mod:`camexport.runtime.distributed`; ``camexport[ray]`` on every node).

    Attributes:
        address: the cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None starts a local one on this
            machine's cores.
        actors: actors in the pool, each holding one session.
        cpus_per_actor: CPUs Ray reserves per actor (fractions allowed; None: onnxruntime's threads, at most
            what leaves the cluster one CPU for Ray's read tasks, which reserve one each: actors that took
            every CPU would stall the read).
        threads: onnxruntime intra-op threads per actor.
        provider: ``cpu``, or ``cuda`` (one GPU per actor).
    """

    address: str | None = None
    actors: int = 2
    cpus_per_actor: float | None = None
    threads: int = 1
    provider: str = "cpu"

    def check(self) -> None:
        """Raises UserError for a bad setting."""
        _whole("actors", self.actors, 1, "use 1 or more")
        if self.cpus_per_actor is not None:
            _number("cpus_per_actor", self.cpus_per_actor, 1e-9, None, "use a positive number (fractions allowed)")
        _whole("threads", self.threads, 0, "use 0 (one per core) or a positive number")

    def cpus(self, cluster_cpus: float) -> float:
        """The CPUs each actor reserves on a cluster of ``cluster_cpus``."""
        if self.cpus_per_actor is not None:
            return self.cpus_per_actor
        wanted = float(self.threads or 1)
        return max(0.1, min(wanted, (cluster_cpus - 1.0) / self.actors))


Executor = Local | Ray


@dataclass(frozen=True)
class ServeOptions:
    """How ``camexport serve`` listens and batches.

    Attributes:
        host: the address to listen on (127.0.0.1: this machine only).
        port: the port (0: any free port).
        max_batch: most images per graph run.
        max_wait_ms: longest an image waits for others before its batch runs.
        max_upload_mb: largest request body accepted (413 above).
        decoders: images decoded (and overlays encoded) at once, on worker threads.
        drain_s: how long SIGTERM waits for the requests in flight.
        access_log: log every request (uvicorn's access log).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    decoders: int = 4
    drain_s: float = 30.0
    access_log: bool = False

    def check(self) -> None:
        """Raises UserError for a bad setting."""
        _whole("port", self.port, 0, "use 1..65535 (or 0 for any free port)")
        if self.port > 65535:
            raise UserError(f"port={self.port}: use 1..65535 (or 0 for any free port)")
        for name in ("max_batch", "decoders"):
            _whole(name, getattr(self, name), 1, "use 1 or more")
        for name in ("max_wait_ms", "drain_s"):
            _number(name, getattr(self, name), 0.0, None, "use 0 or more", "g")
        _number("max_upload_mb", self.max_upload_mb, 1e-9, None, "use a positive number of megabytes", "g")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# What `camexport evaluate --metrics` selects. The first three come from the same two runs per image;
# deletion and insertion cost ``steps + 1`` runs per image and method each.
METRICS = ("average_drop", "increase_in_confidence", "win", "deletion", "insertion", "adcc")
# What any maps can be scored by (ADCC needs the graph that made them): evaluate_maps' default.
MAP_METRICS = METRICS[:-1]


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"average_drop,deletion"`` → the metrics in :data:`METRICS` order, each once.

    Raises:
        UserError: an empty list or a name that is not a metric.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        what = f"{unknown[0]!r} is not a metric" if unknown else "no metric named"
        raise UserError(f"metrics={text!r}: {what}; choose from {', '.join(METRICS)} (comma-separated)")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class Scoring:
    """How heatmaps are scored, each default written once.

    Attributes:
        metrics: which of :data:`METRICS` (ADCC needs the graph that made the maps).
        steps: deletion/insertion steps (each costs a run per image and method).
        blur: the Gaussian radius of insertion's blurred copy, in pixels.
    """

    metrics: tuple[str, ...] = METRICS
    steps: int = 20
    blur: float = 10.0

    def check(self) -> None:
        """Raises UserError for a bad setting."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise UserError(f"steps={self.steps!r}: use 2 or more")
        parse_metrics(",".join(self.metrics))
