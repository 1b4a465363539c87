"""The ``kdtune`` command and Ctrl-C: once a command has said how to go on, a second Ctrl-C
ends the process quietly (no second message, no traceback of the shutdown)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from kdtune import cli, cli_sweep
from kdtune.errors import Interrupted


@pytest.fixture
def sigint_restored():
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_the_command_makes_a_second_ctrl_c_quiet_once_it_said_how_to_go_on(
        sigint_restored: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def stopped(args: object) -> int:
        """A command stopped by a real Ctrl-C: its handler (which says how to go on at a
        second one) stays installed, as a sweep's does."""
        from kdtune.tune.ray_session import Interrupts

        with Interrupts("continue with `kdtune resume x`"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # (the handler raises first)
        return 0

    monkeypatch.setattr(cli_sweep, "cmd_best", stopped)
    monkeypatch.setattr(sys, "argv", ["kdtune", "best", "--list"])  # as the kdtune command
    assert cli.main() == 130
    assert capsys.readouterr().err.strip() == \
        "kdtune best: interrupted: continue with `kdtune resume x`"
    # it said how to go on: a second Ctrl-C ends the process by the signal, saying nothing
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL


def test_called_as_a_function_main_leaves_the_handlers_alone(
        sigint_restored: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def stopped(args: object) -> int:
        raise Interrupted("stopped")

    monkeypatch.setattr(cli_sweep, "cmd_best", stopped)
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["best", "--list"]) == 130
    assert signal.getsignal(signal.SIGINT) is before
