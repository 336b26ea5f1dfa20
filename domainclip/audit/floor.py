"""Performance floors of the deployment gate: a model that cannot do the task fails first.

A framing audit measures whether wording moves a model's scores. A model at chance has nothing for
wording to move (near-uniform probabilities barely shift), so without a floor the useless model
passes more framing checks than a good one. The floor checks run first, on the reference framing:

* ``performance/balanced_accuracy`` and ``performance/macro_auroc`` fail when the point estimate is
  not above the chance CI, the 97.5th percentile of what uniform guessing reaches on the same
  images (`evaluation.baselines.chance_metrics`; `thresholds.performance_floor`), or below a stated
  minimum (`thresholds.min_balanced_accuracy`, `thresholds.min_macro_auroc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domainclip.audit.gate import FAIL, PASS, Check
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import AuditSpec
from domainclip.evaluation.baselines import chance_metrics
from domainclip.evaluation.metrics import single_label_report

FLOOR_METRICS = ("balanced_accuracy", "macro_auroc")


def performance(table: ScoreTable, framing: str, n_boot: int, seed: int) -> dict[str, Any]:
    """Balanced accuracy and macro AUROC under `framing` (temperature-scaled softmax over the
    audited classes) with bootstrap CIs, and the same metrics of uniform guessing ("chance").

    Returns:
        {"framing", "balanced_accuracy", "macro_auroc" (Estimate dicts), "chance": {metric:
        Estimate dict}}.
    """
    k = table.k(framing)
    report = single_label_report(
        table.probs[k], table.target, table.classes, n_boot=min(n_boot, 1000), seed=seed
    )
    chance = chance_metrics(table.target, len(table.classes), False, min(n_boot, 1000), seed)
    return {
        "framing": framing,
        **{m: report[m] for m in FLOOR_METRICS},
        "chance": {m: chance[m] for m in FLOOR_METRICS},
    }


def near_chance(perf: Mapping[str, Any] | None) -> bool:
    """Whether every floor metric's point estimate lies within the chance CI."""
    if not perf:
        return False
    values = [
        (perf[m].get("value"), (perf["chance"][m].get("ci95") or [None, None])[1])
        for m in FLOOR_METRICS
    ]
    known = [(v, hi) for v, hi in values if v is not None and hi is not None]
    return bool(known) and all(v <= hi for v, hi in known)


def floor_checks(spec: AuditSpec, perf: Mapping[str, Any] | None) -> list[Check]:
    """The performance-floor checks (none when the floor is off and no minimum is stated)."""
    th = spec.thresholds
    if perf is None:
        return []
    minimum = {
        "balanced_accuracy": th.min_balanced_accuracy,
        "macro_auroc": th.min_macro_auroc,
    }
    out = []
    for m in FLOOR_METRICS:
        est, chance = perf[m], perf["chance"][m]
        chance_hi = (chance.get("ci95") or [None, None])[1] if th.performance_floor else None
        bars = [b for b in (chance_hi, minimum[m]) if b is not None]
        if not bars:
            continue
        bar = max(bars)
        value = est.get("value")
        name = m.replace("_", " ")
        if value is None:
            status, msg = FAIL, f"{name} is undefined ({est.get('reason')}): the floor cannot be shown"
        else:
            status = FAIL if value <= bar else PASS
            what = (
                "the chance CI (uniform guessing reaches up to "
                f"{chance_hi:.3f} on these images)"
                if bar == chance_hi
                else f"the stated minimum {bar:g}"
            )
            msg = (
                f"{name} {value:.3f} under {perf['framing']!r} is "
                + ("not above " if status == FAIL else "above ")
                + what
                + (": the model cannot do the task, whatever its framing stability" if status == FAIL else "")
            )
        ci = est.get("ci95")
        out.append(
            Check(f"performance/{m}", "performance", perf["framing"], "all", value, bar, status, msg, ci)
        )
    return out
