"""Run summaries for the Runs page: config, metrics.jsonl curves, best metrics, comparisons.

No Streamlit here. Files are located through `RunsAccess` by the caller; these functions only
parse them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from domainclip.finetune.metric_names import metric_value, resolve_metric
from domainclip.runs import Run
from domainclip.runs.layout import METRICS_FILE, RESULT_FILE

# Keys of a metrics record that locate or count rather than measure the model.
_POSITION_KEYS = (
    "step",
    "epoch",
    "time",
    "seconds",
    "n",
    "n_images",
    "n_texts",
    "skipped_batches",
    "skipped_images",
    "skipped_draws",
)
# Keys that name the kind of record (train log vs evaluation), in the order they are looked for.
_KIND_KEYS = ("event", "kind", "type", "phase")
# Metrics where lower is better (everything else: higher is better).
_LOWER_IS_BETTER = ("loss", "nll", "ece", "brier", "rank", "mce")


@dataclass
class MetricsLog:
    """Parsed metrics.jsonl.

    Attributes:
        records: every valid record, in file order (nested dicts flattened with ``/``).
        bad_lines: 1-based numbers of lines that are not a JSON object (e.g. a line cut by a kill).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_metrics(path: Path) -> MetricsLog:
    """Read a metrics.jsonl file (missing file: an empty log)."""
    log = MetricsLog()
    if not path.is_file():
        return log
    with path.open(encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.bad_lines.append(i)
                continue
            if isinstance(rec, dict):
                log.records.append(_flatten(rec))
            else:
                log.bad_lines.append(i)
    return log


def record_kind(rec: dict[str, Any]) -> str:
    """The record's kind ("train", "eval", ...) from its event/kind/type/phase key, or "log"."""
    for k in _KIND_KEYS:
        if isinstance(rec.get(k), str):
            return rec[k]
    return "log"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curves(log: MetricsLog) -> pd.DataFrame:
    """Long-format curves: one row per (record, numeric metric): kind, metric, step, value.

    `step` is the record's ``step`` when present, else its position in the file.
    """
    rows = []
    for i, rec in enumerate(log.records):
        step = rec.get("step")
        step = step if _is_number(step) else i
        kind = record_kind(rec)
        for key, value in rec.items():
            if key in _POSITION_KEYS or key in _KIND_KEYS or not _is_number(value):
                continue
            rows.append({"kind": kind, "metric": key, "step": step, "value": float(value)})
    return pd.DataFrame(rows, columns=["kind", "metric", "step", "value"])


def lower_is_better(metric: str) -> bool:
    """Direction of a metric from its name (loss, NLL, ECE, Brier, ranks: lower is better)."""
    name = metric.lower()
    return any(part in name for part in _LOWER_IS_BETTER)


# Curves shown by default on the Runs page (when logged): the rest is one click away.
DEFAULT_CURVES = ("train/loss", "val/loss", "val/zero_shot_acc", "val/t2i_R@1", "val/i2t_R@1")


def curve_keys(df: pd.DataFrame) -> list[str]:
    """'kind/metric' names of the logged curves, sorted."""
    return sorted({f"{k}/{m}" for k, m in zip(df["kind"], df["metric"], strict=True)})


def select_curves(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of `curves(...)` whose 'kind/metric' is in `keys`, with that name as `metric`."""
    named = df.assign(metric=df["kind"] + "/" + df["metric"])
    return named[named["metric"].isin(keys)]


def backbone_label(spec: str) -> str:
    """Short display name of a backbone spec (a saved directory shows as its folder name)."""
    if spec.startswith(("open_clip:", "hf-clip:")) or "/" not in spec:
        return spec if len(spec) <= 40 else spec[:37] + "..."
    return Path(spec).name


@dataclass
class RunSummary:
    """What the runs table shows for one run."""

    name: str
    backbone: str
    method: str
    towers: str
    trainable_params: int | None
    trainable_fraction: float | None
    steps: int | None
    best_metric: str | None
    best_value: float | None
    best_step: int | None
    finished: bool
    best_metrics: dict[str, float]
    config: dict[str, Any]
    log: MetricsLog

    def row(self) -> dict[str, Any]:
        """One row of the runs table."""
        return {
            "run": self.name,
            "backbone": backbone_label(self.backbone),
            "method": self.method,
            "towers (image/text)": self.towers,
            "trainable params": self.trainable_params,
            "trainable %": None
            if self.trainable_fraction is None
            else round(100 * self.trainable_fraction, 3),
            "steps": self.steps,
            "best metric": self.best_metric,
            "best value": self.best_value,
            "best step": self.best_step,
            "status": "finished" if self.finished else "running or stopped",
        }


def _best_from_log(
    df: pd.DataFrame, metric: str
) -> tuple[float | None, int | None, dict[str, float]]:
    """Best validation value of `metric`, its step and every val metric at that step."""
    val = df[df["kind"] == "val"]
    metric = resolve_metric(dict.fromkeys(val["metric"], 0.0), metric)  # head_acc of head methods
    series = val[val["metric"] == metric]
    if series.empty:
        return None, None, {}
    pick = series["value"].idxmin() if lower_is_better(metric) else series["value"].idxmax()
    step = series.at[pick, "step"]
    at_step = val[val["step"] == step]
    return (
        float(series.at[pick, "value"]),
        int(step),
        dict(zip(at_step["metric"], at_step["value"], strict=True)),
    )


def summarise_run(name: str, run_dir: Path) -> RunSummary:
    """Read a run's config, metrics.jsonl and (when finished) result.json into a `RunSummary`.

    A finished run's numbers come from result.json as the trainer wrote them; a run still in
    progress (or killed) is summarised from its metrics log.
    """
    run = Run(run_dir)
    log = read_metrics(run_dir / METRICS_FILE)
    df = curves(log)
    metric = run.setting("eval.metric")
    result_path = run_dir / RESULT_FILE
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else None
    if result is not None:
        best_metrics = {
            k: float(v) for k, v in (result.get("best_metrics") or {}).items() if _is_number(v)
        }
        best_value = metric_value(best_metrics, metric) if metric else None
        best_step = result.get("best_step")
        steps = result.get("steps")
    else:
        best_value, best_step, best_metrics = (
            _best_from_log(df, metric) if metric else (None, None, {})
        )
        steps = int(df["step"].max()) if not df.empty else None
    img, txt = run.setting("method.image_tower"), run.setting("method.text_tower")
    return RunSummary(
        name=name,
        backbone=str(run.setting("backbone.spec") or "?"),
        method=str(run.setting("method.name") or "?"),
        towers=f"{img or '?'}/{txt or '?'}",
        trainable_params=None if result is None else int(result["trainable_params"]),
        trainable_fraction=None if result is None else float(result["trainable_fraction"]),
        steps=steps,
        best_metric=metric,
        best_value=best_value,
        best_step=best_step,
        finished=result is not None,
        best_metrics=best_metrics,
        config=run.config_dict(),
        log=log,
    )


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    """Config keys whose values differ between two runs: key, value in A, value in B."""
    fa, fb = _flatten(a, ""), _flatten(b, "")
    rows = [
        {"key": k.replace("/", "."), "run A": repr(fa.get(k)), "run B": repr(fb.get(k))}
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k)
    ]
    return pd.DataFrame(rows, columns=["key", "run A", "run B"])
