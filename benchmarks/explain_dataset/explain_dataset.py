"""Explaining a dataset at the graph's speed: 1,000 photos of mixed sizes, 12-megapixel ones among them.

Makes 1,000 JPEGs from the photos that ship with scikit-image and matplotlib (random crops of 160 to 900 px,
some mirrored; every 100th a 4032 x 3024 phone-sized photo with sensor-like noise), then, in one process
and for each onnxruntime thread setting (worker threads that spin-wait, onnxruntime's default, or sleep):

1. the yardstick: the graph alone over the same preprocessed arrays (``CamSession.run`` in batches);
2. ``explain`` (:func:`camexport.runtime.explain.explain`, the code behind ``camexport explain``) with JPEG
   overlays, sampling VmRSS every 50 images;
3. ``explain`` with no overlays (``--no-overlay``: predictions and ``cams.parquet``).

Then, in a fresh process each, one 12-megapixel photo end to end (read, graph, overlay, write): wall time
and peak RSS above the loaded session (the kernel's peak counter is reset once the session is loaded).

Usage (from the repository root):
python -m benchmarks.explain_dataset.explain_dataset [--images N] [--batch-size B] [--threads T] [--graph PATH]
Results: benchmarks/explain_dataset/explain_dataset.json and explain_dataset.md (or in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIG = (4032, 3024)


def make_photos(folder: Path, count: int, big_every: int = 100, seed: int = 0) -> None:
    """``count`` JPEGs: random crops of the sample photos at random sizes; every ``big_every``-th is 12 MP."""
    from PIL import Image

    from camexport.runtime.samples import SAMPLES, sample_photo

    rng = np.random.default_rng(seed)
    sources = [sample_photo(name) for name in SAMPLES]
    for i in range(count):
        photo = sources[i % len(sources)]
        if i % big_every == big_every - 1:
            big_photo(photo, rng).save(folder / f"photo_{i:04d}.jpg", quality=90)
            continue
        w, h = photo.size
        cw, ch = int(rng.integers(w // 2, w + 1)), int(rng.integers(h // 2, h + 1))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((left, top, left + cw, top + ch))
        side = int(rng.integers(160, 901))
        scale = side / max(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"photo_{i:04d}.jpg", quality=90)


def big_photo(photo, rng: np.random.Generator):
    """A 4032 x 3024 photo with per-pixel noise, so that it decodes and encodes like a real phone photo."""
    from PIL import Image

    big = np.asarray(photo.convert("RGB").resize(BIG, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0.0, 6.0, size=big.shape).astype(np.int16)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def graph_only(session, photos: list[Path], batch_size: int) -> dict:
    """Images/s of the graph alone over the photos' preprocessed arrays (prepared before the clock starts)."""
    arrays = [session.prepare(path)[1] for path in photos]
    batches = [np.stack(arrays[i : i + batch_size]) for i in range(0, len(arrays), batch_size)]
    session.run(batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches:
        session.run(batch)
    seconds = time.perf_counter() - start
    return {"images": len(arrays), "seconds": round(seconds, 2), "images_per_second": round(len(arrays) / seconds, 1)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_bound(session, photos: list[Path], batch_size: int) -> dict:
    """The most images/s any arrangement of the work could reach on this machine's cores: the CPU time of each
    stage run alone, one after another (read + preprocess, the graph, overlay drawing + JPEG writing), summed
    and spread over every core."""
    from camexport.runtime.options import ExplainStyle
    from camexport.runtime.outputs import write_overlay

    start = cpu_seconds()
    prepared = [session.prepare(path) for path in photos]
    read = cpu_seconds() - start
    start, results = cpu_seconds(), []
    for i in range(0, len(prepared), batch_size):
        results += session.explain_prepared(prepared[i : i + batch_size])
    graph = cpu_seconds() - start
    start = cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        for i, ((photo, _), result) in enumerate(zip(prepared, results, strict=True)):
            write_overlay(Path(out) / f"{i}.jpg", photo, result.input_heatmap, result.preprocessing, ExplainStyle())
    draw = cpu_seconds() - start
    cores = os.cpu_count() or 1
    return {
        "cpu_seconds": {"read": round(read, 2), "graph": round(graph, 2), "draw": round(draw, 2)},
        "overlays_images_per_second": round(len(photos) * cores / (read + graph + draw), 1),
        "no_overlay_images_per_second": round(len(photos) * cores / (read + graph), 1),
    }


def explain_run(session, folder: Path, out: Path, batch_size: int, overlays: bool, jpeg_draft: bool = False) -> dict:
    """One ``explain`` run, VmRSS sampled every 50 recorded images."""
    from camexport.runtime.explain import explain
    from camexport.runtime.options import ExplainStyle, RunOptions

    samples: list[float] = []

    def sample(_line: str) -> None:
        if (len(samples) + 1) % 50 == 0:
            samples.append(round(rss_mb(), 1))
        else:
            samples.append(-1.0)

    style = ExplainStyle(overlay_format="jpg" if overlays else None, jpeg_draft=jpeg_draft)
    summary = explain(session, [folder], out, style, RunOptions(batch_size=batch_size, progress=False, log=sample))
    every_50 = [s for s in samples if s >= 0]
    return {
        "explained": summary.explained,
        "failures": len(summary.failures),
        "seconds": round(summary.seconds, 2),
        "images_per_second": round(summary.images_per_second, 1),
        "rss_every_50_mb": every_50,
        "rss_growth_after_100_mb": round(every_50[-1] - every_50[1], 1) if len(every_50) > 2 else None,
    }


def ray_runs(graph: Path, folder: Path, batch_size: int) -> dict:
    """``camexport explain --ray`` on a local Ray (this machine's cores): 2 actors of 1 thread, CPUs by default."""
    from camexport.runtime.distributed import connect
    from camexport.runtime.explain import explain
    from camexport.runtime.options import ExplainStyle, Ray, RunOptions
    from camexport.runtime.session import CamSession

    start = time.perf_counter()
    connect(None)
    result = {"start_seconds": round(time.perf_counter() - start, 1)}
    session = CamSession(graph)
    options = RunOptions(batch_size=batch_size, progress=False, log=lambda _: None)
    with tempfile.TemporaryDirectory() as out:
        for key, style in (("overlays", ExplainStyle()), ("no_overlay", ExplainStyle(overlay_format=None))):
            summary = explain(session, [folder], Path(out) / key, style, options, executor=Ray(actors=2))
            result[key] = {
                "seconds": round(summary.seconds, 2),
                "images_per_second": round(summary.images_per_second, 1),
            }
    return result


def in_fresh_process(body: str, env: dict[str, str] | None = None) -> dict:
    """Runs ``body`` (which prints one JSON line last) in a new Python process that imports ``benchmarks``."""
    code = f"import json, sys, tempfile, time\nfrom pathlib import Path\nsys.path.insert(0, {str(ROOT)!r})\n{body}"
    environment = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    return json.loads(done.stdout.strip().splitlines()[-1])


def explain_fresh(
    graph: Path,
    folder: Path,
    batch_size: int,
    threads: int,
    spin: bool,
    overlays: bool,
    env: dict | None = None,
    jpeg_draft: bool = False,
) -> dict:
    """:func:`explain_run` in a fresh process, so that its RSS is the run's own; peak RSS above the session."""
    return in_fresh_process(
        f"""
from benchmarks.explain_dataset.explain_dataset import explain_run, rss_mb
from camexport.runtime.session import CamSession
session = CamSession({str(graph)!r}, threads={threads}, spin={spin})
base = rss_mb()
Path("/proc/self/clear_refs").write_text("5")  # the peak counter starts again from here
with tempfile.TemporaryDirectory() as out:
    result = explain_run(session, Path({str(folder)!r}), Path(out) / "o", {batch_size}, {overlays}, {jpeg_draft})
result["session_rss_mb"] = round(base, 1)
result["peak_above_session_mb"] = round(rss_mb("VmHWM") - base, 1)
print(json.dumps(result))
""",
        env,
    )


# glibc serves buffers below its mmap threshold from the heap, and raises that threshold after freeing a large
# buffer (up to 32 MB): 12-megapixel photos then leave the heap fragmented and RSS climbs before it settles.
# A fixed threshold returns such buffers to the system at once: flat RSS, at some throughput.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}


def one_big_photo(graph: Path, threads: int) -> dict:
    """A fresh process explains one 12-MP photo; wall time and peak RSS above the loaded session."""
    return in_fresh_process(f"""
from benchmarks.explain_dataset.explain_dataset import big_photo, rss_mb
import numpy as np
from camexport.runtime.explain import explain
from camexport.runtime.options import RunOptions
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession
with tempfile.TemporaryDirectory() as folder:
    photo = Path(folder) / "phone.jpg"
    big_photo(sample_photo("coffee"), np.random.default_rng(1)).save(photo, quality=90)
    session = CamSession({str(graph)!r}, threads={threads})
    quiet = RunOptions(progress=False, log=lambda _: None)
    explain(session, [photo], Path(folder) / "warm", options=quiet)
    base = rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # the peak counter starts again from here
    start = time.perf_counter()
    explain(session, [photo], Path(folder) / "out", options=quiet)
    seconds = time.perf_counter() - start
    print(json.dumps({{"seconds": round(seconds, 3), "peak_above_session_mb": round(rss_mb("VmHWM") - base, 1)}}))
""")


def measure(graph: Path, photos_dir: Path, batch_size: int, threads: int, spin: bool) -> dict:
    from camexport.runtime.session import CamSession

    result = {"spin": spin}
    for key, overlays in (("overlays", True), ("no_overlay", False)):
        result[key] = explain_fresh(graph, photos_dir, batch_size, threads, spin, overlays)
    if not spin:
        result["overlays_fixed_mmap_threshold"] = explain_fresh(
            graph, photos_dir, batch_size, threads, spin, True, FIXED_MMAP_THRESHOLD
        )
    session = CamSession(graph, threads=threads, spin=spin)
    photos = sorted(photos_dir.iterdir())
    result["graph_only"] = graph_only(session, photos, batch_size)
    result["cpu_bound"] = cpu_bound(session, photos, batch_size)
    yardstick = result["graph_only"]["images_per_second"]
    for key in ("overlays", "no_overlay"):
        result[key]["share_of_graph_only"] = round(result[key]["images_per_second"] / yardstick, 3)
    return result


def table(result: dict) -> list[str]:
    lines = [
        "| onnxruntime workers | graph only (images/s) | explain, jpg overlays (images/s, share) | "
        "--no-overlay (images/s, share) | CPU-time bound, overlays / none (images/s, share) | "
        "RSS growth after 100 images, overlays / none (MB) | peak RSS above the session, overlays / none (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        o, n, b = run["overlays"], run["no_overlay"], run["cpu_bound"]
        g = run["graph_only"]["images_per_second"]
        bound = (
            f"{b['overlays_images_per_second']} ({b['overlays_images_per_second'] / g:.0%}) / "
            f"{b['no_overlay_images_per_second']} ({b['no_overlay_images_per_second'] / g:.0%})"
        )
        lines.append(
            f"| {'spin' if run['spin'] else 'sleep (camexport default)'} | {run['graph_only']['images_per_second']} | "
            f"{o['images_per_second']} ({o['share_of_graph_only']:.0%}) | {n['images_per_second']} "
            f"({n['share_of_graph_only']:.0%}) | {bound} | "
            f"{o['rss_growth_after_100_mb']} / {n['rss_growth_after_100_mb']} | "
            f"{o['peak_above_session_mb']} / {n['peak_above_session_mb']} |"
        )
    return lines


def ensure_graph(graph: Path) -> None:
    """Builds the study's graph (efficientnet_lite0, Grad-CAM++, its default layer) at ``graph`` if it is missing."""
    if not graph.exists():
        from camexport.builder.pipeline import BuildOptions, build

        build(BuildOptions(model="efficientnet_lite0", output=graph), log=lambda _: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    parser.add_argument("--graph", type=Path, default=ROOT / "models" / "efficientnet_lite0-gradcampp.onnx")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    from benchmarks.harness.machine import machine, machine_line

    ensure_graph(args.graph)
    with tempfile.TemporaryDirectory() as folder:
        photos = Path(folder)
        make_photos(photos, args.images)
        runs = [measure(args.graph, photos, args.batch_size, args.threads, spin) for spin in (False, True)]
        on_ray = ray_runs(args.graph, photos, args.batch_size)
    big = one_big_photo(args.graph, args.threads)
    result = {
        "graph": args.graph.name,
        "images": args.images,
        "twelve_megapixel_photos": args.images // 100,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "runs": runs,
        "one_12mp_photo": big,
        "ray_local": on_ray,
        "machine": machine_line(),
        "versions": machine()["versions"],
    }
    fixed = runs[0]["overlays_fixed_mmap_threshold"]
    (args.out / "explain_dataset.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Explaining a dataset: `camexport explain` against the graph alone",
        "",
        f"{args.images} JPEGs (160 to 900 px, and {result['twelve_megapixel_photos']} of 4032 x 3024), "
        f"`{args.graph.name}`, batch size {args.batch_size}, onnxruntime threads "
        f"{args.threads or 'one per core'}; the graph-only yardstick runs the same preprocessed arrays in the same "
        f"process. Machine: {result['machine']}.",
        "Reproduce: `python -m benchmarks.explain_dataset.explain_dataset`.",
        "",
        *table(result),
        "",
        f"One 12-megapixel photo end to end (read, graph, overlay, JPEG written), fresh process: "
        f"**{big['seconds']} s**, peak RSS **{big['peak_above_session_mb']} MB** above the loaded session.",
        "",
        f"`--ray` on a local Ray on the same machine (2 actors of 1 onnxruntime thread each, Ray started in "
        f"{on_ray['start_seconds']} s, not counted): {on_ray['overlays']['images_per_second']} images/s with "
        f"overlays, {on_ray['no_overlay']['images_per_second']} with --no-overlay; on one machine the "
        "single-process pipeline is the faster, Ray is for several.",
        "",
        "RSS every 50 images with overlays (camexport default; each explain run in a fresh process, session "
        f"loaded at {runs[0]['overlays']['session_rss_mb']} MB): "
        + ", ".join(str(v) for v in runs[0]["overlays"]["rss_every_50_mb"])
        + " MB.",
        "",
        f"The same run with glibc's mmap threshold fixed at 4 MB (`MALLOC_MMAP_THRESHOLD_={4 << 20}`), so that "
        f"buffers of big photos go back to the system when freed: {fixed['images_per_second']} images/s, peak "
        f"{fixed['peak_above_session_mb']} MB above the session, RSS every 50 images: "
        + ", ".join(str(v) for v in fixed["rss_every_50_mb"])
        + " MB.",
    ]
    (args.out / "explain_dataset.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
