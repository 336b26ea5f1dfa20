"""`EvaluationResult`: the typed content of an evaluation's metrics.json.

`domainclip evaluate` builds one and writes it (`write`); the dashboard, the model card and the
CLI summary read it back with `read` / `from_json`, which check every key they use: a damaged
file is a `ResultFileError` naming the file, the key and the command to re-run, not a KeyError.

Sections whose shape depends on the task (classification: single- vs multi-label; calibration
reports; retrieval; the forgetting curve) stay JSON objects of Estimate dicts
(`{"value", "ci95", "reason"?}`, see `domainclip.evaluation.bootstrap.Estimate`), validated on read.

Schema versions: 2 adds the "schema" key; version 1 (files without it) has the same content and
is migrated on read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from domainclip import __version__
from domainclip.datasets.geometry_report import GeometryReport
from domainclip.evaluation.shortcut import ShortcutResult
from domainclip.io import finite_json
from domainclip.resultfile import Fields, ResultFile, ResultKind, utc_now

SCHEMA = "domainclip.evaluation/2"
METRICS_FILE = "metrics.json"

SINGLE_LABEL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "macro_ap")
MULTI_LABEL_METRICS = ("macro_auroc", "macro_ap", "macro_f1", "subset_accuracy")
CALIBRATION_METRICS = ("ece", "ece_mass", "mce", "brier", "nll")
RETRIEVAL_METRICS = tuple(
    f"{p}_{k}" for p in ("i2t", "t2i") for k in ("R@1", "R@5", "R@10", "median_rank")
)
_BINS_KEYS = ("lower", "upper", "count", "confidence", "accuracy")


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (no "schema" key) holds the same content."""
    return {"schema": SCHEMA, **data}


EVALUATION = ResultKind(
    what="the metrics of an evaluation (metrics.json)",
    schema=SCHEMA,
    command="domainclip evaluate RUN_OR_BACKBONE",
    unversioned=1,
    migrations={1: _from_v1},
)


@dataclass(frozen=True)
class EvaluatedModel:
    """The model evaluated: its backbone spec and family; for runs the run dir and checkpoint."""

    spec: str
    family: str
    run: str | None = None
    checkpoint: str | None = None
    # The classifier head scoring the classes ("linear_probe", "tip_adapter"); None: zero-shot
    # prompt similarity (and files written before heads were recorded).
    head: str | None = None

    @property
    def task_title(self) -> str:
        """What the classification section is called: a head's results are not zero-shot."""
        return {
            None: "Zero-shot classification",
            "linear_probe": "Classification by the linear-probe head",
            "tip_adapter": "Classification by the Tip-Adapter head (zero-shot + cache)",
        }.get(self.head, f"Classification by the {self.head} head")


@dataclass(frozen=True)
class EvaluatedData:
    """Which rows were evaluated. skipped: reason -> count; uncovered_labels: label -> count."""

    manifest: str
    split: str
    n_rows: int
    n_unreadable: int
    n_evaluated: int
    skipped: dict[str, int]
    uncovered_labels: dict[str, int]
    notes: list[str]


@dataclass(frozen=True)
class PromptsUsed:
    """The prompt set (file, version, mode), its number of distinct prompts and the classes."""

    source: str
    version: str
    mode: str
    n_prompts: int
    classes: list[str]

    @property
    def multi_label(self) -> bool:
        return self.mode == "multi_label"


