"""The speed benchmark's targets and tables: Markdown for the results, plain text for the terminal.

Both read a result as :func:`benchmarks.harness.bench.run_bench` returns it (and as its JSON files hold it), so
committed results can be shown again.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.harness.contenders import BY_NAME, DESCRIPTIONS
from benchmarks.harness.flops import FlopIdeal
from benchmarks.harness.machine import machine_line
from benchmarks.harness.timing import Timing

# What the memory column measures, said wherever it is shown.
MEMORY_NOTE = (
    "Added peak RSS: in a fresh process per contender and batch, the peak resident memory (Linux VmHWM) of two "
    "runs minus the resident memory once the model, session and batch were ready, in MB (the run's own "
    "working memory, not the model's)."
)


@dataclass(frozen=True)
class Target:
    """A ratio of two contenders' median times, checked against a limit in the report."""

    numerator: str
    denominator: str
    limit: float
    at_most: bool  # the ratio must stay ≤ limit (an overhead), else reach ≥ limit (a speed-up)
    why: str = ""  # where the limit comes from, when it is not a plain number

    @property
    def label(self) -> str:
        bound = f"{'≤' if self.at_most else '≥'} {self.limit:g}"
        numerator, denominator = BY_NAME[self.numerator].letter, BY_NAME[self.denominator].letter
        return f"({numerator}) ÷ ({denominator}) {bound}" + (f" ({self.why})" if self.why else "")

    def met(self, ratio: float) -> bool:
        return ratio <= self.limit if self.at_most else ratio >= self.limit


# The camexport graph in onnxruntime within 5 % of plain inference there, at least 6x faster than
# pytorch-grad-cam and 2x faster than eager autograd; and the same overhead bound for the graph in OpenVINO.
TARGETS = (
    Target("f_ort_camexport", "e_ort_plain", 1.05, at_most=True),
    Target("c_pytorch_grad_cam", "f_ort_camexport", 6.0, at_most=False),
    Target("b_eager_gradcampp", "f_ort_camexport", 2.0, at_most=False),
    Target("h_openvino_camexport", "g_openvino_plain", 1.05, at_most=True),
)
# How far over the FLOP-ideal ratio (f) ÷ (e) may go: at a model's default layer, and at an inner one.
SLACK_DEFAULT_LAYER, SLACK_INNER_LAYER = 1.03, 1.05


def ideal_target(ideal: FlopIdeal, slack: float) -> Target:
    """(f) ÷ (e) within ``slack`` of the FLOP-ideal ratio (:data:`SLACK_DEFAULT_LAYER` at a model's default
    layer, :data:`SLACK_INNER_LAYER` at an inner one)."""
    why = f"{slack:g} × FLOP-ideal {ideal.ratio:.3f}"
    return Target("f_ort_camexport", "e_ort_plain", round(slack * ideal.ratio, 3), at_most=True, why=why)


def ratios(timings: list[Timing], targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """The targets per batch size: the measured ratio of medians and whether it is met."""
    by = {(t.contender, t.batch): t for t in timings if t.times_s}
    checks = []
    for target in targets:
        for batch in sorted({t.batch for t in timings}):
            if (target.numerator, batch) not in by or (target.denominator, batch) not in by:
                continue
            value = by[target.numerator, batch].median_s / by[target.denominator, batch].median_s
            checks.append({"target": target.label, "batch": batch, "ratio": round(value, 3), "met": target.met(value)})
    return checks


def report_markdown(result: dict) -> str:
    """The Markdown table of one run."""
    lines = [
        f"### {result['model']} — layer `{result['layer']}`, {result['method']}, {result['image_size'][0]}×"
        f"{result['image_size'][1]}, {result['threads']} threads, {result['provider']}",
        "",
        f"Graph: {result['graph_mb']} MB, built in {result['build_s']} s. {result['runs']} interleaved rounds "
        f"after {result['warmup']} warm-up runs; median and interquartile range (IQR) per batch. Machine: "
        f"{machine_line(result['machine'])}. {MEMORY_NOTE}",
        "",
        *_flops_line(result),
        "| contender | batch | median ms | IQR ms | images/s | added peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["timings"]:
        if row["skipped"]:
            lines.append(f"| {DESCRIPTIONS[row['contender']]} | {row['batch']} | {row['skipped']} | | | |")
            continue
        lines.append(
            f"| {DESCRIPTIONS[row['contender']]} | {row['batch']} | {row['median_ms']:.2f} | {row['iqr_ms']:.2f} | "
            f"{row['images_per_s']:.1f} | {row['peak_mb']} |"
        )
    lines += ["", "| target | batch | measured | met |", "|---|---|---|---|"]
    for check in result["targets"]:
        lines.append(
            f"| {check['target']} | {check['batch']} | {check['ratio']:.3f} | {'yes' if check['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _flops_line(result: dict) -> list[str]:
    if "flops" not in result:  # results written before the FLOP-ideal existed
        return []
    flops = result["flops"]
    return [
        f"FLOP-ideal (benchmarks.harness.flops): forward {flops['forward_macs'] / 1e9:.3f} GMACs per image, input "
        f"gradient down to the layer {flops['gradient_macs'] / 1e9:.3f} GMACs: (f) ÷ (e) ≥ {flops['ratio']:.3f} "
        "for any graph that computes them.",
        "",
    ]


def report_terminal(result: dict) -> str:
    """A plain-text table for the terminal."""
    lines = [f"{'contender':46} {'batch':>5} {'median ms':>10} {'IQR ms':>8} {'img/s':>8} {'+peak MB':>8}"]
    for row in result["timings"]:
        label = DESCRIPTIONS[row["contender"]]
        if row["skipped"]:
            lines.append(f"{label:46} {row['batch']:>5} {row['skipped']}")
        else:
            lines.append(
                f"{label:46} {row['batch']:>5} {row['median_ms']:>10.2f} {row['iqr_ms']:>8.2f} "
                f"{row['images_per_s']:>8.1f} {row['peak_mb']!s:>8}"
            )
    for check in result["targets"]:
        lines.append(
            f"target {check['target']} at batch {check['batch']}: {check['ratio']:.3f} "
            f"({'met' if check['met'] else 'MISSED'})"
        )
    lines.append(f"+peak MB: {MEMORY_NOTE}")
    return "\n".join(lines)
