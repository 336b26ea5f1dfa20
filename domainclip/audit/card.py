"""`write_card(run_dir)`: a model card collected from what a run directory holds.

It opens with how the model compares with its baselines, its per-class results (failing classes
named) and every warning of the run (`card_summary`), so a card of a model a reviewer would reject
says why on its first screen.

Sources (each optional; a missing one becomes "not run yet: <the command that produces it>"):
  config.yaml              backbone, method, data manifest, hyper-parameters (the trainer's schema)
  result.json              trainable parameters, steps, best validation metrics, wall time
  the run's manifest       counts per class / split / group, text sources
  eval/*/metrics.json      evaluation metrics with their 95% CIs, the shortcut check; the input
                           geometry (findings the fit policy cuts off or shrinks) when measured
  calibration.json         fitted temperature, NLL / ECE before and after
  audit/*/audit.json       framing audit results and the gate verdict
  explain/**/index.json    saliency sanity checks and localisation (per method means)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from domainclip import __version__
from domainclip.audit.card_summary import (
    audit_power_blocks,
    comparison_blocks,
    leading_evaluation,
    test_calibration_rows,
    training_deviation,
    warning_blocks,
)
from domainclip.audit.card_uncertainty import calibrator_sentence, sets_blocks
from domainclip.audit.report import (
    SIDE_BY_SIDE_HEADER,
    Block,
    fmt_est,
    side_by_side_rows,
    to_html,
    to_markdown,
)
from domainclip.audit.results import AuditReport
from domainclip.audit.spec import SPEC_DIR
from domainclip.datasets.geometry_report import GeometryReport
from domainclip.datasets.textquality import text_quality
from domainclip.errors import DomainClipError, ResultFileError
from domainclip.evaluation.baselines import disqualifies
from domainclip.evaluation.results import EvaluationResult
from domainclip.explain.index import ExplainIndex
from domainclip.io import atomic_write_text
from domainclip.privacy import PIXEL_NOTE
from domainclip.runs.layout import RunLayout

log = logging.getLogger(__name__)

CARD_NAME = "MODEL_CARD.md"
T = TypeVar("T")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("model card: %s is unreadable (%s); section left out", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _get(d: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _not_run(what: str, command: str) -> Block:
    return ("p", f"Not run yet: {what}. Run `{command}`.")


def _overview(run: Path, cfg: dict, result: dict | None) -> list[Block]:
    method = _get(cfg, "method.name", "?")
    spec = _get(cfg, "backbone.spec", "?")
    items = [
        f"Run: `{run}`",
        f"Backbone: `{spec}`; method: **{method}** (image tower: "
        f"{_get(cfg, 'method.image_tower', '?')}, text tower: {_get(cfg, 'method.text_tower', '?')})",
    ]
    items.append(_input_line(cfg, result))
    towers = (_get(cfg, "method.image_tower"), _get(cfg, "method.text_tower"))
    if "lora" in towers and _get(cfg, "method.lora"):
        lora = _get(cfg, "method.lora")
        items.append(
            f"LoRA: r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}"
        )
    shown = ("zero_shot_acc", "zero_shot_macro_f1", "head_acc", "head_macro_f1", "t2i_R@1", "i2t_R@1", "loss")
    if result:
        if isinstance(result.get("trainable_params"), int) and isinstance(result.get("total_params"), int):
            items.append(
                f"Trainable parameters: {result['trainable_params']:,} of "
                f"{result['total_params']:,} ({100 * float(result.get('trainable_fraction', 0)):.2f}%)"
            )
        best = ", ".join(
            f"{k} {v:.4g}" for k, v in (result.get("best_metrics") or {}).items() if k in shown
        )
        items.append(
            f"Training: {result.get('steps', '?')} steps, best at step {result.get('best_step', '?')}"
            + (f" (validation: {best})" if best else "")
            + f"; wall time {float(result.get('wall_seconds', 0)):.0f} s"
        )
        items += _training_warnings(result)
        items += training_deviation(cfg, result)
    else:
        items.append("Training summary (result.json) not found: the run may not have finished.")
    items.append(f"domainclip {__version__}")
    out: list[Block] = [("h2", "Model"), ("ul", items)]
    if spec == "default":
        out.append(
            (
                "p",
                "The embedded default joins two separately pretrained encoders (ImageNet "
                "EfficientNet-Lite0, all-MiniLM-L6-v2 sentence encoder) with linear projections. "
                "They were never trained together: every image-text alignment this model has comes "
                "from the fine-tuning data described below.",
            )
        )
    return out


def _training_warnings(result: dict) -> list[str]:
    """One line per kind of training warning in result.json (collapse, truncated texts)."""
    kinds: dict[str, list[dict]] = {}
    for w in result.get("warnings") or []:
        if isinstance(w, dict):
            kinds.setdefault(str(w.get("kind", "?")), []).append(w)
    return [
        f"Training warning ({kind}, {len(ws)}x): {ws[0].get('message', '')}" for kind, ws in kinds.items()
    ]


def _input_line(cfg: dict, result: dict | None) -> str:
    """'Input: letterbox, 448 px': how images became the model input in training (and, through
    `resolve_model`, in every evaluation of the run). Runs written before fit policies: crop."""
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    fit = data.get("fit") or "crop"
    size = _get(result, "info.input.image_size") or data.get("image_size")
    side = f"{size} px" if size else "the backbone's native size"
    meaning = {
        "letterbox": "aspect-preserving resize and padding: no pixel discarded",
        "crop": "shorter side resized, centre crop: the ends of non-square images are cut off",
        "stretch": "both sides resized: shapes distorted",
    }.get(fit, "")
    if fit == "tile":
        tile = data.get("tile") if isinstance(data.get("tile"), dict) else {}
        meaning = (
            f"overlapping {tile.get('size') or 'input-sized'} px tiles at native resolution, overlap "
            f"{tile.get('overlap', 0.25)}; image scores aggregate tile scores ({tile.get('aggregate', 'lse')})"
        )
    return f"Input: {fit}, {side}" + (f" ({meaning})" if meaning else "")


def _intended_use(classes: list[str], manifest: str | None, verdict: str | None) -> list[Block]:
    scope = ", ".join(classes) if classes else "the classes of the training data"
    unfit = disqualifies(verdict)
    return [
        ("h2", "Intended use"),
        *([("p", f"**Not fit for use as it stands:** {verdict}")] if unfit else []),
        (
            "ul",
            [
                f"Decision support: ranking or flagging images for the classes {scope}, on images "
                f"acquired like the training data (`{manifest or '?'}`), reviewed by a qualified "
                "person before any action.",
                "Retrieval of similar cases and their reports (`domainclip index` / `search`; an "
                "index holds report text: treat it like the source data); research on "
                "adaptation, calibration and framing bias.",
            ],
        ),
        ("h2", "Out-of-scope use"),
        (
            "ul",
            [
                "Autonomous diagnosis, release or rejection decisions without human review.",
                "Images from other modalities, devices, sites, populations or products than the "
                "training data; findings outside the list above (the model can only rank the "
                "prompts it is given).",
                "Generating reports: scores are similarities between an image and a given text.",
                "Deployment while the prompt-framing audit gate fails or has not been run.",
            ],
        ),
    ]


def _data(cfg: dict, run: Path) -> tuple[list[Block], list[str], list[str]]:
    """Training-data section, the class list, and data caveats for the limitations."""
    from domainclip.audit.data import manifest_from_run
    from domainclip.datasets.manifest import read_manifest

    blocks: list[Block] = [("h2", "Training data")]
    try:
        path = manifest_from_run(run)
        man = read_manifest(path)
    except (DomainClipError, OSError) as exc:  # reported in the card instead of failing it
        blocks.append(("p", f"The run's manifest could not be read: {exc}"))
        return blocks, list(_get(cfg, "data.classes") or []), []
    splits = sorted({r.split for r in man.rows})
    counts: Counter[tuple[str, str]] = Counter()
    for r in man.rows:
        for lab in r.label or ["(no label)"]:
            counts[(lab, r.split)] += 1
    classes = sorted({lab for lab, _ in counts})
    blocks.append(
        (
            "p",
            f"Manifest `{path}`: {len(man.rows)} rows"
            + (
                f" ({man.n_skipped} rows skipped on reading: {man.skipped})"
                if man.n_skipped
                else ""
            )
            + f"; training split `{_get(cfg, 'data.train_split', 'train')}`, validation split "
            f"`{_get(cfg, 'data.val_split', 'val')}`.",
        )
    )
    blocks.append(
        (
            "table",
            ["class", *splits, "total"],
            [
                [
                    c,
                    *[str(counts[(c, s)]) for s in splits],
                    str(sum(counts[(c, s)] for s in splits)),
                ]
                for c in classes
            ],
        )
    )
    groups = {s: len({r.group for r in man.rows if r.split == s and r.group}) for s in splits}
    sources = Counter(r.meta["text_source"] for r in man.rows if r.meta.get("text_source"))
    unrecorded = len(man.rows) - sum(sources.values())
    facts = ["Groups (patients / lots) per split: " + ", ".join(f"{s} {n}" for s, n in groups.items())]
    if sources:  # a line saying "(not recorded)" tells a reviewer nothing: left out
        facts.append(
            "Text sources: "
            + ", ".join(f"{k} {v}" for k, v in sources.most_common())
            + (f" ({unrecorded} rows without one)" if unrecorded else "")
        )
    blocks.append(("ul", facts))
    caveats = []
    if sources.get("finding_template"):
        caveats.append(
            f"{sources['finding_template']} texts were generated from the label "
            "(text_source=finding_template) and state it outright: retrieval on them partly "
            "measures reading the label."
        )
    if sources.get("describe_boxes") or sources.get("clean_template"):
        caveats.append(
            "Texts were generated from class labels and boxes, not written by inspectors or "
            "radiologists: the model learned this template language."
        )
    small = [c for c in classes if sum(counts[(c, s)] for s in splits) < 30]
    if small:
        caveats.append(
            f"Classes with fewer than 30 images ({', '.join(small)}): their metrics have wide "
            "intervals or are undefined."
        )
    caveats += text_quality(man.rows).caveats() + [PIXEL_NOTE]
    if any("synthetic" in (r.group or "") for r in man.rows[:5]):
        caveats.append(
            "The data is synthetic (procedurally generated surfaces), not real inspections."
        )
    return blocks, classes, caveats


def _readable(
    files: list[Path], read: Callable[[Path], T], blocks: list[Block]
) -> Iterator[tuple[Path, T]]:
    """(path, result) of each file `read` can use; each one it cannot is said in `blocks` (and
    the log) and left out: the card goes on."""
    for f in files:
        try:
            result = read(f)
        except ResultFileError as exc:
            log.warning("model card: %s; section left out", exc)
            blocks.append(("p", f"Left out: {exc}"))
            continue
        yield f, result


_CARD_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_auroc",
    "macro_ap",
    "subset_accuracy",
)


def _read_evaluations(run: Path) -> tuple[list[EvaluationResult], list[Block]]:
    """Every readable eval/*/metrics.json, and "Left out" blocks for the others."""
    command = f"domainclip evaluate {run} --fit-temperature"
    left_out: list[Block] = []
    files = sorted(run.glob("eval/*/metrics.json"))
    evals = [m for _, m in _readable(files, lambda f: EvaluationResult.read(f, command), left_out)]
    return evals, left_out


