"""Writes the docs' generated blocks from the code, so that they cannot drift from it.

Each block lies in a page between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; this script rewrites what
is between. A test (tests/e2e/test_docs.py) fails when a page differs from what this script would write::

    python docs/generate.py          # rewrite the blocks
    python docs/generate.py --check  # exit 1 and name the stale blocks, changing nothing

The blocks: the contract's inputs and outputs, its axes and its metadata keys (docs/contract.md, from
:mod:`camexport.contract`), the method table (docs/methods.md), and each command's ``--help`` (docs/cli.md, from the
command line's own parser). Torch-free: it imports the contract and the command line only.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

from camexport.cli import _parser
from camexport.contract import (
    AXES,
    CAM,
    CLASS_MAPS,
    HEATMAP,
    IMAGE,
    METADATA,
    METHODS,
    NONDETERMINISTIC_OPS,
    PIXELS,
    TARGET_CLASS,
    TASKS,
    TensorSpec,
)

DOCS = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def _row(kind: str, tensor: TensorSpec, when: str) -> str:
    return f"| {kind} | `{tensor.name}` | {tensor.dtype} [{', '.join(tensor.axes)}] | {tensor.meaning} | {when} |"


def tensors() -> str:
    """The inputs and outputs of every graph, and of the graphs that have more (the task's, a method's, uint8)."""
    rows = [
        "| | name | type [axes] | meaning | in |",
        "|---|---|---|---|---|",
        _row("input", IMAGE, "every graph"),
        _row("input", PIXELS, "`--input uint8` graphs, in its place"),
        _row("input", TARGET_CLASS, "every graph"),
    ]
    for task in TASKS.values():
        rows += [_row("input", tensor, f"{task.name} graphs") for tensor in task.inputs]
    for task in TASKS.values():
        rows += [_row("output", tensor, f"{task.name} graphs") for tensor in (*task.predictions, *task.maps)]
    for kind in (HEATMAP, CAM):
        tensor = TensorSpec(f"{kind.name}_<m>", kind.dtype, kind.axes, f"as `{kind.name}`, for method m")
        rows.append(_row("output", tensor, "graphs of several methods, one per method"))
    able = ", ".join(f"`{name}`" for name, method in METHODS.items() if method.every_class)
    rows.append(_row("output", CLASS_MAPS, f"`--class-maps` graphs (with {able})"))
    for task in TASKS.values():
        rows += [_row("output", tensor, f"{task.name} graphs") for tensor in task.outputs]
    return "\n".join(rows) + "\n"


def axes() -> str:
    """The axis names' legend."""
    rows = ["| axis | what it is |", "|---|---|"]
    rows += [f"| `{name}` | {meaning} |" for name, meaning in AXES.items()]
    return "\n".join(rows) + "\n"


def metadata() -> str:
    """The ``camexport.*`` metadata keys, in the order a graph holds them."""
    rows = ["| key | value | meaning |", "|---|---|---|"]
    rows += [f"| `camexport.{key.name}` | {key.kind} | {key.meaning} |" for key in METADATA]
    return "\n".join(rows) + "\n"


def tasks() -> str:
    """The tasks, their contract versions and what each explains."""
    rows = ["| task | contract | explained score `y_c` | adds |", "|---|---|---|---|"]
    for task in TASKS.values():
        adds = ", ".join(f"`{t.name}`" for t in (*task.inputs, *task.outputs)) or "nothing"
        rows.append(f"| `{task.name}` | {task.contract} | {task.score} | {adds} |")
    return "\n".join(rows) + "\n"


def methods() -> str:
    """The method table: name, paper, equation, gradient or gradient-free."""
    rows = ["| `--method` | method | paper | formula | from |", "|---|---|---|---|---|"]
    for method in METHODS.values():
        source = "the gradient pass (A, g)" if method.gradient else "the network run again on masked maps"
        rows.append(f"| `{method.name}` | {method.title} | {method.paper} | {method.equation} | {source} |")
    return "\n".join(rows) + "\n"


def nondeterministic() -> str:
    """The operators no camexport graph holds, with the reason."""
    rows = ["| operator | refused | why |", "|---|---|---|"]
    for op in NONDETERMINISTIC_OPS:
        when = "with a `reduction` (add, mul, max, min)" if op.with_reduction else "always"
        rows.append(f"| `{op.op}` | {when} | {op.why} |")
    return "\n".join(rows) + "\n"


def command_help(command: str) -> str:
    """``camexport COMMAND --help``, as the parser prints it at 100 columns."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: the same on every machine
    parser = _parser()
    text = io.StringIO()
    with redirect_stdout(text):
        try:
            parser.parse_args([*([command] if command != "camexport" else []), "--help"])
        except SystemExit:
            pass
    return "```\n" + text.getvalue().rstrip() + "\n```\n"


def _commands() -> list[str]:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def blocks() -> dict[str, str]:
    """Every generated block by name."""
    made = {"tensors": tensors(), "axes": axes(), "metadata": metadata(), "tasks": tasks(), "methods": methods()}
    made["nondeterministic"] = nondeterministic()
    made["help-camexport"] = command_help("camexport")
    made |= {f"help-{name}": command_help(name) for name in _commands()}
    return made


def rewritten(text: str, made: dict[str, str]) -> str:
    """``text`` with each generated block's body replaced by what the code says now."""
    return BLOCK.sub(lambda m: m.group(1) + made[m.group("name")] + m.group(4), text)


def stale(folder: Path = DOCS) -> list[str]:
    """The pages of ``folder`` (and their blocks) that differ from what the code says."""
    made, found = blocks(), []
    for page in sorted(folder.glob("*.md")):
        text = page.read_text()
        blocks_here = {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
        unknown = [name for name in blocks_here if name not in made]
        differing = [name for name, body in blocks_here.items() if name in made and body != made[name]]
        if unknown or differing:
            found.append(f"{page.name}: {', '.join(unknown + differing)}")
    return found


def main() -> int:
    if "--check" in sys.argv:
        problems = stale()
        for problem in problems:
            print(f"stale: {problem}; run python docs/generate.py", file=sys.stderr)
        return 1 if problems else 0
    made = blocks()
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        if rewritten(text, made) != text:
            page.write_text(rewritten(text, made))
            print(f"wrote {page.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
