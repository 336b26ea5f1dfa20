"""Assemble audit.json: every number with its interval, the thresholds, the verdict, flip examples.

Intervals are written as {"value": v, "ci95": [low, high]} (`Estimate.to_dict`), or with
"reason" when undefined. The flip examples carry what the dashboard needs to show an image with
its saliency under both framings: image paths, the two framings' prompts for the target class and
for each decision, and the scores under both.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from domainclip.audit.analysis import MISSING
from domainclip.audit.data import AuditRows
from domainclip.audit.gate import Check
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import AuditSpec
from domainclip.datasets.manifest import Manifest, ManifestRow


def row_number(row: ManifestRow, position: int) -> int:
    """The manifest row number; in-memory rows have none, so their 1-based position stands in
    (as in `PairedDataset`), keeping scores.csv's `row` a unique key per image."""
    return row.row or position + 1


def _image_ref(manifest: Manifest, row: ManifestRow, position: int) -> dict[str, Any]:
    return {
        "row": row_number(row, position),
        "image": row.image,
        "path": str(manifest.image_path(row)),
        "label": list(row.label),
        "group": row.group,
    }


def flip_examples(
    main, framing: str, reference: str, rows: Sequence[ManifestRow], manifest: Manifest, limit: int
) -> list[dict[str, Any]]:
    """The flipped images of `framing` vs `reference`, largest |target-score shift| first."""
    t = main.table
    k, r = t.k(framing), t.k(reference)
    dec = t.decisions
    flipped = np.flatnonzero(dec[k] != dec[r])
    shift = t.scores[k] - t.scores[r]
    order = flipped[np.argsort(-np.abs(shift[flipped]), kind="stable")][:limit]
    out = []
    for i in order:
        target = t.classes[t.target[i]]

        def side(fk: int, name: str, i: int = i, target: str = target) -> dict[str, Any]:
            decision = t.classes[dec[fk, i]]
            return {
                "framing": name,
                "decision": decision,
                "decision_prob": float(t.probs[fk, i, dec[fk, i]]),
                "target_prob": float(t.scores[fk, i]),
                "raw_similarity": float(t.raw[fk, i]),
                "correct": bool(t.correct[fk, i]),
                "prompt_target": main.prompts[name][target],
                "prompt_decision": main.prompts[name][decision],
            }

        out.append(
            {
                **_image_ref(manifest, rows[i], int(i)),
                "target": target,
                "shift": float(shift[i]),
                "reference": side(r, reference),
                "framed": side(k, framing),
            }
        )
    return out


def _framing_summary(spec: AuditSpec, main) -> dict[str, Any]:
    out = {}
    for f in spec.framings:
        cal = main.calibration[f.name]
        out[f.name] = {
            "template": f.template.text,
            "expect": f.expect,
            "gated": f.gated,
            "is_reference": f.name == spec.reference,
            "prompts": main.prompts[f.name],
            **{k: e.to_dict() for k, e in cal.items()},
        }
    return out


def _negation(spec: AuditSpec, main) -> dict[str, Any]:
    """For `expect: lower` framings: does the negated wording lower the target-class score?"""
    out = {}
    for f in spec.framings:
        if f.expect != "lower":
            continue
        cell = main.comparisons[f.name].overall
        e = cell.mean_shift
        lowers = e.high is not None and e.high < 0
        out[f.name] = {
            "mean_shift": e.to_dict(),
            "lowers_score": lowers,
            "note": (
                "the score drops under negation (as it should)"
                if lowers
                else "the negated wording does not lower the score significantly: the model may "
                "ignore negation"
            ),
        }
    return out


def _model_section(spec: AuditSpec, audit, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": info,
        "framings": _framing_summary(spec, audit),
        "comparisons": {name: c.to_dict() for name, c in audit.comparisons.items()},
        "negation": _negation(spec, audit),
        "subgroup_calibration": audit.subgroup_calibration,
    }


