"""Every bad input through the CLI: one line naming the problem and the fix, exit 2, no traceback, no file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from support import start

from camexport.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("camexport: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "graphs" / "g.onnx"


def _no_graph(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert [p for p in out.parent.iterdir() if p.suffix in (".onnx", ".tmp", ".json")] == []


def test_unknown_model(capsys, out: Path) -> None:
    code, _, err = run_cli(capsys, "build", "resnet19", "--output", str(out))
    assert_user_error(code, err, "unknown model 'resnet19'", "resnet18")
    _no_graph(out)


def test_unknown_layer(capsys, out: Path) -> None:
    code, _, err = run_cli(
        capsys, "build", "resnet18", "--weights", "random", "--layer", "layer5", "--output", str(out)
    )
    assert_user_error(code, err, "--layer layer5", "close candidates", "layer4")
    _no_graph(out)


def test_unknown_method(capsys, out: Path) -> None:
    code, _, err = run_cli(capsys, "build", "resnet18", "--method", "scorecam", "--output", str(out))
    assert_user_error(code, err, "--method scorecam", "gradcampp", "gradcam")
    _no_graph(out)


def test_missing_checkpoint(capsys, out: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "build", "resnet18", "--weights", str(tmp_path / "no.pt"), "--output", str(out))
    assert_user_error(code, err, "no such file", "'random'")
    _no_graph(out)


def test_unreadable_checkpoint(capsys, out: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    code, _, err = run_cli(capsys, "build", "resnet18", "--weights", str(junk), "--output", str(out))
    assert_user_error(code, err, "cannot read the checkpoint", "state_dict")
    _no_graph(out)


def test_mismatched_checkpoint(capsys, out: Path, tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    code, _, err = run_cli(capsys, "build", "resnet18", "--weights", str(path), "--output", str(out))
    assert_user_error(code, err, "do not fit ResNet", "unexpected key", "same architecture")
    _no_graph(out)


def test_default_weights_offline(capsys, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    code, _, err = run_cli(capsys, "build", "resnet18", "--output", str(out))
    assert_user_error(code, err, "--weights random", "--weights PATH")
    _no_graph(out)


@pytest.mark.parametrize("target", ["/dev/null/g.onnx", "DIR"])
def test_unwritable_output(capsys, tmp_path: Path, target: str) -> None:
    path = str(tmp_path) if target == "DIR" else target
    code, _, err = run_cli(capsys, "build", "resnet18", "--weights", "random", "--output", path)
    assert_user_error(code, err, f"--output {path}")


def test_output_must_be_onnx(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "build", "resnet18", "--output", str(tmp_path / "g.txt"))
    assert_user_error(code, err, "must end in .onnx")


@pytest.mark.parametrize("size", [["16"], ["24", "16"]])
def test_image_size_too_small(capsys, out: Path, size: list[str]) -> None:
    code, _, err = run_cli(
        capsys, "build", "resnet18", "--weights", "random", "--image-size", *size, "--output", str(out)
    )
    assert_user_error(code, err, "is 1x1", "larger --image-size")
    _no_graph(out)


def test_image_size_the_model_cannot_run(capsys, out: Path) -> None:
    code, _, err = run_cli(
        capsys, "build", "alexnet", "--weights", "random", "--image-size", "16", "--output", str(out)
    )
    assert_user_error(code, err, "alexnet cannot run on 16x16 images", "another --image-size")
    _no_graph(out)


def test_opset_too_old(capsys, out: Path) -> None:
    code, _, err = run_cli(
        capsys, "build", "resnet18", "--weights", "random", "--image-size", "64", "--opset", "11", "--output", str(out)
    )
    assert_user_error(code, err, "--opset 11", "--opset 18")
    _no_graph(out)


def test_bad_arguments_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["build", "resnet18", "--seed", "many"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--seed" in err


def test_models_lists_and_filters(capsys) -> None:
    code, stdout, _ = run_cli(capsys, "models", "resnet1*")
    rows = [line.split() for line in stdout.splitlines()[1:-1]]
    assert code == 0 and [row[0] for row in rows] == ["resnet101", "resnet152", "resnet18"]
    assert rows[2] == ["resnet18", "224x224", "layer4", "->", "[512,", "7,", "7]"]
    assert "timm:ARCH" in stdout.splitlines()[-1]


def test_models_shows_transformer_defaults(capsys) -> None:
    code, stdout, _ = run_cli(capsys, "models", "maxvit_t")
    assert code == 0 and "blocks.3.layers.1.layers.window_attention.attn_layer.0 -> [512, 7, 7]" in stdout
    code, _, stderr = run_cli(capsys, "models", "nothing*")
    assert code == 2 and "no model matches 'nothing*'" in stderr


def test_console_script_end_to_end(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: no traceback, exit 2."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "camexport.cli",
            "build",
            "resnet18",
            "--layer",
            "layer9",
            "--weights",
            "random",
            "--output",
            str(tmp_path / "g.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--layer layer9" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "g.onnx").exists()


def test_layers_command_marks_the_default(capsys) -> None:
    code, stdout, _ = run_cli(capsys, "layers", "resnet18")
    assert code == 0
    rows = {line.split()[0]: line for line in stdout.splitlines()[2:]}
    assert rows["layer4"].endswith("default") and "[N, 512, 7, 7]" in rows["layer4"]
    assert "not selectable" in rows["layer4.1.relu"]
    assert "fc" not in rows


def test_layers_command_unknown_model(capsys) -> None:
    code, _, err = run_cli(capsys, "layers", "resnet19")
    assert_user_error(code, err, "unknown model 'resnet19'")


def test_a_closed_pipe_is_not_a_traceback() -> None:
    """`camexport models | head -2`: the reader leaves early; no traceback, the Unix status for SIGPIPE."""
    pipeline = f"{sys.executable} -m camexport.cli models | head -2"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=300)
    assert result.stdout.splitlines()[1].startswith("alexnet")
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr
    assert result.returncode in (0, 141)


def test_library_messages_name_parameters_and_the_cli_names_flags() -> None:
    from camexport.cli import PARAMETERS, _parser, for_the_command_line

    assert for_the_command_line("seed=-1: use a non-negative integer") == "--seed -1: use a non-negative integer"
    assert for_the_command_line("methods='x': unknown; or `dynamic_size`") == "--method x: unknown; or --dynamic-size"
    assert for_the_command_line("target=1000: out of range; use weights='a b'") == (
        "--class 1000: out of range; use --weights 'a b'"
    )
    assert for_the_command_line("unrelated=1 and `name`") == "unrelated=1 and `name`"
    assert for_the_command_line("image_size=(16, 24): too small") == "--image-size 16 24: too small"
    subcommands = ("build", "explain", "evaluate", "render", "serve")
    flags = {f for sub in subcommands for f in _subcommand_flags(_parser(), sub)}
    for name in PARAMETERS:
        shown = for_the_command_line(f"`{name}`")
        assert shown in flags, (name, shown)


def _subcommand_flags(parser, name: str) -> set[str]:
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        parser.parse_args([name, "--help"])
    return set(re.findall(r"(--[a-z-]+)", text.getvalue()))


@pytest.mark.parametrize("size", [["1", "2", "3"], ["0"]])
def test_image_size_takes_one_or_two_positive_numbers(capsys, size: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["build", "resnet18", "--image-size", *size])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "--image-size takes H or H W" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["build", "layers"])
def test_image_size_help_reads_h_w(capsys, command: str) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--image-size H [W]" in text and "[H [W] ...]" not in text


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_build_stopped_while_validating_leaves_nothing_and_says_so(tmp_path: Path, stop: str) -> None:
    """SIGTERM (how Slurm and Kubernetes stop a job) as Ctrl-C: while the graph is staged and validated, the build
    stops, removes its staging folder (tens of MB for a real model) and the folder it made, and says one line."""
    import signal
    import time

    out = tmp_path / "graphs" / "g.onnx"
    argv = [sys.executable, "-m", "camexport.cli", "build", "resnet18", "--weights", "random", "--output", str(out)]
    process = start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:  # the build says when validation starts; the staged graph is then on disk
        lines.append(line)
        if line.startswith("validate"):
            break
    deadline = time.monotonic() + 30
    while not list(out.parent.glob(".g.onnx.*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(out.parent.glob(".g.onnx.*")), "".join(lines)
    process.send_signal(getattr(signal, stop))
    _, err = process.communicate(timeout=120)
    expected = (143, "camexport: terminated (SIGTERM)\n") if stop == "SIGTERM" else (130, "camexport: interrupted\n")
    assert (process.returncode, err) == expected
    assert not out.parent.exists()  # neither the staged graph nor the folder the build made
