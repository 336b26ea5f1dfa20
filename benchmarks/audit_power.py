"""How often does the audit's gate catch a class-specific framing bias, and how often does it
raise a false alarm? By simulation on real image features.

    .venv/bin/python benchmarks/audit_power.py [--data neu-det|synthetic] [--per-class 80]
        [--sizes 10,15,30,60] [--seeds 40] [--threshold 0.02]

Set-up (what is real and what is simulated):
* Images: NEU-DET (/work/shared/data/neu-det, 6 classes) or the generated synthetic set, a pool
  of --per-class images per class, embedded once by the embedded default backbone
  (EfficientNet-Lite0 image tower, untrained for this task; features cached in --cache, so a
  second run skips the ~2 minutes of embedding on 2 busy cores).
* A quickly trained classifier on those features: each class's "prompt" is the mean normalised
  feature of a disjoint half of its pool images (a nearest-class-mean head), at the logit scale
  that makes the median target probability of the other half 0.97: saturated, as the fine-tuned
  runs issue 20 audited (most images at 0.96-1.0). Audited images come from that other half.
* Framings: the reference, framing A (where the bias is planted) and framing B (never planted).
  Each framing's logits get independent N(0, 0.25^2) per-image noise (the idiosyncratic reaction
  to a wording), so "no bias" is an exact, non-trivial null.
* Per seed: a fresh resample of n images per class (with replacement), noise, then a plant in
  framing A x class 0 (`audit.testing.plant_shift`): uniform (every image's class-0 logit moves),
  sparse (15% of the class move fully, the rest a tenth), isolated (15% move, the rest not at
  all), saturated (only the more confident half), favouring (+1 logit toward the class), or a null
  plant (nothing). The logit delta is set on the pool so that the class's mean target probability
  moves by -0.05 (favouring: what +1 reaches under saturation).
* The gate runs as in `domainclip audit` (`analysis.compare_framing`, `gate.gate_checks`,
  `api.power_options`): sign-flip tests (mean probability shift + log-odds signed ranks), Holm
  over the 14 gated cells, |mean shift| > --threshold. For speed: 2000 sign vectors (no
  refinement) and 200 bootstrap replicates per cell.

Reported per pattern and cell size: detection (the planted cell fails), any-cell failure, and
for the null plant the false-alarm rate (any gated cell fails); the median minimum detectable
shift of the planted class cell and the share of class cells that are underpowered at
require_power 0.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

NEU = Path("/work/shared/data/neu-det/IMAGES")
NOISE_SD = 0.25
TARGET_SHIFT = -0.05
PATTERNS = ("null", "uniform", "sparse", "isolated", "saturated", "favouring")


def _images(data: str, per_class: int, seed: int) -> tuple[list, np.ndarray, list[str]]:
    """Paths (or PIL images) and class indices of the pool."""
    from domainclip.datasets import load_image

    rng = np.random.default_rng(seed)
    if data == "neu-det":
        by_class: dict[str, list[Path]] = {}
        for p in sorted(NEU.glob("*.jpg")):
            by_class.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
        classes = sorted(by_class)
        picked = [
            (p, i)
            for i, c in enumerate(classes)
            for p in rng.choice(by_class[c], per_class, replace=False)
        ]
        return [load_image(p) for p, _ in picked], np.array([i for _, i in picked]), classes
    import tempfile

    from domainclip.datasets import read_manifest
    from domainclip.datasets.importers.synthetic import generate_synthetic

    out = Path(tempfile.mkdtemp())
    classes = ["scratch", "pit", "crack", "patch", "clean"]
    generate_synthetic(out, n=per_class * len(classes), size=128, seed=seed, classes=tuple(classes))
    rows = read_manifest(out / "manifest.csv").rows
    return (
        [load_image(out / r.image) for r in rows],
        np.array([classes.index(r.label[0]) for r in rows]),
        classes,
    )


def _features(images: list) -> torch.Tensor:
    from domainclip.datasets.transforms import eval_transform
    from domainclip.models import load_backbone

    bb = load_backbone("default")
    tf = eval_transform(bb)
    feats = []
    for i in range(0, len(images), 32):
        feats.append(bb.encode_images(torch.stack([tf(im) for im in images[i : i + 32]])))
    f = torch.cat(feats).double()
    return f / f.norm(dim=1, keepdim=True)


def _pool_table(feats: torch.Tensor, target: np.ndarray, classes: list[str], seed: int):
    """Score table of the audited half: reference, A, B (identical before noise and plants)."""
    from domainclip.audit.scores import ScoreTable

    rng = np.random.default_rng(seed)
    half = np.zeros(len(target), dtype=bool)
    for c in range(len(classes)):
        members = np.flatnonzero(target == c)
        half[rng.choice(members, len(members) // 2, replace=False)] = True
    protos = torch.stack([feats[half & (target == c)].mean(0) for c in range(len(classes))])
    protos = protos / protos.norm(dim=1, keepdim=True)
    audited = ~half
    cos = (feats[audited] @ protos.T).numpy()
    t = target[audited]
    lo, hi = 1.0, 500.0
    for _ in range(40):  # logit scale with median target probability 0.97
        mid = (lo * hi) ** 0.5
        z = mid * cos
        p = np.exp(z - z.max(1, keepdims=True))
        p = p / p.sum(1, keepdims=True)
        lo, hi = (mid, hi) if np.median(p[np.arange(len(t)), t]) < 0.97 else (lo, mid)
    scale = (lo * hi) ** 0.5
    logits = np.stack([scale * cos] * 3)
    pos = np.eye(len(classes), dtype=bool)[t]
    table = ScoreTable(["neutral", "A", "B"], classes, logits, np.stack([cos] * 3), 1.0, t, pos)
    return table, scale


def _plant(table, pattern: str, delta: float, rng: np.random.Generator):
    from domainclip.audit.testing import plant_shift

    if pattern == "null":
        return table
    if pattern == "isolated":
        return plant_shift(table, "A", 0, "sparse", delta, rng, rest=0.0)
    return plant_shift(table, "A", 0, pattern, delta, rng)


def _class_shift(table, pattern: str, delta: float) -> float:
    planted = _plant(table, pattern, delta, np.random.default_rng(0))
    d = planted.scores[1] - planted.scores[0]
    return float(d[table.target == 0].mean())


def _delta(table, pattern: str) -> float:
    if pattern == "null":
        return 0.0
    if pattern == "favouring":
        return 1.0
    lo, hi = -20.0, 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _class_shift(table, pattern, mid) > TARGET_SHIFT else (mid, hi)
    return (lo + hi) / 2


def _noisy(table, rng: np.random.Generator):
    from domainclip.audit.scores import ScoreTable

    logits = table.logits + rng.normal(0.0, NOISE_SD, table.logits.shape)
    return ScoreTable(
        table.framings, table.classes, logits, table.cos, 1.0, table.target, table.positives
    )


def _spec(classes: list[str], threshold: float):
    from domainclip.audit.spec import parse_audit_spec

    return parse_audit_spec(
        {
            "name": "power",
            "version": "1",
            "findings": {c: c for c in classes},
            "reference": "neutral",
            "framings": {"neutral": "a {finding}", "A": "an A {finding}", "B": "a B {finding}"},
            "thresholds": {
                "max_abs_mean_shift": threshold,
                "max_flip_rate": None,
                "max_ece": None,
                "performance_floor": False,
                "require_power": 0.10,
            },
            "statistics": {"n_bootstrap": 200, "n_permutations": 2000, "min_cell_images": 10},
        }
    )


def _run(table, spec, pattern: str, delta: float, n: int, seeds: int) -> dict:
    from domainclip.audit.analysis import compare_framing
    from domainclip.audit.api import power_options
    from domainclip.audit.gate import FAIL, gate_checks

    spec_gate = dataclasses.replace(
        spec, thresholds=dataclasses.replace(spec.thresholds, require_power=None)
    )
    power = dataclasses.replace(power_options(spec), refine_below=None)
    by_class = [np.flatnonzero(table.target == c) for c in range(len(table.classes))]
    planted = anyfail = 0
    mds, weak = [], []
    for s in range(seeds):
        rng = np.random.default_rng(1_000_003 * n + s)
        idx = np.concatenate([rng.choice(m, n) for m in by_class])
        sample = _plant(_noisy(table.take(idx), rng), pattern, delta, rng)
        comps = {
            f: compare_framing(
                sample, f, "neutral", {}, 200, s, 10, detail=False, power=power
            )
            for f in ("A", "B")
        }
        checks = {c.id: c for c in gate_checks(spec_gate, comps, {})}
        planted += checks[f"mean_shift/A/class={table.classes[0]}"].status == FAIL
        anyfail += any(c.status == FAIL for c in checks.values())
        cell = comps["A"].per_class[table.classes[0]]
        mds.append(cell.mds if cell.mds is not None else np.inf)
        weak += [c.status == "underpowered" for c in comps["A"].per_class.values()]
    return {
        "planted": planted / seeds,
        "any": anyfail / seeds,
        "mds": float(np.median(mds)),
        "underpowered": float(np.mean(weak)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["neu-det", "synthetic"], default="neu-det")
    ap.add_argument("--per-class", type=int, default=40, help="pool images per class")
    ap.add_argument("--sizes", default="10,30,60", help="audited images per class")
    ap.add_argument("--seeds", type=int, default=25)
    ap.add_argument(
        "--cache", default="/tmp", help="folder for the embedded features (reused when present)"
    )
    ap.add_argument("--threshold", type=float, default=0.02, help="max_abs_mean_shift")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cache = Path(args.cache) / f"domainclip_audit_power_{args.data}_{args.per_class}.pt"
    if cache.is_file():
        feats, target, classes = torch.load(cache, weights_only=False)
    else:
        images, target, classes = _images(args.data, args.per_class, 0)
        feats = _features(images)
        torch.save((feats, target, classes), cache)
    table, scale = _pool_table(feats, target, classes, 0)
    t_embed = time.perf_counter() - t0
    spec = _spec(classes, args.threshold)
    p_ref = table.scores[0]
    print(
        f"{args.data}: {len(target)} images embedded (or read from {cache}) in {t_embed:.0f} s; {len(classes)} classes; "
        f"nearest-class-mean head at logit scale {scale:.1f}; audited pool {table.n} images, "
        f"accuracy {np.mean(table.decisions[0] == table.target):.3f}, target probability median "
        f"{np.median(p_ref):.3f} (10th percentile {np.quantile(p_ref, 0.1):.3f})"
    )
    print(f"gate: |mean shift| > {args.threshold}, Holm over {spec.n_gated_shift_tests} cells, "
          f"alpha 0.05; {args.seeds} seeds per row; planted: framing A x class {classes[0]}")
    print("| pattern | logit delta | class shift | n/class | detected (planted cell) | any cell "
          "fails | median MDS of the cell | class cells underpowered at 0.10 |")
    print("|---|---|---|---|---|---|---|---|")
    for pattern in PATTERNS:
        delta = _delta(table, pattern)
        shift = _class_shift(table, pattern, delta)
        for n in [int(x) for x in args.sizes.split(",")]:
            r = _run(table, spec, pattern, delta, n, args.seeds)
            print(
                f"| {pattern} | {delta:+.2f} | {shift:+.3f} | {n} | {r['planted']:.2f} | "
                f"{r['any']:.2f} | {r['mds']:.3f} | {r['underpowered']:.2f} |",
                flush=True,
            )
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
