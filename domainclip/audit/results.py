"""`AuditReport`: the typed content of audit.json, and how an audit's numbers become one.

Every number comes with its interval as an Estimate dict {"value": v, "ci95": [low, high]}
(`Estimate.to_dict`), or with "reason" when undefined; these leaves (and the per-cell shift
statistics, `analysis.Cell.to_dict`) stay JSON objects, checked on read. The flip examples carry
what the dashboard needs to show an image with its saliency under both framings: image paths,
the two framings' prompts for the target class and for each decision, and the scores under both.

`AuditReport.read` / `from_json` check every key the dashboard, the card and the reports use: a
damaged or older file is a `ResultFileError` naming the file, the key and the command to re-run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from domainclip.audit.analysis import MISSING
from domainclip.audit.data import AuditRows
from domainclip.audit.gate import Check, verdict
from domainclip.audit.scores import ScoreTable
from domainclip.audit.spec import AuditSpec, Thresholds
from domainclip.datasets.manifest import Manifest, ManifestRow
from domainclip.datasets.subgroups import subgroup_values as binned
from domainclip.io import finite_json
from domainclip.privacy import image_name, scrub_path
from domainclip.resultfile import Fields, ResultFile, ResultKind, utc_now

SCHEMA = "domainclip.audit/1"
AUDIT_FILE = "audit.json"
AUDIT = ResultKind(
    what="an audit report (audit.json)", schema=SCHEMA, command="domainclip audit RUN --spec SPEC"
)
_CELL_ESTIMATES = ("mean_shift", "median_shift", "raw_similarity_shift", "flip_rate")
_FRAMING_ESTIMATES = ("accuracy", "ece", "mean_target_score")


# ------------------------------------------------------------------------------------- the types


@dataclass(frozen=True)
class AuditedData:
    """The audited images: counts per class and subgroup value, and what was skipped."""

    manifest: str | None
    split: str | None
    n_images: int
    n_per_class: dict[str, int]
    subgroups: dict[str, dict[str, int]]
    skipped: dict[str, Any]


@dataclass(frozen=True)
class AuditedModel:
    """The audited model: label (run dir or spec), backbone, head, the temperature used and the
    input geometry its images were scored at (fit policy, side in px; None in older files)."""

    label: str
    run: str | None
    backbone_spec: str
    family: str
    image_arch: str
    head: bool
    temperature: float
    temperature_source: str
    fit: str | None = None
    image_size: int | None = None
    # the run's `robustness` settings when it trained with them (pool, k, weight, ...), else None
    robustness: dict[str, Any] | None = None

    @classmethod
    def of(cls, resolved: Any) -> AuditedModel:
        """From an `api.ResolvedModel`."""
        bb = resolved.backbone
        robust = None
        if resolved.run is not None:
            r = resolved.run.config().robustness
            robust = {"pool": r.pool, "k": r.k, "weight": r.weight} if r.enabled else None
        return cls(
            label=resolved.label,
            run=str(resolved.run_dir) if resolved.run_dir else None,
            backbone_spec=bb.spec,
            family=bb.family,
            image_arch=bb.image_arch,
            head=bb.head is not None,
            temperature=resolved.temperature,
            temperature_source=resolved.calibrator.source,
            fit=resolved.input["fit"],
            image_size=resolved.input["image_size"],
            robustness=robust,
        )


@dataclass(frozen=True)
class FramingSummary:
    """One framing: its template and role, the prompt per finding, and accuracy / ECE / mean
    target-class score (Estimate dicts) over every audited image."""

    template: str
    expect: str
    gated: bool
    is_reference: bool
    prompts: dict[str, str]
    accuracy: dict[str, Any]
    ece: dict[str, Any]
    mean_target_score: dict[str, Any]


@dataclass(frozen=True)
class NegationNote:
    """An `expect: lower` framing: does the negated wording lower the target-class score?

    Judged only on images whose target class's text the framing changes (control classes such
    as "clean" keep their prompt, so their scores move only through the softmax): `mean_shift`
    pools those images; `per_class` says per changed class {n, mean_shift, lowers_score,
    direction: "lowers" | "raises" | "no clear change"}. Files written before: per_class {}.
    """

    mean_shift: dict[str, Any]
    lowers_score: bool
    note: str
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class GateSummary:
    """The gate's verdict and every check. thresholds / min_cell_images: None for a compared
    base model (its checks use the audited spec's)."""

    verdict: str
    failed: list[str]
    n_checks: int
    n_failed: int
    n_skipped: int
    checks: list[Check]
    thresholds: Thresholds | None = None
    min_cell_images: int | None = None

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {}
        if self.thresholds is not None:
            head = {"thresholds": asdict(self.thresholds), "min_cell_images": self.min_cell_images}
        return {
            **head,
            "verdict": self.verdict,
            "failed": self.failed,
            "n_checks": self.n_checks,
            "n_failed": self.n_failed,
            "n_skipped": self.n_skipped,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class FlipSide:
    """One framing's view of a flipped image: its decision, the scores and the prompts."""

    framing: str
    decision: str
    decision_prob: float
    target_prob: float
    raw_similarity: float
    correct: bool
    prompt_target: str
    prompt_decision: str


@dataclass(frozen=True)
class FlipExample:
    """An image whose top-1 decision differs between the reference and a framing."""

    row: int
    image: str
    path: str
    label: list[str]
    group: str
    target: str
    shift: float
    reference: FlipSide
    framed: FlipSide

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSection:
    """What audit.json says about one model: framing summaries, shift comparisons per framing
    ({"overall": cell, "per_class": {c: cell}, "per_subgroup": {col: {value: cell}}}, cells as
    `analysis.Cell.to_dict`), negation checks and per-subgroup calibration
    ({col: {value: {framing: {n, ece, accuracy}}}}, point values)."""

    model: AuditedModel
    framings: dict[str, FramingSummary]
    comparisons: dict[str, dict[str, Any]]
    negation: dict[str, NegationNote]
    subgroup_calibration: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": asdict(self.model),
            "framings": {k: asdict(v) for k, v in self.framings.items()},
            "comparisons": self.comparisons,
            "negation": {k: asdict(v) for k, v in self.negation.items()},
            "subgroup_calibration": self.subgroup_calibration,
        }


@dataclass(frozen=True)
class BaseComparison:
    """`compare`: the base model's section and gate, and the paired sensitivity change per
    framing ({"overall": ..., "per_class": {...}}, see `compare.compare_cells`)."""

    base: ModelSection
    base_gate: GateSummary
    sensitivity_change: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": {**self.base.to_json(), "gate": self.base_gate.to_json()},
            "sensitivity_change": self.sensitivity_change,
        }


