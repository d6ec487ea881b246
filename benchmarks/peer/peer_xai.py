"""Step 2 of the side-by-side: OpenVINO XAI's ReciproCAM and ActivationMap next to camexport's methods.

Runs in the peer's own environment (run.sh: openvino-xai 1.1.0 with its pins, openvino 2024.4, numpy 1.x, and
camexport's torch-free runtime), on what prepare.py wrote to WORK. For each layer (``bn2``,
``blocks.4.2.bn2``):

- latency at batch 1 and 8, interleaved: the plain model in OpenVINO, the peer's model with its XAI branch
  (``insert_xai``, saliency maps of every class, no 0-255 scaling) in OpenVINO, the plain model in onnxruntime
  and the camexport graph (Grad-CAM++ and ReciproCAM) in onnxruntime; each ratio is to plain inference in its
  own runtime. A run that fails is recorded with its first line.
- faithfulness, every map scored by camexport's metrics through the camexport graph's logits (the same model):
  Average Drop, Increase in Confidence, deletion and insertion AUC (50 steps), ADCC (for the peer's maps the
  peer's branch explains the explanation map again), and on the composites the pointing game and the mass
  inside the known boxes.

Usage (from the repository root, in the peer's environment):
python -m benchmarks.peer.peer_xai WORK benchmarks/peer/peer.json (writes peer.json and peer.md)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import openvino_xai as xai

from camexport.runtime.metrics import Faithfulness, evaluate_maps, instance_spread, pointing_game
from camexport.runtime.options import Scoring
from camexport.runtime.session import CamSession

THREADS = 2
RUNS = 30
PEER_METHODS = {
    "ReciproCAM (OpenVINO XAI)": xai.Method.RECIPROCAM,
    "ActivationMap (OpenVINO XAI)": xai.Method.ACTIVATIONMAP,
}


def normalised(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def compiled(model: ov.Model) -> ov.CompiledModel:
    config = {"INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32"}
    return ov.Core().compile_model(model, "CPU", config)


def peer_model(work: Path, node: str, method: xai.Method) -> ov.Model:
    model = ov.Core().read_model(str(work / "plain.onnx"))
    return xai.insert_xai(model, xai.Task.CLASSIFICATION, explain_method=method, target_layer=node, embed_scaling=False)


def _interpolation(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] weights of bilinear resizing with half-pixel centres (PyTorch's align_corners=False)."""
    matrix = np.zeros((out_size, in_size))
    for i in range(out_size):
        source = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        low = min(int(source), in_size - 1)
        matrix[i, low] += 1.0 - (source - low)
        matrix[i, min(low + 1, in_size - 1)] += source - low
    return matrix


def per_image_maps(saliency: np.ndarray, classes: np.ndarray, size: int) -> np.ndarray:
    """The peer's per-class maps [N, K, h, w] → the explained class's map, resized (bilinear, half-pixel) to the
    input and min-max scaled per image, as camexport scales its own."""
    per_class = saliency.ndim == 4  # ReciproCAM: [N, K, h, w]; ActivationMap: one map per image, [N, h, w]
    picked = (saliency[np.arange(len(classes)), classes] if per_class else saliency).astype(np.float64)
    h, w = picked.shape[1:]
    up = _interpolation(size, h) @ picked @ _interpolation(size, w).T
    low, high = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    span = high - low
    return np.where(span > 1e-5 * np.abs(high), (up - low) / np.where(span > 0, span, 1), 0.0).astype(np.float32)


def timed(runners: dict[str, callable], batch: int, images: np.ndarray) -> dict[str, float | str]:
    """Median ms per contender, interleaved round by round after 3 warm-ups; a failing one keeps its error."""
    pixels = np.resize(images, (batch, *images.shape[1:]))
    times: dict[str, list[float]] = {name: [] for name in runners}
    failed: dict[str, str] = {}
    names = list(runners)
    for round_ in range(RUNS + 3):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # the order rotates every round
            run = runners[name]
            if name in failed:
                continue
            time.sleep(0.2)  # the previous contender's worker threads (OpenVINO's, onnxruntime's) stop spinning first
            start = time.perf_counter()
            try:
                run(pixels)
            except Exception as exc:  # the peer's failures are findings, recorded as such
                failed[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[-160:]}"  # OpenVINO: cause last
                continue
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: failed.get(name) or round(statistics.median(times[name]) * 1e3, 3) for name in runners}


