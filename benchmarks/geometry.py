"""Which fit policy sees small findings in large, non-square images? One table, with CIs (not a test).

For each data set and each policy (`crop`, `letterbox`, `letterbox` at a higher input size, `tile`)
the default recipe (the demo's: locked image tower with cached features, LoRA on the text tower) is
fine-tuned for the same number of steps and evaluated on the test split:

  acc, macro AUROC     zero-shot classification over the prompt set's classes (bootstrap CIs)
  defect AUROC         image level, "any defect" vs the defect-free class (1 - p(defect-free)),
                       bootstrap CI: on DeepPCB this is test board vs its aligned template
  t2i R@1              text-to-image retrieval with the position-aware descriptions
  pointing / @15 px    GradCAM's maximum inside the annotated region (strict, and within 15
                       original pixels), each minus its random-map baseline, in ORIGINAL pixels
  shortcut             the shortcut check's verdict (accuracy with the region removed)
  s/img train, infer   fine-tuning wall time per training image, evaluation time per test image

    python benchmarks/geometry.py --synthetic --out /tmp/geo
    domainclip data import deeppcb ../shared/data/deeppcb --out /tmp/pcb
    python benchmarks/geometry.py --deeppcb /tmp/pcb/manifest.csv --out /tmp/geo-pcb --boards 400

Run it with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 in the environment (STACK.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

POLICIES = ("crop@224", "letterbox@224", "letterbox@448", "tile@224")
@dataclass
class DataSet:
    """A manifest with its prompt set and the label of its defect-free images."""

    name: str
    manifest: Path
    prompts: Path | dict
    clean_label: str


def _policy(spec: str) -> tuple[str, int]:
    fit, _, size = spec.partition("@")
    return fit, int(size or 224)


def _synthetic(out: Path, n: int, seed: int) -> DataSet:
    """Large strips (1024 x 384) with 8-24 px defects and exact masks."""
    from domainclip.datasets.importers import run_import
    from domainclip.resources import resolve_config_path

    res = run_import(
        "synthetic",
        None,
        out / "synthetic",
        seed=seed,
        n=n,
        width=1024,
        height=384,
        defect_size="8-24",
    )
    prompts = resolve_config_path("configs/prompts/synthetic.yaml")
    return DataSet("synthetic 1024x384, 8-24 px", res.manifest_path, prompts, "clean")


def _limited(manifest: Path, boards: int | None, out: Path, seed: int) -> Path:
    """At most `boards` boards per split, each with its template (a seeded sample of the
    importer's group-aware splits), with absolute image paths so the subset can live elsewhere."""
    if not boards:
        return manifest
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, lines = reader.fieldnames, list(reader)
    rng = np.random.default_rng(seed)
    keep: set[str] = set()
    for split in ("train", "val", "test"):
        ids = sorted({line["board"] for line in lines if line["split"] == split})
        keep |= set(rng.permutation(ids)[: boards if split == "train" else max(boards // 3, 1)])
    lines = [line for line in lines if line["board"] in keep]
    for line in lines:
        if not Path(line["image"]).is_absolute():
            line["image"] = str((manifest.parent / line["image"]).resolve())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest_subset.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(lines)
    return path


def _finetune(ds: DataSet, fit: str, size: int, run_dir: Path, steps: int, seed: int) -> float:
    from domainclip.finetune import finetune, load_config
    from domainclip.resources import resolve_config_path

    prompts = ds.prompts
    if isinstance(prompts, dict):
        prompts = run_dir.parent / f"{ds.name.split()[0]}_prompts.yaml"  # JSON is YAML
        prompts.parent.mkdir(parents=True, exist_ok=True)
        prompts.write_text(json.dumps(ds.prompts))
    overrides = [
        f"data.manifest={ds.manifest}",
        f"eval.prompts={prompts}",
        f"data.fit={fit}",
        f"data.image_size={size}",
        f"train.max_steps={steps}",
        f"train.seed={seed}",
        f"eval.every_steps={max(steps // 2, 1)}",
    ]
    cfg = load_config(resolve_config_path("configs/demo_synthetic_lora.yaml"), overrides)
    t0 = time.perf_counter()
    finetune(cfg, run_dir)
    return time.perf_counter() - t0


def _bootstrap_auroc(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            vals.append(roc_auc_score(y[i], s[i]))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def _defect_auroc(pred_csv: Path, clean: str, n_boot: int, seed: int) -> dict:
    with pred_csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    y = np.array([r["label"] != clean for r in rows], dtype=int)
    s = np.array([1.0 - float(r[f"p_{clean}"]) for r in rows])
    if y.min() == y.max():
        return {"value": None}
    return {"value": float(roc_auc_score(y, s)), "ci95": _bootstrap_auroc(y, s, n_boot, seed)}


def _evaluate(ds: DataSet, run_dir: Path, n_boot: int, seed: int) -> tuple[dict, float, int]:
    from domainclip.evaluation.evaluate import EvaluationOptions, run_evaluation

    t0 = time.perf_counter()
    res = run_evaluation(
        run_dir,
        ds.manifest,
        "test",
        ds.prompts,
        run_dir / "eval" / "bench",
        EvaluationOptions(name="bench", n_boot=n_boot, fit_temperature=True),
    )
    seconds = time.perf_counter() - t0
    d = res.to_json()
    cls = d["classification"]
    out = {
        "acc": cls["accuracy"],
        "macro_auroc": cls["macro_auroc"],
        "per_class_auroc": {c: v.get("auroc") for c, v in cls["per_class"].items()},
        "t2i_R@1": d.get("retrieval", {}).get("t2i_R@1"),
        "defect_auroc": _defect_auroc(
            run_dir / "eval" / "bench" / "predictions.csv", ds.clean_label, n_boot, seed
        ),
        "shortcut": (d.get("shortcut") or {}).get("verdict"),
    }
    return out, seconds, d["data"]["n_evaluated"]


def _localise(ds: DataSet, run_dir: Path, limit: int, seed: int) -> dict:
    from domainclip.explain.batch import ExplainSettings, explain_manifest
    from domainclip.runs import resolve_model

    resolved = resolve_model(run_dir)
    index = explain_manifest(
        resolved.backbone,
        ds.manifest,
        run_dir / "explain" / "bench",
        ExplainSettings(methods=("gradcam",), checks=("localisation",), seed=seed),
        split="test",
        limit=limit,
        preprocess=resolved.preprocess,
    )
    summary = json.loads(index.read_text())["summary"]["gradcam"]["localisation"]
    return summary


def _row(ds: DataSet, spec: str, args: argparse.Namespace) -> dict:
    fit, size = _policy(spec)
    run_dir = args.out / ds.name.split()[0] / spec.replace("@", "_")
    if run_dir.exists() and (run_dir / "result.json").exists():
        train_s = json.loads((run_dir / "result.json").read_text())["wall_seconds"]
    else:
        train_s = _finetune(ds, fit, size, run_dir, args.steps, args.seed)
    metrics, eval_s, n_test = _evaluate(ds, run_dir, args.n_boot, args.seed)
    loc = _localise(ds, run_dir, args.explain, args.seed)
    n_train_seen = args.steps * 32
    return {
        "data": ds.name,
        "policy": spec,
        **metrics,
        "localisation": loc,
        "s_per_train_image": train_s / n_train_seen,
        "s_per_test_image": eval_s / n_test,
    }


def _fmt(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "-"
    ci = e.get("ci95")
    return f"{e['value']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _table(rows: list[dict]) -> str:
    head = (
        "| data | policy | acc | macro AUROC | defect AUROC | t2i R@1 | pointing gain | "
        "@15 px gain | shortcut | s/img train | s/img infer |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        loc = r["localisation"]
        lines.append(
            f"| {r['data']} | {r['policy']} | {_fmt(r['acc'])} | {_fmt(r['macro_auroc'])} | "
            f"{_fmt(r['defect_auroc'])} | {_fmt(r['t2i_R@1'])} | "
            f"{loc.get('pointing_gain', float('nan')):.3f} | "
            f"{loc.get('pointing_tolerant_gain', float('nan')):.3f} | {r['shortcut']} | "
            f"{r['s_per_train_image']:.3f} | {r['s_per_test_image']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--synthetic", action="store_true", help="generate and run the synthetic set")
    p.add_argument("--n-synthetic", type=int, default=300)
    p.add_argument("--deeppcb", type=Path, help="manifest of `domainclip data import deeppcb`")
    p.add_argument(
        "--boards", type=int, help="DeepPCB: N train boards, N/3 val and test (with templates)"
    )
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--explain", type=int, default=40, help="test images explained per policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets = []
    if args.synthetic:
        sets.append(_synthetic(args.out, args.n_synthetic, args.seed))
    if args.deeppcb:
        manifest = _limited(args.deeppcb.resolve(), args.boards, args.out / "deeppcb", args.seed)
        from domainclip.resources import resolve_config_path

        prompts = resolve_config_path("configs/prompts/deeppcb.yaml")
        sets.append(DataSet("deeppcb 640x640", manifest, prompts, "no_defect"))
    rows = []
    for ds in sets:
        for spec in args.policies.split(","):
            rows.append(_row(ds, spec.strip(), args))
            print(_table(rows[-1:]), flush=True)
            (args.out / "geometry.json").write_text(json.dumps(rows, indent=1))
    print()
    print(_table(rows))


if __name__ == "__main__":
    main()
