"""The names of a run directory's files: the one place they are spelled.

    RUN/config.yaml             resolved fine-tuning config (its presence marks a run directory)
    RUN/metrics.jsonl           one JSON object per training event
    RUN/tb/                     TensorBoard events
    RUN/result.json             summary of a finished run
    RUN/checkpoints/{last,best} checkpoints (layout inside: domainclip.finetune.checkpoint)
    RUN/calibration.json        the fitted calibrator (domainclip.calibrators)
    RUN/eval/<name>/            `domainclip evaluate` outputs
    RUN/audit/<spec>/           `domainclip audit` outputs
    RUN/explain/                `domainclip explain` outputs

This module is at the bottom of the import layers (it only knows paths), so the trainer that
writes a run and every command that reads one share it; `domainclip.runs.Run` adds loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
CALIBRATION_FILE = "calibration.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"
EVAL_DIR = "eval"
AUDIT_DIR = "audit"
EXPLAIN_DIR = "explain"
INDEX_DIR = "index"  # case indexes (`domainclip index RUN ... --out RUN/index/<name>`)
CHECKPOINT_NAMES = ("best", "last")
LOCK_FILE = ".lock"  # held by the process writing the run (domainclip.finetune.checkpoint.run_lock)


def is_run(path: str | Path) -> bool:
    """A run directory is a folder holding the run's resolved config.yaml.

    A run whose first checkpoint is not written yet is still a run (commands that need weights
    say so clearly instead of treating the folder as a backbone spec).
    """
    p = Path(path).expanduser()
    try:
        return p.is_dir() and (p / CONFIG_FILE).is_file()
    except OSError:  # e.g. a symlink loop or a name too long: not a run
        return False


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory (nothing is read or created here)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    def eval_dir(self, name: str) -> Path:
        return self.root / EVAL_DIR / name

    def audit_dir(self, name: str) -> Path:
        return self.root / AUDIT_DIR / name

    @property
    def explain(self) -> Path:
        return self.root / EXPLAIN_DIR

    def index_dir(self, name: str) -> Path:
        return self.root / INDEX_DIR / name
