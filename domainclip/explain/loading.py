"""Load what to explain: a fine-tuning run directory or a backbone spec."""

from __future__ import annotations

from pathlib import Path

from domainclip.models import Backbone, load_backbone


def is_run_dir(spec: str) -> bool:
    """A run directory is a folder with the run's resolved `config.yaml` inside."""
    path = Path(spec).expanduser()
    return path.is_dir() and (path / "config.yaml").is_file()


def load_model_or_backbone(
    spec: str, device: str = "cpu", checkpoint: str = "best"
) -> tuple[Backbone, Path | None]:
    """(backbone, run directory or None) for a run directory or any `load_backbone` spec.

    Runs go through `domainclip.finetune.load_model` (adapters and heads included), imported
    only then: explaining a plain backbone does not need the fine-tuning stack.
    """
    if is_run_dir(spec):
        from domainclip.finetune import load_model

        return load_model(spec, checkpoint=checkpoint, device=device), Path(spec).resolve()
    return load_backbone(spec, device=device), None


def run_temperature(run: Path | None) -> float:
    """Fitted temperature of a run (1.0 for plain backbones and runs without calibration)."""
    if run is None:
        return 1.0
    from domainclip.evaluation import load_temperature

    return float(load_temperature(run))
