"""Step 2 of the ViT-ReciproCAM side by side (run by run.sh in the peer's environment): OpenVINO XAI's
``ViTReciproCAM`` (its OpenVINO graph branch, defaults: Gaussian masks, class token kept, the last block) against
camexport's graph on the same weights and inputs.

The peer's branch returns each class's logits of the masked copies, [1, K, h, w]; camexport's ``class_maps`` are
their softmax over the classes, so the check compares ``softmax(peer)`` with ``class_maps`` (and each image's
class map with ``cam``). Then the cost: median ms of plain OpenVINO, the peer's branch, plain onnxruntime and
camexport's graph, at batch 1 and 8, as in peer_xai.py. Writes benchmarks/peer/peer_vit.json and peer_vit.md.

Usage (from the repository root, in the peer's environment):
python -m benchmarks.peer.vit_agreement WORK benchmarks/peer/peer_vit.json
"""

from __future__ import annotations

import importlib.metadata as meta
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import openvino_xai as xai

from benchmarks.peer.peer_xai import RUNS, THREADS, compiled, normalised, timed
from camexport.runtime.session import CamSession


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def agreement(peer: ov.CompiledModel, session: CamSession, images: np.ndarray) -> dict:
    """Largest differences over the images, one at a time (the peer's branch takes batch 1)."""
    worst = {"class_maps": 0.0, "cam": 0.0, "logits": 0.0}
    for one in images:
        ours = session.run(one[None])
        theirs = peer(one[None])
        probabilities = softmax(theirs["saliency_map"].astype(np.float64), axis=1)
        cam = probabilities[0, int(ours["class_index"][0])]
        worst["class_maps"] = max(worst["class_maps"], float(np.abs(probabilities - ours["class_maps"]).max()))
        worst["cam"] = max(worst["cam"], float(np.abs(cam - ours["cam"][0]).max()))
        worst["logits"] = max(worst["logits"], float(np.abs(theirs["logits"] - ours["logits"]).max()))
    return worst | {"images": len(images), "largest_class_map_value": float(ours["class_maps"].max())}


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    session = CamSession(work / "vit-camexport.onnx", threads=THREADS, spin=True)
    prep = session.spec.preprocessing
    data = dict(np.load(work / "images.npz"))
    photos = normalised(data["photos"], np.array(prep.mean), np.array(prep.std)).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal((3, *photos.shape[1:])).astype(np.float32)
    plain = ov.Core().read_model(str(work / "vit-plain.onnx"))
    method = xai.Method.VITRECIPROCAM
    branch = xai.insert_xai(plain.clone(), xai.Task.CLASSIFICATION, explain_method=method, embed_scaling=False)
    peer = compiled(branch)
    result = {
        "versions": {p: meta.version(p) for p in ("openvino", "openvino-xai", "onnxruntime", "numpy", "camexport")},
        "threads": THREADS,
        "runs": RUNS,
        "layer": session.spec.layer,
        "masked_block": session.spec.masked_block,
        "agreement": agreement(peer, session, np.concatenate([photos, noise])),
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    plain_ort = ort.InferenceSession(str(work / "vit-plain.onnx"), options, providers=["CPUExecutionProvider"])
    plain_ov = compiled(plain)
    runners = {
        "openvino_plain": lambda x: plain_ov(x),
        "openvino_xai_vit_reciprocam": lambda x: peer(x),
        "onnxruntime_plain": lambda x: plain_ort.run(None, {plain_ort.get_inputs()[0].name: x}),
        "camexport_vit_reciprocam": lambda x: session.run(x),
    }
    result["timings"] = {str(batch): timed(runners, batch, photos) for batch in (1, 8)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def _cell(value: float | str, plain: float | str) -> str:
    if isinstance(value, str):
        return f"fails: {value}"
    return f"{value:.1f} ms ({value / plain:.2f}×)" if isinstance(plain, float) else f"{value:.1f} ms"


def report(result: dict) -> str:
    agree, t = result["agreement"], result["timings"]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    rows = []
    for batch, row in t.items():
        rows.append(
            f"| {batch} | {_cell(row['openvino_plain'], None)} | "
            f"{_cell(row['openvino_xai_vit_reciprocam'], row['openvino_plain'])} | "
            f"{_cell(row['onnxruntime_plain'], None)} | "
            f"{_cell(row['camexport_vit_reciprocam'], row['onnxruntime_plain'])} |"
        )
    return "\n".join(
        [
            "# ViT-ReciproCAM: camexport's graph against OpenVINO XAI's",
            "",
            "Reproduce: `bash benchmarks/peer/run.sh` (steps `vit_prepare.py`, `vit_agreement.py`). timm's "
            "vit_tiny_patch16_224 with seeded random weights (agreement and cost do not depend on them), layer "
            f"`{result['layer']}` (camexport masks `{result['masked_block']}`'s input too; the peer's defaults mask "
            f"the same block), {result['threads']} threads, float32 in both runtimes. Versions: {versions}.",
            "",
            "## Agreement",
            "",
            f"On the 7 bundled photos and 3 random inputs, one at a time: camexport's `class_maps` equal the softmax "
            f"of the peer's per-class maps to **{agree['class_maps']:.1e}** (largest value "
            f"{agree['largest_class_map_value']:.1e}), "
            f"its `cam` the peer's map of the same class to {agree['cam']:.1e}, and the logits agree to "
            f"{agree['logits']:.1e}: the two implementations compute the same masked copies.",
            "",
            "## Cost",
            "",
            f"Median of {result['runs']} interleaved rounds after 3 warm-ups; in brackets the ratio to plain "
            "inference in the same runtime.",
            "",
            "| batch | OpenVINO plain | OpenVINO XAI ViTReciproCAM | onnxruntime plain | camexport ViT-ReciproCAM |",
            "|---|---|---|---|---|",
            *rows,
            "",
            *verdict(t),
        ]
    )


def verdict(timings: dict) -> list[str]:
    """Who is cheaper at each batch, in words (ratios to plain in each's own runtime; failures named)."""
    lines = []
    for batch, row in timings.items():
        theirs, ours = row["openvino_xai_vit_reciprocam"], row["camexport_vit_reciprocam"]
        if isinstance(theirs, str):
            lines.append(f"- Batch {batch}: the peer's branch fails (its reshape is fixed to one image); ours runs.")
            continue
        ratio_theirs, ratio_ours = theirs / row["openvino_plain"], ours / row["onnxruntime_plain"]
        who = "**the peer wins**" if ratio_theirs < ratio_ours else "camexport wins"
        lines.append(
            f"- Batch {batch}: {who}: the peer's branch costs {ratio_theirs:.1f}× plain OpenVINO "
            f"({theirs:.0f} ms), camexport's graph {ratio_ours:.1f}× plain onnxruntime ({ours:.0f} ms). Both run the "
            "last block once per patch (196 times); the ideal is about 1 + 196/12 = 17× plain."
        )
    return [*lines, ""]


if __name__ == "__main__":
    main()
