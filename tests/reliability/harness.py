"""Table-driven reliability cases: a small input built in the test, a command, an expected outcome.

Every case runs the real command line (`domainclip.cli.main`, in-process so the suite stays fast)
and asserts three things: the exit code, a regex over what the user sees (stdout + stderr), and
that no exception escaped (an escaped exception is what a user would see as a raw traceback).
`run_subprocess` runs the installed entry point instead, for the cases where the process boundary
matters (signals, locks, the console script itself).

Files in tests/reliability/ group cases by what they break (data, configs, checkpoints, numerics,
dashboard reads); each file holds a list of `Case` and one parametrised test over it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Outcome:
    """What a user saw: exit code and the two streams."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@dataclass(frozen=True)
class Case:
    """One reliability case.

    build(tmp) writes the inputs under `tmp` and returns the argv (without `domainclip`).
    expect: regex that must occur in stdout+stderr (re.S | re.I). code: expected exit code.
    check: optional extra assertion on (tmp, outcome), e.g. a skip count in a written file.
    """

    name: str
    build: Callable[[Path], list[str]]
    expect: str
    code: int = 2
    check: Callable[[Path, Outcome], None] | None = None


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """Run `domainclip ARGV` in-process; an escaped exception fails the test as a traceback."""
    from domainclip.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors exit 2 with a message, not a traceback
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - the point is to catch everything
        captured = capsys.readouterr()
        pytest.fail(f"a traceback would reach the user: {type(exc).__name__}: {exc}\n{captured.err[-2000:]}")
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> Outcome:
    """Run `python -m domainclip ARGV` in a child process (the real entry point)."""
    proc = subprocess.run(
        [sys.executable, "-m", "domainclip", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_outcome(case: Case, tmp: Path, outcome: Outcome) -> None:
    """The shared assertions: exit code, message, no traceback, then the case's own check."""
    assert "Traceback" not in outcome.text, f"{case.name}: traceback reached the user:\n{outcome.err[-2000:]}"
    assert outcome.code == case.code, f"{case.name}: exit {outcome.code}, expected {case.code}\n{outcome.text[-2000:]}"
    assert re.search(case.expect, outcome.text, re.S | re.I), (
        f"{case.name}: expected /{case.expect}/ in the output:\n{outcome.text[-2000:]}"
    )
    if case.check is not None:
        case.check(tmp, outcome)


def run_case(case: Case, tmp: Path, capsys: pytest.CaptureFixture[str]) -> Outcome:
    """Build, run in-process and assert one case."""
    argv = case.build(tmp)
    outcome = run_cli(argv, capsys)
    assert_outcome(case, tmp, outcome)
    return outcome
