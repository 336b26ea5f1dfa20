"""The first screen of the model card: how the model compares, where it fails, what went wrong.

A reviewer deciding on deployment reads the top of the card. So it leads with:

* "How this compares": the model beside chance, the majority class, the untrained backbone and a
  linear probe on the frozen features (each with its 95% CI, from the leading evaluation's
  `baselines`), with a one-sentence verdict;
* per-class results of that evaluation, failing classes (recall or AUROC below the evaluation's
  thresholds) named;
* every warning raised during the run (result.json `warnings`, read tolerantly) and its
  evaluations (metrics.json `warnings`), and the validation-fitted temperature at its bound;
* how the run was trained when it deviates from its config (steps cut, the best checkpoint);
* what each framing audit could see: the smallest shift it could detect per class, or that its
  class cells are underpowered, and the remedies when its gate fails.

The leading evaluation is the newest one of split `test` (else the newest of any split).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from domainclip.audit.report import Block, fmt_est, power_sentence, remedy_lines
from domainclip.audit.results import AuditReport
from domainclip.evaluation.baselines import (
    BASELINE_NAMES,
    BASELINE_ORDER,
    headline_metrics,
    per_class_recall,
)
from domainclip.evaluation.results import EvaluationResult


def leading_evaluation(evals: Iterable[EvaluationResult]) -> EvaluationResult | None:
    """The newest evaluation of the test split, else the newest of any split."""
    evals = sorted(evals, key=lambda m: m.created)
    tests = [m for m in evals if m.data.split == "test"]
    return (tests or evals or [None])[-1]


def _label(key: str) -> str:
    return key.replace("_", " ")


def comparison_blocks(m: EvaluationResult | None, run: Path) -> list[Block]:
    """'How this compares' and the per-class results of the leading evaluation."""
    blocks: list[Block] = [("h2", "How this compares")]
    command = f"domainclip evaluate {run} --fit-temperature"
    if m is None:
        return [*blocks, ("p", f"Not run yet: an evaluation with baselines. Run `{command}`.")]
    multi = m.prompts.multi_label
    keys = headline_metrics(multi)
    where = f"`{m.name}` (split {m.data.split}, {m.data.n_evaluated} images)"
    if not m.baselines:
        blocks.append(
            (
                "p",
                f"No baselines were computed for {where}: without them its numbers cannot be "
                f"judged against chance or a linear probe. Run `{command}` (without --no-baselines).",
            )
        )
    else:
        blocks.append(("p", f"**{m.baselines.get('verdict', '')}** ({where})"))
        rows = [["**this model**", *[fmt_est(m.classification.get(k)) for k in keys]]]
        for name in BASELINE_ORDER:
            entry = m.baselines.get(name)
            if isinstance(entry, dict) and entry.get("metrics"):
                rows.append([BASELINE_NAMES[name], *[fmt_est(entry["metrics"].get(k)) for k in keys]])
        blocks.append(("table", ["", *[f"{_label(k)} [95% CI]" for k in keys]], rows))
        missing = [
            f"{BASELINE_NAMES[n]}: {e['reason']}"
            for n, e in m.baselines.items()
            if isinstance(e, dict) and e.get("reason") and "not a fine-tuning run" not in e["reason"]
        ]
        if missing:
            blocks.append(("p", "Not computed: " + "; ".join(missing) + "."))
    return blocks + per_class_blocks(m)


def per_class_blocks(m: EvaluationResult) -> list[Block]:
    """Per class: positives, recall, AUROC; failing classes in bold and named in a sentence."""
    cls, multi = m.classification, m.prompts.multi_label
    recalls = per_class_recall(cls, multi)
    failing = {c["class"]: c for c in (m.failing_classes or {}).get("classes") or []}
    rows = []
    for c, v in cls.get("per_class", {}).items():
        rec = v.get("recall") if isinstance(v.get("recall"), dict) else None
        recall = fmt_est(rec) if rec else ("n/a" if recalls.get(c) is None else f"{recalls[c]:.3f}")
        name = f"**{c} (failing)**" if c in failing else c
        rows.append([name, str(v.get("n_pos", "?")), recall, fmt_est(v.get("auroc"))])
    blocks: list[Block] = [
        ("p", f"Per class ({m.data.split} split; recall of the top-1 decision"
         + (" at threshold 0.5" if multi else "") + ", one-vs-rest AUROC):"),
        ("table", ["class", "images", "recall [95% CI]", "AUROC [95% CI]"], rows),
    ]
    if failing:
        th = m.failing_classes or {}
        blocks.append(
            (
                "p",
                f"**Failing classes** (recall < {th.get('min_recall', '?')} or AUROC < "
                f"{th.get('min_auroc', '?')}): "
                + "; ".join(f"**{c}**: {f['why']}" for c, f in failing.items())
                + ". Do not rely on the model for these.",
            )
        )
    return blocks


def _result_warnings(result: dict | None) -> list[str]:
    """result.json `warnings` ([{kind, step, message}] or strings), read tolerantly."""
    out = []
    raw = (result or {}).get("warnings")
    for w in raw if isinstance(raw, list) else []:
        if isinstance(w, dict) and w.get("message"):
            step = f" (step {w['step']})" if w.get("step") is not None else ""
            kind = f"{w['kind']}: " if w.get("kind") else ""
            out.append(f"Training{step}: {kind}{w['message']}")
        elif isinstance(w, str) and w:
            out.append(f"Training: {w}")
    return out


def warning_blocks(
    result: dict | None, evals: Iterable[EvaluationResult], calibration: dict | None
) -> list[Block]:
    """Every warning of the run and its evaluations (nothing when there is none)."""
    from domainclip.calibrators import temperature_at_bound

    items = _result_warnings(result)
    t = (calibration or {}).get("temperature")
    if isinstance(t, (int, float)) and temperature_at_bound(float(t)):
        items.append(
            f"Calibration: the temperature T = {t:.4g} fitted on split "
            f"{calibration.get('split', '?')} is at the search bound: the data barely constrain it, "
            "so calibration after scaling is not trustworthy."
        )
    seen = set(items)
    for m in evals:
        for w in m.warnings:
            text = f"Evaluation `{m.name}`: {w['message']}"
            if text not in seen and not (w["kind"] == "temperature_at_bound" and t is not None):
                seen.add(text)
                items.append(text)
    return [("h2", "Warnings raised during the run"), ("ul", items)] if items else []


def _cfg(cfg: dict, dotted: str) -> Any:
    d: Any = cfg
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def training_deviation(cfg: dict, result: dict | None) -> list[str]:
    """Sentences on how the run was trained where it deviates from its config (steps cut short,
    early stopping, the best checkpoint before the end, skipped images); empty when it did not."""
    if not result:
        return []
    out = []
    steps, best = result.get("steps"), result.get("best_step")
    max_steps = _cfg(cfg, "train.max_steps")
    # closed-form heads (linear probe, Tip-Adapter) take no steps: nothing was cut
    if isinstance(steps, int) and isinstance(max_steps, int) and 0 < steps < max_steps:
        why = "early stopping" if result.get("stopped_early") else "stopped before the end"
        out.append(f"Training ran {steps} of the configured {max_steps} steps ({why}).")
    if isinstance(best, int) and isinstance(steps, int) and steps > 0 and best < steps:
        out.append(
            f"The numbers below are from the best checkpoint, at step {best} of {steps}"
            + (" (the untrained start)" if best == 0 else "")
            + "."
        )
    for key, what in (("skipped_images", "images"), ("skipped_batches", "batches")):
        n = result.get(key)
        if isinstance(n, int) and n > 0:
            out.append(f"{n} unreadable {what} were skipped during training.")
    return out


def test_calibration_rows(m: EvaluationResult) -> tuple[list[str], list[list[str]]]:
    """ECE (equal width / equal mass), NLL and Brier of an evaluation before and after T."""
    before, after = m.calibration.before, m.calibration.after
    t = m.temperature.value
    header = ["metric", "before (T = 1)", f"after (T = {t:.3g})" if after else "after"]
    labels = (("ece", "ECE"), ("ece_mass", "ECE (equal mass)"), ("nll", "NLL"), ("brier", "Brier"))
    return header, [
        [label, fmt_est(before.get(k)), fmt_est(after.get(k)) if after else "no temperature"]
        for k, label in labels
        if k in before
    ]


def audit_power_blocks(audits: Iterable[AuditReport]) -> list[Block]:
    """First-screen 'What the framing audit could see': per audit its verdict, the shifts it
    could detect per class (or that its class cells are underpowered) and, when its gate fails,
    the remedies with their commands."""
    audits = list(audits)
    if not audits:
        return []
    blocks: list[Block] = [("h2", "What the framing audit could see")]
    for a in audits:
        blocks.append(
            (
                "p",
                f"`{a.spec['name']}` (gate {a.gate.verdict.upper()}, {a.data.n_images} images): "
                + power_sentence(a),
            )
        )
        lines = remedy_lines(a)
        if lines:
            blocks.append(("ul", lines))
    return blocks