def _evaluation(
    run: Path, evals: list[EvaluationResult], left_out: list[Block]
) -> tuple[list[Block], list[str]]:
    """The evaluation section, and the input-geometry sentence of the latest evaluation that
    measured it (for the limitations)."""
    blocks: list[Block] = [("h2", "Evaluation"), *left_out]
    command = f"domainclip evaluate {run} --fit-temperature"
    if not evals and not left_out:
        return [*blocks, _not_run("evaluation", command)], []
    latest: tuple[str, str] | None = None  # (created, advice) of the newest geometry report
    for m in evals:
        cls, data = m.classification, m.data
        blocks.append(
            (
                "h3",
                f"{m.name}: `{data.manifest}`, split {data.split}, {data.n_evaluated} images",
            )
        )
        rows = [[k, fmt_est(cls[k])] for k in _CARD_METRICS if isinstance(cls.get(k), dict)]
        rows += [[f"retrieval {k}", fmt_est(m.retrieval[k])] for k in ("t2i_R@1", "i2t_R@1")]
        blocks.append(("table", ["metric", "value [95% CI]"], rows))
        before, after = m.calibration.before, m.calibration.after
        blocks.append(
            (
                "table",
                [f"calibration ({data.split} split)", "before temperature", "after temperature"],
                [
                    [k, fmt_est(before[k]), fmt_est(after[k]) if after else "-"]
                    for k in ("ece", "mce", "brier", "nll")
                ],
            )
        )
        if m.shortcut is not None:
            blocks.append(("p", _shortcut_sentence(m)))
        if m.geometry is not None:
            blocks += _geometry_blocks(m.geometry)
            if latest is None or m.created >= latest[0]:
                latest = (m.created, m.geometry.advice() or "")
    return blocks, [latest[1]] if latest and latest[1] else []


