"""Does a saliency map point at the defect? Pointing game and energy vs a random map (not a test).

For each test image with a ground-truth region (NEU-DET boxes, synthetic masks) and each method,
three targets are explained, because "saliency for an image-text score" depends on which score:

  report        similarity to the row's own description ("two scratches in the upper left ...")
  class_sim     similarity to the class prompt ("a scratch on a steel surface")
  class_prob    temperature-scaled probability of the class prompt in a softmax over every class
                prompt: what the run classifies with, so class-agnostic texture evidence cancels

A random map's expected pointing hit and energy share both equal the region's area fraction, so
"gain" = score - area fraction; the 95% CI of the mean gain is a bootstrap over images, stratified by class.

With --sanity, the class_prob maps also get the sanity checks of `domainclip explain --sanity`:
Spearman correlation with the map of a fully randomised image tower (low is good) and
deletion/insertion AUC of the class probability vs a random pixel order (deletion lower and
insertion higher than random is good).

    python benchmarks/localisation.py RUN --manifest /tmp/neu/manifest.csv --per-class 10 \
        --method gradcam --method occlusion --sanity
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import torch

from domainclip.datasets import read_manifest
from domainclip.evaluation.bootstrap import bootstrap_metrics
from domainclip.explain.image import ImageExplainer
from domainclip.explain.inputs import original_map, prepare_image, region_from_meta
from domainclip.explain.localisation import localise
from domainclip.explain.sanity import deletion_insertion, randomised_copy, spearman
from domainclip.runs import resolve_model
from domainclip.scoring.prompts import load_prompt_set

TARGETS = ("report", "class_sim", "class_prob")


def _gain_estimates(results: list) -> dict:
    """Mean pointing and energy gain over images, with class-stratified bootstrap 95% CIs."""
    classes = sorted({c for c, _ in results})
    strata = np.array([classes.index(c) for c, _ in results])
    p = np.array([x.pointing - x.pointing_baseline for _, x in results])
    e = np.array([x.energy - x.area for _, x in results])

    def stat(idx: np.ndarray) -> dict[str, float]:
        return {"pointing_gain": float(p[idx].mean()), "energy_gain": float(np.nanmean(e[idx]))}

    return bootstrap_metrics(stat, strata, n_boot=2000, seed=0)


def _rows(man, split: str, per_class: int):
    """Up to `per_class` rows of `split` per (first) label, in manifest order."""
    picked: dict[str, list] = collections.defaultdict(list)
    for r in man.rows:
        if r.split == split and r.label and len(picked[r.label[0]]) < per_class:
            picked[r.label[0]].append(r)
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run directory or backbone spec")
    ap.add_argument("--manifest", required=True, help="manifest with boxes or masks")
    ap.add_argument("--prompts", help="prompt set (default: the run's)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--method", action="append", help="repeatable (default gradcam)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sanity", action="store_true", help="sanity checks of the class_prob maps")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    resolved = resolve_model(args.model)
    bb, run, temperature = resolved.backbone, resolved.run, resolved.temperature
    prompts_path = args.prompts
    if prompts_path is None and run is not None:
        prompts_path = run.config().eval.prompts
    if not prompts_path:
        raise SystemExit("no prompt set: pass --prompts")
    man = read_manifest(args.manifest)
    picked = _rows(man, args.split, args.per_class)
    classes = sorted(picked)
    class_prompt = {
        c: ts[0] for c, ts in load_prompt_set(prompts_path).class_texts(classes).items()
    }
    explainer = ImageExplainer(bb)
    random_explainer = ImageExplainer(randomised_copy(bb, 1.0, seed=0)[0]) if args.sanity else None
    sanity: dict[str, list[dict]] = collections.defaultdict(list)
    methods = args.method or ["gradcam"]

    # results[method][target] -> list of (class, Localisation)
    results: dict = {m: {t: [] for t in TARGETS} for m in methods}
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    skipped = 0
    for c in classes:
        others = [class_prompt[o] for o in classes if o != c]
        # class prompts are encoded once per class, not once per image and method
        class_scorers = {
            "class_sim": explainer.scorer([class_prompt[c]]),
            "class_prob": explainer.scorer(
                [class_prompt[c], *others], "probability", temperature=temperature
            ),
        }
        random_scorer = (
            random_explainer.scorer(
                [class_prompt[c], *others], "probability", temperature=temperature
            )
            if random_explainer is not None
            else None
        )
        for r in picked[c]:
            inp = prepare_image(bb, man.image_path(r))
            region = region_from_meta(r.meta, man.root, inp.original_size)
            view = region[0] if region else None  # localisation in original pixels
            if view is None or not view.any():
                skipped += 1
                continue
            for m in methods:
                calls = {
                    "report": dict(prompt=r.text),
                    "class_sim": dict(prompt=class_prompt[c], scorer=class_scorers["class_sim"]),
                    "class_prob": dict(prompt=class_prompt[c], scorer=class_scorers["class_prob"]),
                }
                maps = {}
                for target, kw in calls.items():
                    sal = maps[target] = explainer.explain(inp.pixels, method=m, **kw)
                    seconds[m].append(sal.seconds)
                    results[m][target].append((c, localise(original_map(inp, sal.map), view)))
                if random_explainer is not None:
                    sal, scorer = maps["class_prob"], class_scorers["class_prob"]
                    rand = random_explainer.explain(
                        inp.pixels, class_prompt[c], m, scorer=random_scorer
                    )
                    d = deletion_insertion(bb, inp.pixels, class_prompt[c], sal.map, scorer=scorer)
                    sanity[m].append(
                        {"randomisation_spearman": spearman(sal.map, rand.map)}
                        | {
                            k: getattr(d, k)
                            for k in (
                                "deletion_auc",
                                "random_deletion_auc",
                                "insertion_auc",
                                "random_insertion_auc",
                            )
                        }
                    )

    print(
        f"{args.model}: {sum(len(v) for v in picked.values()) - skipped} images of split "
        f"{args.split} ({skipped} without a region), T={temperature:.3g}, {args.threads} threads"
    )
    header = f"{'method':10s} {'target':11s} {'pointing':>9s} {'energy':>8s} {'random':>7s}"
    print(header + "   pointing gain [95% CI]    energy gain [95% CI]")
    out: dict = {}
    for m in methods:
        for t in TARGETS:
            locs = [loc for _, loc in results[m][t]]
            est = _gain_estimates(results[m][t])
            row = {
                "n": len(locs),
                "pointing": float(np.mean([x.pointing for x in locs])),
                "energy": float(np.nanmean([x.energy for x in locs])),
                "random": float(np.mean([x.area for x in locs])),
                "pointing_gain": est["pointing_gain"].value,
                "pointing_gain_ci": (est["pointing_gain"].low, est["pointing_gain"].high),
                "energy_gain": est["energy_gain"].value,
                "energy_gain_ci": (est["energy_gain"].low, est["energy_gain"].high),
                "per_class": {
                    c: {
                        "pointing": float(
                            np.mean([x.pointing for k, x in results[m][t] if k == c])
                        ),
                        "random": float(np.mean([x.area for k, x in results[m][t] if k == c])),
                    }
                    for c in classes
                },
            }
            out.setdefault(m, {})[t] = row
            pl, ph = row["pointing_gain_ci"]
            el, eh = row["energy_gain_ci"]
            print(
                f"{m:10s} {t:11s} {row['pointing']:9.3f} {row['energy']:8.3f} {row['random']:7.3f}"
                f"   {row['pointing_gain']:+.3f} [{pl:+.3f}, {ph:+.3f}]"
                f"     {row['energy_gain']:+.3f} [{el:+.3f}, {eh:+.3f}]"
            )
        print(f"{m}: {np.median(seconds[m]):.2f} s per map (median)")
    print("per class, pointing vs random (class_prob):")
    for m in methods:
        pc = out[m]["class_prob"]["per_class"]
        print(
            f"  {m}: "
            + ", ".join(f"{c} {v['pointing']:.2f}/{v['random']:.2f}" for c, v in pc.items())
        )
    for m, items in sanity.items():
        mean = {k: float(np.nanmean([x[k] for x in items])) for k in items[0]}
        out[m]["class_prob"]["sanity"] = mean
        print(
            f"sanity {m} (class_prob, {len(items)} maps): randomisation Spearman "
            f"{mean['randomisation_spearman']:+.3f}; deletion AUC {mean['deletion_auc']:.3f} "
            f"(random {mean['random_deletion_auc']:.3f}); insertion AUC "
            f"{mean['insertion_auc']:.3f} (random {mean['random_insertion_auc']:.3f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": out}, indent=2))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
