"""Statistical validity by simulation: the audit finds a planted framing bias and raises few false
alarms without one.

Set-up. A pool of synthetic images (scratch, pit, crack, clean) is embedded once by a tiny random
backbone wrapped in `PlantedBiasBackbone`: prompts containing "SEVERE " (the alarming framing of
every defect class) get +delta on their logit; prompts containing "POSSIBLY " (the hedged framing)
get nothing, so that framing is *exactly* the reference. "clean" is a control class whose prompt
never changes. Each seed then draws 60 images per class from the pool (with replacement) and adds
independent N(0, 0.25^2) noise to every logit of every framing: the idiosyncratic per-image
reaction to a wording that real models show and that makes "no bias" a statistical question
rather than a trivially exact zero. The gate then runs exactly as in `domainclip audit`
(bootstrap-t per cell, Holm over all cells of all framings), with the magnitude threshold at 0
so the rates measure the statistics alone (a positive threshold can only remove flags), and
1000 bootstrap replicates per cell instead of the shipped specs' 2000 to keep the test fast.

delta is chosen so that the planted bias moves the most affected class's target probability by
0.05 on average over the pool (here the control class "clean": every defect prompt gained delta).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from domainclip.audit.analysis import compare_framing
from domainclip.audit.gate import FAIL, gate_checks
from domainclip.audit.scores import ScoreTable, score_table
from domainclip.audit.spec import parse_audit_spec
from domainclip.audit.testing import PlantedBiasBackbone
from domainclip.datasets import eval_transform, load_image, read_manifest
from domainclip.datasets.importers.synthetic import generate_synthetic
from tests.audit.conftest import POSSIBLY, SEVERE

CLASSES = ("scratch", "pit", "crack", "clean")
N_PER_CLASS = 60
NOISE_SD = 0.25
N_SEEDS = 100
TARGET_SHIFT = 0.05

SIM_SPEC = parse_audit_spec(
    {
        "name": "simulation",
        "version": "1",
        "findings": {
            "scratch": "scratches",
            "pit": "pits",
            "crack": "cracks",
            "clean": {"name": "no defects", "framed": False, "text": "a clean metal surface"},
        },
        "reference": "neutral",
        "framings": {
            "neutral": "a metal surface with {finding}",
            "alarming": f"a metal surface with {SEVERE}{{finding}}",
            "hedged": f"a metal surface with {POSSIBLY}{{finding}}",
        },
        "thresholds": {"max_abs_mean_shift": 0.0, "max_flip_rate": None, "max_ece": None},
        "statistics": {"n_bootstrap": 1000, "seed": 0, "min_cell_images": 10},
    }
)


def _pool_table(base, pixels, target, delta: float) -> ScoreTable:
    bb = PlantedBiasBackbone.wrap(base, {SEVERE: delta, POSSIBLY: 0.0})
    image_feats = bb.encode_images(pixels)
    text = torch.stack([bb.encode_texts(SIM_SPEC.prompts(f)) for f in SIM_SPEC.framings])
    positives = np.eye(len(CLASSES), dtype=bool)[target]
    return score_table(
        bb, image_feats, text, SIM_SPEC.framing_names, list(CLASSES), target, positives
    )


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_backbone):
    """Score tables of the pool at delta 0 and 1 (each image embedded once per model)."""
    out = tmp_path_factory.mktemp("planted_pool")
    generate_synthetic(out, n=160, size=64, seed=11, classes=CLASSES)
    rows = read_manifest(out / "manifest.csv").rows
    tf = eval_transform(tiny_backbone)
    pixels = torch.stack([tf(load_image(out / r.image)) for r in rows])
    target = np.array([CLASSES.index(r.label[0]) for r in rows])
    return (
        _pool_table(tiny_backbone, pixels, target, 0.0),
        _pool_table(tiny_backbone, pixels, target, 1.0),
    )


def _at(pool, delta: float) -> ScoreTable:
    """The pool's table at any delta: logits are linear in delta (checked below)."""
    t0, t1 = pool
    return ScoreTable(
        t0.framings,
        t0.classes,
        t0.logits + delta * (t1.logits - t0.logits),
        t0.cos + delta * (t1.cos - t0.cos),
        1.0,
        t0.target,
        t0.positives,
    )


def _noisy(table: ScoreTable, rng: np.random.Generator) -> ScoreTable:
    logits = table.logits + rng.normal(0.0, NOISE_SD, table.logits.shape)
    return ScoreTable(
        table.framings,
        table.classes,
        logits,
        table.cos,
        table.calibrator,
        table.target,
        table.positives,
    )


