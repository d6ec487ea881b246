"""Stop signals under the command line: SIGTERM and Ctrl-C raise in the main thread, except inside a
``signals_held`` block, where they wait for the block to end (a record and its log line are written whole)."""

from __future__ import annotations

import os
import signal

import pytest
from tqdm import tqdm

from camexport._util import Terminated, signals_held, sigterm_as_interrupt


@pytest.mark.parametrize(
    ("signal_number", "raised"), [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_a_stop_inside_a_held_block_waits_for_its_end(signal_number: int, raised: type) -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C, also where the suite
    try:  # runs in the background (a shell starts it with SIGINT ignored)
        _stop_in_a_held_block(signal_number, raised)
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_in_a_held_block(signal_number: int, raised: type) -> None:
    steps: list[str] = []
    with pytest.raises(raised), sigterm_as_interrupt(), signals_held():
        os.kill(os.getpid(), signal_number)
        steps.append("after the signal")
        with tqdm.external_write_mode():  # the lock that breaks when an exception lands inside it
            steps.append("written")
    assert steps == ["after the signal", "written"]


def test_held_blocks_nest_and_the_stop_comes_once_at_the_outermost_end() -> None:
    steps: list[str] = []
    with pytest.raises(Terminated), sigterm_as_interrupt():
        with signals_held():
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
            steps.append("inner block ended")
        steps.append("never")
    assert steps == ["inner block ended"]


def test_outside_a_held_block_the_stop_is_raised_at_once() -> None:
    steps: list[str] = []
    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            steps.append("running")
    assert len(steps) < 1000


def test_a_shell_that_ignores_ctrl_c_is_obeyed_and_handlers_are_restored() -> None:
    before_term = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # how a shell starts a background job
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not before_term
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) is before_term
