"""`run_audit`: the prompt-framing audit of one model (optionally against its base model).

Cost: each image is embedded once and each distinct prompt once (K framings x C findings texts);
every framing then reuses the image features. Everything else is arithmetic on a [K, N, C] table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainclip.audit import data as audit_data
from domainclip.audit.analysis import (
    FramingComparison,
    Power,
    calibration_by_framing,
    compare_framing,
    point_ece_by_subgroup_and_framing,
)
from domainclip.audit.compare import compare_models
from domainclip.audit.coverage import coverage_checks, framing_coverage
from domainclip.audit.floor import floor_checks, near_chance, performance
from domainclip.audit.gate import Check, check_resolution, gate_checks
from domainclip.audit.results import (
    AUDIT_FILE,
    AuditReport,
    BaseComparison,
    build_audit_report,
    gate_summary,
    model_section,
    row_number,
)
from domainclip.audit.scores import ScoreTable, score_table
from domainclip.audit.spec import AuditSpec, load_audit_spec
from domainclip.datasets.manifest import Manifest, ManifestRow, read_manifest
from domainclip.errors import ConfigError
from domainclip.evaluation.bootstrap import Estimate
from domainclip.runs.run import ResolvedModel, resolve_model

log = logging.getLogger(__name__)

@dataclass
class ModelAudit:
    """Everything computed for one model on the audited images."""

    model: ResolvedModel
    table: ScoreTable
    prompts: dict[str, dict[str, str]]
    comparisons: dict[str, FramingComparison]
    calibration: dict[str, dict[str, Estimate]]
    subgroup_calibration: dict[str, Any]
    timings: dict[str, float]
    # Balanced accuracy / macro AUROC under the reference framing and of chance (`floor.performance`).
    performance: dict[str, Any] | None = None


def power_options(spec: AuditSpec) -> Power:
    """How the spec's cells are tested and judged for power (`analysis.Power`): the per-cell
    level alpha / m (Holm's strictest step over the m gated shift tests)."""
    th, st = spec.thresholds, spec.statistics
    m = max(1, spec.n_gated_shift_tests)
    return Power(
        level=th.alpha / m,
        threshold=th.max_abs_mean_shift or 0.0,
        require=th.require_power,
        n_perm=st.n_permutations,
        refine_below=2 * th.alpha,
    )


def audit_features(
    resolved: ResolvedModel,
    spec: AuditSpec,
    image_feats: torch.Tensor,
    target: np.ndarray,
    positives: np.ndarray,
    subgroups: Mapping[str, list[str]],
    timings: dict[str, float] | None = None,
) -> ModelAudit:
    """Embed the spec's prompts once, score precomputed image features, run the statistics."""
    from domainclip.scoring.zeroshot import embed_unique_texts

    timings = dict(timings or {})
    bb = resolved.backbone
    t0 = time.perf_counter()
    prompts = {f.name: dict(zip(spec.labels, spec.prompts(f), strict=True)) for f in spec.framings}
    feats = embed_unique_texts(bb, [t for p in prompts.values() for t in p.values()])
    text = torch.stack([torch.stack([feats[prompts[f][c]] for c in spec.labels]) for f in prompts])
    timings["embed_texts_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = score_table(
        bb,
        image_feats,
        text,
        spec.framing_names,
        spec.labels,
        target,
        positives,
        resolved.calibrator,
    )
    st = spec.statistics
    power = power_options(spec)
    framed = [f.label for f in spec.findings if f.framed]
    comparisons = {
        f.name: compare_framing(
            table, f.name, spec.reference, subgroups, st.n_bootstrap, st.seed, st.min_cell_images,
            power=power, framed_classes=framed if f.expect == "lower" else None,
        )
        for f in spec.framings
        if f.name != spec.reference
    }
    calibration = calibration_by_framing(table, st.n_bootstrap, st.seed, st.ece_bins)
    sub_cal = point_ece_by_subgroup_and_framing(table, subgroups, st.ece_bins)
    perf = performance(table, spec.reference, st.n_bootstrap, st.seed)
    timings["statistics_s"] = time.perf_counter() - t0
    return ModelAudit(resolved, table, prompts, comparisons, calibration, sub_cal, timings, perf)


@dataclass
class AuditResult:
    """The outcome of `run_audit`.

    Attributes:
        report: what audit.json holds (every number with its interval, thresholds, verdict).
        table: the score table (framings x images x classes) of the audited model.
        rows: the scored manifest rows, in the table's image order.
        out_dir: where the files were written (None when nothing was written).
        files: kind ("json", "markdown", "html", "junit", "scores", plot names) -> path.
        show_paths: image paths go into the files (`--show-paths`); paths: row -> image file,
            in memory only (the flip thumbnails need the pixels, the files name rows).
    """

    report: AuditReport
    table: ScoreTable
    rows: list[ManifestRow]
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    show_paths: bool = False
    paths: dict[int, str] = field(default_factory=dict)

    @property
    def data(self) -> dict[str, Any]:
        """The content of audit.json as JSON data (`report.to_json()`)."""
        return self.report.to_json()

    @property
    def verdict(self) -> str:
        return self.report.gate.verdict

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.report.gate.failed_checks]


