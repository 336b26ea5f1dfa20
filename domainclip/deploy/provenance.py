"""What a deployed model is, for `predict` and `export`: the run's task, gate and provenance.

- `load_task(run, checkpoint, merge)`: the run loaded through `domainclip.runs.resolve_model`,
  its classes and class text embeddings (`evaluation.task.ZeroShotTask`, the same prompts
  `domainclip evaluate` scores with) and its calibrator record.
- `gate_record(run)`: the newest audit gate of the run (RUN/audit/*/audit.json read as
  `audit.results.AuditReport`), or None when it was never audited.
- `provenance(...)`: run, checkpoint and the sha256 of its weights, calibrator, prompt-set version,
  audit spec version, gate verdict and date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainclip.audit.results import AuditReport
from domainclip.calibrators import load_calibration
from domainclip.datasets.manifest import read_manifest
from domainclip.errors import ConfigError
from domainclip.evaluation.task import ZeroShotTask, align_with_head, resolve_classes
from domainclip.runs import ResolvedModel, Run, resolve_model, weights_sha256
from domainclip.runs.layout import AUDIT_DIR
from domainclip.scoring.prompts import PromptSet, load_prompt_set

log = logging.getLogger(__name__)


@dataclass
class DeployTask:
    """A run ready to score: model + calibrator + preprocessing, the class task, and records."""

    resolved: ResolvedModel
    run: Run
    checkpoint: str
    ps: PromptSet
    task: ZeroShotTask
    calibration: dict[str, Any] | None  # RUN/calibration.json record, None when not fitted

    @property
    def classes(self) -> list[str]:
        return self.task.classes


def load_task(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", merge: bool = False) -> DeployTask:
    """Load a run for deployment (LoRA merged when `merge`, for export).

    Raises:
        ConfigError: not a run, no checkpoint, no prompt set in its config, a tiled run.
    """
    run = Run(run_dir)
    if run.setting("data.fit") == "tile":
        raise ConfigError(
            f"{run.root} was trained on tiles (data.fit: tile): it scores an image as several tiles "
            "and aggregates their logits (domainclip.scoring.tiles), while predict and the ONNX "
            "image graph take one whole fitted image, so they would not score as the audited run "
            "does and are refused. What to do: score new images with `domainclip evaluate "
            f"{run.root} --data MANIFEST` (tiles honoured), or fine-tune a whole-image run "
            "(data.fit: letterbox) to deploy with predict/export"
        )
    if merge:
        bb = run.load(checkpoint=checkpoint, device=device, merge=True)
        resolved = resolve_model(bb, device=device, fit=run.input_settings()[0],
                                 image_size=run.input_settings()[1])
        resolved.run, resolved.label = run, str(run.root)
        resolved.calibrator = run.calibration()
    else:
        resolved = resolve_model(run.root, checkpoint=checkpoint, device=device)
    prompts = run.setting("eval.prompts")
    if not prompts:
        raise ConfigError(f"{run.layout.config}: no eval.prompts, so the run has no class prompts to score with")
    ps = load_prompt_set(prompts)
    man = read_manifest(run.setting("data.manifest"))
    classes = align_with_head(resolved.backbone, resolve_classes(ps, man, run.setting("data.classes") or None))
    task = ZeroShotTask.build(resolved.backbone, ps, classes)
    record = load_calibration(run.root)
    if record is not None and "kind" not in record:  # records without "kind" are temperature records
        record = {"kind": "temperature", **record}
    return DeployTask(resolved, run, checkpoint, ps, task, record)


def gate_record(run: Run) -> dict[str, Any] | None:
    """The newest audit gate of `run` (by `created`): verdict, spec name/version, date, file."""
    reports = []
    for path in sorted((run.root / AUDIT_DIR).glob("*/audit.json")):
        rep = AuditReport.read(path)
        reports.append((rep.created, path, rep))
    if not reports:
        return None
    created, path, rep = max(reports, key=lambda r: r[0])
    return {
        "verdict": rep.gate.verdict,
        "spec": rep.spec.get("name"),
        "version": rep.spec.get("version"),
        "created": created,
        "n_failed": len(rep.gate.failed_checks),
        "path": str(path),
    }


def provenance(t: DeployTask) -> dict[str, Any]:
    """The provenance record of `t` (stored in the export manifest and the predict sidecar)."""
    where = t.run.checkpoint(t.checkpoint)
    bb = t.resolved.backbone
    return {
        "run": str(t.run.root),
        "checkpoint": t.checkpoint,
        "checkpoint_dir": str(where),
        "weights_sha256": weights_sha256(where),
        "method": bb.info.get("method"),
        "backbone": t.run.setting("backbone.spec"),
        "calibrator": t.calibration,
        "prompt_set": {"source": t.ps.source, "version": t.ps.version, "mode": t.ps.mode},
        "gate": gate_record(t.run),
    }
