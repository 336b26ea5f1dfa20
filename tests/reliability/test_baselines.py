"""Reliability cases for evaluation baselines and failing-class thresholds (issue #17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.harness import Case, run_case


def _args(*extra: str):
    def build(tmp: Path) -> list[str]:
        return ["evaluate", "default", "--data", str(tmp / "m.csv"), "--out", str(tmp / "o"), *extra]

    return build


CASES = [
    Case("min-recall above 1", _args("--min-recall", "1.5"), r"--min-recall must be between 0 and 1"),
    Case("negative min-auroc", _args("--min-auroc", "-0.1"), r"--min-auroc must be between 0 and 1"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_baseline_options(case: Case, tmp_path: Path, capsys) -> None:
    run_case(case, tmp_path, capsys)
