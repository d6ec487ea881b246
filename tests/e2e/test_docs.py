"""The docs hold with the code: the generated blocks (the contract's tables, the methods, each command's help) are
what docs/generate.py writes today, every link between the pages and into the tree resolves, the README stays short,
and no code or doc names an issue number."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, script_module

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "benchmarks" / "README.md"]


@pytest.fixture(scope="module")
def generate():
    with script_module(DOCS / "generate.py", "docs_generate") as module:
        yield module


def test_the_contract_and_method_tables_are_generated_from_the_code(generate) -> None:
    made = generate.blocks()
    found = {}
    for page in sorted(DOCS.glob("*.md")):
        for match in generate.BLOCK.finditer(page.read_text()):
            found[match.group("name")] = (page.name, match.group("body"))
    for name in ("tensors", "axes", "metadata", "tasks", "methods"):
        assert name in found, f"no generated block {name!r} in docs/"
        page, body = found[name]
        assert body == made[name], f"docs/{page}: block {name!r} differs from the code; run python docs/generate.py"


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="argparse lays out help differently in other Pythons")
def test_the_command_reference_is_each_commands_help(generate) -> None:
    made = generate.blocks()
    cli = (DOCS / "cli.md").read_text()
    names = [m.group("name") for m in generate.BLOCK.finditer(cli)]
    assert sorted(names) == sorted(name for name in made if name.startswith("help-"))
    assert generate.rewritten(cli, made) == cli, "docs/cli.md differs from the commands' help; run docs/generate.py"


def test_generate_check_names_a_stale_block(generate, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(DOCS / "generate.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the committed docs are current
    page = (DOCS / "contract.md").read_text()
    (tmp_path / "contract.md").write_text(page.replace("| `camexport.layer` |", "| `camexport.layers` |"))
    assert generate.stale(tmp_path) == ["contract.md: metadata"]


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    missing = [target for target in _links(page) if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing {missing}"


def test_the_readme_is_short_and_quotes_nothing_that_goes_stale() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\d+ (tests|passed)|\d+ min \d+ s|\d+(\.\d+)? (ms|images/s)\b", text)


def test_no_code_or_doc_names_an_issue_number() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files = [ROOT / f for f in tracked if f.endswith((".py", ".md", ".mjs", ".sh", ".toml"))]
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in files
        if path.is_file()
        for n, line in enumerate(path.read_text(errors="ignore").splitlines(), 1)
        if re.search(r"\bissues? ?#?\d+\b", line, re.I) and "github.com" not in line and "upstream" not in line
    ]
    assert not found, found
