"""`domainclip models info SPEC` and `domainclip models save SPEC OUT`."""

from __future__ import annotations

import argparse
import json


def _info(args: argparse.Namespace) -> int:
    from domainclip.models import load_backbone

    bb = load_backbone(args.spec)
    params = sum(p.numel() for p in bb.model.parameters())
    out = {
        "spec": bb.spec,
        "family": bb.family,
        "image_arch": bb.image_arch,
        "image_size": bb.image_size,
        "context_length": bb.tokenizer.context_length,
        "parameters": params,
        "load_seconds": bb.info["load_seconds"],
    }
    print(json.dumps(out, indent=2))
    return 0


def _save(args: argparse.Namespace) -> int:
    from domainclip.models import load_backbone, save_backbone

    out = save_backbone(load_backbone(args.spec), args.out)
    print(f"saved {args.spec} to {out} (load it with: domainclip ... {out})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `models` command group."""
    p = sub.add_parser("models", help="inspect and save backbones")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    info = msub.add_parser("info", help="load a backbone and print what it is")
    info.add_argument("spec", help="default | open_clip:ARCH@WEIGHTS | hf-clip:DIR | saved DIR")
    info.set_defaults(func=_info)
    save = msub.add_parser("save", help="save a backbone as a directory that load_backbone reloads")
    save.add_argument("spec")
    save.add_argument("out")
    save.set_defaults(func=_save)
