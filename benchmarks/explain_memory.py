"""Memory over a long `camexport explain` run: 1,000 photos through the real-weights graph.

Makes 1,000 JPEGs from the sample photos that ship with scikit-image and matplotlib (random crops, sizes
from 160 to 900 px, random flips), explains them with ``camexport.runtime.explain.explain_paths`` (the code behind
``camexport explain``) and samples the process's resident memory (VmRSS) every 50 images. Flat memory means
the end RSS is close to the RSS after the first batches, not growing with the number of images.

Usage: python benchmarks/explain_memory.py [--images N] [--batch-size B] [--graph PATH] [--out DIR]
Results: explain_memory.json and explain_memory.md next to this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import numpy as np

from camexport.builder.bench import machine, machine_line, status_mb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs: random crops of the sample photos at random sizes, some mirrored."""
    from PIL import Image

    from camexport.runtime.samples import SAMPLES, sample_photo

    rng = np.random.default_rng(seed)
    sources = [sample_photo(name) for name in SAMPLES]
    for i in range(count):
        photo = sources[i % len(sources)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--graph", type=Path, default=ROOT / "models" / "efficientnet_lite0-gradcampp.onnx")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    from camexport.builder.pipeline import BuildOptions, build
    from camexport.runtime.explain import explain_paths
    from camexport.runtime.session import CamSession

    if not args.graph.exists():
        build(BuildOptions(model="efficientnet_lite0", output=args.graph), log=lambda _: None)
    samples: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        photos, out = Path(folder) / "photos", Path(folder) / "explained"
        photos.mkdir()
        make_photos(photos, args.images)
        session = CamSession(args.graph)
        start_rss = status_mb("VmRSS")
        done = [0]

        def sample(_line: str) -> None:
            done[0] += 1
            if done[0] % 50 == 0 or done[0] == args.images:
                samples.append({"images": done[0], "rss_mb": round(status_mb("VmRSS"), 1)})

        summary = explain_paths(session, [photos], out, batch_size=args.batch_size, progress=False, log=sample)
        end_rss = status_mb("VmRSS")
        written = len(list(out.glob("*_cam.*")))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    after_first = next((s["rss_mb"] for s in samples if s["images"] >= 100), round(end_rss, 1))
    result = {
        "graph": args.graph.name,
        "images": args.images,
        "explained": summary.explained,
        "failures": len(summary.failures),
        "overlays_written": written,
        "batch_size": args.batch_size,
        "seconds": round(summary.seconds, 1),
        "images_per_second": round(summary.images_per_second, 2),
        "rss_mb": {
            "start": round(start_rss, 1),
            "after_100": after_first,
            "end": round(end_rss, 1),
            "peak": round(peak, 1),
            "growth_after_100": round(end_rss - after_first, 1),
        },
        "samples": samples,
        "machine": machine_line(),
        "versions": machine()["versions"],
    }
    (args.out / "explain_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    r = result["rss_mb"]
    lines = [
        "# Memory of a long `camexport explain` run",
        "",
        f"{summary.explained} of {args.images} photos explained with `{args.graph.name}` (batch size "
        f"{args.batch_size}, overlays and predictions written) in {result['seconds']} s: "
        f"**{result['images_per_second']} images/s**. Machine: {result['machine']}.",
        "Reproduce: `python benchmarks/explain_memory.py`.",
        "",
        "| RSS (MB) | start (session loaded) | after 100 images | end | peak | growth after 100 |",
        "|---|---|---|---|---|---|",
        f"| | {r['start']} | {r['after_100']} | {r['end']} | {r['peak']} | {r['growth_after_100']} |",
        "",
        "RSS every 50 images: " + ", ".join(f"{s['images']}: {s['rss_mb']}" for s in samples) + ".",
    ]
    (args.out / "explain_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
