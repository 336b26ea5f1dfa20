"""Plain vs framing-robust fine-tuning, audited with the shipped audit specs (not a test).

For each data set the shipped recipe (`configs/<recipe>.yaml`) is fine-tuned twice with the same
data, seed and steps: `plain` (`robustness.enabled=false`) and `robust` (`robustness.enabled=true`
with the domain's pool and the recipe's other `robustness` settings; the NEU-DET and covid-cxr
recipes ship with it on, covid-cxr with `start: 0`). Each run is then evaluated on the test split (temperature fitted on val, as the
demo does; accuracy / macro AUROC with bootstrap CIs) and audited with the shipped spec of its
data set, whose wordings are held out from the training pool by construction, against the
untrained default backbone (`--compare`). Reported per run:

  per framing of the spec   mean |shift| of the target-class probability vs the reference, flip rate
  gate                      the audit's verdict and the number of failed checks
  negation-correct          share of images whose target is framed where the negated wording lowers
                            the target probability
  amplified                 framings whose sensitivity change vs the untrained base is "amplified"
  accuracy, macro AUROC     test split, with 95% bootstrap CIs (`domainclip evaluate`)
  t2i / i2t R@1             retrieval on the test split with 95% bootstrap CIs (`domainclip
                            evaluate`); `val t2i` is the best checkpoint's val R@1 (result.json)
  step time                 training seconds per step, validation excluded (metrics.jsonl)

Each (data set, recipe, seed) is one invocation writing one JSON, so every run stays within a few
minutes on 2 shared CPU cores; `--table DIR` prints the collected table:

    python benchmarks/framing_robustness.py --data synthetic --recipe plain --out /tmp/fr
    python benchmarks/framing_robustness.py --data synthetic --recipe robust --out /tmp/fr
    python benchmarks/framing_robustness.py --data neu-det --recipe plain --steps 100 --out /tmp/fr
    python benchmarks/framing_robustness.py --table /tmp/fr

`robust` uses the shipped `robustness` settings (README "Framing-robust fine-tuning"); `--set`
overrides them for a variant (`--tag` keeps its results apart). covid-cxr with a short `--steps`:
add `--set eval.at_start=false --set eval.every_steps=STEPS`, else the untrained step-0
checkpoint can win on val R@1 and both recipes audit the untrained model.

Data: synthetic = the demo's generator at 240 images (a sixth 2:1; the demo itself makes 300 with a calib split); neu-det and covid-cxr are
imported from --data-root (default /work/shared/data). Frozen image features are kept in
OUT/feature_cache, so the second recipe on a data set does not re-embed the images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = {
    # name: (recipe, audit spec, pool, controls, importer)
    "synthetic": ("demo_synthetic_lora", "synthetic", "industrial", ["clean"], "synthetic"),
    "neu-det": ("neu_det_lora", "neu_det", "industrial", [], "neu-det"),
    "covid-cxr": ("covid_cxr_lora", "covid_cxr", "medical", [], "covid-cxr"),
}
PROMPTS = {
    "synthetic": "configs/prompts/synthetic.yaml",
    "neu-det": "configs/prompts/neu_det.yaml",
    "covid-cxr": "configs/prompts/covid_cxr.yaml",
}


def prepare_data(name: str, out: Path, data_root: Path) -> Path:
    """The manifest of data set `name` under OUT/data/<name> (imported once)."""
    from domainclip.datasets.importers import run_import

    target = out / "data" / name
    manifest = target / "manifest.csv"
    if manifest.is_file():
        return manifest
    if name == "synthetic":
        from domainclip.demo import DEMO_ASPECTS

        return run_import("synthetic", None, target, seed=0, n=240, size=128, aspects=DEMO_ASPECTS).manifest_path
    return run_import(DATA[name][4], data_root / name, target, seed=0).manifest_path


def train(
    name: str, recipe: str, seed: int, steps: int | None, manifest: Path, out: Path, extra: list[str], tag: str = ""
) -> Path:
    """Fine-tune one recipe; returns the run directory (reused when it already finished)."""
    from domainclip.finetune import finetune, load_config
    from domainclip.resources import resolve_config_path

    config, _, pool, controls, _ = DATA[name]
    run_dir = out / "runs" / f"{name}_{recipe}{tag and '-' + tag}_s{seed}"
    if (run_dir / "result.json").is_file():
        return run_dir
    overrides = [
        f"data.manifest={manifest}", f"train.seed={seed}", "train.progress=false",
        f"train.feature_cache_dir={out / 'feature_cache'}",
    ]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    if recipe == "robust":
        overrides += ["robustness.enabled=true", f"robustness.pool={pool}", f"robustness.controls={controls}"]
    else:  # the NEU-DET and covid-cxr recipes ship with robustness on
        overrides.append("robustness.enabled=false")
    cfg = load_config(resolve_config_path(f"configs/{config}.yaml"), overrides + extra)
    finetune(cfg, run_dir)
    return run_dir


def step_seconds(run_dir: Path) -> float:
    """Training seconds per step, the validations excluded."""
    from domainclip.finetune.runlog import read_metrics

    result = json.loads((run_dir / "result.json").read_text())
    val = sum(e.get("seconds", 0.0) for e in read_metrics(run_dir) if e["event"] == "val")
    return (result["train_seconds"] - val) / max(result["steps"], 1)


def evaluate(name: str, run_dir: Path, manifest: Path, n_boot: int) -> dict:
    """Test-split metrics with CIs (temperature fitted on val and saved for the audit)."""
    from domainclip.evaluation.evaluate import EvaluationOptions, run_evaluation

    res = run_evaluation(
        run_dir, manifest, "test", PROMPTS[name], None,
        EvaluationOptions(name="bench_test", fit_temperature=True, n_boot=n_boot, baselines=False,
                          shortcut_check=False),
    )
    c = res.classification
    out = {k: c.get(k) for k in ("accuracy", "macro_auroc", "balanced_accuracy")}
    # retrieval on the test split (hundreds of queries, with CIs), not the val subset of training
    out.update({k: res.retrieval.get(k) for k in ("t2i_R@1", "i2t_R@1")})
    out["n_retrieval_queries"] = res.retrieval.get("n_texts")
    return out


def audit(name: str, run_dir: Path, manifest: Path) -> dict:
    """The shipped spec's audit (vs the untrained base) and the per-framing numbers."""
    from domainclip.audit.api import run_audit

    res = run_audit(run_dir, DATA[name][1], manifest, "test", compare="default")
    t = res.table
    ref = t.k(res.data["spec"]["reference"])
    out = {"verdict": res.verdict, "n_failed": len(res.failed_checks), "framings": {},
           "failed": [c.get("id") for c in res.failed_checks]}
    change = (res.data.get("compare") or {}).get("sensitivity_change") or {}
    for k, fname in enumerate(t.framings):
        if k == ref:
            continue
        shift = t.scores[k] - t.scores[ref]
        row = {"mean_abs_shift": float(np.abs(shift).mean()),
               "flip_rate": float((t.decisions[k] != t.decisions[ref]).mean()),
               "change_vs_base": (change.get(fname) or {}).get("overall", {}).get("verdict")}
        expect = res.data["framings"][fname]["expect"]
        if expect == "lower":
            # judged only on images whose target's text the negation changes (not control classes)
            changed = np.array([
                res.data["framings"][fname]["prompts"][t.classes[y]]
                != res.data["framings"][t.framings[ref]]["prompts"][t.classes[y]] for y in t.target
            ])
            row["negation_correct"] = float((shift[changed] < 0).mean()) if changed.any() else None
            row["n_negation"] = int(changed.sum())
        out["framings"][fname] = {**row, "expect": expect}
    return out


