"""Per-step time, peak memory and achieved FLOP rate of the fine-tuning recipes (not a test).

Variants, each measured in a fresh subprocess (so peak RSS is per variant) with the glibc
malloc settings from STACK.md in its environment:

  default       locked image tower + cached image features + text LoRA (the toolkit's Trainer)
  lora_nocache  the same, but the frozen image tower runs every step (no feature cache)
  full          full fine-tuning of both towers (images decoded from disk every step)
  overhead      the toolkit's default step and a plain PyTorch loop doing the same math, alternated
                step by step in ONE process (so both see the same machine load): toolkit overhead

Shared machines: every child also times a 2048x2048 fp32 matmul after each step, and medians are
reported. "% peak" compares a step's FLOP rate with that matmul rate measured alongside it, and
the speed-up is also given "load-normalised" (each step time multiplied by its own matmul rate),
which stays meaningful when other processes compete for the cores.

Texts are padded to the longest text of each batch (the tokenizer trims), and each distinct text
is encoded once per batch in every variant. FLOPs: torch's FlopCounterMode for everything except
convolutions, which are counted analytically from their shapes (FlopCounterMode over-counts
depthwise convolutions ~380x, see STACK.md): 2*B*Cout*Hout*Wout*(Cin/groups)*kh*kw per forward,
x3 when the weights train (input and weight gradients), x2 when only input gradients flow.

    python benchmarks/finetune_speed.py                       # synthetic texts, batch 32, 224 px
    python benchmarks/finetune_speed.py --manifest /tmp/neu/manifest.csv --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
VARIANTS = ("default", "lora_nocache", "full", "overhead")
TARGETS = {"speedup_vs_full": 7.0, "memory_vs_full": 0.5, "matmul_fraction": 0.60, "overhead": 0.10}


# ----------------------------------------------------------------------------------------------
# Parent: run every variant in its own process and print the table


def _run_child(variant: str, args: argparse.Namespace, manifest: Path) -> dict:
    env = {**os.environ, **MALLOC_ENV}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--manifest",
        str(manifest),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_rate(threads: int, n: int = 2048, reps: int = 10) -> float:
    """Dense fp32 matmul rate (GFLOP/s) with `threads` threads: the machine's practical peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--manifest", help="manifest whose texts are used (default: generated synthetic set)"
    )
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    manifest = Path(args.manifest) if args.manifest else _synthetic_manifest()
    rate = matmul_rate(args.threads)
    res = {v: _run_child(v, args, manifest) for v in args.variants.split(",")}
    _print_table(res, rate, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": rate, "variants": res}, indent=2))
    return 0


def _synthetic_manifest() -> Path:
    from domainclip.datasets.importers.synthetic import generate_synthetic

    out = Path(tempfile.mkdtemp(prefix="dc-speed-"))
    return generate_synthetic(
        out, n=160, size=128, seed=0, val_frac=0.1, test_frac=0.0
    ).manifest_path


def _print_table(res: dict, rate: float, args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nbatch {args.batch}, {args.threads} threads, median of {args.steps} steps; fp32 matmul "
        f"{rate:.0f} GFLOP/s measured first; load average {load:.1f}"
    )
    print(
        f"{'variant':<14}{'s/step':>9}{'peak RSS MB':>13}{'GFLOP/step':>12}{'GFLOP/s':>9}"
        f"{'matmul alongside':>18}{'% of it':>9}"
    )
    steps = {v: r for v, r in res.items() if v != "overhead"}
    for v, r in steps.items():
        gfs = r["gflop"] / r["step_s"]
        print(
            f"{v:<14}{r['step_s']:>9.3f}{r['peak_rss_mb']:>13.0f}{r['gflop']:>12.1f}{gfs:>9.1f}"
            f"{r['matmul_gflops']:>18.0f}{100 * gfs / r['matmul_gflops']:>8.0f}%"
        )
    if {"default", "full"} <= steps.keys():
        d, f = steps["default"], steps["full"]
        sp = f["step_s"] / d["step_s"]
        sp_norm = (f["step_s"] * f["matmul_gflops"]) / (d["step_s"] * d["matmul_gflops"])
        mem = d["peak_rss_mb"] / f["peak_rss_mb"]
        print(
            f"\ndefault vs full fine-tuning: {sp:.1f}x faster ({sp_norm:.1f}x load-normalised; target "
            f">= {TARGETS['speedup_vs_full']:.0f}x), {mem:.2f}x the peak memory "
            f"(target <= {TARGETS['memory_vs_full']})"
        )
        frac = d["gflop"] / d["step_s"] / d["matmul_gflops"]
        print(
            f"default step: {100 * frac:.0f}% of the matmul rate measured alongside "
            f"(target >= {100 * TARGETS['matmul_fraction']:.0f}%)"
        )
    if {"default", "lora_nocache"} <= steps.keys():
        d, n = steps["default"], steps["lora_nocache"]
        print(
            f"feature cache speed-up: {n['step_s'] / d['step_s']:.1f}x "
            f"({n['step_s'] * n['matmul_gflops'] / (d['step_s'] * d['matmul_gflops']):.1f}x load-normalised)"
        )
    if "overhead" in res:
        o = res["overhead"]
        ov = o["toolkit_s"] / o["bare_s"] - 1
        print(
            f"toolkit overhead vs a bare PyTorch loop (alternated in one process): {100 * ov:+.1f}% "
            f"({o['toolkit_s']:.3f} vs {o['bare_s']:.3f} s/step; target <= {100 * TARGETS['overhead']:.0f}%)"
        )


# ----------------------------------------------------------------------------------------------
# Child: one variant


def _matmul_once(n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time.perf_counter()
    a @ b
    return 2 * n**3 / (time.perf_counter() - t) / 1e9


def _child(args: argparse.Namespace) -> dict:
    import statistics

    import torch

    torch.set_num_threads(args.threads)
    if args.child == "overhead":
        return _overhead(args)
    step, model = _toolkit(args)
    for _ in range(args.warmup):
        step()
    # batches differ in text lengths: average the count over a few steps
    gflop = sum(_flops(step, model) for _ in range(3)) / 3 / 1e9
    times, rates = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        rates.append(_matmul_once())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "step_s": statistics.median(times),
        "matmul_gflops": statistics.median(rates),
        "peak_rss_mb": peak,
        "gflop": gflop,
        "times": times,
    }


def _overhead(args: argparse.Namespace) -> dict:
    """Toolkit step and bare step alternated in one process (same load for both)."""
    import statistics

    tk, _ = _toolkit(argparse.Namespace(**{**vars(args), "child": "default"}))
    bare, _ = _bare(args)
    for _ in range(args.warmup):
        tk()
        bare()
    t_tk, t_bare = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        tk()
        t_tk.append(time.perf_counter() - t)
        t = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t)
    return {
        "toolkit_s": statistics.median(t_tk),
        "bare_s": statistics.median(t_bare),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _config(args, variant: str):
    from domainclip.finetune.config import load_config

    base = REPO / "domainclip" / "configs" / "neu_det_lora.yaml"  # the default recipe as shipped
    overrides = [
        f"data.manifest={args.manifest}",
        f"train.batch_size={args.batch}",
        "train.max_steps=100000",
        "train.progress=false",
        "data.val_split=val",
    ]
    if variant == "lora_nocache":
        overrides.append("train.cache_features=never")
    if variant == "full":
        overrides += [
            "method.name=full",
            "method.image_tower=",
            "method.text_tower=",
            "optim.lr=1e-5",
        ]
    return load_config(base, overrides)


def _toolkit(args):
    """The toolkit's own Trainer step (what `domainclip finetune` runs)."""
    import torch

    from domainclip.finetune.adaptation import prepare
    from domainclip.finetune.data import CachedFeatures, load_splits
    from domainclip.finetune.distributed import DistInfo
    from domainclip.finetune.runlog import RunLog
    from domainclip.finetune.trainer import Trainer
    from domainclip.models import load_backbone

    cfg = _config(args, args.child)
    bb = load_backbone(cfg.backbone.spec)
    adapt = prepare(bb, cfg.method)
    splits = load_splits(cfg.data, 0)
    cache = None
    if args.child == "default":  # the real cache's shape; its values do not change the cost
        with torch.no_grad():
            dim = adapt.pooled_image(torch.zeros(1, 3, bb.image_size, bb.image_size)).shape[-1]
        cache = {
            k: CachedFeatures(torch.randn(len(s), dim), torch.arange(len(s)), 0)
            for k, s in (("train", splits.train), ("val", splits.val))
        }
    if adapt.modes["image"] != "locked":
        adapt.base.visual.to(memory_format=torch.channels_last)
    from domainclip.datasets.transforms import eval_transform, train_transform

    tr = {"train": train_transform(bb, "none"), "val": eval_transform(bb)}
    run = Path(tempfile.mkdtemp(prefix="dc-speed-run-"))
    # lora_nocache: cache None, so images are decoded and the locked tower runs (no grad) each step
    trainer = Trainer(
        cfg,
        adapt,
        splits,
        cache,
        tr,
        run,
        DistInfo(),
        torch.device("cpu"),
        RunLog(run, enabled=False),
    )
    stream = _forever(trainer)

    def step():
        trainer._train_step(next(stream))

    return step, adapt.model


def _forever(trainer):
    """Micro-batch groups of one epoch after another (also used by recipes.py)."""
    epoch = 0
    while True:
        for _, group in trainer._micro_batches(epoch, 0):
            yield group
        epoch += 1


def _bare(args):
    """The default recipe written as a plain loop: same model, same LoRA, same math."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from domainclip.datasets.manifest import read_manifest
    from domainclip.finetune.towers import BERT_LAYERS
    from domainclip.models import load_backbone

    bb = load_backbone("default")
    m = bb.model
    m.requires_grad_(False)
    m.text.transformer = get_peft_model(
        m.text.transformer, LoraConfig(r=8, lora_alpha=16, target_modules=BERT_LAYERS)
    )
    for p in (*m.visual.head.parameters(), *m.text.proj.parameters(), m.logit_scale):
        p.requires_grad_(True)
    m.train()
    m.visual.eval()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    texts = [r.text for r in read_manifest(args.manifest).rows if r.split == "train"]
    feats = torch.randn(len(texts), 1280)
    # The toolkit's batch order (same seed): the same texts in the same steps as its Trainer.
    from domainclip.finetune.data import GlobalBatches

    sampler = GlobalBatches(len(texts), args.batch, seed=0)
    order = (b for epoch in range(10**6) for b in sampler.epoch(epoch))
    state = {"i": 0}

    def step():
        idx = torch.tensor(next(order))
        batch = [texts[i] for i in idx]
        uniq = list(dict.fromkeys(batch))
        img = F.normalize(m.visual.head(feats[idx]), dim=-1)
        tu = m.encode_text(bb.tokenizer(uniq))
        txt = F.normalize(tu[[uniq.index(t) for t in batch]], dim=-1)
        logits = m.logit_scale.exp().clamp(max=100) * img @ txt.T
        y = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["i"] += 1

    return step, m


def _flops(step, model) -> float:
    """FLOPs of one step: FlopCounterMode without convolutions + convolutions counted analytically."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    conv_flops = {"n": 0.0}
    hooks = []

    def hook(mod, inp, out):
        x = inp[0]
        k = mod.kernel_size[0] * mod.kernel_size[1]
        fwd = 2 * out.numel() * (mod.in_channels // mod.groups) * k
        # forward, + weight gradient when the weights train, + input gradient when one flows back
        conv_flops["n"] += fwd * (1 + int(mod.weight.requires_grad) + int(x.requires_grad))

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(hook))
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    for h in hooks:
        h.remove()
    total = counter.get_total_flops()
    per_op = counter.get_flop_counts().get("Global", {})
    conv_counted = sum(v for op, v in per_op.items() if "convolution" in str(op))
    return total - conv_counted + conv_flops["n"]


if __name__ == "__main__":
    sys.exit(main())
