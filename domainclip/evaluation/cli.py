"""`domainclip evaluate RUN_OR_BACKBONE --data MANIFEST ...` (see `domainclip evaluate --help`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from domainclip.datasets.subgroups import add_bin_column_argument, parse_bin_columns
from domainclip.errors import ConfigError

if TYPE_CHECKING:
    from domainclip.evaluation.results import EvaluationResult


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _skipped_note(r: EvaluationResult) -> str:
    """", 1 unreadable image skipped" etc.: the rows of the split that the numbers leave out."""
    parts = [f"{r.data.n_unreadable} unreadable image(s)"] if r.data.n_unreadable else []
    parts += [f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(r.data.skipped.items()) if n]
    return f" ({', '.join(parts)} skipped)" if parts else ""


def _summary(r: EvaluationResult) -> str:
    """A few lines on the terminal: the headline metric, AUROC, ECE, retrieval, forgetting."""
    from domainclip.evaluation.report import fmt

    cls, cal, t, main = r.classification, r.calibration, r.temperature, r.headline_metric
    lines = [
        f"{r.name}: {r.data.n_evaluated} images of split {r.data.split}{_skipped_note(r)} "
        f"(prompts {r.prompts.version}, "
        + (f"T={t.value:.4g} {t.source}" if t.kind in (None, "temperature") else f"{t.kind} calibrator {t.source}")
        + (f"; input {r.input.describe()})" if r.input else ")"),
        f"  {main}: {fmt(cls[main])}",
        *([f"  macro AUROC: {fmt(cls['macro_auroc'])}"] if main != "macro_auroc" else []),
        f"  ECE before: {fmt(cal.before['ece'])}"
        + (f", after: {fmt(cal.after['ece'])}" if cal.after else ""),
        f"  t2i R@1: {fmt(r.retrieval['t2i_R@1'])}, i2t R@1: {fmt(r.retrieval['i2t_R@1'])}",
    ]
    if t.kind not in (None, "temperature"):
        lines.insert(1, f"  calibrator: {t.describe()} ({t.source})")
    if r.conformal:
        c = r.conformal
        lines.append(
            f"  conformal ({c['thresholds']['method']}, target {c['target_coverage']:.2f}): "
            f"coverage {fmt(c['coverage'])}, mean set size {c['mean_set_size']:.2f}, "
            f"singletons {c['singleton_rate']:.2f}"
        )
    if r.selective:
        lines.append(f"  selective: AURC {r.selective['aurc']:.3f} (optimal {r.selective['aurc_optimal']:.3f})")
    if r.forgetting:
        f = r.forgetting
        pts = ", ".join(
            f"a={a:g}: {fmt(x, 2)} / {fmt(y, 2)}"
            for a, x, y in zip(f["alphas"], f["target"], f["reference"], strict=True)
        )
        lines.append(f"  forgetting (target / reference {f['metric']}): {pts}")
    if r.shortcut is not None:
        from domainclip.evaluation.shortcut import describe

        lines.append(
            f"  shortcut check: {r.shortcut.verdict.replace('_', ' ')}. {describe(r.shortcut)}"
        )
    if r.text_leakage:
        leak, m = r.text_leakage, r.text_leakage["retrieval"]
        lines.append(
            f"  texts name their label ({', '.join(leak['leaking_classes'])}): with those words "
            f"masked t2i R@1 {fmt(m['t2i_R@1'])}, i2t R@1 {fmt(m['i2t_R@1'])}"
        )
    if r.baselines:
        lines.append(f"  baselines: {r.baselines.get('verdict', '')}")
    failing = (r.failing_classes or {}).get("classes") or []
    if failing:
        lines.append(
            "  failing classes: " + "; ".join(f"{c['class']} ({c['why']})" for c in failing)
        )
    for w in r.warnings:
        lines.append(f"  warning: {w['message']}")
    if r.outputs:
        lines.append(f"  wrote {r.outputs['metrics']} (+ report.md, plots, predictions.csv)")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from domainclip.evaluation.evaluate import EvaluationOptions, run_evaluation
    from domainclip.evaluation.shortcut import ShortcutSettings

    if args.bins < 1:
        raise ConfigError(f"--bins must be >= 1, got {args.bins}")
    if args.conformal is not None and not 0 < args.conformal < 1:
        raise ConfigError(f"--conformal is the miscoverage alpha in (0, 1), e.g. 0.1; got {args.conformal}")
    if not 0 <= args.refer_error < 1:
        raise ConfigError(f"--refer-error is a target error rate in [0, 1), e.g. 0.05; got {args.refer_error}")
    if args.n_boot < 0:
        raise ConfigError(f"--n-boot must be >= 0, got {args.n_boot}")
    for flag, value in (("--min-recall", args.min_recall), ("--min-auroc", args.min_auroc)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{flag} must be between 0 and 1 (a class below it is named as failing), got {value}")
    options = EvaluationOptions(
        name=args.name,
        classes=args.classes,
        fit_temperature=args.fit_temperature,
        calibrate=args.calibrate,
        conformal=args.conformal,
        conformal_method=args.conformal_method,
        conformal_randomized=args.conformal_randomized,
        mondrian=args.mondrian,
        refer_error=args.refer_error,
        val_split=args.val_split,
        temperature=args.temperature,
        n_bins=args.bins,
        n_boot=args.n_boot,
        seed=args.seed,
        subgroups=args.subgroups,
        show_columns=args.show_column,
        skip_uncovered=args.skip_uncovered,
        checkpoint=args.checkpoint,
        device=args.device,
        fit=args.fit,
        image_size=args.image_size,
        reference=args.reference,
        reference_prompts=args.reference_prompts,
        reference_split=args.reference_split,
        alphas=args.alphas,
        shortcut_check=args.shortcut_check,
        baselines=args.baselines,
        train_split=args.train_split,
        min_recall=args.min_recall,
        min_auroc=args.min_auroc,
        show_paths=args.show_paths,
        bin_columns=parse_bin_columns(args.bin_column),
        shortcut=ShortcutSettings(
            fill=args.shortcut_fill,
            outside=args.shortcut_outside,
            threshold=args.shortcut_threshold,
            dilation=args.shortcut_dilation,
        ),
    )
    result = run_evaluation(args.model, args.data, args.split, args.prompts, args.out, options)
    print(_summary(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command."""
    from domainclip.evaluation.forgetting import DEFAULT_ALPHAS
    from domainclip.privacy import add_show_column_argument, add_show_paths_argument
    from domainclip.runs.run import add_input_arguments

    p = sub.add_parser(
        "evaluate",
        help="zero-shot classification, retrieval, AUROC/AP with CIs, calibration, forgetting",
        description=(
            "Evaluate a fine-tuning run or a backbone on a manifest split. Writes metrics.json "
            "(every number with its 95%% bootstrap CI), report.md, reliability diagrams, a confusion "
            "matrix and predictions.csv to RUN/eval/NAME (runs) or --out (backbones)."
        ),
    )
    p.add_argument("model", metavar="RUN_OR_BACKBONE", help="run directory or backbone spec")
    p.add_argument("--data", help="manifest CSV/JSONL (default for runs: the run's data.manifest)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument(
        "--prompts", help="prompt-set YAML, e.g. configs/prompts/neu_det.yaml (default: the run's)"
    )
    p.add_argument("--name", help="evaluation name (default: <manifest folder>_<split>)")
    p.add_argument("--out", help="output folder (required for a backbone spec)")
    p.add_argument("--classes", type=_names, help="comma-separated classes to score (default: all)")
    p.add_argument(
        "--fit-temperature",
        action="store_true",
        help="fit the temperature on --val-split and save it (RUN/calibration.json)",
    )
    _uncertainty_arguments(p)
    p.add_argument(
        "--val-split", default="val", help="split for --calibrate / --fit-temperature (default: val)"
    )
    p.add_argument("--temperature", type=float, help="use this temperature instead of the run's")
    p.add_argument("--bins", type=int, default=15, help="calibration bins (default: 15)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--subgroups",
        type=_names,
        help="metadata columns for per-subgroup ECE (default: columns with 2-12 values on the "
        "safe list or named by --show-column)",
    )
    add_show_column_argument(p)
    add_show_paths_argument(p)
    add_bin_column_argument(p)
    p.add_argument(
        "--skip-uncovered",
        action="store_true",
        help="skip (and count) rows whose label no prompt covers instead of failing",
    )
    p.add_argument("--checkpoint", default="best", help="run checkpoint: best | last")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_input_arguments(p)
    p.add_argument("--reference", help="reference-task manifest for the forgetting monitor (runs)")
    p.add_argument("--reference-prompts", help="prompt set of the reference task")
    p.add_argument("--reference-split", default="test", help="split of the reference manifest")
    p.add_argument(
        "--alphas",
        type=_floats,
        default=list(DEFAULT_ALPHAS),
        help="WiSE-FT interpolation weights (default: 0,0.25,0.5,0.75,1)",
    )
    _shortcut_arguments(p)
    _baseline_arguments(p)
    p.set_defaults(func=_run)


