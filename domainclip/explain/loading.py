"""Load what to explain: a fine-tuning run directory or a backbone spec."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from domainclip.explain.errors import ExplainError
from domainclip.models import Backbone, load_backbone

log = logging.getLogger(__name__)


def is_run_dir(spec: str) -> bool:
    """A run directory is a folder with the run's resolved `config.yaml` inside."""
    path = Path(spec).expanduser()
    return path.is_dir() and (path / "config.yaml").is_file()


def load_model_or_backbone(spec: str, device: str = "cpu") -> tuple[Backbone, Path | None]:
    """(backbone, run directory or None) for a run directory or any `load_backbone` spec."""
    if is_run_dir(spec):
        try:  # imported here: the fine-tuning package is optional for plain backbones
            from domainclip.finetune import load_model
        except ImportError as exc:
            raise ExplainError(
                f"{spec} is a fine-tuning run, but domainclip.finetune cannot be imported ({exc})"
            ) from exc
        bb = load_model(spec)
        bb.model.to(device)
        return bb, Path(spec).expanduser().resolve()
    return load_backbone(spec, device=device), None


def run_temperature(run: Path | None) -> float:
    """Fitted temperature of a run (1.0 for plain backbones and runs without calibration).

    Uses `domainclip.evaluation.load_temperature`; if that package is not importable, reads the
    documented `RUN/calibration.json` ({"temperature": T}) directly.
    """
    if run is None:
        return 1.0
    try:
        from domainclip.evaluation import load_temperature
    except ImportError:
        path = run / "calibration.json"
        if not path.is_file():
            return 1.0
        try:
            value = float(json.loads(path.read_text())["temperature"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ExplainError(f"{path}: no valid 'temperature' ({exc})") from exc
        log.info("temperature %.4g from %s", value, path)
        return value
    return float(load_temperature(run))