def _peers(work: Path, node: str) -> tuple[dict[str, ov.CompiledModel], dict[str, str]]:
    """The peer's models with their XAI branch at ``node``, and the methods whose insertion failed (why)."""
    peers, failures = {}, {}
    for name, method in PEER_METHODS.items():
        try:
            peers[name] = compiled(peer_model(work, node, method))
        except Exception as exc:  # the peer's failures are findings
            failures[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[-200:]}"
    return peers, failures


def peer_maps(model: ov.CompiledModel, floats: np.ndarray, classes: np.ndarray, size: int) -> np.ndarray:
    """The peer's map of each image's class, one image per run (its ReciproCAM branch fails at batch > 1)."""
    saliency = np.concatenate([model(floats[i : i + 1])["saliency_map"] for i in range(len(floats))])
    return per_image_maps(saliency, classes, size)


def adcc_of(maps: np.ndarray, again: np.ndarray, drops: list[float]) -> list[float]:
    """Poppi et al.'s ADCC per image from the maps, the maps of the explanation maps and the drops."""
    scores = []
    for m, a, d in zip(maps, again, drops, strict=True):
        a_, b_ = m.ravel() - m.mean(), a.ravel() - a.mean()
        norm = np.sqrt((a_ * a_).sum() * (b_ * b_).sum())
        coherency = (1 + (a_ * b_).sum() / norm) / 2 if norm > 0 else 0.0
        terms = [coherency, 1 - np.abs(m).mean(), 1 - d]
        scores.append(float(3 / sum(1 / t for t in terms)) if min(terms) > 0 else 0.0)
    return scores


def layer_result(work: Path, layer: str, node: str, data: dict) -> dict:
    session = CamSession(work / f"camexport-{layer}.onnx", threads=THREADS, spin=True)  # as the plain session
    mean, std, size = data["mean"], data["std"], data["photos"].shape[1]
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    plain_ort = ort.InferenceSession(str(work / "plain.onnx"), options, providers=["CPUExecutionProvider"])
    plain_ov = compiled(ov.Core().read_model(str(work / "plain.onnx")))
    peers, failures = _peers(work, node)
    runners = {
        "OpenVINO plain": lambda p, f: plain_ov(f),
        **{name: (lambda p, f, m=m: m(f)) for name, m in peers.items()},
        "onnxruntime plain": lambda p, f: plain_ort.run(None, {"image": f}),
        f"camexport {' + '.join(session.spec.methods)} (onnxruntime)": lambda p, f: session.run(p),
    }
    latency = {}
    for batch in (1, 8):
        pixels = np.resize(data["photos"], (batch, *data["photos"].shape[1:]))
        floats = normalised(pixels, mean, std)
        latency[batch] = timed({k: (lambda x, r=r, f=floats: r(x, f)) for k, r in runners.items()}, batch, pixels)
    images = np.concatenate([data["photos"], data["composites"]])
    targets = np.concatenate([np.full(len(data["photos"]), -1), data["composite_classes"]])
    outputs = session.run(images, targets)
    classes = outputs["class_index"].astype(np.int64)
    names = {"gradcampp": "Grad-CAM++ (camexport)", "reciprocam": "ReciproCAM (camexport)"}
    methods = session.spec.methods
    ours_maps = {m: outputs[session.spec.heatmap_of(m)] for m in methods}
    maps = {names[m]: ours_maps[m] for m in methods}
    floats = normalised(images, mean, std)
    # Fresh models for the maps: after its failure at batch 8, the peer's compiled ReciproCAM fails at batch 1 too.
    peers, _ = _peers(work, node)
    for name, model in peers.items():
        maps[name] = peer_maps(model, floats, classes, size)
    peer_metrics = ("average_drop", "increase_in_confidence", "deletion", "insertion")
    scores = evaluate_maps(session, images, maps, classes, Scoring(peer_metrics, steps=50))
    ours = evaluate_maps(session, images, ours_maps, classes, Scoring(("adcc",), steps=50))
    adcc = {names[r.method]: r.adccs for r in ours}
    for name, model in peers.items():
        explained = normalised(np.clip(np.round(images * maps[name][..., None]), 0, 255), mean, std)
        adcc[name] = adcc_of(
            maps[name], peer_maps(model, explained, classes, size), scores[list(maps).index(name)].drops
        )
    return {
        "node": node,
        "peer_failures": failures,
        "latency_ms": latency,
        "methods": [_summary(s, adcc[s.method], maps[s.method], data, len(data["photos"])) for s in scores],
    }