def _uncertainty_arguments(p: argparse.ArgumentParser) -> None:
    """--calibrate, --conformal, --conformal-method, --mondrian."""
    from domainclip.calibrators import CHOICES
    from domainclip.calibrators.conformal import METHODS

    p.add_argument(
        "--calibrate",
        choices=CHOICES,
        help="fit this calibrator on --val-split and save it (RUN/calibration.json): temperature, "
        "bias (temperature + per-class bias / per-finding Platt), isotonic, or auto (lowest "
        "cross-validated NLL; the record says why). Never fitted on test",
    )
    p.add_argument(
        "--conformal",
        type=float,
        metavar="ALPHA",
        help="conformal prediction sets with coverage 1 - ALPHA (e.g. 0.1): thresholds from the "
        "manifest's calib split, else --val-split, stored with the calibrator; reports coverage "
        "(overall, per class, 95%% CIs), set sizes and singleton rate",
    )
    p.add_argument(
        "--conformal-method",
        choices=METHODS,
        default="lac",
        help="single-label set score: lac (default: smallest sets, tight coverage), aps or raps "
        "(adaptive set sizes); multi-label always uses per-finding thresholds controlling the "
        "false-negative rate",
    )
    p.add_argument(
        "--conformal-randomized",
        action="store_true",
        help="randomised APS/RAPS (tight coverage instead of conservative; seeded with --seed)",
    )
    p.add_argument(
        "--refer-error",
        type=float,
        default=0.05,
        metavar="RATE",
        help="with --conformal: also store the referral rule (lowest confidence at which the "
        "calibration split's answered cases have at most this error); `domainclip predict` flags "
        "images below it (refer column). Default 0.05",
    )
    p.add_argument(
        "--mondrian",
        action="store_true",
        help="class-conditional (Mondrian) conformal: one threshold per class",
    )