@dataclass
class AuditReport(ResultFile):
    """The content of audit.json (see docs/DESIGN.md); `main` is the audited model's section."""

    spec: dict[str, Any]
    data: AuditedData
    method: dict[str, Any]
    main: ModelSection
    gate: GateSummary
    flip_examples: dict[str, list[FlipExample]]
    files: dict[str, str] = field(default_factory=dict)
    timing: dict[str, float | None] = field(default_factory=dict)
    compare: BaseComparison | None = None
    coverage: dict[str, Any] | None = None  # audit.coverage.framing_coverage (absent in old files)
    created: str = field(default_factory=utc_now)
    schema: str = SCHEMA

    KIND = AUDIT

    @property
    def reference(self) -> str:
        return self.spec["reference"]

    def to_json(self) -> dict[str, Any]:
        """The audit.json content (strict JSON: non-finite numbers become null)."""
        out = {
            "schema": self.schema,
            "created": self.created,
            "spec": self.spec,
            "data": asdict(self.data),
            "method": self.method,
            **self.main.to_json(),
            "gate": self.gate.to_json(),
            "flip_examples": {
                k: [ex.to_json() for ex in exs] for k, exs in self.flip_examples.items()
            },
            "files": self.files,
            "timing": self.timing,
        }
        if self.compare is not None:
            out["compare"] = self.compare.to_json()
        if self.coverage is not None:
            out["coverage"] = self.coverage
        return finite_json(out)

    @classmethod
    def _parse(cls, f: Fields) -> AuditReport:
        return _parse_report(f)


# ------------------------------------------------------------------------------------ building


def row_number(row: ManifestRow, position: int) -> int:
    """The manifest row number; in-memory rows have none, so their 1-based position stands in
    (as in `PairedDataset`), keeping scores.csv's `row` a unique key per image."""
    return row.row or position + 1