def _summary(score: Faithfulness, adcc: list[float], maps: np.ndarray, data: dict, photos: int) -> dict:
    boxes = json.loads(str(data["boxes"]))
    on_composites = maps[photos:]
    return {
        "method": score.method,
        "average_drop": score.average_drop,
        "increase_in_confidence": score.increase_in_confidence,
        "deletion_auc": score.deletion_auc,
        "insertion_auc": score.insertion_auc,
        "adcc": 100 * float(np.mean(adcc)),
        "pointing_game": 100 * float(np.mean([pointing_game(m, b) for m, b in zip(on_composites, boxes, strict=True)])),
        "inside_boxes": 100
        * float(np.mean([instance_spread(m, b).inside for m, b in zip(on_composites, boxes, strict=True)])),
    }


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    data = dict(np.load(work / "images.npz"))
    layers = json.loads((work / "layers.json").read_text())
    import importlib.metadata as meta

    versions = {p: meta.version(p) for p in ("openvino", "openvino-xai", "onnxruntime", "numpy", "camexport")}
    result = {"versions": versions, "threads": THREADS, "runs": RUNS, "layers": {}}
    for layer, node in layers.items():
        print(f"== {layer} (peer branch after {node})", flush=True)
        result["layers"][layer] = layer_result(work, layer, node, data)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(result, len(data["photos"]), len(data["composites"])))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _ms(value: float | str, plain: float | str) -> str:
    if isinstance(value, str):
        return f"fails: {value}"
    return f"{value:.2f} ({value / plain:.2f}×)" if isinstance(plain, float) else f"{value:.2f}"


def report(result: dict, photos: int, composites: int) -> str:
    v = result["versions"]
    lines = [
        "# camexport and OpenVINO XAI, side by side",
        "",
        "Reproduce: `bash benchmarks/peer/run.sh` (the peer in its own environment). efficientnet_lite0 with its real "
        f"ImageNet weights, {result['threads']} threads, {result['runs']} interleaved rounds after 3 warm-ups, the "
        "order rotating every round, 0.2 s of quiet before each run, median ms. "
        f"Versions: openvino {v['openvino']}, openvino-xai {v['openvino-xai']}, onnxruntime "
        f"{v['onnxruntime']}, numpy {v['numpy']}, camexport {v['camexport']}. In brackets: the ratio to plain "
        "inference in the same runtime (OpenVINO for the peer, onnxruntime for camexport). The peer's branch gives "
        "every class's map (its ReciproCAM runs the head once per position for all classes); camexport's graph "
        "gives the explained class's maps plus logits, activations and gradients.",
        "",
    ]
    for layer, body in result["layers"].items():
        lat = body["latency_ms"]
        lines += [
            f"## `{layer}` (the peer's branch after ONNX node `{body['node']}`)",
            "",
            *(f"- {name} cannot be inserted here: {why}" for name, why in body["peer_failures"].items()),
            "",
            "| contender | batch 1 ms | batch 8 ms |",
            "|---|---|---|",
        ]
        for name in lat["1"] if "1" in lat else lat[1]:
            cells = []
            for batch in ("1", "8"):
                row = lat[batch] if batch in lat else lat[int(batch)]
                plain = row["OpenVINO plain"] if "OpenVINO" in name or "XAI" in name else row["onnxruntime plain"]
                cells.append(_ms(row[name], plain))
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
        lines += [
            "",
            f"Faithfulness on {photos} photos (top-1 class) and {composites} composites (the object's class), scored "
            "by camexport's metrics through the graph's logits; pointing game and mass inside the boxes on the "
            "composites only.",
            "",
            "| method | Avg Drop % ↓ | Incr Conf % ↑ | Deletion ↓ | Insertion ↑ | ADCC % ↑ | Pointing game % ↑ "
            "| Inside boxes % ↑ |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in body["methods"]:
            lines.append(
                f"| {m['method']} | {m['average_drop']:.1f} | {m['increase_in_confidence']:.1f} | "
                f"{m['deletion_auc']:.3f} | {m['insertion_auc']:.3f} | {m['adcc']:.1f} | {m['pointing_game']:.0f} | "
                f"{m['inside_boxes']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