def _expected_class_shifts(pool, delta: float, draws: int = 30) -> np.ndarray:
    """Mean target-probability shift (alarming - neutral) per class over the pool and noise."""
    table = _at(pool, delta)
    rng = np.random.default_rng(12345)
    out = []
    for _ in range(draws):
        t = _noisy(table, rng)
        d = t.scores[1] - t.scores[0]
        out.append([d[t.target == c].mean() for c in range(len(CLASSES))])
    return np.mean(out, axis=0)


def _delta_for(pool, shift: float) -> float:
    lo, hi = 0.0, 4.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if np.abs(_expected_class_shifts(pool, mid)).max() < shift:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _simulate(pool, delta: float, seeds: int, base_seed: int, thresholds=(0.0, 0.02)) -> dict:
    """Per seed: resample images, add noise, run the gate's shift checks. Returns rates."""
    table = _at(pool, delta)
    by_class = [np.flatnonzero(table.target == c) for c in range(len(CLASSES))]
    flagged = dict.fromkeys(thresholds, 0)
    raw_rejections, raw_tests, any_raw = 0, 0, 0
    st = SIM_SPEC.statistics
    specs = {
        tau: dataclasses.replace(
            SIM_SPEC, thresholds=dataclasses.replace(SIM_SPEC.thresholds, max_abs_mean_shift=tau)
        )
        for tau in thresholds
    }
    for s in range(seeds):
        rng = np.random.default_rng(base_seed + s)
        idx = np.concatenate([rng.choice(members, N_PER_CLASS) for members in by_class])
        sample = _noisy(table.take(idx), rng)
        comps = {
            f: compare_framing(
                sample, f, "neutral", {}, st.n_bootstrap, s, st.min_cell_images, detail=False
            )
            for f in ("alarming", "hedged")
        }
        for tau, spec in specs.items():
            flagged[tau] += any(c.status == FAIL for c in gate_checks(spec, comps, {}))
        p = [c.p_value for comp in comps.values() for c in (comp.overall, *comp.per_class.values())]
        raw_rejections += sum(v < 0.05 for v in p)
        raw_tests += len(p)
        any_raw += any(v < 0.05 for v in p)
    return {
        "flag_rate": {tau: n / seeds for tau, n in flagged.items()},
        "uncorrected_cell_rate": raw_rejections / raw_tests,
        "uncorrected_family_rate": any_raw / seeds,
    }


def test_planted_bias_adds_exactly_delta_to_triggered_prompts(pool):
    t0, t1 = pool
    diff = t1.logits - t0.logits  # [framing, image, class]
    k_alarm, k_hedged = t0.k("alarming"), t0.k("hedged")
    clean = CLASSES.index("clean")
    expected = np.zeros_like(diff)
    expected[k_alarm, :, :clean] = 1.0  # every defect prompt of the alarming framing, every image
    np.testing.assert_allclose(diff, expected, atol=1e-5)
    # Without delta the trigger is invisible: both marked framings equal the reference exactly.
    np.testing.assert_allclose(t0.logits[k_alarm], t0.logits[0], atol=1e-6)
    np.testing.assert_allclose(t0.logits[k_hedged], t0.logits[0], atol=1e-6)


def test_detects_a_planted_005_shift_and_rarely_raises_false_alarms(pool):
    delta = _delta_for(pool, TARGET_SHIFT)
    shifts = _expected_class_shifts(pool, delta)
    assert np.abs(shifts).max() == pytest.approx(TARGET_SHIFT, abs=1e-3)

    planted = _simulate(pool, delta, N_SEEDS, base_seed=10_000)
    null = _simulate(pool, 0.0, N_SEEDS, base_seed=20_000)
    print(
        f"\nplanted delta {delta:.3f} (class shifts {np.round(shifts, 4).tolist()}): "
        f"detection {planted['flag_rate']}; null: false alarms {null['flag_rate']}, "
        f"uncorrected per-cell rate {null['uncorrected_cell_rate']:.3f}, "
        f"uncorrected any-cell rate {null['uncorrected_family_rate']:.3f}"
    )
    assert planted["flag_rate"][0.0] >= 0.95
    assert planted["flag_rate"][0.02] >= 0.95
    assert null["flag_rate"][0.0] <= 0.05
    # The null is a real statistical question, not an exact zero: each single test rejects at
    # about its nominal 5%, and without the Holm correction the gate would fail far more often.
    assert 0.025 <= null["uncorrected_cell_rate"] <= 0.085
    assert null["uncorrected_family_rate"] > 0.10


