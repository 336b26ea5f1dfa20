"""Evaluation: zero-shot classification, retrieval, AUROC/AP with bootstrap CIs, calibration,
temperature scaling and the forgetting monitor.

Prompt sets, class embeddings, zero-shot logits and retrieval metrics live one layer below, in
`domainclip.scoring` (fine-tuning validates with them too). Names are re-exported lazily so that
importing a light submodule (temperature) does not pull in matplotlib or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "apply_temperature": "temperature",
    "fit_temperature": "temperature",
    "load_calibration": "temperature",
    "load_temperature": "temperature",
    "nll_from_logits": "temperature",
    "save_calibration": "temperature",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'domainclip.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"domainclip.evaluation.{module}"), name)
