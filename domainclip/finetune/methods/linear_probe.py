"""Linear probe: scikit-learn logistic regression on frozen, L2-normalised image features.

The fitted classifier becomes `Backbone.head`, so `bb.class_logits(feats, class_text_feats)`
returns its decision function and every evaluator treats it like any other model. It is stored
as plain tensors (safetensors) plus its class list (JSON), never pickled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from domainclip.errors import ConfigError
from domainclip.finetune.config import LinearProbeSettings

log = logging.getLogger(__name__)


class LinearProbeHead(nn.Module):
    """logits = f @ W.T + b over the probe's own classes (class-prompt features are not used).

    Args:
        weight: [C, D]; bias: [C]; classes: the C class names in row order.
    """

    kind = "linear_probe"  # what reports call this head (evaluation titles, metric names)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, classes: Sequence[str]) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().clone())
        self.register_buffer("bias", bias.float().clone())
        self.classes = list(classes)

    @property
    def n_learned(self) -> int:
        return self.weight.numel() + self.bias.numel()

    def forward(self, image_feats: torch.Tensor, class_text_feats: torch.Tensor) -> torch.Tensor:
        """image_feats [N, D], class_text_feats [C, D] (only its C is checked) -> logits [N, C]."""
        if class_text_feats.shape[0] != len(self.classes):
            raise ConfigError(
                f"the linear probe was fitted on {len(self.classes)} classes ({', '.join(self.classes)}); "
                f"got {class_text_feats.shape[0]} class prompts: pass them in head.classes order"
            )
        return image_feats.to(self.weight) @ self.weight.T + self.bias


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def fit_linear_probe(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    val_feats: torch.Tensor,
    val_y: torch.Tensor,
    classes: Sequence[str],
    settings: LinearProbeSettings,
    seed: int,
) -> tuple[LinearProbeHead, dict[str, float]]:
    """Fit one logistic regression per C in `settings.C`, keep the best on the val split.

    Args:
        train_feats, val_feats: [N, D] normalised image features; train_y, val_y: LongTensor[N]
            class indices (rows with -1 are dropped).
        classes: all class names (the head covers all of them, also classes absent from train).

    Returns:
        (head, {"C": chosen C, "val_acc": its val accuracy}).
    """
    from sklearn.linear_model import LogisticRegression

    keep, vkeep = train_y >= 0, val_y >= 0
    x, y = _as_numpy(train_feats[keep]), train_y[keep].numpy()
    vx, vy = _as_numpy(val_feats[vkeep]), val_y[vkeep].numpy()
    present = np.unique(y)
    if len(present) < 2:
        raise ConfigError(
            f"the linear probe needs at least 2 classes in the training split, found {len(present)}"
        )
    from sklearn.metrics import log_loss

    best = None
    for c in settings.C:
        clf = LogisticRegression(C=c, max_iter=settings.max_iter, random_state=seed)
        clf.fit(x, y)
        acc = float((clf.predict(vx) == vy).mean()) if len(vy) else float("nan")
        # Accuracy ties are common on small val splits; the val log-loss breaks them.
        # Val rows of classes absent from train cannot enter log_loss (no probability column);
        # they already count as errors in the accuracy.
        seen = np.isin(vy, clf.classes_)
        nll = (
            float(log_loss(vy[seen], clf.predict_proba(vx[seen]), labels=clf.classes_))
            if seen.any()
            else 0.0
        )
        log.info("linear probe C=%g: val accuracy %.4f, log-loss %.4f", c, acc, nll)
        if best is None or (acc, -nll) > (best[0], -best[3]):
            best = (acc, c, clf, nll)
    acc, c, clf, _ = best
    weight = torch.full((len(classes), x.shape[1]), 0.0)
    bias = torch.full((len(classes),), -1e4)  # classes never seen in training are never predicted
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # binary: sklearn keeps one row (for class 1)
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    for row, cls_idx in enumerate(clf.classes_):
        weight[cls_idx] = torch.from_numpy(coef[row]).float()
        bias[cls_idx] = float(intercept[row])
    return LinearProbeHead(weight, bias, classes), {"C": float(c), "val_acc": acc}