def flip_examples(
    main,
    framing: str,
    reference: str,
    rows: Sequence[ManifestRow],
    manifest: Manifest,
    limit: int,
    show_paths: bool = False,
) -> list[FlipExample]:
    """The flipped images of `framing` vs `reference`, largest |target-score shift| first.

    Images are named by row (`privacy.image_name`); `path` and `group` (by default the image's
    path when the manifest has no group column) are left empty unless `show_paths`."""
    t = main.table
    k, r = t.k(framing), t.k(reference)
    dec = t.decisions
    flipped = np.flatnonzero(dec[k] != dec[r])
    shift = t.scores[k] - t.scores[r]
    order = flipped[np.argsort(-np.abs(shift[flipped]), kind="stable")][:limit]
    out = []
    for i in order:
        target = t.classes[t.target[i]]

        def side(fk: int, name: str, i: int = i, target: str = target) -> FlipSide:
            decision = t.classes[dec[fk, i]]
            return FlipSide(
                framing=name,
                decision=decision,
                decision_prob=float(t.probs[fk, i, dec[fk, i]]),
                target_prob=float(t.scores[fk, i]),
                raw_similarity=float(t.raw[fk, i]),
                correct=bool(t.correct[fk, i]),
                prompt_target=main.prompts[name][target],
                prompt_decision=main.prompts[name][decision],
            )

        row = rows[i]
        number = row_number(row, int(i))
        out.append(
            FlipExample(
                row=number,
                image=image_name(number, row.image, show_paths),
                path=str(manifest.image_path(row)) if show_paths else "",
                label=list(row.label),
                group=row.group if show_paths else "",
                target=target,
                shift=float(shift[i]),
                reference=side(r, reference),
                framed=side(k, framing),
            )
        )
    return out


def _framing_summary(spec: AuditSpec, main) -> dict[str, FramingSummary]:
    out = {}
    for f in spec.framings:
        cal = main.calibration[f.name]
        out[f.name] = FramingSummary(
            template=f.template.text,
            expect=f.expect,
            gated=f.gated,
            is_reference=f.name == spec.reference,
            prompts=main.prompts[f.name],
            **{k: e.to_dict() for k, e in cal.items()},
        )
    return out


def _direction(e: Any) -> str:
    if e.high is not None and e.high < 0:
        return "lowers"
    if e.low is not None and e.low > 0:
        return "raises"
    return "no clear change"


def _negation(spec: AuditSpec, main) -> dict[str, NegationNote]:
    """For `expect: lower` framings, per class whose text the framing changes: does the negated
    wording lower the target-class score? (Control classes are left out: their prompt is the same.)"""
    out = {}
    framed = [f.label for f in spec.findings if f.framed]
    for f in spec.framings:
        if f.expect != "lower":
            continue
        comp = main.comparisons[f.name]
        cells = {c: comp.per_class[c] for c in framed if c in comp.per_class}
        min_n = spec.statistics.min_cell_images
        per_class = {
            c: {
                "n": cell.n,
                "mean_shift": cell.mean_shift.to_dict(),
                "lowers_score": cell.n >= min_n and _direction(cell.mean_shift) == "lowers",
                "direction": _direction(cell.mean_shift)
                if cell.n >= min_n
                else f"too few images (n < min_cell_images = {min_n})",
            }
            for c, cell in cells.items()
        }
        pooled = comp.framed.mean_shift if comp.framed is not None else comp.overall.mean_shift
        lowers = _direction(pooled) == "lowers"
        raised = [c for c, v in per_class.items() if v["direction"] == "raises"]
        unclear = [c for c, v in per_class.items() if v["direction"] == "no clear change"]
        if lowers and not raised and not unclear:
            note = "the score drops under negation for every class whose text it changes"
        else:
            parts = [f"raises the score of {', '.join(raised)}"] if raised else []
            parts += [f"no clear change for {', '.join(unclear)}"] if unclear else []
            pooled_text = "lowers" if lowers else "does not significantly lower"
            note = "; ".join(
                [f"pooled over the classes whose text changes it {pooled_text} the score", *parts]
            ) + ": the model may ignore negation"
        out[f.name] = NegationNote(pooled.to_dict(), lowers, note, per_class)
    return out


def model_section(spec: AuditSpec, audit) -> ModelSection:
    """The section of one `api.ModelAudit` (the audited model, or the compared base)."""
    return ModelSection(
        model=AuditedModel.of(audit.model),
        framings=_framing_summary(spec, audit),
        comparisons={name: c.to_dict() for name, c in audit.comparisons.items()},
        negation=_negation(spec, audit),
        subgroup_calibration=audit.subgroup_calibration,
    )


def gate_summary(checks: list[Check], spec: AuditSpec | None = None) -> GateSummary:
    """The verdict over `checks`; with the thresholds and cell minimum of `spec` when given."""
    v = verdict(checks)
    return GateSummary(
        verdict=v["verdict"],
        failed=v["failed"],
        n_checks=v["n_checks"],
        n_failed=v["n_failed"],
        n_skipped=v["n_skipped"],
        checks=list(checks),
        thresholds=spec.thresholds if spec is not None else None,
        min_cell_images=spec.statistics.min_cell_images if spec is not None else None,
    )


