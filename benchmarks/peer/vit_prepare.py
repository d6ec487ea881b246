"""Step 1 of the ViT-ReciproCAM side by side (run by run.sh in camexport's own environment, which has torch).

Writes into WORK: ``vit-plain.onnx`` (timm's vit_tiny_patch16_224, seeded random weights: agreement and cost do not
depend on them; no explanation: the peer's input) and ``vit-camexport.onnx`` (camexport's graph of the same
weights with ViT-ReciproCAM at the default layer, ``blocks.11.norm1``, and every class's map).

Usage (from the repository root): python -m benchmarks.peer.vit_prepare WORK
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.harness.contenders import export_plain
from camexport.builder.pipeline import BuildOptions, build
from camexport.builder.sources import load_model

MODEL = "timm:vit_tiny_patch16_224"


def main() -> None:
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(MODEL, "random")
    prep = loaded.preprocessing
    export_plain(loaded.module, prep.image_size, work / "vit-plain.onnx", prep.channels)
    options = BuildOptions(
        model=MODEL, methods=("reciprocam",), weights="random", class_maps=True, output=work / "vit-camexport.onnx"
    )
    build(options, log=lambda _line: None)
    print(f"prepared {work}: vit-plain.onnx, vit-camexport.onnx")


if __name__ == "__main__":
    main()
