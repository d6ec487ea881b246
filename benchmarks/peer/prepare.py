"""Step 1 of the side-by-side with OpenVINO XAI (run by run.sh in camexport's own environment, which has torch).

Writes into WORK: ``plain.onnx`` (efficientnet_lite0 with its real weights, no explanation: the peer's input);
``camexport-<layer>.onnx`` (camexport graphs at ``bn2`` with Grad-CAM++ and ReciproCAM, at ``blocks.4.2.bn2``
with Grad-CAM++: a skip connection goes around that layer, where camexport refuses ReciproCAM);
``layers.json`` (for each layer, the name of the ONNX node whose output is that module's output, which is
where the peer inserts its branch); ``images.npz`` (the 7 bundled photos and the composites of
benchmarks/quality/quality.py, as uint8 [N, 224, 224, 3] network inputs, with the composites' boxes).

Usage (from the repository root): python -m benchmarks.peer.prepare WORK
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx

from benchmarks.harness.contenders import export_plain
from benchmarks.quality.quality import SOURCES, composites  # the composites and their boxes
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model
from camexport.runtime.preprocess import to_pixels
from camexport.runtime.samples import SAMPLES

LAYERS = {"bn2": ("gradcampp", "reciprocam"), "blocks.4.2.bn2": ("gradcampp",)}
MODEL = "efficientnet_lite0"


def layer_output_node(model: onnx.ModelProto, layer: str) -> str:
    """The last node that the exporter attributes to module ``layer`` (its ``namespace`` metadata): its output."""
    owned = [
        node
        for node in model.graph.node
        if any(p.key == "namespace" and f"{layer}:" in p.value.replace(": ", ":") for p in node.metadata_props)
    ]
    if not owned:
        raise SystemExit(f"no ONNX node belongs to {layer}; the exporter's metadata changed")
    return owned[-1].name


def main() -> None:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(MODEL, "default")
    prep = loaded.preprocessing
    export_plain(loaded.module, prep.image_size, work / "plain.onnx", prep.channels)
    plain = onnx.load(str(work / "plain.onnx"))
    nodes = {layer: layer_output_node(plain, layer) for layer in LAYERS}
    for layer, methods in LAYERS.items():
        options = BuildOptions(model=MODEL, layer=layer, methods=methods, input="uint8")
        build(BuildOptions(**{**options.__dict__, "output": work / f"camexport-{layer}.onnx"}), log=lambda _line: None)
    photos = np.stack([to_pixels(load(), prep) for load in SAMPLES.values()])
    made = composites(2, 224, np.random.default_rng(0))
    boxes = json.dumps([c.boxes for c in made])
    classes = [loaded.labels.index(SOURCES[c.source].label) for c in made]
    np.savez(
        work / "images.npz",
        photos=photos,
        photo_names=np.array(list(SAMPLES)),
        composites=np.stack([c.pixels for c in made]),
        composite_names=np.array([c.name for c in made]),
        composite_classes=np.array(classes, dtype=np.int64),
        boxes=np.array(boxes),
        mean=np.array(prep.mean),
        std=np.array(prep.std),
    )
    (work / "layers.json").write_text(json.dumps(nodes, indent=2) + "\n")
    print(f"prepared {work}: {len(photos)} photos, {len(made)} composites, layers {nodes}")


if __name__ == "__main__":
    main()
