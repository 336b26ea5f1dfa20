"""`domainclip finetune CONFIG [--set key=value ...] [--out RUN] [--resume]` and `domainclip export`.

Multi-process: `torchrun --nproc_per_node N -m domainclip finetune CONFIG ...` (see distributed.py).
Tip for CPU training: start the process with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
in its environment (glibc then stops returning memory to the kernel between steps; see
docs/finetune.md and benchmarks/finetune_speed.py).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _finetune(args: argparse.Namespace) -> int:
    from domainclip.finetune.config import list_keys_text, load_config
    from domainclip.finetune.run import finetune

    if args.list_keys:
        print(list_keys_text())
        return 0
    if not args.config:
        from domainclip.errors import ConfigError

        raise ConfigError(
            "domainclip finetune needs a CONFIG file, e.g. configs/neu_det_lora.yaml "
            "(--list-keys prints every key)"
        )
    cfg = load_config(args.config, args.set or [])
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = finetune(cfg, out, resume=args.resume)
    best = result.best_metrics
    shown = {
        k: round(v, 4)
        for k, v in best.items()
        if k in ("zero_shot_acc", "zero_shot_macro_f1", "head_acc", "head_macro_f1", "t2i_R@1", "i2t_R@1", "loss")
    }
    print(
        f"run: {result.run_dir}\nmethod: {result.method}, trainable parameters: "
        f"{result.trainable_params:,} of {result.total_params:,} ({100 * result.trainable_fraction:.3f}%)\n"
        f"best (step {result.best_step}): {json.dumps(shown)}\n"
        f"wall time: {result.wall_seconds:.1f} s (feature cache {result.cache_seconds:.1f} s)"
        + (
            f"\nskipped: {result.skipped_batches} batches, {result.skipped_images} images"
            if result.skipped_batches or result.skipped_images
            else ""
        )
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from domainclip.errors import ConfigError
    from domainclip.runs import export_merged

    if not args.merge:
        raise ConfigError(
            "export writes a merged checkpoint: pass --merge. (Unmerged LoRA adapters are already in "
            "RUN/checkpoints/<best|last>/image_lora and text_lora in peft format.)"
        )
    out = export_merged(args.run, args.out, checkpoint=args.checkpoint)
    print(
        f"exported {args.run} ({args.checkpoint}, LoRA merged) to {out}; load it with load_backbone('{out}')"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `finetune` and `export` commands."""
    p = sub.add_parser("finetune", help="fine-tune a backbone on paired data (LoRA, adapters, ...)")
    p.add_argument("config", nargs="?", help="YAML config (see configs/*.yaml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=5e-4 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--list-keys", action="store_true", help="print every config key with its default and help"
    )
    p.set_defaults(func=_finetune)
    e = sub.add_parser(
        "export", help="merge a run's LoRA adapters into the base weights and save a backbone"
    )
    e.add_argument("run", help="run directory")
    e.add_argument(
        "--merge", action="store_true", help="merge LoRA into the base weights (required)"
    )
    e.add_argument(
        "--out",
        required=True,
        help="output directory (loadable with load_backbone / open_clip local-dir:)",
    )
    e.add_argument("--checkpoint", default="best", choices=("best", "last"))
    e.set_defaults(func=_export)
