"""Recipe levers on real data: speed on long reports, and the gap to the linear probe (not a test).

For each data set (NEU-DET, covid-cxr with its clinical notes, a DeepPCB subset, the synthetic
set) and each variant, one fine-tuning run in its own process (peak RSS per run), scored on the
test split with `benchmarks/accuracy.py score` (accuracy, balanced accuracy, macro AUROC with
bootstrap 95% CIs; t2i / i2t R@1 against the rows' own texts):

  today        the recipe before this benchmark: text LoRA on every layer (text_layers 0)
  top2, top1   LoRA on the top 2 / 1 text layers, lower layers cached per distinct text
  supervised   top2 + loss.supervised_weight 1 (class-prompt cross-entropy)
  anchor       top2 + loss.anchor_weight 0.01 (ProLIP-style pull of the projections to their start)
  chosen       the recipe the shipped *_lora.yaml configs now use (covid-cxr: = locked)
  locked       the shipped config with method.text_tower locked: projection-only text training
               (the tower's pooled output cached per distinct text; class-prompt CE as shipped)
  locked_sup   locked + loss.supervised_weight 1 (for covid-cxr, whose shipped config has none)
  top2_sup     top2 + loss.supervised_weight 1 (= supervised; the name pairs it with locked_sup)
  probe        the linear probe (method linear_probe) on the same frozen image features

Step time: the median gap between consecutive training steps (train.log_every 1; evaluations
excluded by the median); wall to best: process start to the validation that chose `best`.
covid-cxr is scored as COVID-19 vs other (as in benchmarks/accuracy.py); its texts stay the notes.
DeepPCB: a seeded subset of boards (benchmarks/geometry.py `_limited`), letterboxed (no tiles),
so a run fits the 3-minute budget on 2 shared cores.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python benchmarks/recipes.py \
        --neu /tmp/neu/manifest.csv --covid /tmp/cxr/manifest.csv --deeppcb /tmp/pcb/manifest.csv \
        --synthetic /tmp/syn/manifest.csv --out /tmp/recipes --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}

LORA = "method.text_tower=lora"  # set explicitly: covid_cxr_lora.yaml ships a locked text tower
ALL_LAYERS = "method.lora.text_layers=0"
NO_SUP = "loss.supervised_weight=0"  # the levers are set explicitly, whatever the shipped config says
VARIANTS: dict[str, list[str]] = {
    "today": [LORA, ALL_LAYERS, NO_SUP],
    "top2": [LORA, "method.lora.text_layers=2", NO_SUP],
    "top1": [LORA, "method.lora.text_layers=1", NO_SUP],
    "supervised": [LORA, "method.lora.text_layers=2", "loss.supervised_weight=1.0"],
    "anchor": [LORA, "method.lora.text_layers=2", NO_SUP, "loss.anchor_weight=0.01"],
    "chosen": [],  # the shipped config as it is
    "locked": ["method.text_tower=locked"],
    "locked_sup": ["method.text_tower=locked", "loss.supervised_weight=1.0"],
    "top2_sup": [LORA, "method.lora.text_layers=2", "loss.supervised_weight=1.0"],
    "probe": [],
}
# data set -> (shipped config, prompt set, steps)
DATA = {
    "neu": ("neu_det_lora.yaml", "configs/prompts/neu_det.yaml", 30),
    "covid": ("covid_cxr_lora.yaml", None, 30),
    "deeppcb": ("neu_det_lora.yaml", "configs/prompts/deeppcb.yaml", 30),
    "synthetic": ("demo_synthetic_lora.yaml", "configs/prompts/synthetic.yaml", 30),
}


def child(args: argparse.Namespace) -> None:
    """One run + its test metrics; prints one JSON line."""
    import logging

    from accuracy import score

    from domainclip.finetune import finetune, load_config
    from domainclip.runs import load_adaptation

    logging.basicConfig(level=logging.WARNING)
    t0 = time.time()
    spec = json.loads(args.child)
    run = Path(spec["run"])
    if spec["variant"] == "probe":
        cfg = load_config(REPO / "domainclip/configs/neu_det_linear_probe.yaml", spec["overrides"])
    else:
        cfg = load_config(REPO / "domainclip/configs" / spec["config"], spec["overrides"])
    res = finetune(cfg, run).to_dict()
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_t = [e["time"] for e in events if e["event"] == "train"]
    gaps = [b - a for a, b in zip(train_t, train_t[1:], strict=False)]
    best = [e["time"] for e in events if e["event"] == "val" and e["step"] == res["best_step"]]
    from accuracy import _classes, _split_data

    test = _split_data(Path(cfg.data.manifest), "test", _classes(Path(cfg.data.manifest)))
    adapt = load_adaptation(run, "best")
    metrics = score(adapt, test, cfg.eval.prompts, cfg.train.feature_cache_dir, 500, 0)
    out = {
        **metrics,
        "step_s": statistics.median(gaps) if gaps else None,
        "wall_s": res["wall_seconds"],
        "wall_to_best_s": (best[-1] - t0) if best else None,
        "train_s": res["train_seconds"],
        "steps": res["steps"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable_params": res["trainable_params"],
        "text_cache": res["info"].get("text_cache"),
    }
    print(json.dumps(out, default=float))


def _manifests(args: argparse.Namespace) -> dict[str, tuple[Path, str]]:
    """data set -> (manifest, prompt set path) for the sets given."""
    import yaml
    from accuracy import COVID_PROMPTS, covid_binary_manifest
    from geometry import _limited

    out = {}
    if args.neu:
        out["neu"] = (args.neu.resolve(), DATA["neu"][1])
    if args.covid:
        man = covid_binary_manifest(args.covid.resolve(), args.out / "covid_binary")
        prompts = args.out / "covid_binary_prompts.yaml"
        prompts.write_text(yaml.safe_dump(COVID_PROMPTS))
        out["covid"] = (man, str(prompts))
    if args.deeppcb:
        man = _limited(args.deeppcb.resolve(), args.boards, args.out / "deeppcb", 0)
        out["deeppcb"] = (man, DATA["deeppcb"][1])
    if args.synthetic:
        out["synthetic"] = (args.synthetic.resolve(), DATA["synthetic"][1])
    return out


def _overrides(name: str, variant: str, manifest: Path, prompts: str, seed: int, args) -> list[str]:
    steps = args.steps or DATA[name][2]
    base = [
        f"data.manifest={manifest}",
        f"eval.prompts={prompts}",
        f"train.seed={seed}",
        f"train.feature_cache_dir={args.out / 'features'}",
        "train.progress=false",
        "data.fit=letterbox",
        "data.augment=none",
    ]
    if variant == "probe":
        return base
    return [
        *base,
        f"train.max_steps={steps}",
        "train.log_every=1",
        "eval.metric=zero_shot_acc",
        f"eval.every_steps={max(steps // 2, 1)}",
        "train.batch_size=32",
        *VARIANTS[variant],
    ]


def run_one(name: str, variant: str, manifest: Path, prompts: str, seed: int, args) -> dict:
    run = args.out / "runs" / f"{name}_{variant}_s{seed}"
    result = run.with_suffix(".json")
    if result.is_file() and not args.rerun:
        return json.loads(result.read_text())
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    spec = {
        "run": str(run),
        "variant": variant,
        "config": DATA[name][0],
        "overrides": _overrides(name, variant, manifest, prompts, seed, args),
    }
    env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{name} {variant} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return {"failed": True}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    result.write_text(json.dumps(res, indent=1))
    return res


SPEED_VARIANTS = {
    "today": [LORA, ALL_LAYERS, NO_SUP],
    "top2_onechunk": [LORA, "method.lora.text_layers=2", NO_SUP],  # cache, no length bucketing
    "top2": [LORA, "method.lora.text_layers=2", NO_SUP],
    "top1": [LORA, "method.lora.text_layers=1", NO_SUP],
    "locked": ["method.text_tower=locked", NO_SUP],  # projection only, pooled output cached
    "default": [],  # the shipped config as it is (vs full)
    # full fine-tuning of both towers, images decoded every step (NEU-DET only); plain contrastive
    # loss, the cheapest full step
    "full": ["method.name=full", "method.image_tower=", "method.text_tower=", "optim.lr=1e-5", NO_SUP],
}
FULL_ONLY = ("neu",)  # full fine-tuning is timed on these sets only (minutes per step elsewhere)


def _trainer(name: str, variant: str, manifest: Path, prompts: str, args):
    """A ready Trainer (image features and lower text layers cached) for one speed variant."""
    import tempfile

    import torch

    from domainclip.finetune import load_config
    from domainclip.finetune.data import load_splits
    from domainclip.finetune.distributed import DistInfo
    from domainclip.finetune.run import (
        _adapt,
        _eval_transform,
        _image_cache,
        _prompts,
        _text_top,
        absolute_paths,
    )
    from domainclip.finetune.runlog import RunLog
    from domainclip.finetune.trainer import Trainer

    over = _overrides(name, "chosen", manifest, prompts, 0, args) + SPEED_VARIANTS[variant]
    cfg = absolute_paths(load_config(REPO / "domainclip/configs" / DATA[name][0], over))
    cpu = torch.device("cpu")
    splits = load_splits(cfg.data, 0)
    prompts_ = _prompts(cfg, splits)
    adapt, anchor = _adapt(cfg, cpu, None)
    cache = _image_cache(cfg, adapt, splits, cpu)
    top = _text_top(cfg, adapt, splits, prompts_, cpu)
    if top is not None and variant.endswith("onechunk"):
        top.slack = float("inf")
    transforms = {}
    if cache is None:  # images decoded every step (full fine-tuning)
        from domainclip.datasets.transforms import train_transform

        transforms = {"train": train_transform(adapt.bb, "none", cfg.data.fit, cfg.data.image_size),
                      "val": _eval_transform(cfg, adapt.bb)}
    run = Path(tempfile.mkdtemp())
    t = Trainer(cfg, adapt, splits, cache, transforms, run, DistInfo(), cpu,
                RunLog(run, enabled=False), prompts_, {}, top, anchor)
    from finetune_speed import _forever  # benchmarks/ is on sys.path (above)

    return t, _forever(t)


def speed(args) -> None:
    """Step times of every (data set, speed variant), interleaved step by step in ONE process so
    that all see the same machine load; a 1024^3 fp32 matmul is timed each round alongside. With
    `default` and `full` on NEU-DET: the FLOPs of one step of each (finetune_speed._flops), so the
    default step's share of the matmul rate measured alongside."""
    import torch

    torch.set_num_threads(args.threads)
    trainers = {}
    variants = args.speed_variants.split(",")
    for name, (manifest, prompts) in _manifests(args).items():
        for variant in variants:
            if variant == "full" and name not in FULL_ONLY:
                continue
            trainers[(name, variant)] = _trainer(name, variant, manifest, prompts, args)
    times: dict = {k: [] for k in trainers}
    mm = []
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for r in range(args.rounds + 1):
        for key, (trainer, it) in trainers.items():
            group = next(it)
            t = time.perf_counter()
            trainer._train_step(group)
            if r:  # round 0 warms up
                times[key].append(time.perf_counter() - t)
        t = time.perf_counter()
        a @ b
        mm.append(2 * 1024**3 / (time.perf_counter() - t) / 1e9)
    out = {f"{n}/{v}": statistics.median(ts) for (n, v), ts in times.items()}
    out["matmul_gflops"] = statistics.median(mm)
    out["load_average"] = os.getloadavg()[0]
    out.update(_ratios(out, variants, trainers))
    (args.out / "speed.json").write_text(json.dumps(out, indent=1))
    for k, v in out.items():
        print(f"{k}: {v:.3f}")