def run_one(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    t0 = time.perf_counter()
    manifest = prepare_data(args.data, out, Path(args.data_root))
    run_dir = train(args.data, args.recipe, args.seed, args.steps, manifest, out, args.set or [], args.tag)
    result = json.loads((run_dir / "result.json").read_text())
    row = {
        "data": args.data, "recipe": args.recipe + (f" ({args.tag})" if args.tag else ""), "seed": args.seed, "steps": result["steps"],
        "step_seconds": step_seconds(run_dir), "t2i_R@1": result["best_metrics"].get("t2i_R@1"),
        "robustness": result["info"].get("robustness"), "extra": args.set or [],
        "eval": evaluate(args.data, run_dir, manifest, args.n_boot),
        "audit": audit(args.data, run_dir, manifest),
    }
    row["seconds"] = time.perf_counter() - t0
    (out / "results").mkdir(parents=True, exist_ok=True)
    name = f"{args.data}_{args.recipe}{args.tag and '-' + args.tag}_s{args.seed}"
    (out / "results" / f"{name}.json").write_text(json.dumps(row, indent=2, default=float))
    return row


def _est(e) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e.get("ci95") or (None, None)
    return f"{e['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{e['value']:.3f}"


def table(folder: Path) -> str:
    """One markdown table of every result JSON in FOLDER/results."""
    rows = [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]
    lines = [
        "| data | recipe | seed | steps | framing: mean abs shift / flip rate (vs base) | negation lowers | gate | accuracy | macro AUROC | test t2i R@1 | test i2t R@1 | val t2i | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fr = r["audit"]["framings"]
        inv = "; ".join(
            f"{n} {v['mean_abs_shift']:.3f}/{v['flip_rate']:.2f}" + (f" ({v['change_vs_base']})" if v.get("change_vs_base") else "")
            for n, v in fr.items() if v["expect"] == "invariant"
        )
        neg = [v for v in fr.values() if v["expect"] == "lower"]
        neg_s = ", ".join(f"{v['negation_correct']:.2f} (n={v['n_negation']})" for v in neg if v.get("negation_correct") is not None)
        gate = f"{r['audit']['verdict'].upper()} ({r['audit']['n_failed']} failed)"
        e = r["eval"]
        lines.append(
            f"| {r['data']} | {r['recipe']} | {r['seed']} | {r['steps']} | {inv} | {neg_s} | {gate} | "
            f"{_est(e.get('accuracy'))} | {_est(e.get('macro_auroc'))} | {_est(e.get('t2i_R@1'))} | "
            f"{_est(e.get('i2t_R@1'))} | {r['t2i_R@1'] or 0:.3f} | {r['step_seconds']:.3f} |"
        )
    return "\n".join(lines)


def summary(folder: Path) -> str:
    """Per data set and recipe, means over the seeds (gate: verdicts and failed checks per seed)."""
    rows = [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["recipe"]), []).append(r)
    lines = [
        "| data | recipe | seeds | mean abs shift: alarming / hedged / jargon / lay | flip rate (mean) | negation lowers | gate (failed checks per seed) | accuracy | macro AUROC | test t2i R@1 | test i2t R@1 | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (data, recipe), rs in groups.items():
        fr = [r["audit"]["framings"] for r in rs]
        inv = [n for n, v in fr[0].items() if v["expect"] == "invariant"]
        neg = [n for n, v in fr[0].items() if v["expect"] == "lower"]

        def mean(xs):
            xs = [x for x in xs if x is not None]
            return sum(xs) / len(xs) if xs else float("nan")

        shift = " / ".join(f"{mean([f[n]['mean_abs_shift'] for f in fr]):.3f}" for n in inv)
        flips = mean([f[n]["flip_rate"] for f in fr for n in inv])
        negc = mean([f[n].get("negation_correct") for f in fr for n in neg])
        gates = ", ".join(f"{r['audit']['verdict'].upper()} {r['audit']['n_failed']}" for r in rs)
        acc = mean([(r["eval"].get("accuracy") or {}).get("value") for r in rs])
        auc = mean([(r["eval"].get("macro_auroc") or {}).get("value") for r in rs])
        t2i = mean([(r["eval"].get("t2i_R@1") or {}).get("value") for r in rs])
        i2t = mean([(r["eval"].get("i2t_R@1") or {}).get("value") for r in rs])
        step = mean([r["step_seconds"] for r in rs])
        lines.append(
            f"| {data} | {recipe} | {len(rs)} | {shift} | {flips:.3f} | {negc:.2f} | {gates} | {acc:.3f} | {auc:.3f} | {t2i:.3f} | {i2t:.3f} | {step:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(DATA), default="synthetic")
    p.add_argument("--recipe", choices=("plain", "robust"), default="plain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--set", action="append", help="extra config override (repeatable)")
    p.add_argument("--tag", default="", help="name of a variant (with --set), kept apart in the results")
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--out", default="/tmp/framing_robustness")
    p.add_argument("--data-root", default="/work/shared/data")
    p.add_argument("--table", metavar="DIR", help="print the table of the results in DIR and exit")
    p.add_argument("--summary", metavar="DIR", help="print means over seeds of the results in DIR")
    args = p.parse_args()
    if args.table or args.summary:
        print(table(Path(args.table)) if args.table else summary(Path(args.summary)))
        return
    row = run_one(args)
    print(json.dumps({k: row[k] for k in ("data", "recipe", "seed", "steps", "step_seconds", "seconds")}, default=float))
    print(table(Path(args.out)))


if __name__ == "__main__":
    main()