@dataclass(frozen=True)
class TemperatureUsed:
    """The temperature applied and where it came from ("given", "fitted", the run's file, none).

    file: where a fitted T was saved; fit: the calibration record of the fit; warning: e.g. a T
    fitted with another prompt-set version. kind / description: the calibrator's kind
    (temperature, bias, isotonic) and one line describing it; `value` is T for a temperature
    calibrator and 1.0 for kinds one T does not describe. Absent (None) in older files.
    """

    value: float
    source: str
    file: str | None = None
    fit: dict[str, Any] | None = None
    warning: str | None = None
    kind: str | None = None
    description: str | None = None

    def describe(self) -> str:
        """'temperature T = 1.7' (older files: from `value`)."""
        return self.description or f"temperature T = {self.value:.4g}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "source": self.source}
        for key in ("file", "fit", "warning", "kind", "description"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class InputUsed:
    """The input geometry images were scored at: fit policy and input side S in px (fit "tile":
    `TiledInputUsed`)."""

    fit: str
    image_size: int

    def describe(self) -> str:
        """'letterbox, 224 px'."""
        return f"{self.fit}, {self.image_size} px"

    @staticmethod
    def of(data: dict) -> InputUsed:
        """From `ImageTransform.input` ({fit, image_size, tile?})."""
        return TiledInputUsed(**data) if data.get("tile") is not None else InputUsed(**data)


@dataclass(frozen=True)
class TiledInputUsed(InputUsed):
    """`fit: tile`: also `tile` {size (original px, null = S), overlap, aggregate}."""

    tile: dict | None = None

    def describe(self) -> str:
        """'tile, 224 px input from 224 px tiles, overlap 0.25, lse'."""
        t = self.tile or {}
        return (
            f"tile, {self.image_size} px input from {t.get('size') or self.image_size} px tiles, "
            f"overlap {t.get('overlap')}, {t.get('aggregate')}"
        )


@dataclass(frozen=True)
class CalibrationSummary:
    """Calibration before (T = 1) and after temperature scaling (None when T = 1), and ECE per
    subgroup {column: {value: {n, ece (Estimate dict), accuracy, mean_confidence}}}.

    before/after: `calibration.calibration_report` dicts (ece, ece_mass, mce, brier, nll as
    Estimate dicts, n_bins, mean_confidence, observed_rate, bins_width, bins_mass).
    """

    before: dict[str, Any]
    after: dict[str, Any] | None
    subgroups: dict[str, dict[str, dict[str, Any]]]

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "subgroups": self.subgroups}


