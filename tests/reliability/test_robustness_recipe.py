"""Reliability: the round-2 robustness settings a person gets wrong (`--set robustness.space`,
`start`, `ramp`, `negation_margin`). Each is refused with exit 2 and a message naming the key and
its valid values, before a run folder exists. Reuses test_configs' `finetune` argv builder and
data (imported, not edited), like test_robustness.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.finetune.conftest import tiny_cnn  # noqa: F401
from tests.reliability.harness import Case, run_case
from tests.reliability.test_configs import _no_run_dir, finetune


@pytest.fixture(scope="module")
def backbone(tiny_cnn: Path) -> Path:  # noqa: F811 - the session's tiny CNN backbone directory
    return tiny_cnn


CASES = [
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
def test_robustness_recipe_config(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    run_case(Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code, _no_run_dir), tmp_path, capsys)
