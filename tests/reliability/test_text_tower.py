"""Reliability: the text-tower choice (`method.text_tower`, issue #18).

`auto` chooses between `lora` and `locked` for method lora only; any other method is refused
before a model is loaded or a run folder is made, naming the key and what to write. A projection-
only run (`locked`) on a tiny backbone trains through the CLI and says in result.json what it
cached. Builders come from tests/reliability/test_configs.py (imported, not edited).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.finetune.conftest import tiny_cnn  # noqa: F401
from tests.reliability.harness import Case, Outcome, run_case
from tests.reliability.test_configs import _no_run_dir, finetune


@pytest.fixture(scope="module")
def backbone(tiny_cnn: Path) -> Path:  # noqa: F811 - the session's tiny CNN backbone directory
    return tiny_cnn


def _pooled_cache(tmp: Path, out: Outcome) -> None:
    result = json.loads((tmp / "run" / "result.json").read_text())
    assert result["info"]["text_cache"]["layers_cached"] == "pooled"


def _auto_choice(tmp: Path, out: Outcome) -> None:
    result = json.loads((tmp / "run" / "result.json").read_text())
    assert result["info"]["text_tower_choice"].startswith("method.text_tower auto -> lora")
    assert "text_tower: lora" in (tmp / "run" / "config.yaml").read_text()


CASES = [
    Case(
        "auto_with_clip_adapter",
        finetune(None, "method.name=clip_adapter", "method.text_tower=auto"),
        r"method\.text_tower=auto chooses between lora and locked for method\.name=lora; for "
        r"clip_adapter set it to locked, lora or full, or leave it empty",
        check=_no_run_dir,
    ),
    Case(
        "auto_unknown_tower_value",
        finetune(None, "method.text_tower=frozen"),
        r"method\.text_tower.*auto",
        check=_no_run_dir,
    ),
    Case("locked_trains", finetune(None, "method.text_tower=locked"), r"best", code=0,
         check=_pooled_cache),
    Case("auto_short_texts", finetune(None, "method.text_tower=auto"), r"best", code=0,
         check=_auto_choice),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_text_tower(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    c = Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code, case.check)
    run_case(c, tmp_path, capsys)