def _ratios(out: dict, variants: list[str], trainers: dict) -> dict:
    """covid/NEU per variant; full/default on NEU-DET with the default step's FLOP rate."""
    from finetune_speed import _flops

    res = {}
    for v in variants:
        if f"covid/{v}" in out and f"neu/{v}" in out:
            res[f"covid_over_neu/{v}"] = out[f"covid/{v}"] / out[f"neu/{v}"]
    for v in ("default", "full"):
        if ("neu", v) in trainers:
            trainer, it = trainers[("neu", v)]
            gflop = sum(_flops(lambda t=trainer, g=it: t._train_step(next(g)), trainer.adapt.model)
                        for _ in range(3)) / 3 / 1e9
            res[f"neu/{v}_gflop_per_step"] = gflop
            res[f"neu/{v}_matmul_fraction"] = gflop / out[f"neu/{v}"] / out["matmul_gflops"]
    if "neu/full" in out and "neu/default" in out:
        res["full_over_default"] = out["neu/full"] / out["neu/default"]
    return res


def _fmt(v) -> str:
    if isinstance(v, dict):
        ci = v.get("ci95")
        val = v.get("value")
        if val is None:
            return "-"
        return f"{val:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(results: dict[tuple[str, str, int], dict]) -> str:
    head = (
        "| data | variant | seed | accuracy | balanced acc | macro AUROC | t2i R@1 | i2t R@1 | "
        "s/step | peak GB | wall s | to best s |"
    )
    lines = [head, "|" + "---|" * 12]
    for (name, variant, seed), r in results.items():
        if r.get("failed"):
            lines.append(f"| {name} | {variant} | {seed} | failed |" + " |" * 8)
            continue
        lines.append(
            f"| {name} | {variant} | {seed} | {_fmt(r['accuracy'])} | "
            f"{_fmt(r['balanced_accuracy'])} | {_fmt(r['macro_auroc'])} | {_fmt(r['t2i_R@1'])} | "
            f"{_fmt(r['i2t_R@1'])} | {_fmt(r['step_s'])} | {r['peak_rss_gb']:.2f} | "
            f"{r['wall_s']:.0f} | {_fmt(r['wall_to_best_s'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("neu", "covid", "deeppcb", "synthetic"):
        p.add_argument(f"--{name}", type=Path, help=f"{name} manifest (domainclip data import ...)")
    p.add_argument("--out", type=Path, default=Path("/tmp/recipes"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=0, help="steps per run (0: per data set)")
    p.add_argument("--boards", type=int, default=120, help="DeepPCB train boards (val/test a third)")
    p.add_argument("--rerun", action="store_true")
    p.add_argument("--speed", action="store_true", help="interleaved step times only")
    p.add_argument("--rounds", type=int, default=8, help="--speed: timed steps per variant")
    p.add_argument("--speed-variants", default="top2,top1,locked",
                   help=f"--speed: any of {','.join(SPEED_VARIANTS)} (full: NEU-DET only)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs").mkdir(exist_ok=True)
    if args.speed:
        speed(args)
        return
    results = {}
    for name, (manifest, prompts) in _manifests(args).items():
        for variant in args.variants.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                t = time.perf_counter()
                results[(name, variant, seed)] = run_one(name, variant, manifest, prompts, seed, args)
                print(f"{name} {variant} s{seed}: {time.perf_counter() - t:.0f} s", flush=True)
    text = table(results)
    (args.out / "recipes.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
