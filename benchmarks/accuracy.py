"""Held-out accuracy of every adaptation method on NEU-DET (and COVID-CXR), over seeds (not a test).

NEU-DET (stratified split from the importer): zero-shot accuracy and macro-F1 on the test split
through `bb.class_logits` (heads included), mean and std over seeds, trainable parameters and wall
time per method, plus text-to-image retrieval R@1/R@5 with the importer's position-aware
descriptions (many near-identical texts: a hard, fine-grained task).

COVID-CXR (patient-level split): the collection is ~80% COVID-19, so the task is COVID-19 vs any
other finding (primary label), scored by balanced accuracy and AUROC with stratified bootstrap
95% CIs, every method next to the linear probe. Training texts are the clinical notes.

    domainclip data import neu-det ../shared/data/neu-det --out /tmp/neu
    domainclip data import covid-cxr ../shared/data/covid-cxr --out /tmp/cxr
    python benchmarks/accuracy.py --neu /tmp/neu/manifest.csv --covid /tmp/cxr/manifest.csv \
        --seeds 0,1,2 --out /tmp/acc
    python benchmarks/accuracy.py --neu /tmp/neu/manifest.csv --seeds 0 --methods untrained,linear_probe,lora

Run it with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 in the environment (STACK.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "linear_probe": "neu_det_linear_probe.yaml",
    "lora": "neu_det_lora.yaml",
    "clip_adapter": "neu_det_adapter.yaml",
    "tip_adapter_f": "neu_det_tip_adapter.yaml",
    "full": "neu_det_full_ft.yaml",
}
METHODS = ("untrained", *CONFIGS)
COVID_PROMPTS = {
    "version": "covid-binary-bench-1",
    "templates": [
        "a chest x-ray showing {label}",
        "chest radiograph with findings of {label}",
        "{label}",
    ],
    "classes": {
        "COVID-19": {"names": ["COVID-19 pneumonia", "COVID-19"]},
        "other": {"names": ["another lung disease or no finding", "a non-COVID pneumonia"]},
    },
}


def _split_data(manifest: Path, split: str, classes: list[str]):
    from domainclip.finetune.config import DataConfig
    from domainclip.finetune.data import load_splits

    return load_splits(DataConfig(manifest=str(manifest), val_split=split, classes=classes), 0).val


def _base_adaptation():
    """The untrained default model (no adapters)."""
    from domainclip.finetune.adaptation import prepare
    from domainclip.finetune.config import load_config
    from domainclip.models import load_backbone

    method = load_config(None, ["data.manifest=x", "method.text_tower=locked"]).method
    return prepare(load_backbone("default"), method, trainable=False)


def _test_image_features(adapt, split, cache_dir: str):
    """Normalised test image features: cached frozen-tower outputs unless the image tower trained."""
    from domainclip.datasets.transforms import eval_transform
    from domainclip.finetune.data import fingerprint_state, image_batches, load_or_compute

    bb = adapt.bb
    # The shipped recipes use the default input (data.fit letterbox at the native size).
    transform = eval_transform(bb)
    if adapt.modes["image"] == "locked":
        state = {
            k: v
            for k, v in adapt.base.state_dict().items()
            if k.startswith(adapt.layout.image_prefixes)
        }
        c = load_or_compute(
            split,
            adapt.pooled_image,
            cache_dir,
            fingerprint_state(state),
            f"{transform!r}|{transform.mean}|{transform.std}",
            transform=transform,
            device=torch.device("cpu"),
            batch_size=64,
            num_workers=0,
            progress=False,
            desc="test features",
        )
        with torch.no_grad():
            f = adapt.image_from_pooled(c.feats)
        return F.normalize(f.float(), dim=-1), c.rows.tolist()
    feats, rows = [], []
    order = list(range(len(split)))
    for batch in image_batches(
        split, transform, [order[i : i + 32] for i in range(0, len(order), 32)], 0, 0, 0
    ):
        if batch is not None:
            feats.append(bb.encode_images(batch["image"]))
            rows += batch["rows"]
    return torch.cat(feats), rows


def score(adapt, split, prompts, cache_dir: str, n_boot: int, seed: int) -> dict:
    """Test-split metrics of one model: accuracy, balanced accuracy, macro-F1, macro AUROC (with
    bootstrap CIs), and text-to-image retrieval with the rows' own texts."""
    from domainclip.evaluation.metrics import single_label_report
    from domainclip.scoring.prompts import load_prompt_set
    from domainclip.scoring.retrieval import retrieval_metrics
    from domainclip.scoring.zeroshot import class_embeddings

    img, rows = _test_image_features(adapt, split, cache_dir)
    ps = load_prompt_set(prompts)
    W = class_embeddings(adapt.bb, ps.class_texts(split.classes))
    with torch.no_grad():
        probs = adapt.bb.class_logits(img, W).float().softmax(-1)
    y = split.label_index[rows]
    keep = y >= 0
    rep = single_label_report(
        probs[keep].numpy(), y[keep].numpy(), split.classes, n_boot=n_boot, seed=seed
    )
    texts = [split.texts[r] for r in rows]
    txt = adapt.bb.encode_texts(list(dict.fromkeys(texts)))
    where = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    ret = retrieval_metrics(img, txt[[where[t] for t in texts]], text_groups=texts, ks=(1, 5))
    return {
        **{k: rep[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")},
        "t2i_R@1": ret["t2i_R@1"],
        "t2i_R@5": ret["t2i_R@5"],
        "i2t_R@1": ret["i2t_R@1"],
        "n_test": int(keep.sum()),
        "n_texts": ret["n_texts"],
    }


def run_method(
    method: str, manifest: Path, seed: int, args, out: Path, extra: list[str], prompts: str
) -> dict:
    """Fine-tune (unless untrained) and score on the test split."""
    from domainclip.finetune import finetune, load_config
    from domainclip.runs import load_adaptation

    classes = _classes(manifest)
    test = _split_data(manifest, "test", classes)
    if method == "untrained":
        t = time.perf_counter()
        adapt = _base_adaptation()
        res = {"trainable_params": 0, "wall_seconds": 0.0}
        metrics = score(adapt, test, prompts, args.cache_dir, args.n_boot, seed)
        res["wall_seconds"] = time.perf_counter() - t
        return {**res, **metrics}
    steps = args.full_steps if method == "full" else args.steps
    overrides = [
        f"data.manifest={manifest}",
        f"train.seed={seed}",
        f"train.max_steps={steps}",
        f"train.feature_cache_dir={args.cache_dir}",
        "train.progress=false",
        f"eval.prompts={prompts}",
        *extra,
    ]
    cfg = load_config(REPO / "domainclip" / "configs" / CONFIGS[method], overrides)
    run = out / f"{manifest.parent.name}_{method}_s{seed}"
    if (run / "result.json").is_file() and not args.rerun:
        res = json.loads((run / "result.json").read_text())
    else:
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        res = finetune(cfg, run).to_dict()
    adapt = load_adaptation(run, "best")
    metrics = score(adapt, test, prompts, args.cache_dir, args.n_boot, seed)
    return {
        "trainable_params": res["trainable_params"],
        "wall_seconds": res["wall_seconds"],
        "best_step": res["best_step"],
        **metrics,
    }


def _classes(manifest: Path) -> list[str]:
    from domainclip.datasets.manifest import read_manifest

    return sorted({r.label[0] for r in read_manifest(manifest).rows if r.label})


def covid_binary_manifest(src: Path, out: Path) -> Path:
    """Copy of the COVID-CXR manifest with the primary label mapped to COVID-19 / other."""
    from domainclip.datasets.manifest import read_manifest, write_manifest

    man = read_manifest(src)
    rows = []
    for r in man.rows:
        if not r.label:
            continue
        r.image = str(man.image_path(r))
        r.label = ["COVID-19" if r.label[0] == "COVID-19" else "other"]
        rows.append(r)
    out.mkdir(parents=True, exist_ok=True)
    return write_manifest(rows, out / "manifest.csv")


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _value(est) -> float:
    return est["value"] if isinstance(est, dict) else est


def print_neu(results: dict[str, list[dict]]) -> None:
    print("\nNEU-DET test split (zero-shot via class prompts; heads for probe/Tip-Adapter)")
    print(
        f"{'method':<15}{'accuracy':>20}{'macro-F1':>20}{'t2i R@1':>9}{'t2i R@5':>9}{'trainable':>12}{'wall s':>9}"
    )
    for m, rs in results.items():
        acc = _mean_std([_value(r["accuracy"]) for r in rs])
        f1 = _mean_std([_value(r["macro_f1"]) for r in rs])
        r1 = statistics.mean(r["t2i_R@1"] for r in rs)
        r5 = statistics.mean(r["t2i_R@5"] for r in rs)
        wall = statistics.mean(r["wall_seconds"] for r in rs)
        print(
            f"{m:<15}{acc:>20}{f1:>20}{r1:>9.3f}{r5:>9.3f}{rs[0]['trainable_params']:>12,}{wall:>9.0f}"
        )


def print_covid(results: dict[str, list[dict]]) -> None:
    def fmt(e):
        return (
            f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"
            if e.get("ci95")
            else f"{e['value']:.3f}"
        )

    print(
        "\nCOVID-CXR test split, COVID-19 vs other (patient-level split; first seed's 95% bootstrap CI)"
    )
    print(f"{'method':<15}{'balanced acc':>26}{'AUROC':>26}{'trainable':>12}")
    for m, rs in results.items():
        r = rs[0]
        print(
            f"{m:<15}{fmt(r['balanced_accuracy']):>26}{fmt(r['macro_auroc']):>26}{r['trainable_params']:>12,}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--neu", type=Path, help="NEU-DET manifest (domainclip data import neu-det ...)")
    p.add_argument(
        "--covid", type=Path, help="COVID-CXR manifest (domainclip data import covid-cxr ...)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of the trained methods")
    p.add_argument("--full-steps", type=int, default=300, help="steps of full fine-tuning")
    p.add_argument("--covid-steps", type=int, default=150)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "domainclip" / "features"))
    p.add_argument("--out", type=Path, default=Path("/tmp/domainclip-accuracy"))
    p.add_argument(
        "--rerun", action="store_true", help="retrain runs that already have result.json"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if args.neu:
        neu = {
            m: [
                run_method(m, args.neu, s, args, args.out, [], "configs/prompts/neu_det.yaml")
                for s in seeds
            ]
            for m in methods
        }
        report["neu_det"] = neu
        print_neu(neu)
    if args.covid:
        man = covid_binary_manifest(args.covid, args.out / "covid_binary")
        prompts = args.out / "covid_binary_prompts.yaml"
        prompts.write_text(yaml.safe_dump(COVID_PROMPTS))
        extra = ["eval.metric=zero_shot_macro_f1", "data.augment=none"]
        cargs = argparse.Namespace(
            **{**vars(args), "steps": args.covid_steps, "full_steps": args.covid_steps}
        )
        cov = {
            m: [run_method(m, man, s, cargs, args.out, extra, str(prompts)) for s in seeds]
            for m in methods
        }
        report["covid_cxr"] = cov
        print_covid(cov)
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"\nresults: {args.out / 'accuracy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
