"""Short Markdown report of an evaluation result (`EvaluationResult`, also in metrics.json)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from domainclip.datasets.geometry_report import GeometryReport
from domainclip.evaluation.results import (
    MULTI_LABEL_METRICS,
    SINGLE_LABEL_METRICS,
    CalibrationSummary,
    EvaluationResult,
)
from domainclip.evaluation.shortcut import VERSIONS, ShortcutResult, describe
from domainclip.privacy import displayable_columns, hidden_columns, hidden_note


def fmt(d: dict[str, Any] | None, digits: int = 3) -> str:
    """An Estimate dict as 'v [lo, hi]' or 'undefined (reason)'."""
    if d is None:
        return "-"
    if d.get("value") is None:
        return f"undefined ({d.get('reason', '?')})"
    v = f"{d['value']:.{digits}f}"
    ci = d.get("ci95")
    return v if not ci else f"{v} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def render_markdown(r: EvaluationResult, allowed: Sequence[str] = ()) -> str:
    """Render the evaluation result; every metric with its 95% bootstrap interval.

    Subgroup columns neither on `privacy.SAFE_COLUMNS` nor in `allowed` are named, not shown.
    """
    multi = r.prompts.multi_label
    lines = _header(r)
    lines += comparison_lines(r)
    lines += _classification(r.classification, multi, r.model.task_title)
    lines += failing_lines(r)
    lines += _calibration(r.calibration, r.temperature.describe(), multi, allowed)
    if r.conformal:
        lines += _conformal(r.conformal, multi)
    if r.selective:
        lines += _selective(r.selective)
    lines += _retrieval(r.retrieval)
    if r.text_leakage:
        lines += _leakage(r.text_leakage, r.retrieval)
    if r.geometry is not None:
        lines += _geometry(r.geometry)
    if r.forgetting:
        lines += _forgetting(r.forgetting)
    if r.shortcut is not None:
        lines += _shortcut(r.shortcut)
    pngs = [p for p in (r.outputs or {}).values() if str(p).endswith(".png")]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in pngs]
    return "\n".join(lines) + "\n"


def _header(r: EvaluationResult) -> list[str]:
    data, t, ps, boot = r.data, r.temperature, r.prompts, r.classification["bootstrap"]
    run = f" (run `{r.model.run}`, checkpoint {r.model.checkpoint})" if r.model.run else ""
    lines = [
        f"# Evaluation: {r.name}",
        "",
        f"- Model: `{r.model.spec}`{run}",
        f"- Data: `{data.manifest}`, split **{data.split}**: {data.n_evaluated} images evaluated"
        f" ({data.n_unreadable} unreadable)",
        f"- Prompts: `{ps.source}` version {ps.version} ({ps.mode}, {ps.n_prompts} prompts)",
        f"- Calibrator: {t.describe()} ({t.source})",
        "- Intervals: 95% stratified percentile bootstrap "
        f"({boot['n_boot']} replicates, seed {boot['seed']})",
    ]
    lines += [f"- Note: {n}" for n in data.notes]
    return lines + ([f"- Warning: {t.warning}"] if t.warning else [])


def _classification(cls: dict[str, Any], multi: bool, title: str) -> list[str]:
    from domainclip.evaluation.baselines import per_class_recall

    keys = MULTI_LABEL_METRICS if multi else SINGLE_LABEL_METRICS
    lines = ["", f"## {title}", ""]
    lines += _table(["metric", "value [95% CI]"], [[k, fmt(cls[k])] for k in keys])
    lines += ["", "Per class (one-vs-rest):" if not multi else "Per finding:", ""]
    recalls = per_class_recall(cls, multi)

    def recall(c: str, v: dict[str, Any]) -> str:
        if isinstance(v.get("recall"), dict):
            return fmt(v["recall"])
        return "-" if recalls.get(c) is None else f"{recalls[c]:.3f}"

    return lines + _table(
        ["class", "positives", "recall", "AUROC", "AP"],
        [
            [c, str(v["n_pos"]), recall(c, v), fmt(v["auroc"]), fmt(v["ap"])]
            for c, v in cls["per_class"].items()
        ],
    )


def comparison_rows(r: EvaluationResult) -> tuple[list[str], list[list[str]]]:
    """The "how this compares" table: the model and each baseline on the headline metrics."""
    from domainclip.evaluation.baselines import BASELINE_NAMES, BASELINE_ORDER, headline_metrics

    keys = headline_metrics(r.prompts.multi_label)
    b = r.baselines or {}
    rows = [[f"**{BASELINE_NAMES['model']}**", *[fmt(r.classification.get(k)) for k in keys]]]
    for name in BASELINE_ORDER:
        entry = b.get(name)
        if not isinstance(entry, dict):
            continue
        if entry.get("metrics"):
            rows.append([BASELINE_NAMES[name], *[fmt(entry["metrics"].get(k)) for k in keys]])
        elif name != "untrained" or "not a fine-tuning run" not in str(entry.get("reason")):
            rows.append([BASELINE_NAMES[name], *[f"not computed ({entry.get('reason')})"] + ["-"] * (len(keys) - 1)])
    return ["", *[k.replace("_", " ") + " [95% CI]" for k in keys]], rows


def comparison_lines(r: EvaluationResult) -> list[str]:
    """'## How this compares': the verdict sentence and the baseline table (nothing when the
    evaluation ran without baselines)."""
    if not r.baselines:
        return []
    header, rows = comparison_rows(r)
    return ["", "## How this compares", "", f"**{r.baselines.get('verdict', '')}**", ""] + _table(
        header, rows
    )


def failing_lines(r: EvaluationResult) -> list[str]:
    """Failing classes (recall or AUROC below the thresholds), and every warning of the run."""
    lines: list[str] = []
    f = r.failing_classes or {}
    if f.get("classes"):
        lines += ["", f"**Failing classes** (recall < {f['min_recall']:g} or AUROC < {f['min_auroc']:g}):", ""]
        lines += [f"- **{c['class']}**: {c['why']}" for c in f["classes"]]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w['message']} ({w['kind']})" for w in r.warnings]
    return lines


_CALIBRATION_LABELS = (
    ("ece", "ECE (equal width)"),
    ("ece_mass", "ECE (equal mass)"),
    ("mce", "MCE"),
    ("brier", "Brier"),
    ("nll", "NLL"),
)


def _calibration(
    cal: CalibrationSummary, calibrator: str, multi: bool, allowed: Sequence[str]
) -> list[str]:
    rows = [
        [label, fmt(cal.before[k]), fmt(cal.after[k]) if cal.after else "-"]
        for k, label in _CALIBRATION_LABELS
    ]
    lines = ["", "## Calibration", ""]
    lines += _table(["metric", "before (T=1)", f"after ({calibrator})"], rows)
    judged = (
        "multi-label: each (image, finding) probability is judged." if multi else "top-1 confidence."
    )
    lines += ["", f"{cal.before['n_bins']} bins; {judged}"]
    lines += _base_rate_note(cal.to_json(), multi)
    observed = ["positive rate", "mean probability"] if multi else ["accuracy", "mean confidence"]
    for col in displayable_columns(cal.subgroups, allowed):
        groups = cal.subgroups[col]
        which = "T = 1, no calibrator" if cal.after is None else f"after {calibrator}"
        lines += ["", f"ECE by `{col}` (probabilities {which}):", ""]
        lines += _table(
            ["value", "n", "ECE", *observed],
            [
                [g, str(v["n"]), fmt(v["ece"]), _num(v["accuracy"]), _num(v["mean_confidence"])]
                for g, v in groups.items()
            ],
        )
    note = hidden_note(hidden_columns(cal.subgroups, allowed))
    return [*lines, "", note] if note else lines


def _conformal(c: dict[str, Any], multi: bool) -> list[str]:
    """Coverage and set sizes of the conformal prediction sets."""
    t = c["thresholds"]
    how = (
        "per-finding thresholds controlling the false-negative rate (conformal risk control)"
        if multi
        else f"{t['method'].upper()}" + (", one threshold per class (Mondrian)" if t["mondrian"] else "")
    )
    unit = "present findings flagged" if multi else "images whose true class is in the set"
    lines = [
        "",
        "## Conformal prediction sets",
        "",
        f"Target coverage {c['target_coverage']:.2f} (alpha {t['alpha']:g}); {how}; thresholds from "
        f"split `{t['split']}` ({t['n']} images). Coverage = {unit}; 95% Clopper-Pearson intervals. "
        "The guarantee assumes calibration and deployment data are exchangeable (same site, device, "
        "population).",
        "",
        f"- Coverage: {fmt(c['coverage'])}",
        f"- Mean set size: {_num(c['mean_set_size'])}; singletons: {_num(c['singleton_rate'])}; "
        f"empty sets: {_num(c.get('empty_rate'))}",
        "- Set sizes: " + ", ".join(f"{k}: {v}" for k, v in c["set_sizes"].items()),
        "",
    ]
    rows = [[k, str(v["n"]), fmt(v["coverage"])] for k, v in c["per_class"].items()]
    lines += _table(["finding" if multi else "class", "n", "coverage"], rows)
    if c.get("worst_class"):
        lines += ["", f"Worst-covered: {c['worst_class']}."]
    return lines + _conformal_caveats(t, list(c["per_class"]))


def _conformal_caveats(t: dict[str, Any], classes: list[str]) -> list[str]:
    """Cross-fitted thresholds and pooled rare findings, each said once."""
    lines = []
    if t.get("cross_fitted"):
        lines += ["", f"The calibrator was fitted on split `{t['split']}` too: the thresholds come from "
                  f"{t['cross_fitted']}-fold cross-fitted probabilities (an approximate guarantee; a "
                  "`calib` split makes it exact)."]
    if t.get("pooled"):
        names = ", ".join(classes[j] for j in t["pooled"] if j < len(classes))
        lines += ["", f"Too few calibration positives for a threshold of their own, so they share one "
                  f"over their pooled positives (the guarantee holds for them together): {names}."]
    return lines


def _selective(sel: dict[str, Any]) -> list[str]:
    """AURC and referral rates."""
    refer = ", ".join(f"error <= {k}: refer {v:.1%}" for k, v in sel["refer"].items())
    return [
        "",
        "## Selective prediction",
        "",
        f"Risk-coverage over {sel['n_decisions']} decisions ranked by {sel['confidence']}: AURC "
        f"{sel['aurc']:.4f} (optimal for these errors {sel['aurc_optimal']:.4f}; error at full "
        f"coverage {sel['error_rate']:.3f}).",
        "",
        f"Refer to a person to reach a target error rate: {refer}.",
    ]


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _retrieval(ret: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Retrieval",
        "",
        f"{ret['n_images']} images, {ret['n_texts']} distinct texts. {ret.get('note', '')}.",
        "",
    ]
    return lines + _table(
        ["direction", "R@1", "R@5", "R@10", "median rank"],
        [
            [p, *(fmt(ret[f"{p}_R@{k}"]) for k in (1, 5, 10)), fmt(ret[f"{p}_median_rank"], 1)]
            for p in ("i2t", "t2i")
        ],
    )


def _leakage(leak: dict[str, Any], ret: dict[str, Any]) -> list[str]:
    """Retrieval with and without the label words in the texts (`evaluation.leakage`)."""
    classes = ", ".join(
        f"{c} ({f:.0%}: {', '.join(leak.get('words', {}).get(c, []))})"
        for c, f in leak["leaking_classes"].items()
    )
    m, acc = leak["retrieval"], leak["label_accuracy"]
    lines = [
        "",
        "## Label words in the texts",
        "",
        f"The texts name their own label: {classes}. Retrieval repeated with those words masked "
        f"({leak['n_masked_rows']} texts changed). {leak.get('note', '')}",
        "",
    ]
    return lines + _table(
        ["texts", "i2t R@1", "t2i R@1", "label accuracy (top-1 text's label)"],
        [
            ["as written", fmt(ret["i2t_R@1"]), fmt(ret["t2i_R@1"]), fmt(acc["texts"])],
            ["label words masked", fmt(m["i2t_R@1"]), fmt(m["t2i_R@1"]), fmt(acc["masked"])],
        ],
    )


def _geometry(g: GeometryReport) -> list[str]:
    """What the fit policy does to the split's annotated findings (cut off, too small)."""
    t = g.total
    lines = [
        "",
        "## Input geometry",
        "",
        f"Fit **{g.policy}** at {g.size} px: {t.n_images} images ({t.n_non_square} non-square), "
        f"{t.n_findings} annotated findings; a finding is mostly cut below "
        f"{g.cut_fraction:.0%} visible and too small below {g.min_pixels:g} px at the input.",
        "",
    ]
    lines += _table(*g.table())
    if g.examples:
        lines += ["", "Most affected:", ""]
        lines += [
            f"- row {e.row} `{e.image}` {e.label} {[round(v) for v in e.box]} ({e.source}): "
            f"{e.outcome.replace('_', ' ')}, {e.visible:.0%} visible, {e.side:.1f} px"
            for e in g.examples[:5]
        ]
    if g.n_unmeasured:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(g.n_problems.items()))
        lines += ["", f"Not measured: {g.n_unmeasured} ({kinds})."]
    advice = g.advice()
    return lines + ["", f"- Warning: {advice}" if advice else "Every annotated finding is visible."]


