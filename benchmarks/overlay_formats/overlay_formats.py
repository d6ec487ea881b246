"""Overlay cost on a 12-megapixel photo: colouring, then encoding as JPEG, WebP and PNG; and one 12-MP photo
through `camexport explain` end to end (wall time and peak RSS, in a fresh process per format).

Usage (from the repository root):
python -m benchmarks.overlay_formats.overlay_formats [--graph models/efficientnet_lite0-gradcampp.onnx] [--repeats 5]

Writes benchmarks/overlay_formats/overlay_formats.md. The photo is scikit-image's astronaut resized to 4032x3024
(a phone camera's 12 MP) and saved as JPEG (quality 92), so the run needs nothing but the installed packages.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks.harness.machine import machine_line
from camexport.runtime.options import OVERLAY_FORMATS
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import overlay

HERE = Path(__file__).resolve().parent
SIZE = (4032, 3024)


def _median_s(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _encode_rows(coloured: Image.Image, repeats: int) -> list[str]:
    rows = []
    for name, (pillow_format, _, options) in OVERLAY_FORMATS.items():
        buffer = io.BytesIO()
        coloured.save(buffer, format=pillow_format, **options)
        seconds = _median_s(lambda f=pillow_format, o=options: coloured.save(io.BytesIO(), format=f, **o), repeats)
        rows.append(f"| {name} | {options or 'defaults'} | {seconds:.3f} | {len(buffer.getvalue()) / 1e6:.2f} |")
    return rows


def _end_to_end(graph: Path, photo: Path, overlay_format: str) -> tuple[float, float, float]:
    """(explain's own seconds, peak RSS MB, RSS MB once the session is loaded), from Linux's /proc/self/status
    (the peak, VmHWM, reset after loading; ru_maxrss would carry the parent's peak across exec)."""
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import sys; from camexport.runtime.session import CamSession; "
            "from camexport.runtime.explain import explain; "
            "from camexport.runtime.options import ExplainStyle, RunOptions\n"
            "def mb(field):\n"
            "    return [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith(field)][0] / 1024\n"
            "s = CamSession(sys.argv[1]); base = mb('VmRSS:'); open('/proc/self/clear_refs', 'w').write('5')\n"
            "fmt = None if sys.argv[4] == 'none' else sys.argv[4]\n"
            "quiet = RunOptions(progress=False, log=lambda _: None)\n"
            "r = explain(s, [sys.argv[2]], sys.argv[3], ExplainStyle(overlay_format=fmt), quiet)\n"
            "print(r.seconds, mb('VmHWM:'), base)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(graph), str(photo), out, overlay_format], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        seconds, peak, base = map(float, done.stdout.split())
        return seconds, peak, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, default=Path("models/efficientnet_lite0-gradcampp.onnx"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        photo_path = Path(folder) / "astronaut-12mp.jpg"
        sample_photo("astronaut").resize(SIZE, Image.Resampling.BICUBIC).save(photo_path, quality=92)
        session = CamSession(args.graph)
        photo, array = session.prepare(photo_path)
        (result,) = session.explain_prepared([(photo, array)])
        colour_s = _median_s(lambda: overlay(photo, result.heatmap, 0.5, "jet", result.seen), args.repeats)
        coloured = overlay(photo, result.heatmap, 0.5, "jet", result.seen)
        rows = _encode_rows(coloured, args.repeats)
        ends = {name: _end_to_end(args.graph, photo_path, name) for name in [*OVERLAY_FORMATS, "none"]}
    lines = [
        "# Overlays of a 12-megapixel photo",
        "",
        f"Reproduce: `python -m benchmarks.overlay_formats.overlay_formats` ({args.repeats} repeats, median). "
        f"Photo: scikit-image's astronaut resized to {SIZE[0]}x{SIZE[1]}, JPEG. Graph: `{args.graph}`. "
        f"Machine: {machine_line()}.",
        "",
        f"Colouring (lookup table from the matplotlib colormap, float32 blend in bands of rows): {colour_s:.3f} s.",
        "",
        "| format | options | encode s | size MB |",
        "|---|---|---|---|",
        *rows,
        "",
        "One 12-MP photo through `explain` in a fresh process (decode, preprocess, graph, heatmap back onto",
        "the photo, overlay, write); peak RSS above the process once the session is loaded:",
        "",
        "| overlay | seconds | peak RSS MB | above the loaded session MB |",
        "|---|---|---|---|",
        *[f"| {name} | {s:.2f} | {peak:.0f} | {peak - base:.0f} |" for name, (s, peak, base) in ends.items()],
        "",
        "`jpg` is the default of `camexport explain --format`: the fastest to write and small; `png` is lossless.",
    ]
    (HERE / "overlay_formats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
