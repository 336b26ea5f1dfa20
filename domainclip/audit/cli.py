"""`domainclip audit RUN --spec SPEC [...] [--gate]` and `domainclip card RUN [--out PATH] [--html]`."""

from __future__ import annotations

import argparse
import sys

from domainclip.errors import ConfigError


def _print_summary(result) -> None:
    from domainclip.audit.report import fmt_est, power_sentence, remedy_lines

    r = result.report
    model, data = r.main.model, r.data
    print(
        f"audit {r.spec['name']} ({r.spec['version']}) of {model.label}: "
        f"{data.n_images} images, split {data.split or 'all'}, "
        f"temperature {model.temperature:.3g}"
    )
    for name, f in r.main.framings.items():
        comp = r.main.comparisons.get(name)
        shift = (
            f"shift {fmt_est(comp['overall']['mean_shift'], signed=True)}, "
            f"flips {fmt_est(comp['overall']['flip_rate'])}, "
            if comp
            else "reference, "
        )
        print(f"  {name:<14} {shift}ECE {fmt_est(f.ece)}")
    change = r.compare.sensitivity_change if r.compare is not None else {}
    for name, c in change.items():
        o = c["overall"]
        if "mean_abs_shift_difference" in o:
            print(
                f"  vs base, {name}: mean |shift| {o['mean_abs_shift_model']:.3f} vs "
                f"{o['mean_abs_shift_base']:.3f} -> {o['verdict']}"
            )
    gate = r.gate
    print(f"verdict: {gate.verdict.upper()} ({gate.n_failed} of {gate.n_checks} checks failed)")
    for c in gate.failed_checks:
        print(f"  FAILED {c.id}: {c.message}")
    print("power: " + power_sentence(r).replace("**", ""))
    for line in remedy_lines(r):
        print("  remedy: " + line.replace("`", ""))
    if result.out_dir is not None:
        print(f"wrote {result.out_dir} (audit.json, report.md, report.html, junit.xml)")


def _audit(args: argparse.Namespace) -> int:
    from domainclip.audit.api import run_audit
    from domainclip.datasets.subgroups import parse_bin_columns
    from domainclip.runs.layout import is_run

    if args.out is None and not is_run(args.run):
        raise ConfigError(
            f"{args.run} is not a fine-tuning run directory (no config.yaml), so there is no "
            "default output folder: pass --out DIR"
        )
    split = None if args.split in ("all", "") else args.split
    result = run_audit(
        args.run,
        args.spec,
        manifest=args.data,
        split=split,
        out_dir=args.out,
        compare=args.compare,
        batch_size=args.batch_size,
        fit=args.fit,
        image_size=args.image_size,
        show_columns=args.show_column,
        show_paths=args.show_paths,
        bin_columns=parse_bin_columns(args.bin_column),
    )
    _print_summary(result)
    if args.gate and not result.passed:
        ids = ", ".join(c["id"] for c in result.failed_checks)
        print(f"gate: FAILED ({ids})", file=sys.stderr)
        return 1
    return 0


def _card(args: argparse.Namespace) -> int:
    from domainclip.audit.card import write_card

    path = write_card(args.run, args.out, html=args.html)
    print(f"wrote {path}")
    if args.html:
        print(f"wrote {path.with_suffix('.html')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `audit` and `card` commands."""
    from domainclip.datasets.subgroups import add_bin_column_argument
    from domainclip.privacy import add_show_column_argument, add_show_paths_argument
    from domainclip.runs.run import add_input_arguments

    p = sub.add_parser(
        "audit",
        help="prompt-framing audit: do scores move with how a finding is worded? (+ deployment gate)",
        description=(
            "Score every image under each framing of the spec's findings; report score shifts vs "
            "the reference framing with bootstrap CIs, Wilcoxon tests, decision flip rates and ECE "
            "per framing. Writes audit.json, report.md/.html, plots and junit.xml."
        ),
    )
    p.add_argument("run", help="fine-tuning run directory, or a backbone spec (e.g. default)")
    p.add_argument(
        "--spec",
        required=True,
        help="audit spec YAML, or the name of a shipped one (synthetic, neu_det, covid_cxr)",
    )
    p.add_argument("--data", help="manifest to audit on (default: the run's training manifest)")
    p.add_argument(
        "--split", default="test", help="split to score (default test; 'all' = every row)"
    )
    p.add_argument(
        "--gate", action="store_true", help="exit 1 when any gate threshold is crossed (for CI)"
    )
    p.add_argument(
        "--compare",
        metavar="BASE_RUN",
        help="base model (run or backbone spec) to audit on the same images: did fine-tuning "
        "amplify or reduce framing sensitivity?",
    )
    p.add_argument("--out", help="output folder (default for a run: RUN/audit/<spec name>/)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder batch")
    add_input_arguments(p)
    add_show_column_argument(p)
    add_show_paths_argument(p)
    add_bin_column_argument(p)
    p.set_defaults(func=_audit)

    c = sub.add_parser(
        "card",
        help="write a model card (Markdown, optionally HTML) for a fine-tuning run",
        description=(
            "Collects the run's config, data, evaluation, calibration, audit and explanation "
            "results into MODEL_CARD.md; sections not run yet say which command produces them."
        ),
    )
    c.add_argument("run", help="fine-tuning run directory")
    c.add_argument("--out", help="output file (default RUN/MODEL_CARD.md)")
    c.add_argument("--html", action="store_true", help="also write an HTML version next to it")
    c.set_defaults(func=_card)