def _data_section(
    spec_used: AuditSpec,
    table: ScoreTable,
    manifest: Manifest,
    split: str | None,
    selection: AuditRows,
    rows: Sequence[ManifestRow],
    failures: dict[str, str],
    show_paths: bool = False,
    bins: dict[str, float] | None = None,
) -> AuditedData:
    if not show_paths:  # unreadable images by position, their file names scrubbed
        failures = {
            f"unreadable image {n + 1}": scrub_path(why, path, "the image")
            for n, (path, why) in enumerate(failures.items())
        }
    return AuditedData(
        manifest=str(manifest.path) if manifest.path else None,
        split=split,
        n_images=table.n,
        n_per_class={c: int(np.sum(table.target == i)) for i, c in enumerate(table.classes)},
        subgroups={
            col: dict(
                Counter(v or MISSING for v in binned(col, [r.meta.get(col, "") for r in rows], bins))
            )
            for col in spec_used.subgroups
            if col not in selection.subgroups_absent
        },
        skipped={
            "findings_absent": selection.findings_absent,
            "rows_without_spec_label": selection.unused_labels,
            "subgroups_absent": selection.subgroups_absent,
            "unreadable_images": len(selection.rows) - len(rows),
            "unreadable_examples": dict(list(failures.items())[:5]),
        },
    )


def _method_section(spec_used: AuditSpec) -> dict[str, Any]:
    st = spec_used.statistics
    return {
        "score": "temperature-scaled softmax probability of the image's target class over the "
        "spec's findings worded by one framing; raw similarity = dot product of image and "
        "prompt features",
        "mean_shift_interval": "symmetric bootstrap-t, paired (images resampled)",
        "median_shift_interval": "percentile bootstrap, paired",
        "flip_rate_interval": "Wilson score",
        "significance": "sign-flip permutation p-value (max-T over the mean-shift test and the "
        "signed-rank test of log-odds shifts; exact for small cells, else "
        f"{st.n_permutations} random sign vectors, ten times more below 2 x alpha), "
        "Holm-adjusted over all gated mean-shift checks",
        "power": "minimum detectable shift at 80% power per cell, by simulation from its own "
        "paired differences at level alpha / (gated cells)",
        "ece": f"equal-width bins ({st.ece_bins}), top-1 confidence vs correctness",
        "n_bootstrap": st.n_bootstrap,
        "seed": st.seed,
        "confidence": 0.95,
        "alpha": spec_used.thresholds.alpha,
    }


def build_audit_report(
    *,
    spec: AuditSpec,
    spec_used: AuditSpec,
    main,
    checks: list[Check],
    manifest: Manifest,
    split: str | None,
    selection: AuditRows,
    rows: Sequence[ManifestRow],
    failures: dict[str, str],
    compare: BaseComparison | None = None,
    show_paths: bool = False,
    bins: dict[str, float] | None = None,
) -> AuditReport:
    """The audit report of `main` (an `api.ModelAudit`) with its gate `checks`.

    spec: the spec as given (written out); spec_used: restricted to the findings present.
    show_paths: image paths in audit.json (default: rows, `privacy.image_name`); bins: subgroup
    bin widths (`datasets.subgroups`).
    """
    st = spec_used.statistics
    return AuditReport(
        spec={**spec.to_dict(), "source": spec.source},
        data=_data_section(
            spec_used, main.table, manifest, split, selection, rows, failures, show_paths, bins
        ),
        method=_method_section(spec_used),
        main=model_section(spec_used, main),
        gate=gate_summary(checks, spec_used),
        flip_examples={
            f.name: flip_examples(
                main, f.name, spec_used.reference, rows, manifest, st.max_flip_examples, show_paths
            )
            for f in spec_used.framings
            if f.name != spec_used.reference
        },
        timing={k: round(v, 3) for k, v in main.timings.items()},
        compare=compare,
    )


def score_rows(
    t: ScoreTable, rows: Sequence[ManifestRow], show_paths: bool = False
) -> list[dict[str, Any]]:
    """One record per (image, framing) for scores.csv; `image` is "row N" unless `show_paths`
    (`privacy.image_name`), `row` the join key."""
    out = []
    for i, row in enumerate(rows):
        for k, name in enumerate(t.framings):
            out.append(
                {
                    "row": row_number(row, i),
                    "image": image_name(row_number(row, i), row.image, show_paths),
                    "label": "|".join(row.label),
                    "target": t.classes[t.target[i]],
                    "framing": name,
                    "target_prob": f"{t.scores[k, i]:.6f}",
                    "raw_similarity": f"{t.raw[k, i]:.6f}",
                    "decision": t.classes[t.decisions[k, i]],
                    "decision_prob": f"{t.confidence[k, i]:.6f}",
                    "correct": int(t.correct[k, i]),
                }
            )
    return out


