"""A zero-shot task: which classes, their prompt embeddings, and the targets of manifest rows."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from domainclip.datasets.manifest import Manifest, ManifestRow
from domainclip.models import Backbone
from domainclip.scoring.prompts import PromptError, PromptSet
from domainclip.scoring.zeroshot import class_embeddings, multilabel_logits, zero_shot_logits

log = logging.getLogger(__name__)


def resolve_classes(
    ps: PromptSet, manifest: Manifest, classes: Sequence[str] | None = None
) -> list[str]:
    """The classes to score: `classes` if given, else the prompt set's, else the manifest's labels.

    Raises:
        PromptError: a class the prompt set does not cover, or a class that no row of the manifest
            (any split) carries, listing them all.
    """
    in_data = Counter(lab for r in manifest.rows for lab in r.label)
    if classes:
        chosen = list(dict.fromkeys(classes))
    elif ps.classes:
        chosen = ps.class_names
    else:
        chosen = sorted(set(in_data) - set(ps.negative_labels))
    missing_prompts = ps.uncovered(chosen)
    if missing_prompts:
        raise PromptError(
            f"prompt set {ps.source} (version {ps.version}) has no prompts for "
            f"{', '.join(map(repr, missing_prompts))}; it covers {', '.join(map(repr, ps.class_names))}"
        )
    absent = [c for c in chosen if in_data[c] == 0]
    if absent:
        raise PromptError(
            f"class(es) {', '.join(map(repr, absent))} of prompt set {ps.source} occur in no row of "
            f"{manifest.path} (its labels: {', '.join(sorted(in_data)) or 'none'}). Use a prompt set "
            "written for this data, or choose the classes to score with --classes a,b,c"
        )
    if not chosen:
        raise PromptError(f"{manifest.path}: no labels to build a zero-shot task from")
    return chosen


def align_with_head(bb: Backbone, classes: Sequence[str]) -> list[str]:
    """Classes in the column order of the backbone's classifier head (Tip-Adapter, linear probe).

    A head returns logits in its own class order, whatever order the prompt set lists; scoring
    them under another order would silently mislabel every column.

    Raises:
        PromptError: the head scores a different set of classes than the evaluation asks for.
    """
    head_classes = getattr(bb.head, "classes", None) if bb.head is not None else None
    if head_classes is None:
        return list(classes)
    if set(head_classes) != set(classes):
        raise PromptError(
            f"{bb.spec}: its classifier head scores {', '.join(head_classes)}, but the evaluation "
            f"asks for {', '.join(classes)}; pass --classes {','.join(head_classes)} (or a prompt "
            "set covering exactly those classes)"
        )
    return list(head_classes)


@dataclass
class Targets:
    """Evaluation targets of embedded rows.

    keep: int [M] positions (into the embedded rows) that are evaluated.
    y: int [M] class indices (single-label) or {0,1} [M, C] (multi-label).
    skipped: reason -> count of rows left out; notes: human-readable remarks for the report.
    uncovered: label -> count of labels no prompt covers.
    """

    keep: np.ndarray
    y: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    uncovered: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def build_targets(
    rows: Sequence[ManifestRow],
    classes: Sequence[str],
    ps: PromptSet,
    skip_uncovered: bool = False,
) -> Targets:
    """Targets of `rows` for `classes`.

    Single-label: a row's target is its first label (NEU-DET-style primary class); rows without a
    label are skipped and counted; rows whose label is not among `classes` raise PromptError listing
    every such label with its count, unless `skip_uncovered` (then they are skipped and counted).
    Multi-label: a row's targets are its labels among `classes`; other labels (except the prompt
    set's negative_labels) are listed in `uncovered` and ignored; rows without labels are skipped.
    """
    index = {c: i for i, c in enumerate(classes)}
    skipped: Counter[str] = Counter()
    uncovered: Counter[str] = Counter()
    keep: list[int] = []
    ys: list[Any] = []
    n_multi = 0
    for i, r in enumerate(rows):
        if not r.label:
            skipped["no label"] += 1
            continue
        if ps.multi_label:
            for lab in r.label:
                if lab not in index and lab not in ps.negative_labels:
                    uncovered[lab] += 1
            vec = np.zeros(len(classes), dtype=np.int64)
            vec[[index[lab] for lab in r.label if lab in index]] = 1
            keep.append(i)
            ys.append(vec)
            continue
        if r.label[0] not in index:
            uncovered[r.label[0]] += 1
            skipped["label not among the classes"] += 1
            continue
        n_multi += len(r.label) > 1
        keep.append(i)
        ys.append(index[r.label[0]])
    notes = []
    if uncovered and not ps.multi_label and not skip_uncovered:
        listed = ", ".join(f"{k!r} ({v} rows)" for k, v in uncovered.most_common())
        raise PromptError(
            f"labels no prompt covers: {listed}; scored classes: {', '.join(classes)}. Add them "
            "to the prompt set, or pass --skip-uncovered to leave those rows out (counted)"
        )
    if uncovered:
        listed = ", ".join(f"{k} ({v})" for k, v in uncovered.most_common())
        notes.append(
            f"labels no prompt covers ({'rows skipped' if not ps.multi_label else 'ignored'}): {listed}"
        )
        log.warning(notes[-1])
    if n_multi:
        notes.append(
            f"{n_multi} rows carry several labels; single-label scoring uses the first one"
        )
    if skipped:
        notes.append("rows left out: " + ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    if not keep:
        raise PromptError(f"no row of this split has a label among {', '.join(classes)}")
    y = np.stack(ys) if ps.multi_label else np.asarray(ys, dtype=np.int64)
    return Targets(np.asarray(keep, dtype=np.int64), y, dict(skipped), dict(uncovered), notes)


@dataclass
class ZeroShotTask:
    """Class weights of a prompt set for a backbone.

    W: [C, D] positive/class weights; W_neg: [C, D] negative weights (multi-label) or None.
    """

    ps: PromptSet
    classes: list[str]
    W: torch.Tensor
    W_neg: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        bb: Backbone,
        ps: PromptSet,
        classes: Sequence[str],
        cache: Mapping[str, torch.Tensor] | None = None,
    ) -> ZeroShotTask:
        """Embed the prompts (each distinct text once; texts in `cache` are reused)."""
        W = class_embeddings(bb, ps.class_texts(classes), cache)
        W_neg = class_embeddings(bb, ps.negative_texts(classes), cache) if ps.multi_label else None
        return cls(ps, list(classes), W, W_neg)

    def prompt_texts(self) -> list[str]:
        texts = [t for ts in self.ps.class_texts(self.classes).values() for t in ts]
        if self.ps.multi_label:
            texts += [t for ts in self.ps.negative_texts(self.classes).values() for t in ts]
        return texts

    def logits(self, bb: Backbone, image_feats: torch.Tensor) -> torch.Tensor:
        """[N, C]: class logits (single-label) or binary logits pos - neg (multi-label)."""
        if self.W_neg is None:
            return zero_shot_logits(bb, image_feats, self.W)
        return multilabel_logits(bb, image_feats, self.W, self.W_neg)


def probabilities(logits: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> np.ndarray:
    """Softmax (single-label) or sigmoid (multi-label) of logits / T, as float64 numpy [N, C]."""
    z = logits.double() / temperature
    p = torch.sigmoid(z) if multi_label else torch.softmax(z, dim=-1)
    return p.numpy()
