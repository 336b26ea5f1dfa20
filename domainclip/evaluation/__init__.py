"""Evaluation: zero-shot classification, retrieval, AUROC/AP with bootstrap CIs, calibration
metrics and the forgetting monitor (calibrators themselves: `domainclip.calibrators`).

Names are re-exported lazily so that importing a light submodule (prompts) does not
pull in matplotlib or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "ClassPrompts": "prompts",
    "PromptError": "prompts",
    "PromptSet": "prompts",
    "load_prompt_set": "prompts",
    "class_embeddings": "zeroshot",
    "embed_unique_texts": "zeroshot",
    "multilabel_logits": "zeroshot",
    "zero_shot_logits": "zeroshot",
    "retrieval_metrics": "retrieval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'domainclip.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"domainclip.evaluation.{module}"), name)
