"""`domainclip explain MODEL --image PATH --text "..." [...]` and batch mode `--manifest M`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from domainclip.explain.errors import ExplainError
from domainclip.privacy import add_show_paths_argument

log = logging.getLogger(__name__)

METHOD_CHOICES = ("gradcam", "ig", "occlusion", "rollout", "chefer", "all")


def _methods(chosen: list[str] | None, valid: tuple[str, ...]) -> list[str]:
    chosen = chosen or ["gradcam"]
    if "all" in chosen:
        return list(valid)
    return list(dict.fromkeys(chosen))


def _checks(args: argparse.Namespace) -> list[str]:
    picked = {
        "randomisation": args.check_randomisation,
        "text": args.check_text,
        "deletion": args.check_deletion,
        "localisation": args.check_localisation,
    }
    return [name for name, on in picked.items() if on or args.sanity]


def _region(args: argparse.Namespace, image: str):
    """Ground truth for a single image from --mask or --boxes (original pixels)."""
    from domainclip.datasets import load_image, load_mask
    from domainclip.explain.inputs import boxes_to_mask

    if args.mask:
        # load_mask: missing, empty, truncated, a symlink loop or a decompression bomb is an
        # ImageReadError naming the file (raw PIL raised DecompressionBombError, not OSError)
        return load_mask(args.mask), "mask"
    if args.boxes:
        try:
            boxes = json.loads(args.boxes)
        except json.JSONDecodeError as exc:
            raise ExplainError(
                f"--boxes must be JSON like '[[xmin, ymin, xmax, ymax], ...]': {exc}"
            ) from exc
        w, h = load_image(image).size
        return boxes_to_mask(boxes, w, h), "boxes"
    return None


def _print_summary(index_path: Path) -> None:
    from domainclip.explain.index import ExplainIndex

    index = ExplainIndex.read(index_path)
    print(f"{'method':10} {'kind':9} {'score':>8} {'sec':>6}  details")
    for item in index.items[:40]:
        details = []
        if item.localisation:
            loc = item.localisation
            details.append(
                f"pointing {loc.pointing:.2f} (random {loc.pointing_baseline:.2f}"
                + (f"; {loc.tolerance_px:g} px: {loc.pointing_tolerant:.2f}" if loc.pointing_tolerant is not None else "")
                + ") "
                f"energy {loc.energy if loc.energy is not None else float('nan'):.2f} "
                f"(random {loc.area:.2f})"
            )
        for key, value in item.sanity.items():
            if isinstance(value, float):
                details.append(f"{key} {value:.3f}")
        score = float("nan") if item.score is None else item.score
        print(
            f"{item.method:10} {item.kind:9} {score:8.3f} {item.seconds:6.2f}  "
            + "; ".join(details)
        )
    if len(index.items) > 40:
        print(f"... {len(index.items) - 40} more rows in the index")
    for method, summ in index.summary.items():
        loc = summ.localisation
        if loc.get("n"):
            print(
                f"{method}: localisation over {loc['n']} images: pointing {loc['pointing']:.3f} vs "
                f"random {loc['pointing_random']:.3f}"
                + (
                    f" (within {loc['tolerance_px']:g} px: {loc['pointing_tolerant']:.3f} vs random "
                    f"{loc['pointing_tolerant_random']:.3f})"
                    if loc.get("pointing_tolerant") is not None
                    else ""
                )
                + f"; energy {_num(loc['energy'])} vs random {_num(loc['energy_random'])}"
            )
        if summ.sanity:
            nums = ", ".join(f"{k} {v:.3f}" for k, v in summ.sanity.items() if v is not None)
            print(f"{method}: mean sanity numbers: {nums}")
    for tok in index.tokens[:5]:
        words = ", ".join(f"{w} {_num(s, '+.3f')}" for w, s in zip(tok.words, tok.scores, strict=True))
        print(f"tokens (row {tok.row}): {words}")
    if index.skipped:
        print(f"skipped {len(index.skipped)} rows (see 'skipped' in the index)")
    print(f"index: {index_path}")


def _num(v: float | None, spec: str = ".3f") -> str:
    """A number of the index (null when it was NaN) as text."""
    return format(float("nan") if v is None else v, spec)


def _run(args: argparse.Namespace) -> int:
    from domainclip.explain.batch import ExplainSettings, explain_files, explain_manifest
    from domainclip.explain.image import methods_for
    from domainclip.runs import resolve_model

    if bool(args.image) == bool(args.manifest):
        raise ExplainError("give exactly one of --image PATH (with --text) or --manifest FILE")
    if args.image and args.text is None:
        raise ExplainError("--image needs --text 'the description to explain'")
    if args.image and args.check_localisation and not (args.mask or args.boxes):
        raise ExplainError(
            "--check-localisation with --image needs the ground truth: --mask PNG or --boxes JSON"
        )
    resolved = resolve_model(
        args.model,
        device=args.device,
        checkpoint=args.checkpoint,
        fit=args.fit,
        image_size=args.image_size,
    )
    bb, run = resolved.backbone, resolved.run_dir
    if args.score == "probability" and resolved.calibrator.kind != "temperature":
        # per-class calibrators are fitted on the class set; explain's softmax is over the
        # explained prompt and --against prompts, so only a temperature carries over
        log.warning(
            "the run's %s calibrator is per class and does not apply to explain's prompt-vs-others "
            "softmax: the probability score uses T = 1", resolved.calibrator.kind,
        )
    valid = methods_for(bb)
    methods = _methods(args.method, valid)
    wrong = [m for m in methods if m not in valid]
    if wrong:
        raise ExplainError(
            f"{', '.join(wrong)} needs a ViT image tower; {args.model} has a {bb.image_arch} "
            f"image tower. Use one of: {', '.join(valid)} (or --method all)"
        )
    settings = ExplainSettings(
        methods=methods,
        checks=_checks(args),
        score=args.score,
        temperature=resolved.temperature if args.score == "probability" else 1.0,
        others=args.against or (),
        prompt_b=args.text_b,
        token_attribution=args.token_attribution,
        options={
            "ig": {"steps": args.steps, "baseline": args.baseline},
            "occlusion": {"baseline": args.baseline},
            "tokens": {"steps": args.steps},
        },
        tolerance=args.tolerance,
        pointing_tolerance=args.pointing_tolerance,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else (resolved.run.layout.explain if resolved.run else Path("explain-out"))
    if args.image:
        index = explain_files(
            bb,
            args.image,
            args.text,
            out,
            settings,
            _region(args, args.image),
            str(run) if run else None,
            resolved.preprocess,
            show_paths=args.show_paths,
        )
    else:
        index = explain_manifest(
            bb,
            args.manifest,
            out,
            settings,
            split=args.split or None,
            limit=args.limit,
            run=str(run) if run else None,
            preprocess=resolved.preprocess,
            show_paths=args.show_paths,
        )
    _print_summary(index)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `explain` command."""
    from domainclip.runs.run import add_input_arguments

    p = sub.add_parser(
        "explain",
        help="saliency maps, token attribution and sanity checks for image-text scores",
        description="Explain why a model links an image to a text. Writes maps (.npy), overlays "
        "(.png), token attribution (.html) and index.json (read by the dashboard).",
    )
    p.add_argument("model", metavar="RUN_OR_BACKBONE", help="fine-tuning run dir or backbone spec")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--image", help="one image file")
    src.add_argument("--manifest", help="batch mode: explain each row's image with its own text")
    p.add_argument("--text", help="the description to explain (with --image)")
    p.add_argument("--text-b", help="second description: adds contrast maps (A minus B)")
    p.add_argument(
        "--method",
        action="append",
        choices=METHOD_CHOICES,
        help="saliency method (repeatable; default gradcam; rollout/chefer need a ViT tower)",
    )
    p.add_argument(
        "--score",
        choices=("similarity", "probability"),
        default="similarity",
        help="explain the similarity logit, or the temperature-scaled probability vs --against",
    )
    p.add_argument("--against", action="append", help="competing prompt for --score probability")
    p.add_argument("--token-attribution", action="store_true", help="attribute the text to words")
    p.add_argument("--steps", type=int, default=32, help="integration steps (ig, tokens)")
    p.add_argument(
        "--baseline",
        choices=("black", "blur", "mean"),
        help="reference image for ig (default black) and occlusion fill (default mean)",
    )
    checks = p.add_argument_group("sanity checks")
    checks.add_argument("--sanity", action="store_true", help="run every check below")
    checks.add_argument(
        "--check-randomisation",
        action="store_true",
        help="Spearman correlation with the map of a randomised image tower (low is good)",
    )
    checks.add_argument(
        "--check-text",
        action="store_true",
        help="Spearman correlation with maps for unrelated / gibberish prompts (low is good)",
    )
    checks.add_argument(
        "--check-deletion", action="store_true", help="deletion/insertion AUC vs random order"
    )
    checks.add_argument(
        "--check-localisation",
        action="store_true",
        help="pointing game / energy in region vs random (manifest mask or boxes, --mask, --boxes)",
    )
    checks.add_argument("--mask", help="ground-truth mask PNG for --image (non-zero = region)")
    checks.add_argument("--boxes", help="ground-truth boxes for --image as JSON in pixels")
    checks.add_argument(
        "--tolerance", type=float, default=0.0, help="pointing tolerance (px) of the headline pointing (default 0: strict)"
    )
    checks.add_argument(
        "--pointing-tolerance",
        type=float,
        default=15.0,
        metavar="PX",
        help="the tolerant pointing game reported beside the strict one (default 15 px, the "
        "standard; px of the map: the model input, or the original image for --fit tile)",
    )
    batch = p.add_argument_group("batch mode")
    batch.add_argument("--split", default="test", help="manifest split ('' for all rows)")
    batch.add_argument("--limit", type=int, help="at most N rows")
    p.add_argument("--out", help="output folder (default RUN/explain or ./explain-out)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="for runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    add_show_paths_argument(p)
    add_input_arguments(p)
    p.set_defaults(func=_run)
