"""Split conformal prediction sets from calibrated probabilities, computed directly.

Single-label (probabilities p [N, C], labels y [N]); a nonconformity score s(x, c) per class:

* ``lac``  (least ambiguous set-valued classifier): s = 1 - p_c.
* ``aps``  (adaptive prediction sets, non-randomised): the total probability of the classes
  ranked at or above c (classes sorted by p, descending; ties by class index), computed as
  s = -(the probability of the classes ranked strictly below c), i.e. that mass minus 1. Same
  sets, but a confident model no longer breaks it: in floating point the mass at or above the
  second class of p = [1 - 1e-12, 1e-12, ...] rounds to 1.0, every class tied with the true one and
  the sets held all 6 NEU-DET classes; the tail mass keeps them apart. (Thresholds stored before
  this change, on the "mass at or above" scale, are read by subtracting 1; records say ``score:
  tail``.)
* ``raps`` (regularised APS): aps + lam * max(0, rank_c - k_reg), rank 1-based; penalises long
  sets (defaults lam = 0.01, k_reg = 1).

APS/RAPS are non-randomised by default: the true class's own mass counts fully, so the score of
an image whose true class is ranked last is exactly 1 for every such image; these ties make the
sets conservative (coverage above 1 - alpha, by several points when probabilities are flat).
``randomized=True`` counts u * p_c with u ~ U(0, 1) per image (Romano et al., 2020), which makes
coverage tight; the draws come from a generator seeded with ``seed``, so the same batch gets the
same sets, but an image's set depends on its position in the batch. LAC has no such ties.

The threshold is the conformal quantile q = the ceil((n + 1)(1 - alpha))-th smallest calibration
score s(x_i, y_i) (infinite, i.e. every class, when that rank exceeds n); the set is
{c : s(x, c) <= q}. Guarantee (exchangeable calibration and test data):
P(y in set) >= 1 - alpha, and < 1 - alpha + 1/(n + 1) without ties. ``mondrian=True`` computes
one threshold per true class from that class's calibration images (class-conditional coverage
>= 1 - alpha for every class; small classes get wide sets).

Multi-label (p [N, C], labels [N, C] in {0, 1}): per finding c, conformal risk control of the
false-negative rate (Angelopoulos et al., 2022). Over the n_c calibration images with the finding,
the threshold is the largest lambda with (misses(lambda) + 1) / (n_c + 1) <= alpha, where
misses(lambda) = #{positives with p < lambda}; the finding is predicted when p >= lambda.
Guarantee: E[FNR_c] <= alpha for each finding, i.e. a present finding is flagged with
probability >= 1 - alpha (marginal over positives). False positives are not controlled.
A finding with fewer than ceil(1 / alpha) - 1 calibration positives (9 at alpha 0.1) can get no
threshold above 0 ((0 + 1) / (n + 1) > alpha): it would be flagged on every image, which
over-covers (covid-cxr: 0.93 at target 0.90) and says nothing. Such rare findings share one
threshold computed over their pooled positives (``pooled``: their indices), so the guarantee holds
for each common finding and for the rare ones together (approximately when one image carries
several rare findings); when even the pool is too small they stay at 0.

Why direct computation rather than a library: every method above is one score function and one
order statistic (about 40 lines, checked in tests against hand computations); MAPIE and crepes
wrap estimators/p-values around the same quantile and would add a dependency for no extra
guarantee; TorchCP pulls in heavy dependencies.

Thresholds are JSON (`ConformalThresholds.to_dict`; infinite thresholds are stored as null) and go
into the calibration record (key ``conformal``) next to the calibrator whose probabilities they
were computed on. `stored_thresholds(record)` is the one reader (evaluate, predict on PyTorch and
on ONNX Runtime); it also reads the early deploy form ``{"conformal": {"threshold": q}}`` (no
method: LAC, a class is in the set when p >= 1 - q; alpha unknown, NaN). Numpy only, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from domainclip.calibrators.record import CalibrationError

METHODS = ("lac", "aps", "raps")
MULTI_METHOD = "crc_fnr"
CONFORMAL_KEY = "conformal"  # where the calibration record stores the thresholds
TAIL_SCORE = "tail"  # APS/RAPS scores as minus the mass ranked below (see module doc)


def _rank_order(probs: np.ndarray) -> np.ndarray:
    """[N, C] -> [N, C] class indices by descending probability (ties: lower index first)."""
    return np.argsort(-probs, axis=1, kind="stable")


def class_scores(
    probs: np.ndarray,
    method: str,
    lam: float = 0.01,
    k_reg: int = 1,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """Nonconformity score of every class: float [N, C] (see module doc).

    u: float [N] in [0, 1] for randomised APS/RAPS (the class's own mass counts u * p_c);
    None counts it fully (non-randomised).
    """
    probs = np.asarray(probs, dtype=float)
    if method == "lac":
        return 1.0 - probs
    if method not in ("aps", "raps"):
        raise CalibrationError(f"unknown conformal method {method!r}; choose one of {', '.join(METHODS)}")
    order = _rank_order(probs)
    sorted_p = np.take_along_axis(probs, order, axis=1)
    # mass strictly below each rank, summed from the smallest up (exact for tiny tails)
    at_or_below = np.cumsum(sorted_p[:, ::-1], axis=1)[:, ::-1]
    below = np.concatenate([at_or_below[:, 1:], np.zeros((len(probs), 1))], axis=1)
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, -below, axis=1)
    if u is not None:
        scores = scores - (1.0 - np.asarray(u, dtype=float)[:, None]) * probs
    if method == "raps":
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, probs.shape[1] + 1)[None, :].repeat(len(probs), 0), axis=1)
        scores = scores + lam * np.maximum(0, ranks - k_reg)
    return scores


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha))-th smallest of `scores` [n] (inf when that exceeds n)."""
    n = len(scores)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if n == 0 or k > n:
        return math.inf
    return float(np.sort(scores)[k - 1])


def crc_fnr_threshold(pos_probs: np.ndarray, alpha: float) -> float:
    """Largest lambda with (#{p < lambda} + 1) / (n + 1) <= alpha over positives' probabilities [n].

    0.0 (flag every image) when no lambda qualifies; the smallest candidate set is the observed
    probabilities (between them the miss count is constant, so the largest qualifying lambda is one).
    """
    p = np.sort(np.asarray(pos_probs, dtype=float))
    n = len(p)
    best = 0.0
    for lam in np.unique(p):
        misses = int(np.searchsorted(p, lam, side="left"))  # #{p < lam}
        if (misses + 1) / (n + 1) <= alpha:
            best = float(lam)
    return best


def min_positives(alpha: float) -> int:
    """The fewest calibration positives with which FNR control can give a threshold above 0."""
    return math.ceil(1 / alpha - 1 - 1e-9)


def fnr_thresholds(pos: list[np.ndarray], alpha: float) -> tuple[list[float], list[int]]:
    """Per-finding FNR thresholds from each finding's positives' probabilities, and the findings
    too rare for their own threshold that share one over their pooled positives (module doc)."""
    rare = [j for j, p in enumerate(pos) if 0 < len(p) < min_positives(alpha)]
    per = [crc_fnr_threshold(p, alpha) for p in pos]
    if len(rare) > 1:
        shared = crc_fnr_threshold(np.concatenate([pos[j] for j in rare]), alpha)
        for j in rare:
            per[j] = shared
    return per, rare if len(rare) > 1 else []


@dataclass(frozen=True)
class ConformalThresholds:
    """Fitted thresholds: one (``threshold``) or one per class (``per_class``, Mondrian / multi-label).

    method: lac | aps | raps | crc_fnr; n: calibration images; n_per_class: calibration images
    per class (single-label) or positives per finding (multi-label); split: the calibration split;
    cross_fitted: folds of the out-of-fold calibrated probabilities the thresholds were computed on
    (0: the calibrator never saw the calibration split, the guarantee is exact); pooled:
    multi-label findings too rare for their own threshold that share one (module doc).
    """

    method: str
    alpha: float
    n: int
    mondrian: bool = False
    threshold: float | None = None
    per_class: list[float] = field(default_factory=list)
    n_per_class: list[int] = field(default_factory=list)
    lam: float = 0.01
    k_reg: int = 1
    split: str = "val"
    randomized: bool = False
    seed: int = 0
    cross_fitted: int = 0
    pooled: list[int] = field(default_factory=list)

    @property
    def multi_label(self) -> bool:
        return self.method == MULTI_METHOD

    def predict_sets(self, probs: np.ndarray) -> np.ndarray:
        """bool [N, C]: class / finding c is in image n's set."""
        probs = np.asarray(probs, dtype=float)
        if self.multi_label:
            return probs >= np.asarray(self.per_class)[None, :]
        u = _uniforms(len(probs), self.seed) if self.randomized else None
        scores = class_scores(probs, self.method, self.lam, self.k_reg, u)
        q = np.asarray(self.per_class)[None, :] if self.mondrian else self.threshold
        return scores <= q

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {
            "method": self.method,
            "alpha": self.alpha,
            "n": self.n,
            "mondrian": self.mondrian,
            "threshold": clean(self.threshold),
            "per_class": [clean(v) for v in self.per_class],
            "n_per_class": list(self.n_per_class),
            "lam": self.lam,
            "k_reg": self.k_reg,
            "split": self.split,
            "randomized": self.randomized,
            "seed": self.seed,
            "cross_fitted": self.cross_fitted,
            "pooled": list(self.pooled),
            **({"score": TAIL_SCORE} if self.method in ("aps", "raps") else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalThresholds:
        def num(v: Any) -> float:
            return math.inf if v is None else float(v)

        shift = 1.0 if d["method"] in ("aps", "raps") and d.get("score") != TAIL_SCORE else 0.0
        per_class = [num(v) - shift for v in d.get("per_class", [])]
        threshold = None if d.get("mondrian") or d["method"] == MULTI_METHOD else num(d.get("threshold")) - shift
        return cls(d["method"], float(d["alpha"]), int(d["n"]), bool(d.get("mondrian", False)),
                   threshold, per_class, [int(v) for v in d.get("n_per_class", [])],
                   float(d.get("lam", 0.01)), int(d.get("k_reg", 1)), str(d.get("split", "val")),
                   bool(d.get("randomized", False)), int(d.get("seed", 0)), int(d.get("cross_fitted", 0)),
                   [int(j) for j in d.get("pooled", [])])


def fit_conformal(
    probs: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    method: str = "aps",
    mondrian: bool = False,
    multi_label: bool = False,
    **options: Any,
) -> ConformalThresholds:
    """Thresholds from calibration probabilities [n, C] and labels ([n] or [n, C]).

    options: lam, k_reg (RAPS), split and cross_fitted (recorded), randomized and seed (APS/RAPS).
    Multi-label always uses crc_fnr per finding.
    """
    if not 0 < alpha < 1:
        raise CalibrationError(f"conformal alpha must be in (0, 1), got {alpha}")
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    lam, k_reg, split = float(options.get("lam", 0.01)), int(options.get("k_reg", 1)), str(options.get("split", "val"))
    randomized = bool(options.get("randomized", False)) and method in ("aps", "raps") and not multi_label
    seed = int(options.get("seed", 0))
    extra = {"randomized": randomized, "seed": seed, "cross_fitted": int(options.get("cross_fitted", 0))}
    c = probs.shape[1]
    if multi_label:
        pos = [probs[labels[:, j] == 1, j] for j in range(c)]
        per, pooled = fnr_thresholds(pos, alpha)
        return ConformalThresholds(MULTI_METHOD, alpha, len(probs), True, None, per, [len(p) for p in pos],
                                   lam, k_reg, split, cross_fitted=extra["cross_fitted"], pooled=pooled)
    u = _uniforms(len(probs), seed + 1) if randomized else None  # other draws than at prediction
    true_scores = class_scores(probs, method, lam, k_reg, u)[np.arange(len(labels)), labels]
    counts = np.bincount(labels, minlength=c).tolist()
    if mondrian:
        per = [conformal_quantile(true_scores[labels == j], alpha) for j in range(c)]
        return ConformalThresholds(
            method, alpha, len(probs), True, None, per, counts, lam, k_reg, split, **extra
        )
    q = conformal_quantile(true_scores, alpha)
    return ConformalThresholds(method, alpha, len(probs), False, q, [], counts, lam, k_reg, split, **extra)


def stored_thresholds(record: dict[str, Any] | None, source: str = "calibration record") -> ConformalThresholds | None:
    """The conformal thresholds stored in a calibration record (see module doc), or None.

    Raises:
        CalibrationError: the ``conformal`` entry is there but unreadable (names `source`).
    """
    d = (record or {}).get(CONFORMAL_KEY)
    if d is None:
        return None
    hint = "recompute it with `domainclip evaluate RUN --conformal ALPHA`"
    if not isinstance(d, dict):
        raise CalibrationError(f"{source}: {CONFORMAL_KEY!r} must be a JSON object; {hint}")
    if "method" not in d:  # the early deploy form {"threshold": q}: LAC
        if not isinstance(d.get("threshold"), (int, float)) or isinstance(d.get("threshold"), bool):
            raise CalibrationError(f"{source}: {CONFORMAL_KEY!r} has no method and no numeric threshold; {hint}")
        d = {"method": "lac", "alpha": d.get("alpha", math.nan), "n": d.get("n", 0), "threshold": d["threshold"]}
    if d["method"] not in (*METHODS, MULTI_METHOD):
        raise CalibrationError(f"{source}: unknown conformal method {d['method']!r}; {hint}")
    try:
        thr = ConformalThresholds.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{source}: {CONFORMAL_KEY!r} is malformed ({exc!r}); {hint}") from exc
    if (thr.mondrian or thr.multi_label) and not thr.per_class:
        raise CalibrationError(f"{source}: {CONFORMAL_KEY!r} needs per-class thresholds; {hint}")
    return thr


def _uniforms(n: int, seed: int) -> np.ndarray:
    """n draws of U(0, 1) from a generator seeded with `seed` (randomised APS/RAPS)."""
    return np.random.default_rng(seed).uniform(size=n)