def _geometry_blocks(g: GeometryReport) -> list[Block]:
    """Per class: annotated findings the evaluation's fit policy cuts off or shrinks."""
    t = g.total
    rows = [
        [name, str(c.n_findings), str(c.n_cut), str(c.n_mostly_cut), str(c.n_small)]
        for name, c in [*sorted(g.classes.items()), ("total", t)]
        if c.n_findings or name == "total"
    ]
    return [
        (
            "p",
            f"Input geometry (fit {g.policy} at {g.size} px): {t.n_non_square} of {t.n_images} "
            "images are non-square. " + (g.advice() or "Every annotated finding is visible."),
        ),
        (
            "table",
            [
                "class",
                "annotated findings",
                "cut off",
                f"<{g.cut_fraction:.0%} visible",
                f"<{g.min_pixels:g} px",
            ],
            rows,
        ),
    ]


def _shortcut_sentence(m: EvaluationResult) -> str:
    """The shortcut check in one paragraph; a flagged model is said in bold."""
    from domainclip.evaluation.shortcut import describe

    s = m.shortcut
    assert s is not None
    lead = (
        "**Shortcut check: the model uses context.** With the annotated finding removed it keeps "
        "its accuracy, so it can classify these images from something else (tile shape, "
        "position, background); its predictions are not evidence that it sees the finding. "
        if s.flagged
        else "Shortcut check: "
    )
    return f"{lead}{describe(s)} ({s.n_used} rows with a mask or boxes; `{m.name}`.)"


