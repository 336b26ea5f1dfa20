"""Reliability cases for the audit's power settings (issue #20): a spec that asks for power the
gate cannot deliver, or too few sign flips, is refused with the key and what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.audit.conftest import small_spec
from tests.reliability.harness import Case, run_case


def _spec(thresholds: dict | None = None, statistics: dict | None = None):
    def build(tmp: Path) -> list[str]:
        raw = small_spec(**(thresholds or {}))
        raw["statistics"].update(statistics or {})
        (tmp / "spec.yaml").write_text(yaml.safe_dump(raw))
        (tmp / "m.csv").write_text("image,text,label,split\n")
        return ["audit", "default", "--spec", str(tmp / "spec.yaml"), "--data", str(tmp / "m.csv"),
                "--out", str(tmp / "o")]

    return build


CASES = [
    Case(
        "require_power at the threshold",
        _spec({"max_abs_mean_shift": 0.05, "require_power": 0.05}),
        r"spec\.yaml: thresholds\.require_power = 0\.05 must exceed "
        r"thresholds\.max_abs_mean_shift = 0\.05.*use e\.g\. 0\.1",
    ),
    Case("require_power above 1", _spec({"require_power": 1.5}), r"thresholds\.require_power"),
    Case(
        "too few sign flips",
        _spec(statistics={"n_permutations": 10}),
        r"statistics\.n_permutations",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_audit_power_settings(case: Case, tmp_path: Path, capsys) -> None:
    run_case(case, tmp_path, capsys)