def _baseline_arguments(p: argparse.ArgumentParser) -> None:
    """Baselines beside the model and the failing-class thresholds (`evaluation.baselines`)."""
    from domainclip.evaluation.baselines import DEFAULT_MIN_AUROC, DEFAULT_MIN_RECALL

    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score chance, the majority class, the untrained backbone (runs) and a linear probe "
        "on the frozen image features beside the model (default: on; --no-baselines for speed)",
    )
    p.add_argument(
        "--train-split",
        help="split the linear probe and the prior are fitted on (default: the run's "
        "data.train_split, else train)",
    )
    p.add_argument(
        "--min-recall",
        type=float,
        default=DEFAULT_MIN_RECALL,
        help="a class with lower recall is named as failing (default: %(default)s)",
    )
    p.add_argument(
        "--min-auroc",
        type=float,
        default=DEFAULT_MIN_AUROC,
        help="a class with lower one-vs-rest AUROC is named as failing (default: %(default)s)",
    )


def _shortcut_arguments(p: argparse.ArgumentParser) -> None:
    """The shortcut-check options (`domainclip.evaluation.shortcut`)."""
    from domainclip.evaluation.shortcut import FILLS, OUTSIDE_FILLS, ShortcutSettings

    d = ShortcutSettings()
    p.add_argument(
        "--shortcut-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "classify each test row with a mask/boxes also with the region removed and with only "
            f"the region, and flag a model that keeps its accuracy without the finding (default: on "
            f"when >= {d.min_rows} rows have a region; costs 3 image embeddings per such row)"
        ),
    )
    p.add_argument(
        "--shortcut-fill", choices=FILLS, default=d.fill, help="how the removed region is filled"
    )
    p.add_argument(
        "--shortcut-outside",
        choices=OUTSIDE_FILLS,
        default=d.outside,
        help="what replaces everything outside the region (grey: the model's mean colour)",
    )
    p.add_argument(
        "--shortcut-threshold",
        type=float,
        default=d.threshold,
        help="flag 'uses context' when accuracy without the region keeps this fraction of the "
        "above-chance intact accuracy (default: %(default)s)",
    )
    p.add_argument(
        "--shortcut-dilation",
        type=int,
        default=d.dilation,
        help="pixels the region is grown by (default: %(default)s)",
    )
