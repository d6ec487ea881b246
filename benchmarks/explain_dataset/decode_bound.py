"""Moving the decode bound: what reading and resizing a photo costs next to the graph, and what each way of
cutting it buys and changes.

On the 1,000 photos of :mod:`benchmarks.explain_dataset.explain_dataset` (the same seed) and its graph:

1. per-stage CPU time per photo (decode, resize and crop, normalise; the graph; an overlay drawn and written), and
   the bound those times set on 2 cores (``cores / (stages' core-ms)``) as a share of the graph alone;
2. ``camexport explain`` with overlays and without, exact (today's default) and with ``--jpeg-draft`` (libjpeg's
   DCT-domain downscaling while decoding, for JPEGs at least four times the resize: the decoded image still at
   least twice it), each in a fresh process, against the graph alone;
3. fidelity against the exact path on every photo: top-1 agreement and the largest heatmap difference (at the
   network's input), for ``--jpeg-draft`` and for drafting as soon as a photo is twice the resize (decoded down to
   the resize itself: the rule first proposed);
4. the resize inside a graph: onnxruntime's ``Resize`` (cubic, ``antialias=1``, opset 18, half-pixel, a = −0.5:
   Pillow's bicubic by definition) on each photo against Pillow's, one thread each: CPU time and the largest
   difference in pixel levels.

Usage (from the repository root): ``python -m benchmarks.explain_dataset.decode_bound [--images N] [--rounds R]``.
Results: decode_bound.json and decode_bound.md beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.explain_dataset.explain_dataset import ROOT, ensure_graph, explain_fresh, graph_only, make_photos

HERE = Path(__file__).resolve().parent


def _cpu() -> float:
    return time.process_time()


def stage_times(session, photos: list[Path]) -> dict:
    """CPU ms per photo of each stage run alone (the graph's over every thread of onnxruntime)."""
    from camexport.runtime.options import ExplainStyle
    from camexport.runtime.outputs import write_overlay
    from camexport.runtime.preprocess import normalise, open_image, to_pixels

    prep = session.spec.preprocessing
    spent = dict.fromkeys(("decode", "resize", "normalise", "graph", "overlay"), 0.0)
    photos_in, arrays = [], []
    for path in photos:
        start = _cpu()
        photo = open_image(path)
        decoded = _cpu()
        pixels = to_pixels(photo, prep)
        resized = _cpu()
        arrays.append(normalise(pixels, prep))
        spent["decode"] += decoded - start
        spent["resize"] += resized - decoded
        spent["normalise"] += _cpu() - resized
        photos_in.append(photo)
    start, results = _cpu(), []
    for i in range(0, len(arrays), 8):
        results += session.explain_prepared(list(zip(photos_in[i : i + 8], arrays[i : i + 8], strict=True)))
    spent["graph"] = _cpu() - start
    start = _cpu()
    with tempfile.TemporaryDirectory() as out:
        for i, (photo, result) in enumerate(zip(photos_in, results, strict=True)):
            write_overlay(Path(out) / f"{i}.jpg", photo, result.input_heatmap, result.preprocessing, ExplainStyle())
    spent["overlay"] = _cpu() - start
    per_photo = {k: round(1000 * v / len(photos), 3) for k, v in spent.items()}
    cores = os.cpu_count() or 1
    reading = per_photo["decode"] + per_photo["resize"] + per_photo["normalise"]
    per_photo["bound_share_overlays"] = round(
        per_photo["graph"] / (reading + per_photo["graph"] + per_photo["overlay"]), 3
    )
    per_photo["bound_share_no_overlay"] = round(per_photo["graph"] / (reading + per_photo["graph"]), 3)
    per_photo["cores"] = cores
    return per_photo


def drafted_input(session, path: Path, margin: int) -> tuple:
    """(photo, graph input) as ``session.prepare(path, jpeg_draft=True)`` makes them, at any ``margin``."""
    from camexport.runtime.preprocess import jpeg_draft, normalise, open_image, open_unread, to_pixels

    prep = session.spec.preprocessing
    image = open_unread(path)
    jpeg_draft(image, prep, margin)
    photo = open_image(image)  # loads it at the drafted scale, upright, in RGB
    return photo, normalise(to_pixels(photo, prep), prep)


def fidelity(session, photos: list[Path], margin: int) -> dict:
    """Drafted (decoded at ``margin`` times the resize or more) against exact, photo by photo."""
    agree, drafted, largest, changed = 0, 0, 0.0, 0
    for i in range(0, len(photos), 8):
        chunk = photos[i : i + 8]
        exact = [session.prepare(p, str(p)) for p in chunk]
        draft = [drafted_input(session, p, margin) for p in chunk]
        drafted += sum(a[0].size != b[0].size for a, b in zip(exact, draft, strict=True))
        ours, theirs = (session.run(np.stack([x[1] for x in xs])) for xs in (draft, exact))
        agree += int((ours["class_index"] == theirs["class_index"]).sum())
        diff = np.abs(ours["heatmap"] - theirs["heatmap"]).reshape(len(chunk), -1).max(axis=1)
        largest, changed = max(largest, float(diff.max())), changed + int((diff > 0.05).sum())
    return {
        "margin": margin,
        "photos_drafted": drafted,
        "top1_agreement": round(agree / len(photos), 4),
        "max_heatmap_difference": round(largest, 4),
        "photos_heatmap_over_0.05": changed,
    }


def resize_in_graph(session, photos: list[Path]) -> dict:
    """onnxruntime's antialiased cubic Resize on uint8 photos against Pillow's bicubic, one thread each."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from PIL import Image

    from camexport.runtime.preprocess import open_image

    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            ["f", "", "", "sizes"],
            ["r"],
            mode="cubic",
            antialias=1,
            cubic_coeff_a=-0.5,
            coordinate_transformation_mode="half_pixel",
            exclude_outside=1,
        ),
        helper.make_node("Round", ["r"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "low", "high"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["y"], to=TensorProto.UINT8),
    ]
    bounds = [
        helper.make_tensor("low", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("high", TensorProto.FLOAT, [], [255.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [
            helper.make_tensor_value_info("x", TensorProto.UINT8, [1, None, None, 3]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 3, None, None])],
        bounds,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    resize = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    prep = session.spec.preprocessing
    pillow = onnx_time = 0.0
    differences = []
    for path in photos:
        photo = open_image(path)
        size, _ = prep.geometry(*photo.size)
        start = _cpu()
        want = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        pillow += _cpu() - start
        start = _cpu()
        got = resize.run(None, {"x": np.asarray(photo)[None], "sizes": np.array([1, 3, size[1], size[0]])})[0]
        onnx_time += _cpu() - start
        differences.append(int(np.abs(got[0].transpose(1, 2, 0).astype(np.int16) - want).max()))
    return {
        "pillow_ms_per_photo": round(1000 * pillow / len(photos), 3),
        "onnxruntime_ms_per_photo": round(1000 * onnx_time / len(photos), 3),
        "max_level_difference": max(differences),
        "photos_over_1_level": sum(d > 1 for d in differences),
    }


def runs(session, graph: Path, folder: Path, batch_size: int, rounds: int) -> dict:
    """explain, exact and drafted, with overlays and without (fresh processes, sleeping onnxruntime workers), and
    the graph alone, in ``rounds`` interleaved rounds: this host's speed drifts by tens of percent over minutes, so
    each share is the median of the rounds' own ratios, each run next to its round's graph-only rate."""
    photos = sorted(folder.iterdir())
    rounds_seen: list[dict] = []
    for _ in range(rounds):
        seen = {"graph_only": graph_only(session, photos, batch_size)["images_per_second"]}
        for draft in (False, True):
            for overlays in (True, False):
                key = f"{'draft' if draft else 'exact'}_{'overlays' if overlays else 'no_overlay'}"
                run = explain_fresh(graph, folder, batch_size, 0, False, overlays, jpeg_draft=draft)
                seen[key] = run["images_per_second"]
        rounds_seen.append(seen)
    keys = [k for k in rounds_seen[0] if k != "graph_only"]
    result = {"rounds": rounds_seen, "graph_only": float(np.median([r["graph_only"] for r in rounds_seen]))}
    for key in keys:
        result[key] = {
            "images_per_second": float(np.median([r[key] for r in rounds_seen])),
            "share_of_graph_only": round(float(np.median([r[key] / r["graph_only"] for r in rounds_seen])), 3),
        }
    return result


def table(result: dict) -> list[str]:
    stages = result["stages"]
    lines = [
        "| path | explain, jpg overlays (images/s, share of graph only) | --no-overlay (images/s, share) | "
        "top-1 agreement with exact | largest heatmap difference | photos drafted |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, fid in (("exact", "exact (default)", None), ("draft", "`--jpeg-draft`", result["draft"])):
        o, n = result["runs"][f"{key}_overlays"], result["runs"][f"{key}_no_overlay"]
        agreement = "1 (itself)" if fid is None else f"{fid['top1_agreement']:.1%}"
        largest = "0" if fid is None else str(fid["max_heatmap_difference"])
        lines.append(
            f"| {label} | {o['images_per_second']} ({o['share_of_graph_only']:.0%}) | {n['images_per_second']} "
            f"({n['share_of_graph_only']:.0%}) | {agreement} | {largest} | "
            f"{0 if fid is None else fid['photos_drafted']} |"
        )
    early = result["draft_at_twice"]
    lines.append(
        f"| drafting from twice the resize (not built: fidelity only) | – | – | {early['top1_agreement']:.1%} | "
        f"{early['max_heatmap_difference']} ({early['photos_heatmap_over_0.05']} photos over 0.05) | "
        f"{early['photos_drafted']} |"
    )
    lines += [
        "",
        "CPU time per photo, each stage alone (ms; the graph's over onnxruntime's threads, batches of 8): "
        + ", ".join(f"{k} {stages[k]}" for k in ("decode", "resize", "normalise", "graph", "overlay"))
        + f". The bound they set on {stages['cores']} cores: {stages['bound_share_overlays']:.0%} of the graph-only "
        f"rate with overlays, {stages['bound_share_no_overlay']:.0%} without.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--graph", type=Path, default=ROOT / "models" / "efficientnet_lite0-gradcampp.onnx")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the explain runs (median)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    from benchmarks.harness.machine import machine, machine_line
    from camexport.runtime.session import CamSession

    ensure_graph(args.graph)
    with tempfile.TemporaryDirectory() as folder:
        make_photos(Path(folder), args.images)
        photos = sorted(Path(folder).iterdir())
        session = CamSession(args.graph)
        result = {
            "graph": args.graph.name,
            "images": args.images,
            "runs": runs(session, args.graph, Path(folder), args.batch_size, args.rounds),
            "stages": stage_times(session, photos),
            "draft": fidelity(session, photos, margin=2),
            "draft_at_twice": fidelity(session, photos, margin=1),
            "resize_in_graph": resize_in_graph(session, photos),
            "machine": machine_line(),
            "versions": machine()["versions"],
        }
    (args.out / "decode_bound.json").write_text(json.dumps(result, indent=2) + "\n")
    r = result["resize_in_graph"]
    lines = [
        "# Moving the decode bound",
        "",
        f"{args.images} JPEGs of benchmarks/explain_dataset (160 to 900 px, and {args.images // 100} of 4032 x 3024), "
        f"`{args.graph.name}`, batch size {args.batch_size}; the graph alone: "
        f"**{result['runs']['graph_only']} images/s** (median of {args.rounds} rounds; each share below is the median "
        f"of its rounds' ratios to that round's graph-only rate, the runs interleaved). Machine: {result['machine']}.",
        "Reproduce: `python -m benchmarks.explain_dataset.decode_bound`.",
        "",
        *table(result),
        "",
        f"The resize inside the graph (onnxruntime `Resize`, cubic, antialias, opset 18) on the same photos, one "
        f"thread: {r['onnxruntime_ms_per_photo']} CPU ms a photo against Pillow's {r['pillow_ms_per_photo']}, and "
        f"not Pillow's pixels: up to {r['max_level_difference']} levels apart, {r['photos_over_1_level']} of "
        f"{args.images} photos more than 1 level.",
    ]
    (args.out / "decode_bound.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