def _calibration(run: Path, lead: EvaluationResult | None) -> list[Block]:
    """Calibration on the evaluated (test) split first; the validation fit of T labelled as such."""
    blocks: list[Block] = [("h2", "Calibration")]
    if lead is not None:
        header, rows = test_calibration_rows(lead)
        blocks.append(
            ("p", f"On the {lead.data.split} split (`{lead.name}`, {lead.data.n_evaluated} images):")
        )
        blocks.append(("table", header, rows))
    path = RunLayout(run).calibration
    cal = _read_json(path) if path.is_file() else None
    if cal is None:
        return [
            *blocks,
            _not_run("temperature scaling", f"domainclip evaluate {run} --fit-temperature"),
        ]

    def num(key: str) -> str:
        v = cal.get(key)
        return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

    blocks.append(("p", calibrator_sentence(cal)))
    blocks.append(
        (
            "table",
            [
                f"validation split `{cal.get('split', '?')}` (where it was fitted)",
                "before (T = 1)",
                f"after ({cal.get('kind', 'temperature')})",
            ],
            [
                ["NLL", num("nll_before"), num("nll_after")],
                ["ECE", num("ece_before"), num("ece_after")],
            ],
        )
    )
    return blocks


def _audits(run: Path, card_dir: Path) -> tuple[list[Block], list[str], list[AuditReport]]:
    blocks: list[Block] = [("h2", "Prompt-framing audit and deployment gate")]
    files = sorted(run.glob("audit/*/audit.json"))
    if not files:
        return [
            *blocks,
            _not_run("the framing audit", f"domainclip audit {run} --spec SPEC --gate"),
        ], [], []
    notes = []
    reports = []
    def read(f: Path) -> AuditReport:
        return AuditReport.read(f, f"domainclip audit {run} --spec {f.parent.name} --gate")

    for f, a in _readable(files, read, blocks):
        reports.append(a)
        blocks += _audit_blocks(a, f, card_dir)
        notes += [
            f"Under the negated framing `{name}` the score does not drop: the model may ignore "
            "negation."
            for name, neg in a.main.negation.items()
            if not neg.lowers_score
        ]
        notes += [
            f"Under the negated framing `{name}` the score of {c} rises: the model ignores "
            "negation for it."
            for name, neg in a.main.negation.items()
            for c, v in neg.per_class.items()
            if v["direction"] == "raises"
        ]
        if a.gate.verdict == "fail":
            notes.append(
                f"The framing audit `{a.spec['name']}` fails its gate: scores depend on wording."
            )
    return blocks, notes, reports