@dataclass
class AuditedImages:
    """The images an audit scores (embedded once), their targets and subgroup values.

    feats: [N, D] image features of `rows`; target: int [N] class index (into spec.labels);
    positives: bool [N, C] every label of the row among the findings.
    """

    manifest: Manifest
    selection: audit_data.AuditRows
    rows: list[ManifestRow]
    failures: dict[str, str]
    feats: torch.Tensor
    target: np.ndarray
    positives: np.ndarray
    subgroups: dict[str, list[str]]
    timings: dict[str, float]

    @property
    def spec(self) -> AuditSpec:
        """The spec restricted to the findings present in the data."""
        return self.selection.spec


def _load_manifest(manifest: Any, resolved: ResolvedModel) -> Manifest:
    if isinstance(manifest, Manifest):
        return manifest
    if manifest is None:
        if resolved.run_dir is None:
            raise ConfigError(
                f"{resolved.label} is not a run directory, so it names no data: pass a manifest "
                "(--data MANIFEST)"
            )
        manifest = audit_data.manifest_from_run(resolved.run_dir)
    return read_manifest(manifest)


def _softmax_calibrator(resolved: ResolvedModel) -> ResolvedModel:
    """The audit scores a softmax over the spec's findings. A calibrator fitted on multi-label
    binary logits (positive vs negative prompt per finding; record mode `multi_label`) is on
    another scale: its temperature could flatten or sharpen the softmax arbitrarily (covid-cxr:
    T = 148 at the search bound made every shift 0.000, T = 0.26 quadrupled them), so the audit
    scores such a run at T = 1 and says so. Decisions, hence flip rates, do not depend on it."""
    if resolved.calibrator.fit.get("mode") != "multi_label":
        return resolved
    from domainclip.calibrators import TemperatureCalibrator

    log.warning(
        "%s: the run's calibrator was fitted for multi-label binary scores; the audit's softmax "
        "over the findings uses T = 1", resolved.label,
    )
    resolved.calibrator = TemperatureCalibrator(
        1.0, f"T = 1: the run's calibrator ({resolved.calibrator.source}) is fitted for "
        "multi-label binary scores, not the audit's softmax over findings",
    )
    resolved.calibration_origin = "none"
    return resolved


def run_audit(
    model_or_run: Any,
    spec: str | Path | Mapping[str, Any] | AuditSpec,
    manifest: str | Path | Manifest | None = None,
    split: str | None = "test",
    out_dir: str | Path | None = None,
    compare: Any = None,
    *,
    temperature: float | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    fit: str | None = None,
    image_size: int | None = None,
    show_columns: Sequence[str] = (),
    show_paths: bool = False,
    bin_columns: dict[str, float] | None = None,
) -> AuditResult:
    """Audit how a model's scores move when the findings are worded differently.

    Args:
        model_or_run: a `Backbone`, a fine-tuning run directory, or a backbone spec ("default").
        spec: an `AuditSpec`, a YAML path, a shipped spec name ("neu_det") or a mapping.
        manifest: the data (default for a run: the manifest it was trained on).
        split: which split to score ("test" by default; None = every row).
        out_dir: where to write audit.json, the reports, plots and JUnit XML. Default for a run:
            RUN/audit/<spec name>/; for anything else nothing is written unless given.
        compare: the base model (Backbone, run or spec) to audit on the same images, to tell
            whether fine-tuning amplified or reduced framing sensitivity.
        temperature: override the temperature (default: the run's fitted one, else 1).
        fit, image_size: input geometry instead of the run's (backbones: letterbox, native
            size); the `compare` model sees exactly the same input.
        show_columns: subgroup columns whose values report.md/.html may show although they are
            not on `privacy.SAFE_COLUMNS` (audit.json keeps every subgroup of the spec).
        show_paths: write image paths (audit.json flip examples, scores.csv, reports); default:
            images named by manifest row (`privacy.image_name`).
        bin_columns: bin widths of numeric subgroup columns (default: age in decades).

    Returns:
        AuditResult (its `data` is what audit.json holds).

    Raises:
        ConfigError / DataError: bad spec, no data, fewer than two findings in the split, ...
    """
    started = time.perf_counter()
    spec = load_audit_spec(spec)
    check_resolution(spec)
    resolved = _softmax_calibrator(resolve_model(
        model_or_run, temperature=temperature, fit=fit, image_size=image_size
    ))
    images = _embed_images(resolved, spec, manifest, split, batch_size, num_workers, bin_columns)
    main = audit_features(
        resolved,
        images.spec,
        images.feats,
        images.target,
        images.positives,
        images.subgroups,
        images.timings,
    )
    base = None
    if compare is not None:
        # Paired comparison: the base model scores the very pixels the audited model scored.
        same_input = {"fit": resolved.input["fit"], "image_size": resolved.input["image_size"]}
        base = _audit_base(resolve_model(compare, **same_input), images, batch_size, num_workers)
    report = _report(spec, main, base, images, split, show_paths, bin_columns)
    result = AuditResult(report, main.table, images.rows, show_paths=show_paths, paths=_paths(images))
    if out_dir is None and resolved.run_dir is not None:
        out_dir = resolved.run.layout.audit_dir(spec.name)
    _write(result, out_dir, started, show_columns)
    log.info(
        "audit %s of %s: %d images x %d framings, verdict %s",
        spec.name,
        resolved.label,
        len(images.rows),
        len(images.spec.framings),
        result.verdict,
    )
    return result


