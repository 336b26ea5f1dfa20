"""Calibrators and conformal sets on a real run: ECE before/after each kind, coverage and set size.

    .venv/bin/python benchmarks/calibration.py RUN [--alpha 0.1] [--resplits 200] [--json OUT]

The run's validation and test splits are embedded once (its own transform and class task, heads
included). Each calibrator kind (temperature, bias, isotonic, auto) is fitted on val only; ECE
(equal-width, 15 bins; multi-label over all image-finding pairs), NLL and macro AUROC are measured
on test, before (raw logits) and after. Conformal sets at `alpha` (LAC and APS for single-label;
per-finding FNR control for multi-label) are computed through the auto calibrator on the manifest's
`calib` split when it has one, else on val from 5-fold cross-fitted probabilities (as `evaluate`
does), and measured on test: coverage, mean set size, singleton rate. Validity check: over `resplits` random
halvings of pooled val+test into calibration/evaluation (the auto calibrator as fitted on val;
for the calibration half of the check this reuses val images, so read it as the sets' behaviour,
not a fully held-out estimate), the mean and spread of coverage, and the worst class's mean
coverage under the class-conditional (Mondrian) option. Prints a table; the numbers go to the
README's calibration section whatever they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domainclip.calibrators import KINDS, fit_calibrator, nll_from_logits, select_calibrator  # noqa: E402
from domainclip.calibrators.conformal import fit_conformal  # noqa: E402
from domainclip.datasets.manifest import read_manifest  # noqa: E402
from domainclip.deploy.provenance import load_task  # noqa: E402
from domainclip.evaluation.calibration import expected_calibration_error  # noqa: E402
from domainclip.evaluation.uncertainty import (  # noqa: E402
    conformal_split,
    held_out_probabilities,
    split_scores,
)


def _probs(logits: torch.Tensor, multi: bool) -> np.ndarray:
    z = logits.double()
    return (torch.sigmoid(z) if multi else torch.softmax(z, -1)).numpy()


def _auroc(p: np.ndarray, y: np.ndarray, multi: bool) -> float:
    onehot = y if multi else np.eye(p.shape[1])[y]
    cols = [j for j in range(p.shape[1]) if 0 < onehot[:, j].sum() < len(onehot)]
    return float(np.mean([roc_auc_score(onehot[:, j], p[:, j]) for j in cols]))


def _coverage(thr, p: np.ndarray, y: np.ndarray, multi: bool) -> dict:
    sets = thr.predict_sets(p)
    if multi:
        cov = float((sets & (y == 1)).sum() / max(1, (y == 1).sum()))
    else:
        cov = float(sets[np.arange(len(y)), y].mean())
    size = sets.sum(1)
    return {"coverage": cov, "mean_set_size": float(size.mean()), "singleton_rate": float((size == 1).mean())}


def _resplits(p: np.ndarray, y: np.ndarray, multi: bool, alpha: float, n: int, method: str) -> dict:
    rng = np.random.default_rng(0)
    covs, worst = [], []
    for _ in range(n):
        perm = rng.permutation(len(y))
        a, b = perm[: len(y) // 2], perm[len(y) // 2 :]
        thr = fit_conformal(p[a], y[a], alpha, method, multi_label=multi)
        covs.append(_coverage(thr, p[b], y[b], multi)["coverage"])
        if not multi:
            mthr = fit_conformal(p[a], y[a], alpha, method, mondrian=True)
            sets = mthr.predict_sets(p[b])
            per = [sets[y[b] == c, c].mean() for c in range(p.shape[1]) if (y[b] == c).any()]
            worst.append(float(min(per)))
    out = {"mean": float(np.mean(covs)), "p5": float(np.percentile(covs, 5)), "p95": float(np.percentile(covs, 95))}
    if worst:
        out["mondrian_worst_class_mean"] = float(np.mean(worst))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--resplits", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    t = load_task(args.run)
    multi = t.ps.multi_label
    man = read_manifest(t.run.setting("data.manifest"))
    val, test = (split_scores(t.resolved, man, t.task, s, True) for s in ("val", "test"))
    yv, yt = torch.as_tensor(val.y), test.y
    p_raw = _probs(test.logits, multi)
    res = {"run": args.run, "multi_label": multi, "n_val": val.n, "n_test": test.n,
           "raw": {"ece": expected_calibration_error(p_raw, yt, 15, multi_label=multi),
                   "nll": nll_from_logits(test.logits.double(), torch.as_tensor(yt), multi),
                   "auroc": _auroc(p_raw, yt, multi)}, "kinds": {}}
    for kind in (*KINDS, "auto"):
        if kind == "auto":
            cal, sel = select_calibrator(val.logits, yv, multi)
            res["auto_reason"] = sel["reason"]
        else:
            cal = fit_calibrator(kind, val.logits, yv, multi)
        p = cal.probabilities(test.logits, multi)
        res["kinds"][kind] = {"ece": expected_calibration_error(p, yt, 15, multi_label=multi),
                              "nll": nll_from_logits(cal.calibrate(test.logits.double()), torch.as_tensor(yt), multi),
                              "auroc": _auroc(p, yt, multi), "describe": cal.describe()}
    cal.fit = {"split": "val"}
    calib_split = conformal_split(man, "val")
    calib = val if calib_split == "val" else split_scores(t.resolved, man, t.task, calib_split, True)
    pv, folds = held_out_probabilities(cal, calib, multi)  # out-of-fold when the calibrator saw it
    pt = cal.probabilities(test.logits, multi)
    res["conformal_split"], res["cross_fitted"] = calib_split, folds
    methods = ("crc_fnr",) if multi else ("lac", "aps")
    res["conformal"] = {}
    for m in methods:
        thr = fit_conformal(pv, calib.y, args.alpha, "lac" if multi else m, multi_label=multi, split=calib_split)
        pooled_p, pooled_y = np.concatenate([pv, pt]), np.concatenate([calib.y, yt])
        res["conformal"][m] = {**_coverage(thr, pt, yt, multi),
                               "resplits": _resplits(pooled_p, pooled_y, multi, args.alpha, args.resplits,
                                                     "lac" if multi else m)}
    _print(res, args.alpha)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


def _print(res: dict, alpha: float) -> None:
    raw = res["raw"]
    print(f"{res['run']}: val {res['n_val']}, test {res['n_test']} images; test ECE raw {raw['ece']:.4f}, "
          f"NLL {raw['nll']:.4f}, macro AUROC {raw['auroc']:.4f}")
    for kind, r in res["kinds"].items():
        print(f"  {kind:<12} ECE {r['ece']:.4f}  NLL {r['nll']:.4f}  AUROC {r['auroc']:.4f}  ({r['describe']})")
    print(f"  auto: {res['auto_reason']}")
    how = f"{res['cross_fitted']}-fold cross-fitted" if res["cross_fitted"] else "as calibrated"
    print(f"  conformal thresholds from split {res['conformal_split']} ({how})")
    for m, c in res["conformal"].items():
        rs = c["resplits"]
        print(f"  conformal {m} alpha {alpha}: test coverage {c['coverage']:.4f}, mean set size "
              f"{c['mean_set_size']:.2f}, singletons {c['singleton_rate']:.2f}; re-splits mean {rs['mean']:.4f} "
              f"[{rs['p5']:.4f}, {rs['p95']:.4f}]"
              + (f", Mondrian worst class {rs['mondrian_worst_class_mean']:.4f}" if "mondrian_worst_class_mean" in rs else ""))


if __name__ == "__main__":
    main()
