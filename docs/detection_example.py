"""Draws docs/images/detection-blobs.png: the committed red-blob detector's overlays on two red blobs, as
``camexport explain`` draws them: HiResCAM's map of each detection, then Grad-CAM++'s of the first.

Usage (from the repository root): python docs/detection_example.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from camexport.runtime.options import ExplainStyle
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


def main() -> None:
    session = CamSession(ROOT / "tests" / "runtime" / "graphs" / "red-detector.onnx")
    photo = Image.fromarray(blobs())
    _, array = session.prepare(photo)
    outputs = session.run(array[None])
    found = session.explanation(outputs, 0, photo.size).detections
    panels = []
    for method, detection in (("hirescam", 0), ("hirescam", 1), ("gradcampp", 0)):
        heatmap = outputs[session.spec.heatmap_of(method)][0, detection]
        panel = overlay_on_photo(photo, heatmap, session.spec.preprocessing, ExplainStyle())
        one = found[detection]
        draw_boxes(panel, [(one.box, f"{method}: {one.label} {one.score:.2f}", one.slot)], photo.size)
        panels.append(panel)
    sheet = Image.new("RGB", (3 * SIDE + 2 * 8, SIDE), (255, 255, 255))
    for i, panel in enumerate(panels):
        sheet.paste(panel, (i * (SIDE + 8), 0))
    out = ROOT / "docs" / "images" / "detection-blobs.png"
    out.parent.mkdir(exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
