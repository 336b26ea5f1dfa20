"""`manifest_stats`: class balance per split, text length distribution, groups per split."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from domainclip.datasets.manifest import SPLITS, UNASSIGNED, Manifest, read_manifest
from domainclip.datasets.textquality import TextQuality, text_quality

NO_LABEL = "(no label)"


def _distribution(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0, "min": 0, "median": 0.0, "p95": 0.0, "max": 0, "mean": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": len(values),
        "min": int(a.min()),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
        "mean": round(float(a.mean()), 2),
    }


def _split_order(splits: set[str]) -> list[str]:
    return [s for s in (*SPLITS, UNASSIGNED) if s in splits]


def manifest_stats(
    manifest: Manifest | str | os.PathLike[str], names: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """Summary statistics of a manifest's usable rows (`names`: class -> synonyms, a prompt
    set's `names:`, for the label-leakage check).

    Returns a JSON-serialisable dict::

        n_rows, n_skipped          usable rows / rows the reader skipped
        splits                     {split: rows}
        class_balance              {split: {label: rows}}  (multi-label rows count once per label;
                                   rows without a label under "(no label)")
        label_cardinality          {split: mean number of labels per row}
        text_words                 {"all" | split: {n, min, median, p95, max, mean}} (whitespace words)
        groups                     {split: distinct groups}
        rows_per_group             {n, min, median, p95, max, mean} over all groups
        text_quality               `textquality.TextQuality.to_dict()` (placeholder, repeated,
                                   shared-across-classes texts, label leakage per class)
    """
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    by_split: dict[str, list] = defaultdict(list)
    for r in m.rows:
        by_split[r.split].append(r)
    order = _split_order(set(by_split))
    balance: dict[str, dict[str, int]] = {}
    for s in order:
        c = Counter(lab for r in by_split[s] for lab in (r.label or [NO_LABEL]))
        balance[s] = dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
    words = {s: [len(r.text.split()) for r in by_split[s]] for s in order}
    group_sizes = Counter(r.group for r in m.rows)
    return {
        "path": str(m.path) if m.path else None,
        "n_rows": len(m.rows),
        "n_skipped": m.n_skipped,
        "splits": {s: len(by_split[s]) for s in order},
        "class_balance": balance,
        "label_cardinality": {
            s: round(sum(len(r.label) for r in by_split[s]) / len(by_split[s]), 3) for s in order
        },
        "text_words": {
            "all": _distribution([n for s in order for n in words[s]]),
            **{s: _distribution(words[s]) for s in order},
        },
        "groups": {s: len({r.group for r in by_split[s]}) for s in order},
        "rows_per_group": _distribution(list(group_sizes.values())),
        "text_quality": text_quality(m.rows, names).to_dict(),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable tables for `manifest_stats` output."""
    splits = list(stats["splits"])
    lines = [
        f"manifest: {stats.get('path')}",
        f"rows: {stats['n_rows']} usable ({stats['n_skipped']} skipped while reading)",
        "",
        "class balance (rows per label; a multi-label row counts for each label):",
    ]
    labels = sorted({lab for s in splits for lab in stats["class_balance"][s]})
    width = max([len(x) for x in labels] + [len("label"), 5])
    header = f"  {'label':<{width}}" + "".join(f"{s:>12}" for s in splits)
    lines += [header, "  " + "-" * (len(header) - 2)]
    for lab in labels:
        cells = []
        for s in splits:
            n, total = stats["class_balance"][s].get(lab, 0), stats["splits"][s]
            cells.append(f"{n:>5} ({100 * n / total:4.1f}%)" if total else f"{0:>12}")
        lines.append(f"  {lab:<{width}}" + "".join(f"{c:>12}" for c in cells))
    lines.append(f"  {'rows':<{width}}" + "".join(f"{stats['splits'][s]:>12}" for s in splits))
    lines.append(f"  {'groups':<{width}}" + "".join(f"{stats['groups'][s]:>12}" for s in splits))
    lines += ["", "text length (words):"]
    for key, d in stats["text_words"].items():
        lines.append(
            f"  {key:<11} n={d['n']:<6} min={d['min']:<4} median={d['median']:<6g} "
            f"p95={d['p95']:<7g} max={d['max']}"
        )
    g = stats["rows_per_group"]
    lines += [
        "",
        f"rows per group: min={g['min']} median={g['median']:g} p95={g['p95']:g} max={g['max']} "
        f"({g['n']} groups)",
    ]
    if "text_quality" in stats:
        lines += ["", *TextQuality.from_dict(stats["text_quality"]).format()]
    return "\n".join(lines)
