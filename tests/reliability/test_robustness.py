"""Reliability: framing-robust fine-tuning settings a person gets wrong (`domainclip finetune
--set robustness...`). Each is refused with exit 2 and a message naming the key (or the pool file
and the audit spec it copies), before a run folder exists. Builds on test_configs' `finetune`
argv builder and data (imported, not edited)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.finetune.conftest import tiny_cnn  # noqa: F401
from tests.reliability.harness import Case, run_case
from tests.reliability.test_configs import _no_run_dir, finetune


@pytest.fixture(scope="module")
def backbone(tiny_cnn: Path) -> Path:  # noqa: F811 - the session's tiny CNN backbone directory
    return tiny_cnn


def _copying_pool(tmp: Path, bb: Path) -> list[str]:
    pool = tmp / "pool.yaml"
    pool.write_text(
        'name: mine\nversion: "1"\ninvariant:\n  lay: ["a piece of metal that has some {defect} on it"]\n'
    )
    return finetune(None, "robustness.enabled=true", f"robustness.pool={pool}")(tmp, bb)


def _robust(name: str, setting: str, expect: str) -> Case:
    """A finetune run with robustness on and one bad `setting`, refused with `expect`."""
    return Case(name, finetune(None, "robustness.enabled=true", setting), expect)


CASES = [
    _robust("k_zero", "robustness.k=0", r"robustness\.k = 0 is out of range"),
    _robust("weight_negative", "robustness.weight=-1", r"robustness\.weight = -1\.0 is out of range"),
    _robust(
        "unknown_pool",
        "robustness.pool=industiral",
        r"robustness\.pool: 'industiral' is neither a shipped framing pool \(generic, industrial, medical\) \(did you mean .industrial.\?\)",
    ),
    Case("pool_copies_an_audit_template", _copying_pool, r"pool\.yaml: template .* is the audit template of framing 'lay' in .*synthetic\.yaml"),
    _robust(
        "head_only_method",
        "method.name=linear_probe",
        r"does not apply to method\.name=linear_probe: its classifier is a logistic regression",
    ),
    _robust("unknown_control", "robustness.controls=[clear]", r"robustness\.controls: 'clear' not among the classes \(clean, pit\)"),
    # the round-2 settings (space, start, ramp, negation_margin) and round 4's settle
    _robust("unknown_space", "robustness.space=logits", r"robustness\.space.*logits.*(probability|logit)"),
    _robust("start_at_the_end", "robustness.start=1", r"robustness\.start = 1(\.0)? is out of range"),
    _robust("ramp_above_one", "robustness.ramp=2", r"robustness\.ramp = 2(\.0)? is out of range"),
    _robust("margin_above_one", "robustness.negation_margin=3", r"robustness\.negation_margin = 3(\.0)? is out of range"),
    _robust("settle_above_one", "robustness.settle=2", r"robustness\.settle = 2(\.0)? is out of range"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_robustness_config(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    run_case(Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code, _no_run_dir), tmp_path, capsys)
