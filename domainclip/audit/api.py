"""`run_audit`: the prompt-framing audit of one model (optionally against its base model).

Cost: each image is embedded once and each distinct prompt once (K framings x C findings texts);
every framing then reuses the image features. Everything else is arithmetic on a [K, N, C] table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainclip.audit import data as audit_data
from domainclip.audit.analysis import (
    FramingComparison,
    calibration_by_framing,
    compare_framing,
    point_ece_by_subgroup_and_framing,
)
from domainclip.audit.compare import compare_models
from domainclip.audit.gate import Check, check_resolution, gate_checks, verdict
from domainclip.audit.scores import ScoreTable, score_table
from domainclip.audit.spec import AuditSpec, load_audit_spec
from domainclip.datasets.manifest import Manifest, ManifestRow, read_manifest
from domainclip.errors import ConfigError
from domainclip.evaluation.bootstrap import Estimate
from domainclip.evaluation.loading import load_for_eval

log = logging.getLogger(__name__)

SCHEMA = "domainclip.audit/1"


@dataclass
class ResolvedModel:
    """A model to audit with where it came from and the temperature its probabilities use."""

    backbone: Any
    run_dir: Path | None
    temperature: float
    temperature_source: str
    label: str


def resolve_model(model_or_run: Any, temperature: float | None = None) -> ResolvedModel:
    """A Backbone, a run directory or a backbone spec -> ResolvedModel.

    Loading goes through `evaluation.loading.load_for_eval` (runs via `finetune.load_model`), so
    audit and evaluation recognise runs the same way. Runs use their fitted temperature
    (`RUN/calibration.json`); anything else T = 1 unless `temperature` is given.
    """
    from domainclip.evaluation.temperature import CALIBRATION_FILE, load_temperature

    bb, run_dir = load_for_eval(model_or_run)
    if run_dir is not None:
        label = str(Path(run_dir).resolve())
    elif isinstance(model_or_run, (str, Path)):
        label = str(model_or_run)
    else:
        label = bb.spec
    if temperature is not None:
        return ResolvedModel(bb, run_dir, float(temperature), "given", label)
    if run_dir is None:
        return ResolvedModel(bb, None, 1.0, "none fitted (T = 1)", label)
    run_dir = Path(run_dir).resolve()
    if (run_dir / CALIBRATION_FILE).is_file():
        return ResolvedModel(
            bb, run_dir, load_temperature(run_dir), str(run_dir / CALIBRATION_FILE), label
        )
    return ResolvedModel(
        bb,
        run_dir,
        1.0,
        f"none fitted (T = 1; run `domainclip evaluate {run_dir} --fit-temperature`)",
        label,
    )


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
        resolved.temperature,
    )
    st = spec.statistics
    comparisons = {
        f.name: compare_framing(
            table, f.name, spec.reference, subgroups, st.n_bootstrap, st.seed, st.min_cell_images
        )
        for f in spec.framings
        if f.name != spec.reference
    }
    calibration = calibration_by_framing(table, st.n_bootstrap, st.seed, st.ece_bins)
    sub_cal = point_ece_by_subgroup_and_framing(table, subgroups, st.ece_bins)
    timings["statistics_s"] = time.perf_counter() - t0
    return ModelAudit(resolved, table, prompts, comparisons, calibration, sub_cal, timings)


@dataclass
class AuditResult:
    """The outcome of `run_audit`.

    Attributes:
        data: the content of audit.json (every number with its interval, thresholds, verdict).
        table: the score table (framings x images x classes) of the audited model.
        rows: the scored manifest rows, in the table's image order.
        out_dir: where the files were written (None when nothing was written).
        files: kind ("json", "markdown", "html", "junit", "scores", plot names) -> path.
    """

    data: dict[str, Any]
    table: ScoreTable
    rows: list[ManifestRow]
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.data["gate"]["verdict"]

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.data["gate"]["checks"] if c["status"] == "fail"]


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


def _model_info(r: ResolvedModel) -> dict[str, Any]:
    bb = r.backbone
    return {
        "label": r.label,
        "run": str(r.run_dir) if r.run_dir else None,
        "backbone_spec": bb.spec,
        "family": bb.family,
        "image_arch": bb.image_arch,
        "head": bb.head is not None,
        "temperature": r.temperature,
        "temperature_source": r.temperature_source,
    }


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

    Returns:
        AuditResult (its `data` is what audit.json holds).

    Raises:
        ConfigError / DataError: bad spec, no data, fewer than two findings in the split, ...
    """
    started = time.perf_counter()
    spec = load_audit_spec(spec)
    check_resolution(spec)
    resolved = resolve_model(model_or_run, temperature)
    mf = _load_manifest(manifest, resolved)
    selection = audit_data.select_rows(mf, split, spec)
    spec_used = selection.spec

    t0 = time.perf_counter()
    feats, kept, failures = audit_data.embed_rows(
        resolved.backbone, mf, selection.rows, batch_size, num_workers
    )
    timings = {"embed_images_s": time.perf_counter() - t0}
    rows = [selection.rows[i] for i in kept]
    target, positives = audit_data.targets(rows, spec_used.labels)
    columns = [c for c in spec_used.subgroups if c not in selection.subgroups_absent]
    subgroups = audit_data.subgroup_values(rows, columns)
    main = audit_features(resolved, spec_used, feats, target, positives, subgroups, timings)

    base = None
    if compare is not None:
        base_model = resolve_model(compare)
        t0 = time.perf_counter()
        # The base model scores exactly the images the audited model scored (paired comparison).
        base_feats, base_kept, _ = audit_data.embed_rows(
            base_model.backbone, mf, rows, batch_size, num_workers
        )
        if len(base_kept) != len(rows):
            raise ConfigError(
                f"the base model could read {len(base_kept)} of the {len(rows)} images the audited "
                "model read; a paired comparison needs the same images"
            )
        base = audit_features(
            base_model,
            spec_used,
            base_feats,
            target,
            positives,
            subgroups,
            {"embed_images_s": time.perf_counter() - t0},
        )

    from domainclip.audit.results import build_audit_json

    checks: list[Check] = gate_checks(spec_used, main.comparisons, main.calibration)
    comparison = None
    if base is not None:
        st = spec_used.statistics
        comparison = compare_models(main.comparisons, base.comparisons, st.n_bootstrap, st.seed)
    data = build_audit_json(
        spec=spec,
        spec_used=spec_used,
        main=main,
        model_info=_model_info(resolved),
        manifest=mf,
        split=split,
        selection=selection,
        rows=rows,
        failures=failures,
        n_unreadable=len(selection.rows) - len(rows),
        checks=checks,
        gate=verdict(checks),
        base=base,
        base_info=_model_info(base.model) if base is not None else None,
        base_checks=(
            gate_checks(spec_used, base.comparisons, base.calibration) if base is not None else None
        ),
        comparison=comparison,
    )
    result = AuditResult(data=data, table=main.table, rows=rows)
    if out_dir is None and resolved.run_dir is not None:
        out_dir = resolved.run_dir / "audit" / spec.name
    if out_dir is not None:
        from domainclip.audit.report import write_outputs

        t0 = time.perf_counter()
        result.out_dir = Path(out_dir)
        data["timing"]["write_outputs_s"] = None  # filled in below, after the files exist
        result.files = write_outputs(result)
        data["timing"]["write_outputs_s"] = round(time.perf_counter() - t0, 3)
    data["timing"]["total_s"] = round(time.perf_counter() - started, 3)
    if result.out_dir is not None:
        from domainclip.audit.report import write_json

        write_json(result.out_dir / "audit.json", data)
    log.info(
        "audit %s of %s: %d images x %d framings, verdict %s",
        spec.name,
        resolved.label,
        len(rows),
        len(spec_used.framings),
        result.verdict,
    )
    return result