def build_audit_json(
    *,
    spec: AuditSpec,
    spec_used: AuditSpec,
    main,
    model_info: dict[str, Any],
    manifest: Manifest,
    split: str | None,
    selection: AuditRows,
    rows: Sequence[ManifestRow],
    failures: dict[str, str],
    n_unreadable: int,
    checks: list[Check],
    gate: dict[str, Any],
    base=None,
    base_info: dict[str, Any] | None = None,
    base_checks: list[Check] | None = None,
    comparison: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit.json document (see the module docstring and docs/DESIGN.md)."""
    t = main.table
    counts = {c: int(np.sum(t.target == i)) for i, c in enumerate(t.classes)}
    st = spec_used.statistics
    data: dict[str, Any] = {
        "schema": "domainclip.audit/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "spec": {**spec.to_dict(), "source": spec.source},
        "data": {
            "manifest": str(manifest.path) if manifest.path else None,
            "split": split,
            "n_images": t.n,
            "n_per_class": counts,
            "subgroups": {
                col: dict(Counter(r.meta.get(col, "").strip() or MISSING for r in rows))
                for col in spec_used.subgroups
                if col not in selection.subgroups_absent
            },
            "skipped": {
                "findings_absent": selection.findings_absent,
                "rows_without_spec_label": selection.unused_labels,
                "subgroups_absent": selection.subgroups_absent,
                "unreadable_images": n_unreadable,
                "unreadable_examples": dict(list(failures.items())[:5]),
            },
        },
        "method": {
            "score": "temperature-scaled softmax probability of the image's target class over the "
            "spec's findings worded by one framing; raw similarity = dot product of image and "
            "prompt features",
            "mean_shift_interval": "symmetric bootstrap-t, paired (images resampled)",
            "median_shift_interval": "percentile bootstrap, paired",
            "flip_rate_interval": "Wilson score",
            "significance": "bootstrap-t p-value, Holm-adjusted over all gated mean-shift checks",
            "ece": f"equal-width bins ({st.ece_bins}), top-1 confidence vs correctness",
            "n_bootstrap": st.n_bootstrap,
            "seed": st.seed,
            "confidence": 0.95,
            "alpha": spec_used.thresholds.alpha,
        },
        **_model_section(spec_used, main, model_info),
        "gate": {
            "thresholds": asdict(spec_used.thresholds),
            "min_cell_images": st.min_cell_images,
            **gate,
            "checks": [c.to_dict() for c in checks],
        },
        "flip_examples": {
            f.name: flip_examples(
                main, f.name, spec_used.reference, rows, manifest, st.max_flip_examples
            )
            for f in spec_used.framings
            if f.name != spec_used.reference
        },
        "files": {},
        "timing": {k: round(v, 3) for k, v in main.timings.items()},
    }
    if base is not None:
        from domainclip.audit.gate import verdict

        data["compare"] = {
            "base": {
                **_model_section(spec_used, base, base_info or {}),
                "gate": {
                    **verdict(base_checks or []),
                    "checks": [c.to_dict() for c in base_checks or []],
                },
            },
            "sensitivity_change": comparison,
        }
    return strict_json(data)


def strict_json(obj: Any) -> Any:
    """`obj` with every NaN / infinity replaced by None: audit.json must be strict JSON (CI tools
    and the dashboard parse it), and a number that is not finite carries no information anyway."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def score_rows(t: ScoreTable, rows: Sequence[ManifestRow]) -> list[dict[str, Any]]:
    """One record per (image, framing) for scores.csv."""
    out = []
    for i, row in enumerate(rows):
        for k, name in enumerate(t.framings):
            out.append(
                {
                    "row": row_number(row, i),
                    "image": row.image,
                    "label": "|".join(row.label),
                    "target": t.classes[t.target[i]],
                    "framing": name,
                    "target_prob": f"{t.scores[k, i]:.6f}",
                    "raw_similarity": f"{t.raw[k, i]:.6f}",
                    "decision": t.classes[t.decisions[k, i]],
                    "decision_prob": f"{t.confidence[k, i]:.6f}",
                    "correct": int(t.correct[k, i]),
                }
            )
    return out
