"""Names of validation metrics: zero-shot prompt scoring vs a classifier head.

A method with a classifier head (linear probe, Tip-Adapter) is not scored zero-shot, so its
validation accuracy is `head_acc` / `head_macro_f1`, never `zero_shot_acc`. Configs keep naming
the selection metric `zero_shot_acc` (the default of `eval.metric`), and runs written before this
split logged a head's accuracy as `zero_shot_acc`: `metric_value` reads either name.
"""

from __future__ import annotations

from collections.abc import Mapping

# zero-shot name -> the head's name for the same measurement
HEAD_NAMES = {"zero_shot_acc": "head_acc", "zero_shot_macro_f1": "head_macro_f1"}
_ZERO_SHOT_NAMES = {v: k for k, v in HEAD_NAMES.items()}


def accuracy_names(has_head: bool) -> tuple[str, str]:
    """(accuracy, macro-F1) metric names for a model with or without a classifier head."""
    acc, f1 = "zero_shot_acc", "zero_shot_macro_f1"
    return (HEAD_NAMES[acc], HEAD_NAMES[f1]) if has_head else (acc, f1)


def resolve_metric(metrics: Mapping[str, float], name: str) -> str:
    """The key under which `metrics` holds `name` (its head / zero-shot twin when only that one
    is present); `name` itself when neither is."""
    if name in metrics:
        return name
    twin = HEAD_NAMES.get(name) or _ZERO_SHOT_NAMES.get(name)
    return twin if twin is not None and twin in metrics else name


def metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    """`metrics[name]`, or its head / zero-shot twin (old runs, head methods); None if absent."""
    return metrics.get(resolve_metric(metrics, name))