def _audit_blocks(a: AuditReport, path: Path, card_dir: Path) -> list[Block]:
    """One audit: verdict, shift / flip / ECE per framing, the shift plot, the base comparison."""
    gate, spec = a.gate, a.spec
    blocks: list[Block] = [
        ("h3", f"{spec['name']} ({spec['version']}): gate {gate.verdict.upper()}"),
        (
            "p",
            f"{a.data.n_images} images of split `{a.data.split or 'all'}`; "
            f"{gate.n_failed} of {gate.n_checks} checks failed"
            + (f": {', '.join(gate.failed)}" if gate.failed else "")
            + f". Temperature {a.main.model.temperature:.3g}. Report: `{path.parent / 'report.md'}`.",
        ),
    ]
    rows = []
    for name, fr in a.main.framings.items():
        comp = a.main.comparisons.get(name, {}).get("overall")
        rows.append(
            [
                name + (" (reference)" if fr.is_reference else ""),
                fmt_est(comp["mean_shift"], signed=True) if comp else "-",
                fmt_est(comp["flip_rate"]) if comp else "-",
                fmt_est(fr.ece),
            ]
        )
    blocks.append(("table", ["framing", "mean shift", "flip rate", "ECE"], rows))
    plot = path.parent / "shift_distributions.png"
    if plot.is_file():
        try:
            blocks.append(("img", plot.relative_to(card_dir), "score shifts per framing"))
        except ValueError:  # the card is written outside the run: link instead of embedding
            blocks.append(("p", f"Shift distributions: `{plot}`"))
    rows = side_by_side_rows(a)
    if rows:
        label = a.compare.base.model.label if a.compare is not None else "?"
        blocks += [
            ("p", f"This run vs `{label}` on the same images (differences paired by image):"),
            ("table", SIDE_BY_SIDE_HEADER, rows),
        ]
    change = a.compare.sensitivity_change if a.compare is not None else {}
    for name, c in change.items():
        o = c.get("overall", {})
        if "verdict" in o:
            blocks.append(
                (
                    "p",
                    f"Against the base model, `{name}`: {o['verdict']} "
                    f"(flip rate {o['flip_rate_model']:.3f} vs {o['flip_rate_base']:.3f}; mean "
                    f"|shift| per image {o['mean_abs_shift_model']:.3f} vs {o['mean_abs_shift_base']:.3f}"
                    + (
                        f", normalised by each model's score spread {o['normalised_shift_model']:.2f} "
                        f"vs {o['normalised_shift_base']:.2f}"
                        if "normalised_shift_model" in o
                        else ""
                    )
                    + ")"
                    + (f": {o['note']}" if o.get("note") else "")
                    + ".",
                )
            )
    return blocks


def _explanations(run: Path, manifest: str) -> list[Block]:
    blocks: list[Block] = [("h2", "Explanations: sanity checks")]
    explain = RunLayout(run).explain
    files = sorted(explain.rglob("index.json")) if explain.is_dir() else []
    if not files:
        return [
            *blocks,
            _not_run(
                "saliency sanity checks",
                f"domainclip explain {run} --manifest {manifest} --limit 20 --sanity",
            ),
        ]
    command = f"domainclip explain {run} --manifest {manifest} --sanity"
    for f, idx in _readable(files, lambda f: ExplainIndex.read(f, command), blocks):
        blocks.append(
            ("p", f"`{f}`: {len(idx.items)} maps, methods {', '.join(idx.methods)}.")
        )
        rows = []
        for method, s in idx.summary.items():
            nums = {**s.sanity, **{f"localisation {k}": v for k, v in s.localisation.items()}}
            rows += [
                [method, k, _num(k, v)]
                for k, v in nums.items()
                if isinstance(v, (int, float)) or v is None
            ]
        if rows:
            blocks.append(("table", ["method", "check (mean)", "value"], rows))
        else:
            blocks.append(("p", "No sanity checks were run for these maps (use --sanity)."))
    return blocks


def _num(key: str, v: float | None) -> str:
    """A sanity/localisation number; counts ("n") without decimals."""
    if v is None:
        return "-"
    return str(round(v)) if key.split()[-1] == "n" else f"{v:.3f}"


