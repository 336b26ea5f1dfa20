"""`domainclip predict` and `domainclip export`.

`predict --onnx DIR` imports only `domainclip.deploy.onnx_runtime` (no torch), so it runs where
only the `domainclip[runtime]` extra is installed; `domainclip.cli` builds a parser with just this
module for it.
"""

from __future__ import annotations

import argparse
import json

from domainclip.errors import ConfigError


def _predict(args: argparse.Namespace) -> int:
    if (args.run is None) == (args.onnx is None):
        raise ConfigError("give a RUN directory or --onnx DIR (an export), not both and not neither")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.onnx is not None:
        from domainclip.deploy.onnx_runtime import predict_onnx

        res = predict_onnx(args)
    else:
        from domainclip.deploy.predict import predict_run

        res = predict_run(args)
    counts = res["counts"]
    gate = res.get("gate") or {}
    print(
        f"scored {counts['n_scored']} images, {counts['n_failed']} could not be read "
        f"(listed in {args.out} with their reason); gate: {gate.get('verdict', 'never run')}"
        f"{' (--allow-ungated)' if args.allow_ungated else ''}; provenance: {args.out}.provenance.json"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    fmt = args.format or ("backbone" if args.merge else None)
    if fmt is None:
        raise ConfigError(
            "choose what to export: --format onnx (ONNX graphs + manifest, for `domainclip predict "
            "--onnx`) or --merge (LoRA merged into the base weights, saved as a backbone folder)"
        )
    if fmt == "backbone":
        from domainclip.runs import export_merged

        out = export_merged(args.run, args.out, checkpoint=args.checkpoint)
        print(f"exported {args.run} ({args.checkpoint}, LoRA merged) to {out}; load it with load_backbone('{out}')")
        return 0
    from domainclip.deploy.export import export_onnx

    man = export_onnx(args.run, args.out, quantize=args.quantize, checkpoint=args.checkpoint,
                      calibration_images=args.calibration_images, allow_uncalibrated=args.allow_uncalibrated)
    print(json.dumps({"out": args.out, "default_precision": man["default_precision"],
                      "parity": man["parity"], "seconds": man["seconds"]}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `predict` and `export` commands."""
    p = sub.add_parser("predict", help="score new images with a run (PyTorch) or an ONNX export")
    p.add_argument("run", nargs="?", help="run directory (omit with --onnx)")
    p.add_argument("--onnx", metavar="DIR", help="folder written by `domainclip export` (ONNX Runtime, no torch)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="score every file below this folder")
    src.add_argument("--data", metavar="MANIFEST", help="score the images of a manifest")
    p.add_argument("--split", help="with --data: only this split")
    p.add_argument(
        "--show-paths",
        action="store_true",
        help="write image paths into the output (default: 'row N' for --data, 'file N' for the "
        "file at position N (the row column, from 0) of the sorted --images listing; file names often carry patient ids)",
    )
    p.add_argument("--out", required=True, help="output FILE.csv or FILE.jsonl (+ FILE.provenance.json)")
    p.add_argument("--prompt", action="append", help="free text scored against each image (repeatable)")
    p.add_argument("--review-below", type=float, help="needs_review when confidence is below this "
                   "(default: the calibrator record's review_below, else 0.5)")
    p.add_argument("--allow-ungated", action="store_true", help="score although the audit gate failed "
                   "or was never run (recorded in the provenance)")
    p.add_argument("--allow-uncalibrated", action="store_true", help="score without a fitted calibrator")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (PyTorch)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "int8"), help="with --onnx: graphs to run "
                   "(default: the export's default_precision)")
    p.add_argument("--threads", type=int, help="with --onnx: ONNX Runtime intra-op threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_predict)

    e = sub.add_parser("export", help="export a run: ONNX graphs (+ int8) with a manifest, or a merged backbone")
    e.add_argument("run", help="run directory")
    e.add_argument("--format", choices=("onnx", "backbone"), help="onnx: image + text graphs and "
                   "manifest.json; backbone: LoRA merged, a folder load_backbone reads (= --merge)")
    e.add_argument("--merge", action="store_true", help="the merged backbone (same as --format backbone)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--quantize", choices=("int8",), help="also write int8 graphs (ONNX Runtime quantization)")
    e.add_argument("--calibration-images", type=int, default=64, help="train images for static int8")
    e.add_argument("--checkpoint", default="best", choices=("best", "last"))
    e.add_argument("--allow-uncalibrated", action="store_true", help="export without a fitted calibrator")
    e.set_defaults(func=_export)
