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


CASES = [
    Case("k_zero", finetune(None, "robustness.enabled=true", "robustness.k=0"), r"robustness\.k = 0 is out of range"),
    Case(
        "weight_negative",
        finetune(None, "robustness.enabled=true", "robustness.weight=-1"),
        r"robustness\.weight = -1\.0 is out of range",
    ),
    Case(
        "unknown_pool",
        finetune(None, "robustness.enabled=true", "robustness.pool=industiral"),
        r"robustness\.pool: 'industiral' is neither a shipped framing pool \(generic, industrial, medical\) \(did you mean .industrial.\?\)",
    ),
    Case("pool_copies_an_audit_template", _copying_pool, r"pool\.yaml: template .* is the audit template of framing 'lay' in .*synthetic\.yaml"),
    Case(
        "head_only_method",
        finetune(None, "robustness.enabled=true", "method.name=linear_probe"),
        r"does not apply to method\.name=linear_probe: its classifier is a logistic regression",
    ),
    Case(
        "unknown_control",
        finetune(None, "robustness.enabled=true", "robustness.controls=[clear]"),
        r"robustness\.controls: 'clear' not among the classes \(clean, pit\)",
    ),
    # the round-2 settings (space, start, ramp, negation_margin)
    Case(
        "unknown_space",
        finetune(None, "robustness.enabled=true", "robustness.space=logits"),
        r"robustness\.space.*logits.*(probability|logit)",
    ),
    Case(
        "start_at_the_end",
        finetune(None, "robustness.enabled=true", "robustness.start=1"),
        r"robustness\.start = 1(\.0)? is out of range",
    ),
    Case(
        "ramp_above_one",
        finetune(None, "robustness.enabled=true", "robustness.ramp=2"),
        r"robustness\.ramp = 2(\.0)? is out of range",
    ),
    Case(
        "margin_above_one",
        finetune(None, "robustness.enabled=true", "robustness.negation_margin=3"),
        r"robustness\.negation_margin = 3(\.0)? is out of range",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_robustness_config(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    run_case(Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code, _no_run_dir), tmp_path, capsys)
