"""Training health: results that look fine but are not, made loud.

  collapse   at a validation, the model predicts (almost) uniformly: the val loss equals the value
             uniform predictions give (`uniform_loss`), or the image or text embeddings of the val
             rows all point the same way (`feature_spread` ~ 0). Typical cause: a learning rate far
             too high without warmup or clipping (lr 1.0 collapses within a few steps). A collapsed
             validation is never saved as `best`.
  truncation texts longer than the text tower's context are cut during fine-tuning; counted per
             split with the rule `data validate` uses (`datasets.validate.token_overflow`).

Each finding is a `RunWarning` {kind, step, message}: logged, written to metrics.jsonl as a
"warning" event and listed in result.json (`warnings`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# |val loss - uniform value| below this fraction of the uniform value = uniform predictions.
COLLAPSE_REL_TOL = 1e-3
# Total variance of L2-normalised embeddings (in [0, 1]) below this = every row the same vector.
MIN_SPREAD = 1e-4


@dataclass
class RunWarning:
    """One finding about a run: kind ("collapse", "text_truncated"), step (-1: before training)."""

    kind: str
    step: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_spread(feats: torch.Tensor) -> float:
    """Total variance of the L2-normalised rows of feats [N, D]: 1 - |mean|^2, in [0, 1].

    0 = every row points the same way (collapsed embeddings); random directions give ~1.
    NaN when there are fewer than 2 rows (nothing to compare).
    """
    if len(feats) < 2:
        return float("nan")
    f = F.normalize(feats.float(), dim=-1)
    return float((1 - f.mean(0).pow(2).sum()).clamp(min=0))


def uniform_loss(n: int, batch_size: int) -> float:
    """The validation loss of uniform predictions on n val rows in chunks of batch_size.

    The val loss (`finetune.validate`) is the mean over chunks of >= 2 rows of a soft-target
    cross-entropy; with equal logits each chunk's cross-entropy is ln(chunk size), whatever the
    targets. NaN when no chunk has 2 rows.
    """
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    logs = [math.log(s) for s in sizes if s >= 2]
    return sum(logs) / len(logs) if logs else float("nan")


def collapse_warning(
    metrics: dict[str, float],
    step: int,
    batch_size: int,
    lr: float,
    initial: dict[str, float] | None = None,
) -> RunWarning | None:
    """A "collapse" warning when training made the validation `metrics` show uniform predictions.

    metrics: `validation_metrics` output (loss, n, image_spread, text_spread); initial: the same at
    step 0 when it was evaluated. Step 0 (nothing trained yet) is never a collapse, and an embedding
    spread that was already ~0 before training (a random tower) is not one either.
    """
    if step == 0:
        return None
    loss, n = metrics.get("loss", float("nan")), int(metrics.get("n", 0))
    uniform = uniform_loss(n, batch_size)
    signs = []
    if math.isfinite(loss) and math.isfinite(uniform) and abs(loss - uniform) <= COLLAPSE_REL_TOL * uniform:
        signs.append(f"val loss {loss:.4f} equals the uniform-prediction value {uniform:.4f}")
    for what in ("image", "text"):
        spread = metrics.get(f"{what}_spread", float("nan"))
        before = (initial or {}).get(f"{what}_spread", float("nan"))
        if math.isfinite(before) and before < 10 * MIN_SPREAD:
            continue  # as flat before training: not something training did
        if math.isfinite(spread) and spread < MIN_SPREAD:
            signs.append(f"the {what} embeddings of the val rows are all the same (spread {spread:.1e})")
    if not signs:
        return None
    return RunWarning(
        "collapse",
        step,
        f"step {step}: the model collapsed to uniform predictions ({'; '.join(signs)}). This step is "
        f"not saved as best. Lower the learning rate (optim.lr={lr:g}), keep a warmup "
        "(optim.warmup_steps) and gradient clipping (optim.grad_clip).",
    )


def record(warning: RunWarning, warnings: list[dict[str, Any]], runlog) -> None:
    """Log `warning`, append it to `warnings` (result.json's list) and to metrics.jsonl."""
    log.warning("%s", warning.message)
    warnings.append(warning.to_dict())
    runlog.event("warning", max(warning.step, 0), warning=warning.kind, message=warning.message)


def truncation(splits, tokenizer) -> tuple[dict[str, int], list[RunWarning]]:
    """Rows per split ("train", "val") whose text the tokenizer truncates, and a warning per split.

    splits: `finetune.data.Splits`; tokenizer: the backbone's (`count_tokens`, `context_length`).
    """
    from domainclip.datasets.validate import truncated_rows

    counts: dict[str, int] = {}
    warnings: list[RunWarning] = []
    for name, split in (("train", splits.train), ("val", splits.val)):
        rows = truncated_rows(split.texts, tokenizer)
        counts[name] = len(rows)
        if rows:
            warnings.append(
                RunWarning(
                    "text_truncated",
                    -1,
                    f"{len(rows)} of {len(split)} {name} texts are longer than the text tower's "
                    f"{tokenizer.context_length} tokens and are truncated (the model never sees their "
                    "end). `domainclip data validate MANIFEST --backbone ...` lists them; shorten them "
                    "or put the findings first.",
                )
            )
    for w in warnings:
        log.warning("%s", w.message)
    return counts, warnings
