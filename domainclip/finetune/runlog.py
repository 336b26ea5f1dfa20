"""Metric logging: metrics.jsonl (every event, flushed) and TensorBoard scalars.

On resume, events after the resumed step are dropped from metrics.jsonl and TensorBoard is
opened with `purge_step`, so both logs read like one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from domainclip.io import atomic_write_text
from domainclip.runs.layout import METRICS_FILE, TENSORBOARD_DIR

log = logging.getLogger(__name__)


class RunLog:
    """Append-only event log of a run (rank 0 only; other ranks get `enabled=False`).

    Args:
        run_dir: the run directory.
        resume_step: when resuming, drop logged events with a step beyond it.
        enabled: False makes every call a no-op (non-zero DDP ranks).
        tensorboard: also write TensorBoard events under run_dir/tb.
    """

    def __init__(
        self,
        run_dir: Path,
        resume_step: int | None = None,
        enabled: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resume_step)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def event(self, kind: str, step: int, **values: Any) -> None:
        """Log one event: {"event": kind, "step": step, "time": unix time, **values}."""
        if not self.enabled:
            return
        rec = {"event": kind, "step": int(step), "time": round(time.time(), 3), **values}
        self._fh.write(json.dumps(rec, default=_jsonable) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All events of a run's metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