def _forgetting(f: dict[str, Any]) -> list[str]:
    lines = ["", "## Forgetting (weight-space interpolation)", ""]
    return lines + _table(
        ["alpha", f"target {f['metric']}", f"reference {f['metric']}"],
        [
            [f"{a:.2f}", fmt(x), fmt(y)]
            for a, x, y in zip(f["alphas"], f["target"], f["reference"], strict=True)
        ],
    )


_VERSION_LABELS = {
    "intact": "intact",
    "removed": "region removed",
    "only_region": "only the region",
}


def _shortcut(s: ShortcutResult) -> list[str]:
    """Accuracy and true-class confidence intact / region removed / only the region, the verdict."""
    st = s.settings
    skipped = ", ".join(f"{k} {v}" for k, v in s.skipped.items()) or "none"
    cover = (
        f"; the dilated regions cover {100 * s.region_fraction:.1f}% of an image on average"
        if s.region_fraction is not None
        else ""
    )
    lines = ["", "## Shortcut check (annotated region removed)", ""]
    lines += [
        f"**{s.verdict.replace('_', ' ')}**: {describe(s)}",
        "",
        f"{s.n_used} of {s.n_rows} rows of the split classified three times ({s.n_embedded} "
        f"image embeddings); skipped: {skipped}. Region dilated by {st['dilation']} px and filled "
        f"by `{st['fill']}`; outside it, for 'only the region': `{st['outside']}`{cover}. "
        f"Rule: flagged when accuracy without the region keeps >= {st['threshold']:g} of the "
        f"intact accuracy above chance ({s.chance:.3f} = 1/{len(s.classes)}).",
    ]
    lines += [f"- Skipped: {n}" for n in s.notes]
    if s.overall is None:
        return lines
    cells = {"all": s.overall, **s.per_class}
    rows = []
    for name, cell in cells.items():
        retained = "-" if cell["retained"] is None else f"{cell['retained']:.2f}"
        flag = {True: "uses context", False: "-", None: "undetermined"}[cell["uses_context"]]
        rows.append(
            [name, str(cell["n"])]
            + [fmt(cell[v]["accuracy"]) for v in VERSIONS]
            + [retained, flag]
        )
    lines += [""] + _table(
        ["class", "n", *(f"accuracy {_VERSION_LABELS[v]}" for v in VERSIONS), "retained", "flag"],
        rows,
    )
    lines += ["", "Mean probability of the true class:", ""]
    return lines + _table(
        ["class", *(_VERSION_LABELS[v] for v in VERSIONS), "drop (intact - removed)"],
        [
            [name, *(fmt(cell[v]["confidence"]) for v in VERSIONS), fmt(cell["confidence_drop"])]
            for name, cell in cells.items()
        ],
    )


def _base_rate_note(cal: dict[str, Any], multi: bool) -> list[str]:
    """Warn when miscalibration is a base-rate offset that temperature scaling cannot remove.

    Dividing logits by T rescales them around 0 but never shifts them: with a positive/negated
    prompt pair centred near p = 0.5 and findings present in only a few percent of images, the
    mean probability stays far above the positive rate at every T (seen on covid-cxr).
    """
    if not multi:  # single-label over/under-confidence is what a temperature does fix
        return []
    final = cal["after"] or cal["before"]
    mean_p, observed = final.get("mean_confidence"), final.get("observed_rate")
    if mean_p is None or observed is None or not abs(mean_p - observed) > 0.10:  # also NaN
        return []
    return [
        "",
        f"- Warning: mean predicted probability {mean_p:.3f} vs positive rate {observed:.3f}. "
        "Temperature scaling rescales logits but cannot shift them, so an offset this large "
        "survives it; treat these probabilities as scores (use AUROC/AP, or pick decision "
        "thresholds on validation data) until the model is recalibrated with a bias term.",
    ]
