"""Classification metrics against scikit-learn, undefined AUROC, and bootstrap CI coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from domainclip.evaluation.bootstrap import bootstrap_metrics, strata_of, stratified_indices
from domainclip.evaluation.metrics import (
    average_precision,
    balanced_accuracy,
    confusion_matrix,
    macro_f1,
    multi_label_report,
    roc_auc,
    roc_auc_columns,
    single_label_report,
)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_ap_equal_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    for n in (7, 50, 301):
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        # rounded scores produce many ties, which is where implementations differ
        for s in (rng.random(n), np.round(rng.random(n), 1)):
            assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
            assert average_precision(y, s) == pytest.approx(
                skm.average_precision_score(y, s), abs=1e-12
            )
            # and on a bootstrap resample (duplicated items are ties too)
            idx = rng.integers(0, n, n)
            if 0 < y[idx].sum() < n:
                assert average_precision(y[idx], s[idx]) == pytest.approx(
                    skm.average_precision_score(y[idx], s[idx]), abs=1e-12
                )


def test_column_auroc_matches_per_column():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (80, 4)).astype(bool)
    y[:, 3] = False  # undefined column
    s = np.round(rng.random((80, 4)), 2)
    got = roc_auc_columns(y, s)
    for k in range(3):
        assert got[k] == pytest.approx(skm.roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
    assert got[3] is None


def test_f1_balanced_accuracy_confusion_equal_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(30):
        yt, yp = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
        yt[yt == 4] = 0  # a class that is only ever predicted
        assert macro_f1(yt, yp, 5) == pytest.approx(
            skm.f1_score(yt, yp, average="macro", zero_division=0), abs=1e-12
        )
        with pytest.warns(UserWarning):  # sklearn warns about the predicted-only class
            ref = skm.balanced_accuracy_score(yt, yp)
        assert balanced_accuracy(yt, yp, 5) == pytest.approx(ref, abs=1e-12)
        assert (confusion_matrix(yt, yp, 5) == skm.confusion_matrix(yt, yp, labels=range(5))).all()


def test_single_label_report_point_values_and_ci_contain_them():
    rng = np.random.default_rng(1)
    n, c = 240, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rep = single_label_report(p, y, ["a", "b", "c", "d"], n_boot=300, seed=0)
    assert rep["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert rep["macro_auroc"]["value"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12
    )
    for k, name in enumerate("abcd"):
        pc = rep["per_class"][name]
        assert pc["auroc"]["value"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
        assert pc["ap"]["value"] == pytest.approx(skm.average_precision_score(y == k, p[:, k]))
        lo, hi = pc["auroc"]["ci95"]
        assert lo <= pc["auroc"]["value"] <= hi and hi - lo < 0.3
    lo, hi = rep["accuracy"]["ci95"]
    assert lo < rep["accuracy"]["value"] < hi


def test_class_with_one_label_value_gets_undefined_auroc_with_reason():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)  # class 2 never occurs in this split
    p = rng.dirichlet(np.ones(3), 50)
    rep = single_label_report(p, y, ["x", "y", "z"], n_boot=50)
    z = rep["per_class"]["z"]
    assert z["auroc"]["value"] is None and z["auroc"]["ci95"] is None
    assert "no positive images" in z["auroc"]["reason"]
    assert z["ap"]["value"] is None
    # the macro average uses the defined classes only
    assert rep["macro_auroc"]["value"] == pytest.approx(
        np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in (0, 1)])
    )
    # a split with one class only: every AUROC undefined, no crash, accuracy still defined
    one = single_label_report(p[:10], np.zeros(10, dtype=int), ["x", "y", "z"], n_boot=20)
    assert "all 10 images are positive" in one["per_class"]["x"]["auroc"]["reason"]
    assert one["macro_auroc"]["value"] is None and one["macro_auroc"]["reason"]
    assert one["accuracy"]["value"] is not None


def test_multi_label_report_per_finding_equals_sklearn():
    rng = np.random.default_rng(4)
    y = (rng.random((120, 3)) < [0.5, 0.2, 0.0]).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random((120, 3)), 0, 1)
    rep = multi_label_report(p, y, ["f1", "f2", "f3"], n_boot=100)
    for k in range(2):
        got = rep["per_class"][f"f{k + 1}"]
        assert got["auroc"]["value"] == pytest.approx(skm.roc_auc_score(y[:, k], p[:, k]))
        assert got["ap"]["value"] == pytest.approx(skm.average_precision_score(y[:, k], p[:, k]))
        assert got["f1"]["value"] == pytest.approx(skm.f1_score(y[:, k], p[:, k] >= 0.5))
    assert rep["per_class"]["f3"]["auroc"]["value"] is None
    assert rep["subset_accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))


def test_stratified_resampling_keeps_class_counts():
    strata = strata_of([["a"], ["b"], ["a"], ["a", "b"], ["b", "a"], ["c"]])
    assert strata.tolist() == [0, 1, 0, 2, 2, 3]
    idx = stratified_indices(strata, 200, seed=0)
    counts = np.stack([np.bincount(strata[row], minlength=4) for row in idx])
    assert (counts == np.bincount(strata)).all()
    assert len(np.unique(idx[:, :3])) > 1  # actually resampled


def test_bootstrap_ci_covers_true_accuracy_and_auroc_at_nominal_rate():
    """200 simulated test sets: the 95% intervals must cover the true values ~95% of the time."""
    rng = np.random.default_rng(123)
    n_sims, n_pos, n_neg, d = 200, 60, 90, 1.0
    true_auc = norm.cdf(d / np.sqrt(2))  # binormal model: scores N(d,1) vs N(0,1)
    p_correct = 0.8
    cover_auc = cover_acc = 0
    for s in range(n_sims):
        scores = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
        y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
        correct = rng.random(n_pos + n_neg) < p_correct

        def stat(idx, scores=scores, y=y, correct=correct):
            return {"auc": roc_auc(y[idx], scores[idx]), "acc": float(correct[idx].mean())}

        est = bootstrap_metrics(stat, y.astype(int), n_boot=200, seed=s)
        cover_auc += est["auc"].low <= true_auc <= est["auc"].high
        # accuracy resampled within the same two strata: the true rate is p_correct in both
        cover_acc += est["acc"].low <= p_correct <= est["acc"].high
    print(f"coverage: AUROC {cover_auc / n_sims:.3f}, accuracy {cover_acc / n_sims:.3f}")
    assert 0.88 <= cover_auc / n_sims <= 0.99, cover_auc / n_sims
    assert 0.88 <= cover_acc / n_sims <= 0.99, cover_acc / n_sims