def _paths(images: AuditedImages) -> dict[int, str]:
    """row -> image file of the audited rows (in memory only: the flip thumbnails need pixels)."""
    return {row_number(r, i): str(images.manifest.image_path(r)) for i, r in enumerate(images.rows)}


def _embed_images(
    resolved: ResolvedModel,
    spec: AuditSpec,
    manifest: str | Path | Manifest | None,
    split: str | None,
    batch_size: int,
    num_workers: int,
    bins: dict[str, float] | None = None,
) -> AuditedImages:
    """Select the rows the spec can score, embed each image once, derive targets and subgroups
    (numeric subgroup columns binned, `datasets.subgroups`)."""
    mf = _load_manifest(manifest, resolved)
    selection = audit_data.select_rows(mf, split, spec)
    spec_used = selection.spec
    t0 = time.perf_counter()
    feats, kept, failures = audit_data.embed_rows(
        resolved, mf, selection.rows, batch_size, num_workers
    )
    timings = {"embed_images_s": time.perf_counter() - t0}
    rows = [selection.rows[i] for i in kept]
    target, positives = audit_data.targets(rows, spec_used.labels)
    columns = [c for c in spec_used.subgroups if c not in selection.subgroups_absent]
    subgroups = audit_data.subgroup_values(rows, columns, bins)
    return AuditedImages(
        mf, selection, rows, failures, feats, target, positives, subgroups, timings
    )


def _audit_base(
    base_model: ResolvedModel, images: AuditedImages, batch_size: int, num_workers: int
) -> ModelAudit:
    """The base model on exactly the images the audited model scored (paired comparison)."""
    t0 = time.perf_counter()
    base_feats, base_kept, _ = audit_data.embed_rows(
        base_model, images.manifest, images.rows, batch_size, num_workers
    )
    if len(base_kept) != len(images.rows):
        raise ConfigError(
            f"the base model could read {len(base_kept)} of the {len(images.rows)} images the "
            "audited model read; a paired comparison needs the same images"
        )
    return audit_features(
        base_model,
        images.spec,
        base_feats,
        images.target,
        images.positives,
        images.subgroups,
        {"embed_images_s": time.perf_counter() - t0},
    )


def _report(
    spec: AuditSpec,
    main: ModelAudit,
    base: ModelAudit | None,
    images: AuditedImages,
    split: str | None,
    show_paths: bool = False,
    bins: dict[str, float] | None = None,
) -> AuditReport:
    """Gate checks, the comparison with the base model, and the report."""
    spec_used = images.spec
    # Performance floors first: a model that cannot do the task fails whatever its framing stability.
    checks: list[Check] = floor_checks(spec_used, main.performance) + gate_checks(
        spec_used, main.comparisons, main.calibration
    )
    coverage = framing_coverage(spec_used, main.table, images.subgroups)
    checks += coverage_checks(spec_used, coverage)
    compare = None
    if base is not None:
        st = spec_used.statistics
        k = main.table.k(spec_used.reference)
        spread = (float(main.table.scores[k].std()), float(base.table.scores[k].std()))
        change = compare_models(
            main.comparisons,
            base.comparisons,
            st.n_bootstrap,
            st.seed,
            spread=spread,
            base_near_chance=near_chance(base.performance),
        )
        base_checks = floor_checks(spec_used, base.performance) + gate_checks(
            spec_used, base.comparisons, base.calibration
        )
        compare = BaseComparison(
            base=model_section(spec_used, base),
            base_gate=gate_summary(base_checks),
            sensitivity_change=change,
        )
    report = build_audit_report(
        spec=spec,
        spec_used=spec_used,
        main=main,
        checks=checks,
        manifest=images.manifest,
        split=split,
        selection=images.selection,
        rows=images.rows,
        failures=images.failures,
        compare=compare,
        show_paths=show_paths,
        bins=bins,
    )
    report.coverage = coverage
    return report


def _write(
    result: AuditResult, out_dir: str | Path | None, started: float, show_columns: Sequence[str]
) -> None:
    """Write every file into `out_dir` (nothing when None); audit.json last, with the timings."""
    timing = result.report.timing
    if out_dir is not None:
        from domainclip.audit.report import write_outputs

        t0 = time.perf_counter()
        result.out_dir = Path(out_dir)
        timing["write_outputs_s"] = None  # filled in below, after the files exist
        result.files = write_outputs(result, show_columns)
        timing["write_outputs_s"] = round(time.perf_counter() - t0, 3)
    timing["total_s"] = round(time.perf_counter() - started, 3)
    if result.out_dir is not None:
        result.report.write(result.out_dir / AUDIT_FILE)
