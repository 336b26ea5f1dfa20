"""Short Markdown report of an evaluation result (the dict written to metrics.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def render_markdown(r: dict[str, Any]) -> str:
    """Render the evaluation result; every metric with its 95% bootstrap interval."""
    cls, cal, data, t = r["classification"], r["calibration"], r["data"], r["temperature"]
    multi = r["prompts"]["mode"] == "multi_label"
    lines = [
        f"# Evaluation: {r['name']}",
        "",
        f"- Model: `{r['model']['spec']}`"
        + (
            f" (run `{r['model']['run']}`, checkpoint {r['model']['checkpoint']})"
            if r["model"]["run"]
            else ""
        ),
        f"- Data: `{data['manifest']}`, split **{data['split']}**: {data['n_evaluated']} images evaluated"
        f" ({data['n_unreadable']} unreadable)",
        f"- Prompts: `{r['prompts']['source']}` version {r['prompts']['version']} ({r['prompts']['mode']}, "
        f"{r['prompts']['n_prompts']} prompts)",
        f"- Temperature: {t['value']:.4g} ({t['source']})",
        "- Intervals: 95% stratified percentile bootstrap "
        f"({cls['bootstrap']['n_boot']} replicates, seed {cls['bootstrap']['seed']})",
    ]
    lines += [f"- Note: {n}" for n in data["notes"]] + (
        [f"- Warning: {t['warning']}"] if t.get("warning") else []
    )
    lines += ["", "## Zero-shot classification", ""]
    keys = (
        ["macro_auroc", "macro_ap", "macro_f1", "subset_accuracy"]
        if multi
        else ["accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_ap"]
    )
    lines += _table(["metric", "value [95% CI]"], [[k, fmt(cls[k])] for k in keys])
    lines += ["", "Per class (one-vs-rest):" if not multi else "Per finding:", ""]
    lines += _table(
        ["class", "positives", "AUROC", "AP"],
        [[c, str(v["n_pos"]), fmt(v["auroc"]), fmt(v["ap"])] for c, v in cls["per_class"].items()],
    )
    lines += ["", "## Calibration", ""]
    cal_rows = []
    for k, label in (
        ("ece", "ECE (equal width)"),
        ("ece_mass", "ECE (equal mass)"),
        ("mce", "MCE"),
        ("brier", "Brier"),
        ("nll", "NLL"),
    ):
        cal_rows.append(
            [label, fmt(cal["before"][k]), fmt(cal["after"][k]) if cal["after"] else "-"]
        )
    lines += _table(["metric", "before (T=1)", f"after (T={t['value']:.3g})"], cal_rows)
    lines += [
        "",
        f"{cal['before']['n_bins']} bins; "
        + (
            "multi-label: each (image, finding) probability is judged."
            if multi
            else "top-1 confidence."
        ),
    ]
    lines += _base_rate_note(cal, multi)
    for col, groups in cal.get("subgroups", {}).items():
        lines += ["", f"ECE by `{col}`:", ""]
        observed = (
            ["positive rate", "mean probability"] if multi else ["accuracy", "mean confidence"]
        )
        lines += _table(
            ["value", "n", "ECE", *observed],
            [
                [
                    g,
                    str(v["n"]),
                    fmt(v["ece"]),
                    f"{v['accuracy']:.3f}",
                    f"{v['mean_confidence']:.3f}",
                ]
                for g, v in groups.items()
            ],
        )
    ret = r["retrieval"]
    lines += [
        "",
        "## Retrieval",
        "",
        f"{ret['n_images']} images, {ret['n_texts']} distinct texts. {ret['note']}.",
        "",
    ]
    lines += _table(
        ["direction", "R@1", "R@5", "R@10", "median rank"],
        [
            [p, *(fmt(ret[f"{p}_R@{k}"]) for k in (1, 5, 10)), fmt(ret[f"{p}_median_rank"], 1)]
            for p in ("i2t", "t2i")
        ],
    )
    if r.get("forgetting"):
        f = r["forgetting"]
        lines += ["", "## Forgetting (weight-space interpolation)", ""]
        lines += _table(
            ["alpha", f"target {f['metric']}", f"reference {f['metric']}"],
            [
                [f"{a:.2f}", fmt(x), fmt(y)]
                for a, x, y in zip(f["alphas"], f["target"], f["reference"], strict=True)
            ],
        )
    pngs = [p for k, p in r.get("outputs", {}).items() if str(p).endswith(".png")]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in pngs]
    return "\n".join(lines) + "\n"


def _base_rate_note(cal: dict, multi: bool) -> list[str]:
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
