"""What explaining every detection costs: a detection graph's time over the plain detector's graph in onnxruntime.

For each torchvision detector below, and NanoDet (random weights, seed 0; its default layer; HiResCAM): (p) the
plain detector, the same dense network (a two-stage one: the same proposals and heads) and the same fixed-shape
post-processing (threshold, top-k candidates, per-class NonMaxSuppression, the best M) without the backward pass,
exported with the same exporter; (g) camexport's graph at M = 1 and M = 10 detection slots. Both run in
onnxruntime on 2 threads without spinning, interleaved (each round runs each once, in a rotating order) after 2
warm-up runs, on one seeded random batch; median times. The FPN detectors run
at 256 x 256 here (their default 512 takes minutes per configuration on 2 cores; the ratio is what is measured), the
SSDs, NanoDet and the MobileNet Faster R-CNN at their own sizes. The issue's goal: (g) ÷ (p) ≤ 1.3 at M = 10 for the
one-stage detectors.
Writes benchmarks/detection/results/<name>.json and benchmarks/detection/detection.md.

Usage (from the repository root): python -m benchmarks.detection.detection [--runs 5] [--only NAME ...]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.harness.machine import machine_line
from benchmarks.harness.studies import interleaved_medians, run_study, sessions
from camexport.builder.detection import default_detection_layer, detection_parts, trace_detector
from camexport.builder.detectors import DenseDetector, Postprocess, nms_to_onnx, select
from camexport.builder.export import finalise, save_graph, to_onnx
from camexport.builder.sources import load_model
from camexport.builder.two_stage import TwoStage, select_pairs
from camexport.contract import GraphSpec, Provenance

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
SIZES = {"ssdlite320_mobilenet_v3_large": 320, "ssd300_vgg16": 300, "retinanet_resnet50_fpn_v2": 256,
         "fcos_resnet50_fpn": 256, "nanodet": 416, "fasterrcnn_mobilenet_v3_large_320_fpn": 320,
         "fasterrcnn_resnet50_fpn_v2": 256}  # fmt: skip
SLOTS = (1, 10)
BATCHES = (1, 4)
GOAL = 1.3


class Plain(nn.Module):
    """The detector as a graph without explanations: boxes, scores and labels of the M best detections."""

    def __init__(self, dense: DenseDetector, post: Postprocess) -> None:
        super().__init__()
        self.dense, self.post = dense, post

    def forward(self, image: torch.Tensor, target_class: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes, scores = self.dense(image)
        chosen = select(boxes, scores, target_class.expand(image.shape[0]), self.post)
        found = torch.gather(boxes, 1, chosen.anchor[..., None].expand(-1, -1, 4)) * chosen.filled[..., None]
        return found, chosen.score, chosen.label


class PlainTwoStage(nn.Module):
    """A two-stage detector as a graph without explanations: the same proposals, heads and post-processing."""

    def __init__(self, dense: TwoStage, post: Postprocess) -> None:
        super().__init__()
        self.dense, self.post = dense, post

    def forward(self, image: torch.Tensor, target_class: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.dense.backbone(image)
        proposals, valid = self.dense.propose(list(features.values()))
        scores, boxes = self.dense.classify(features, proposals)
        chosen, found = select_pairs(scores, boxes, valid, target_class.expand(image.shape[0]), self.post.detection)
        return found, chosen.score, chosen.label


def _plain(dense: DenseDetector | TwoStage, post: Postprocess, path: Path) -> Path:
    side = dense.image_size
    batch = torch.export.Dim("batch", min=1)
    plain = PlainTwoStage(dense, post) if isinstance(dense, TwoStage) else Plain(dense, post)
    program = torch.export.export(
        plain.eval(),
        (torch.randn(2, 3, *side), torch.full((2,), -1, dtype=torch.int64)),
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    table = {torch.ops.camexport.batched_nms.default: nms_to_onnx}
    torch.onnx.export(program, dynamo=True, optimize=True, custom_translation_table=table).save(str(path))
    return path


def _graph(loaded, dense: DenseDetector, post: Postprocess, layer: str, path: Path) -> Path:
    spec = GraphSpec(
        task="detection",
        layer=layer,
        methods=("hirescam",),
        labels=tuple(loaded.labels),
        preprocessing=loaded.preprocessing,
        provenance=Provenance(loaded.name, loaded.weights, True),
        detection=post.detection,
    )
    save_graph(finalise(to_onnx(trace_detector(dense, spec, post)), spec), path)
    return path


def _time(paths: dict[str, Path], batch: int, side: int, runs: int) -> dict[str, float]:
    running = sessions(paths)
    image = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
    target = np.full((batch,), -1, np.int64)
    feeds = {k: dict(zip([i.name for i in s.get_inputs()], (image, target), strict=True)) for k, s in running.items()}
    return interleaved_medians(running, feeds, runs, warmup=2)


def run(name: str, runs: int) -> dict:
    side = SIZES[name]
    loaded = load_model(name, "random", seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for slots in SLOTS:
            dense, post = detection_parts(loaded, (side, side), slots, None)
            layer = default_detection_layer(dense)
            loaded.preprocessing = loaded.preprocessing.with_image_size((side, side))
            paths = {"p": _plain(dense, post, Path(folder) / f"plain{slots}.onnx"),
                     "g": _graph(loaded, dense, post, layer, Path(folder) / f"graph{slots}.onnx")}  # fmt: skip
            for batch in BATCHES:
                median = _time(paths, batch, side, runs)
                ratio = median["g"] / median["p"]
                rows.append({"slots": slots, "batch": batch, "median_s": median, "ratio": ratio,
                             "met": ratio <= GOAL})  # fmt: skip
                print(f"{name} M={slots} batch {batch}: plain {median['p'] * 1e3:.0f} ms, "
                      f"graph {median['g'] * 1e3:.0f} ms, {ratio:.2f}x", flush=True)  # fmt: skip
    return {"name": name, "image_size": side, "layer": layer, "runs": runs, "rows": rows}


def main() -> None:
    args, results, info = run_study(__doc__.splitlines()[0], list(SIZES), 5, run, OUT)
    lines = [
        "# Explaining every detection: a detection graph's time over the plain detector's",
        "",
        "Reproduce: `python -m benchmarks.detection.detection`. onnxruntime, 2 threads without spinning, "
        f"{args.runs} interleaved rounds after 2 warm-up runs; median times; random weights, HiResCAM at the default "
        f"layer. (p): the detector with the same post-processing, no backward pass; (g): camexport's graph. Goal "
        f"(the issue's): (g) ÷ (p) ≤ {GOAL} at M = 10. Machine: {machine_line(info)}.",
        "",
        "| detector | size | layer | M | batch | (p) ms | (g) ms | (g) ÷ (p) | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            lines.append(
                f"| {result['name']} | {result['image_size']} | `{result['layer']}` | {row['slots']} | {row['batch']} "
                f"| {row['median_s']['p'] * 1e3:.0f} | {row['median_s']['g'] * 1e3:.0f} | {row['ratio']:.2f} | "
                f"{'✓' if row['met'] else '✗'} |"
            )
    (HERE / "detection.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'detection.md'}")


if __name__ == "__main__":
    main()
