"""Tip-Adapter (Zhang et al. 2022): a key-value cache of training features added to zero-shot logits.

    logits = s * f @ W.T + alpha * exp(-beta * (1 - f @ K.T)) @ V

f: [N, D] normalised image features, W: [C, D] class-prompt features, K: [M, D] cached training
features (keys), V: [M, C] their one-hot labels, s = exp(logit_scale). Training-free Tip-Adapter
keeps K fixed; Tip-Adapter-F fine-tunes K. Because our cache is built from the very features it
is then trained on (no augmented views), training masks each sample's own key (leave-one-out);
otherwise every training sample would find itself in the cache and the loss would be trivial.
alpha and beta are chosen on the validation split.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from domainclip.errors import ConfigError
from domainclip.finetune.config import TipAdapterSettings

log = logging.getLogger(__name__)


class TipAdapterHead(nn.Module):
    """Classifier head `(image_feats [N,D], class_text_feats [C,D]) -> logits [N,C]`.

    Args:
        keys: [M, D] cache keys; values: [M, C] one-hot labels; classes: C names in column order.
        alpha, beta: cache weight and sharpness; scale: exp(logit_scale) of the zero-shot term.
    """

    kind = "tip_adapter"  # what reports call this head (evaluation titles, metric names)

    scaled_part = "Tip-Adapter cache weight alpha"  # what `scaled` scales (reported with the curve)

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        classes: Sequence[str],
        alpha: float,
        beta: float,
        scale: float,
    ) -> None:
        super().__init__()
        self.keys = nn.Parameter(
            keys.float().clone(), requires_grad=False
        )  # Tip-Adapter-F trains them
        self.register_buffer("values", values.float().clone())
        self.classes = list(classes)
        self.alpha, self.beta, self.scale = float(alpha), float(beta), float(scale)
        self.keys_trained = False  # Tip-Adapter-F sets it

    @property
    def n_learned(self) -> int:
        """Numbers learned by gradient descent: the keys for Tip-Adapter-F, none training-free."""
        return self.keys.numel() if self.keys_trained else 0

    @contextlib.contextmanager
    def scaled(self, alpha: float) -> Iterator[None]:
        """Weight-space interpolation (WiSE-FT) towards the base model: cache weight x alpha inside.

        alpha = 0 leaves the zero-shot term alone (what the base model computes), 1 the fitted head.
        """
        cache_weight = self.alpha
        self.alpha = cache_weight * alpha
        try:
            yield
        finally:
            self.alpha = cache_weight

    def cache_logits(
        self, f: torch.Tensor, exclude_self: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[N, D] -> [N, C] cache term (without alpha). exclude_self: [N] key index to mask, or None."""
        affinity = f @ self.keys.T  # [N, M]
        a = torch.exp(-self.beta * (1.0 - affinity))
        if exclude_self is not None:
            a = a.scatter(1, exclude_self[:, None], 0.0)
        return a @ self.values

    def forward(self, image_feats: torch.Tensor, class_text_feats: torch.Tensor) -> torch.Tensor:
        if class_text_feats.shape[0] != len(self.classes):
            raise ConfigError(
                f"Tip-Adapter cache covers {len(self.classes)} classes ({', '.join(self.classes)}); got "
                f"{class_text_feats.shape[0]} class prompts: pass them in head.classes order"
            )
        f = image_feats.to(self.keys)
        zero_shot = self.scale * f @ class_text_feats.to(f).T
        return zero_shot + self.alpha * self.cache_logits(f)


def select_shots(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of at most `shots` rows per class (all when shots == 0), seeded; rows with -1 dropped."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in labels[labels >= 0].unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        out.append(idx[:shots] if shots else idx)
    return torch.cat(out).sort().values


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def _search(head: TipAdapterHead, W, vf, vy, settings: TipAdapterSettings) -> float:
    """Set head.alpha/beta to the best grid point on the val split (accuracy, ties broken by the
    val cross-entropy); return that accuracy."""
    best = (-1.0, float("-inf"), head.alpha, head.beta)
    with torch.no_grad():
        zs = head.scale * vf @ W.T
        for beta in settings.beta:
            head.beta = beta
            cache = head.cache_logits(vf)
            for alpha in settings.alpha:
                logits = zs + alpha * cache
                key = (
                    _accuracy(logits, vy),
                    -float(F.cross_entropy(logits, vy)) if len(vy) else 0.0,
                )
                if key > best[:2]:
                    best = (*key, alpha, beta)
    head.alpha, head.beta = best[2], best[3]
    return best[0]


def fit_tip_adapter(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    val_feats: torch.Tensor,
    val_y: torch.Tensor,
    class_feats: torch.Tensor,
    classes: Sequence[str],
    scale: float,
    settings: TipAdapterSettings,
    seed: int,
) -> tuple[TipAdapterHead, dict[str, float]]:
    """Build the cache, optionally fine-tune its keys (Tip-Adapter-F), pick alpha/beta on val.

    Args:
        train_feats, val_feats: [N, D] normalised image features; *_y: LongTensor[N] (-1 = no label).
        class_feats: [C, D] normalised class-prompt features.

    Returns:
        (head, {"val_acc", "alpha", "beta", "cache_size"}).
    """
    idx = select_shots(train_y, settings.shots, seed)
    if len(idx) == 0:
        raise ConfigError("Tip-Adapter: no labelled training rows to build the cache from")
    keys, y = train_feats[idx].float(), train_y[idx]
    values = F.one_hot(y, len(classes)).float()
    head = TipAdapterHead(keys, values, classes, settings.alpha[0], settings.beta[0], scale)
    vkeep = val_y >= 0
    vf, vy = val_feats[vkeep].float(), val_y[vkeep]
    W = class_feats.float()
    if settings.train_keys:
        _train_keys(head, keys, y, W, settings, seed)
    acc = _search(head, W, vf, vy, settings)
    log.info(
        "Tip-Adapter%s: val accuracy %.4f (alpha %g, beta %g, %d keys)",
        "-F" if settings.train_keys else "",
        acc,
        head.alpha,
        head.beta,
        len(keys),
    )
    return head, {
        "val_acc": acc,
        "alpha": head.alpha,
        "beta": head.beta,
        "cache_size": float(len(keys)),
    }


def _train_keys(head: TipAdapterHead, feats, y, W, settings: TipAdapterSettings, seed: int) -> None:
    """Tip-Adapter-F: AdamW on the keys, leave-one-out CE over the cached training features."""
    # Middle of the grids while training (the paper trains at its initial alpha/beta, then searches).
    head.alpha = sorted(settings.alpha)[len(settings.alpha) // 2]
    head.beta = sorted(settings.beta)[len(settings.beta) // 2]
    head.keys.requires_grad_(True)
    opt = torch.optim.AdamW([head.keys], lr=settings.lr, eps=1e-4)
    g = torch.Generator().manual_seed(seed)
    bs = 256
    steps = settings.epochs * math.ceil(len(feats) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    zs = head.scale * feats @ W.T
    for _ in range(settings.epochs):
        order = torch.randperm(len(feats), generator=g)
        for start in range(0, len(feats), bs):
            b = order[start : start + bs]
            logits = zs[b] + head.alpha * head.cache_logits(feats[b], exclude_self=b)
            loss = F.cross_entropy(logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.keys.requires_grad_(False)
    head.keys_trained = True