# ------------------------------------------------------------------------------------- reading

_OPT_NUM = (float, type(None))


def _parse_report(f: Fields) -> AuditReport:
    spec = f.obj("spec")
    spec.get("name", str)
    spec.get("version", str, int, float)
    spec.get("reference", str)
    spec.get("source", str, type(None), optional=True)
    compare = f.obj("compare", optional=True, nullable=True)
    return f.build(
        AuditReport,
        spec=spec.data,
        data=f.obj("data").build(AuditedData),
        main=_parse_section(f),
        gate=_parse_gate(f.obj("gate"), with_thresholds=True),
        flip_examples={
            name: [_parse_flip(ex) for ex in examples]
            for name, examples in f.groups("flip_examples").items()
        },
        compare=None if compare is None else _parse_compare(compare),
    )


def _parse_section(f: Fields) -> ModelSection:
    framings = {
        name: fr.build(FramingSummary, **fr.estimates(*_FRAMING_ESTIMATES))
        for name, fr in f.mapping("framings").items()
    }
    negation = {
        name: n.build(
            NegationNote,
            mean_shift=n.estimate("mean_shift"),
            per_class=n.get("per_class", dict, optional=True) or {},
        )
        for name, n in f.mapping("negation", optional=True).items()
    }
    return ModelSection(
        model=f.obj("model").build(AuditedModel),
        framings=framings,
        comparisons={name: _parse_comparison(c) for name, c in f.mapping("comparisons").items()},
        negation=negation,
        subgroup_calibration=f.get("subgroup_calibration", dict, optional=True) or {},
    )


def _parse_cell(f: Fields) -> dict[str, Any]:
    """One shift cell (`analysis.Cell.to_dict`)."""
    f.get("n", int)
    f.get("tested", bool)
    f.estimates(*_CELL_ESTIMATES)
    f.get("p_value", *_OPT_NUM)
    f.obj("wilcoxon").get("p", *_OPT_NUM, optional=True)
    f.get("flips", int)
    f.get("reason", str, optional=True)
    return f.data


def _parse_comparison(f: Fields) -> dict[str, Any]:
    _parse_cell(f.obj("overall"))
    for cell in f.mapping("per_class").values():
        _parse_cell(cell)
    for values in f.mapping("per_subgroup").values():
        for value, cell in values.data.items():
            _parse_cell(values.child(cell, value))
    return f.data


_FLOOR_KEYS = ("performance_floor", "min_balanced_accuracy", "min_macro_auroc")


def _thresholds(f: Fields) -> Thresholds:
    """The gate thresholds; files written before performance floors had none (floor off)."""
    data = {"require_power": None, "max_abs_logodds_shift": None, **f.data}  # files written before power was required
    if not any(k in f.data for k in _FLOOR_KEYS):
        data.update(performance_floor=False, min_balanced_accuracy=None, min_macro_auroc=None)
    return Fields(data, f.source, f.command, f.where).build(Thresholds, require_all=True)


def _parse_gate(f: Fields, with_thresholds: bool) -> GateSummary:
    gate = f.build(
        GateSummary,
        checks=[c.build(Check) for c in f.objects("checks")],
        thresholds=_thresholds(f.obj("thresholds")) if with_thresholds else None,
        min_cell_images=f.get("min_cell_images", int) if with_thresholds else None,
    )
    if gate.verdict not in ("pass", "fail"):
        raise f.error(f"'{f.path('verdict')}' is {gate.verdict!r}, expected pass or fail")
    return gate


def _parse_flip(f: Fields) -> FlipExample:
    return f.build(
        FlipExample,
        reference=f.obj("reference").build(FlipSide),
        framed=f.obj("framed").build(FlipSide),
    )


def _parse_compare(f: Fields) -> BaseComparison:
    base = f.obj("base")
    change = f.mapping("sensitivity_change")
    for framing in change.values():
        framing.obj("overall")
        framing.get("per_class", dict)
    return BaseComparison(
        base=_parse_section(base),
        base_gate=_parse_gate(base.obj("gate"), with_thresholds=False),
        sensitivity_change={k: v.data for k, v in change.items()},
    )