def _reproduce(run: Path, cfg: dict) -> list[Block]:
    manifest = _get(cfg, "data.manifest", "MANIFEST")
    specs = []
    for p in sorted(run.glob("audit/*/audit.json")):
        try:
            spec = AuditReport.read(p).spec
        except ResultFileError:  # said in the audit section
            spec = {}
        source = spec.get("source") or ""
        # A shipped spec is named; any other file is given by path, as it was audited.
        shipped = Path(source).parent.resolve() == SPEC_DIR.resolve() if source else False
        specs.append(spec.get("name", p.parent.name) if shipped or not source else source)
    specs = specs or ["SPEC"]
    return [
        ("h2", "How to reproduce"),
        (
            "p",
            f"The resolved configuration is `{run / 'config.yaml'}` (every setting that ran). "
            "From the same data and a domainclip of the same version:",
        ),
        (
            "code",
            "\n".join(
                [
                    f"domainclip finetune {run / 'config.yaml'} --out NEW_RUN",
                    f"domainclip evaluate NEW_RUN --data {manifest} --fit-temperature",
                    *[f"domainclip audit NEW_RUN --spec {name} --gate" for name in specs],
                    "domainclip card NEW_RUN --html",
                ]
            ),
        ),
    ]


def build_card(run_dir: str | Path, card_dir: Path | None = None) -> list[Block]:
    """The card as report blocks (see `domainclip.audit.report`)."""
    from domainclip.runs import Run

    r = Run(run_dir)
    run, cfg = r.root, r.config_dict()
    result = _read_json(r.layout.result) if r.layout.result.is_file() else None
    data_blocks, classes, caveats = _data(cfg, run)
    audit_blocks, audit_notes, audits = _audits(run, card_dir or run)
    evals, left_out = _read_evaluations(run)
    lead = leading_evaluation(evals)
    eval_blocks, geometry_notes = _evaluation(run, evals, left_out)
    cal_path = r.layout.calibration
    calibration = _read_json(cal_path) if cal_path.is_file() else None
    verdict = (lead.baselines or {}).get("verdict") if lead is not None else None
    limitations = [verdict] if verdict and not verdict.startswith("This model beats") else []  # matched too
    limitations += [
        f"Fails on class {c['class']}: {c['why']}."
        for c in ((lead.failing_classes or {}).get("classes") or [] if lead else [])
    ]
    if _get(cfg, "backbone.spec") == "default":
        limitations.append(
            "Embedded default backbone: its image-text alignment comes only from the fine-tuning "
            "data; expect it to know nothing about findings, wordings or image types absent there."
        )
    limitations += caveats + geometry_notes + audit_notes
    limitations += [
        "Metrics come from one held-out split of the same source as the training data; they do "
        "not show performance on other sites, devices or time periods.",
        "The calibrator (and any conformal thresholds) is fitted on the validation split; "
        "calibration and coverage can drift on new data.",
        "Saliency maps show what moved the score, not a clinical or physical cause.",
    ]
    return [
        ("h1", f"Model card: {run.name}"),
        *comparison_blocks(lead, run),
        *audit_power_blocks(audits),
        *warning_blocks(result, evals, calibration),
        *_overview(run, cfg, result),
        *_intended_use(classes, _get(cfg, "data.manifest"), verdict),
        *data_blocks,
        *eval_blocks,
        *_calibration(run, lead),
        *sets_blocks(lead, run),
        *audit_blocks,
        *_explanations(run, _get(cfg, "data.manifest") or "MANIFEST"),
        ("h2", "Limitations"),
        ("ul", limitations),
        *_reproduce(run, cfg),
    ]


def write_card(run_dir: str | Path, out: str | Path | None = None, html: bool = False) -> Path:
    """Write RUN/MODEL_CARD.md (or `out`), and the same as .html when `html`. Returns the .md path.

    Sections whose inputs do not exist yet say "Not run yet: ..." with the command to run.

    Raises:
        ConfigError: `run_dir` is not a fine-tuning run.
    """
    run = Path(run_dir).expanduser().resolve()
    path = Path(out).expanduser() if out else run / CARD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = build_card(run, path.parent.resolve())
    atomic_write_text(path, to_markdown(blocks))
    if html:
        atomic_write_text(
            path.with_suffix(".html"), to_html(blocks, path.parent.resolve(), f"Model card: {run.name}")
        )
    return path