@dataclass
class EvaluationResult(ResultFile):
    """One evaluation of a model on a manifest split (the content of metrics.json).

    classification: `metrics.single_label_report` / `multi_label_report` dict; retrieval: R@k and
    ranks as Estimate dicts, n_images, n_texts, note; forgetting: `forgetting_curve` dict or None;
    outputs: file kind -> path (None when nothing was written); shortcut: the shortcut check
    (`evaluation.shortcut.ShortcutResult`) or None when it did not run; geometry: what the
    evaluation's fit policy does to the split's annotated boxes/masks (None when the split has
    none). Files written before either existed read as None.
    conformal: `evaluation.conformal.conformal_report` dict (thresholds, coverage with
    Clopper-Pearson CIs overall and per class, set sizes) when `--conformal ALPHA` was given;
    selective: `evaluation.selective.risk_coverage` dict (risk-coverage curve, AURC, referral
    rates). Both None in files written before they existed.
    text_leakage: `evaluation.leakage.leakage_check` (retrieval with the label words masked in
    the texts) when some class's texts name their label, else None (and in older files).
    """

    name: str
    model: EvaluatedModel
    data: EvaluatedData
    prompts: PromptsUsed
    temperature: TemperatureUsed
    classification: dict[str, Any]
    calibration: CalibrationSummary
    retrieval: dict[str, Any]
    seconds: float | None = None
    forgetting: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    shortcut: ShortcutResult | None = None
    geometry: GeometryReport | None = None
    # Absent in files written before fit policies (they used "crop" at the native size).
    input: InputUsed | None = None
    conformal: dict[str, Any] | None = None
    selective: dict[str, Any] | None = None
    # Absent in files written before baselines (then read as None / empty).
    baselines: dict[str, Any] | None = None
    failing_classes: dict[str, Any] | None = None
    text_leakage: dict[str, Any] | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    created: str = field(default_factory=utc_now)
    domainclip_version: str = __version__
    schema: str = SCHEMA

    KIND = EVALUATION

    @property
    def headline_metric(self) -> str:
        """The metric a one-line summary shows: macro AUROC (multi-label) or accuracy."""
        return "macro_auroc" if self.prompts.multi_label else "accuracy"

    def to_json(self) -> dict[str, Any]:
        """The metrics.json content (strict JSON values: NaN becomes null)."""
        out: dict[str, Any] = {
            "schema": self.schema,
            "domainclip_version": self.domainclip_version,
            "created": self.created,
            "name": self.name,
            "model": vars(self.model).copy(),
            "data": vars(self.data).copy(),
            "prompts": vars(self.prompts).copy(),
            "temperature": self.temperature.to_json(),
            "classification": self.classification,
            "calibration": self.calibration.to_json(),
            "retrieval": self.retrieval,
            "seconds": self.seconds,
        }
        if self.input is not None:
            out["input"] = vars(self.input).copy()
        if self.forgetting is not None:
            out["forgetting"] = self.forgetting
        if self.shortcut is not None:
            out["shortcut"] = self.shortcut.to_dict()
        if self.outputs is not None:
            out["outputs"] = self.outputs
        if self.geometry is not None:
            out["geometry"] = self.geometry.to_dict()
        for key in ("conformal", "selective"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.baselines is not None:
            out["baselines"] = self.baselines
        if self.failing_classes is not None:
            out["failing_classes"] = self.failing_classes
        if self.text_leakage is not None:
            out["text_leakage"] = self.text_leakage
        out["warnings"] = list(self.warnings)
        return finite_json(out)

    @classmethod
    def _parse(cls, f: Fields) -> EvaluationResult:
        prompts = f.obj("prompts").build(PromptsUsed)
        if prompts.mode not in ("single_label", "multi_label"):
            raise f.error(f"'prompts.mode' is {prompts.mode!r}, expected single_label or multi_label")
        return f.build(
            cls,
            model=f.obj("model").build(EvaluatedModel),
            data=f.obj("data").build(EvaluatedData),
            prompts=prompts,
            temperature=f.obj("temperature").build(TemperatureUsed),
            classification=_classification(f.obj("classification"), prompts.multi_label),
            calibration=_calibration(f.obj("calibration")),
            retrieval=_retrieval(f.obj("retrieval")),
            forgetting=_forgetting(f.obj("forgetting", optional=True, nullable=True)),
            shortcut=_shortcut(f.obj("shortcut", optional=True, nullable=True)),
            geometry=_geometry(f.obj("geometry", optional=True, nullable=True)),
            input=_input(f.obj("input", optional=True, nullable=True)),
            conformal=_conformal(f.obj("conformal", optional=True, nullable=True)),
            selective=_selective(f.obj("selective", optional=True, nullable=True)),
            baselines=_baselines(f.obj("baselines", optional=True, nullable=True)),
            failing_classes=_failing(f.obj("failing_classes", optional=True, nullable=True)),
            text_leakage=_text_leakage(f.obj("text_leakage", optional=True, nullable=True)),
            warnings=_warnings(f),
        )


# ------------------------------------------------------------------------------- section parsers


def _classification(f: Fields, multi_label: bool) -> dict[str, Any]:
    f.estimates(*(MULTI_LABEL_METRICS if multi_label else SINGLE_LABEL_METRICS))
    for cls in f.mapping("per_class").values():
        cls.get("n_pos", int)
        cls.estimates("auroc", "ap", *(("f1",) if multi_label else ()))
    boot = f.obj("bootstrap")
    boot.get("n_boot", int)
    boot.get("seed", int)
    if not multi_label:
        f.get("confusion_matrix", list)
    return f.data


def _calibration_report(f: Fields) -> dict[str, Any]:
    """Check one `calibration_report` dict (before or after)."""
    f.estimates(*CALIBRATION_METRICS)
    f.get("n_bins", int)
    for key in ("mean_confidence", "observed_rate"):
        f.get(key, float, type(None), optional=True)
    for strategy in ("bins_width", "bins_mass"):
        bins = f.obj(strategy)
        lengths = {len(bins.numbers(k)) for k in _BINS_KEYS}
        if len(lengths) != 1:
            raise bins.error(f"'{bins.where}' lists of different lengths")
    return f.data


def _calibration(f: Fields) -> CalibrationSummary:
    after = f.obj("after", nullable=True)
    subgroups: dict[str, dict[str, dict[str, Any]]] = {}
    for column, groups in f.mapping("subgroups", optional=True).items():
        for value, g in groups.data.items():
            cell = groups.child(g, value)
            cell.get("n", int)
            cell.estimate("ece")
            cell.get("accuracy", float, type(None))
            cell.get("mean_confidence", float, type(None))
        subgroups[column] = groups.data
    return CalibrationSummary(
        before=_calibration_report(f.obj("before")),
        after=None if after is None else _calibration_report(after),
        subgroups=subgroups,
    )


def _retrieval(f: Fields) -> dict[str, Any]:
    f.estimates(*RETRIEVAL_METRICS)
    f.get("n_images", int)
    f.get("n_texts", int)
    f.get("note", str, optional=True)
    return f.data


def _shortcut(f: Fields | None) -> ShortcutResult | None:
    return None if f is None else ShortcutResult.from_fields(f)


def _geometry(f: Fields | None) -> GeometryReport | None:
    return None if f is None else GeometryReport.from_fields(f)


def _input(f: Fields | None) -> InputUsed | None:
    if f is None:
        return None
    return f.build(TiledInputUsed if "tile" in f.data else InputUsed)


def _forgetting(f: Fields | None) -> dict[str, Any] | None:
    if f is None:
        return None
    f.get("metric", str)
    n = len(f.numbers("alphas", nullable_items=False))
    for key in ("target", "reference"):
        curve = f.objects(key)
        if len(curve) != n:
            raise f.error(f"'{f.path(key)}' has {len(curve)} points for {n} alphas")
        for point in curve:
            point.as_estimate()
    return f.data


def _conformal(f: Fields | None) -> dict[str, Any] | None:
    if f is None:
        return None
    f.estimates("coverage")
    f.get("target_coverage", float)
    f.get("mean_set_size", float, type(None))
    f.get("singleton_rate", float, type(None))
    f.get("set_sizes", dict)
    thresholds = f.obj("thresholds")
    thresholds.get("method", str)
    thresholds.get("alpha", float)
    for cls in f.mapping("per_class").values():
        cls.get("n", int)
        cls.estimate("coverage")
    return f.data


def _selective(f: Fields | None) -> dict[str, Any] | None:
    if f is None:
        return None
    f.get("aurc", float)
    f.get("aurc_optimal", float)
    f.get("refer", dict)
    if len(f.numbers("coverage", nullable_items=False)) != len(f.numbers("risk", nullable_items=False)):
        raise f.error(f"'{f.path('coverage')}' and '{f.path('risk')}' differ in length")
    return f.data
def _baselines(f: Fields | None) -> dict[str, Any] | None:
    """{name: {"what", "metrics": {metric: Estimate}} | {"what", "reason"}, "verdict": str}."""
    if f is None:
        return None
    for name in f.data:
        if name == "verdict":
            f.get("verdict", str)
            continue
        b = f.obj(name)
        b.get("what", str)
        metrics = b.obj("metrics", optional=True)
        if metrics is None:
            b.get("reason", str)
        else:
            metrics.estimates(*metrics.data)
    return f.data


def _failing(f: Fields | None) -> dict[str, Any] | None:
    """{"min_recall", "min_auroc", "classes": [{"class", "n_pos", "recall", "auroc", "why"}]}."""
    if f is None:
        return None
    f.get("min_recall", float)
    f.get("min_auroc", float)
    for c in f.objects("classes"):
        c.get("class", str)
        c.get("why", str)
    return f.data


def _text_leakage(f: Fields | None) -> dict[str, Any] | None:
    """{"leaking_classes": {class: fraction}, "retrieval": {...}, "label_accuracy": {"texts",
    "masked": Estimate}, ...}."""
    if f is None:
        return None
    f.get("leaking_classes", dict)
    f.obj("label_accuracy").estimates("texts", "masked")
    _retrieval(f.obj("retrieval"))
    return f.data


def _warnings(f: Fields) -> list[dict[str, str]]:
    """[{"kind", "message"}] (files without the key: none recorded)."""
    return [
        {"kind": w.get("kind", str), "message": w.get("message", str)}
        for w in f.objects("warnings", optional=True)
    ]
