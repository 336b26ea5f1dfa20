"""`domainclip finetune CONFIG [--set key=value ...] [--out RUN] [--resume]` (`domainclip export`,
merged backbones and ONNX, lives in `domainclip.deploy.cli`).

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
    print(summary(result))
    return 0


def summary(result) -> str:
    """The lines `domainclip finetune` prints for a finished run (`RunResult`)."""
    shown = {
        k: round(v, 4)
        for k, v in result.best_metrics.items()
        if k in ("zero_shot_acc", "zero_shot_macro_f1", "head_acc", "head_macro_f1", "t2i_R@1", "i2t_R@1", "loss")
    }
    best = (
        f"best (step {result.best_step}): {json.dumps(shown)}"
        if result.best_step >= 0
        else "best: none (every validation collapsed; no `best` checkpoint was saved, only `last`)"
    )
    lines = [
        f"run: {result.run_dir}",
        f"method: {result.method}, trainable parameters: {result.trainable_params:,} of "
        f"{result.total_params:,} ({100 * result.trainable_fraction:.3f}%)",
        best,
        f"wall time: {result.wall_seconds:.1f} s (feature cache {result.cache_seconds:.1f} s)",
    ]
    by_split = result.info.get("unreadable_images") or {}
    if result.skipped_images or result.skipped_batches or result.skipped_draws:
        lines.append(
            f"skipped: {result.skipped_images} unreadable images ("
            + ", ".join(f"{k} {v}" for k, v in by_split.items())
            + f"; drawn into batches {result.skipped_draws} times), "
            f"{result.skipped_batches} batches without usable pairs"
        )
    if any(result.truncated_texts.values()):
        lines.append(
            "truncated texts (longer than the text context): "
            + ", ".join(f"{k} {v}" for k, v in result.truncated_texts.items())
        )
    kinds: dict[str, list[str]] = {}
    for w in result.warnings:
        kinds.setdefault(w["kind"], []).append(w["message"])
    for kind, messages in kinds.items():
        more = f" (+{len(messages) - 1} more in result.json)" if len(messages) > 1 else ""
        lines.append(f"warning [{kind}]: {messages[0]}{more}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `finetune` command."""
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