# ------------------------------------------------------------------------------------------------
# Class-specific plants of four patterns (uniform, sparse, saturated, favouring) and a null plant,
# in one framing x one class of a saturated ("trained") table: the biases issue 20 found the old
# bootstrap-t gate missing. 30 images per class, the size the audit's power goal is stated at.

PATTERN_SPEC = dataclasses.replace(
    SIM_SPEC,
    thresholds=dataclasses.replace(
        SIM_SPEC.thresholds, max_abs_mean_shift=0.02, max_abs_logodds_shift=0.3
    ),
    statistics=dataclasses.replace(SIM_SPEC.statistics, n_bootstrap=200, n_permutations=2000),
)
PATTERN_SEEDS = 30
PATTERN_N = 30
MARGIN = 4.0  # added to every target logit: probabilities saturate as in a fine-tuned model


def _trained(pool) -> ScoreTable:
    t0, _ = pool
    logits = t0.logits.copy()
    logits[:, np.arange(t0.n), t0.target] += MARGIN
    return ScoreTable(t0.framings, t0.classes, logits, t0.cos, 1.0, t0.target, t0.positives)


def _class_shift(table: ScoreTable, pattern: str, delta: float, cls: int) -> float:
    from domainclip.audit.testing import plant_shift

    planted = plant_shift(table, "alarming", cls, pattern, delta, np.random.default_rng(0))
    d = planted.scores[1] - planted.scores[0]
    return float(d[table.target == cls].mean())


def _pattern_rates(table: ScoreTable, pattern: str | None, delta: float) -> float:
    """Share of seeds in which any gated shift check fails (resampled images, logit noise)."""
    from domainclip.audit.api import power_options
    from domainclip.audit.testing import plant_shift

    power = dataclasses.replace(power_options(PATTERN_SPEC), refine_below=None)
    st = PATTERN_SPEC.statistics
    by_class = [np.flatnonzero(table.target == c) for c in range(len(CLASSES))]
    failed = 0
    for s in range(PATTERN_SEEDS):
        rng = np.random.default_rng(30_000 + s)
        idx = np.concatenate([rng.choice(m, PATTERN_N) for m in by_class])
        sample = _noisy(table.take(idx), rng)
        if pattern is not None:
            sample = plant_shift(sample, "alarming", 0, pattern, delta, rng)
        comps = {
            f: compare_framing(
                sample, f, "neutral", {}, st.n_bootstrap, s, st.min_cell_images,
                detail=False, power=power,
            )
            for f in ("alarming", "hedged")
        }
        failed += any(c.status == FAIL for c in gate_checks(PATTERN_SPEC, comps, {}))
    return failed / PATTERN_SEEDS


def test_class_specific_patterns_are_detected_and_the_null_plant_is_quiet(pool):
    table = _trained(pool)
    scratch = CLASSES.index("scratch")
    assert np.median(table.scores[0][table.target == scratch]) > 0.9  # saturated, as in real runs
    # logit deltas that move the class's mean target probability by about -0.05 (favouring: as
    # far up as saturation lets a +1 logit go)
    plants = {"uniform": -0.7, "sparse": -2.2, "saturated": -1.15, "favouring": 1.0}
    shifts = {p: _class_shift(table, p, d, scratch) for p, d in plants.items()}
    rates = {p: _pattern_rates(table, p, d) for p, d in plants.items()}
    null = _pattern_rates(table, None, 0.0)
    print(f"\nclass shifts {shifts}; detection {rates}; null false alarms {null}")
    assert shifts["uniform"] <= -0.05 and shifts["sparse"] <= -0.05
    assert shifts["saturated"] <= -0.045
    assert 0 < shifts["favouring"] < 0.05  # saturation: a favouring bias barely moves p
    assert rates["uniform"] >= 0.9
    assert rates["saturated"] >= 0.9 and rates["favouring"] >= 0.9  # seen on the log-odds scale
    # Sparse (15% of the class moved a lot, the rest a tenth as much) at 30 images: 21 of 30
    # seeds, short of the 90% goal (benchmarks/audit_power.py: reached at larger cells).
    assert rates["sparse"] >= 0.6
    assert null <= 0.1
