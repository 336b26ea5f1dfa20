"""What `domainclip predict` reads and writes, shared by the PyTorch and ONNX Runtime predictors.

Torch-free on purpose (numpy, pillow and small parts of domainclip only): the ONNX Runtime
predictor (`domainclip.deploy.onnx_runtime`) uses it on machines without torch.

- `list_inputs(images=DIR | data=MANIFEST, split)`: the images to score, in a stable order
  (`InputItem(row, path)`); nothing is decoded here.
- `batches(items, size)`: the items in batches (bounded memory: one batch of pixels at a time).
- `PredictionWriter`: streams one output row per image to CSV or JSONL (a bad image is a row with
  `status = error` and its `reason`), counts them, and writes the provenance sidecar
  `<out>.provenance.json` when closed.
- `DecisionRules(record)`: the calibration record's conformal thresholds and referral rule.
- `score_rows(...)`: calibrated probabilities [N, C] -> output rows (top-1, confidence,
  needs_review, optional prompt similarities; the prediction set when the run has conformal
  thresholds, `refer` when it has a referral rule).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domainclip import __version__
from domainclip.errors import ConfigError, DataError
from domainclip.io import atomic_write_json
from domainclip.privacy import image_name, scrub_path

OUTPUT_SUFFIXES = (".csv", ".jsonl")
PROVENANCE_SUFFIX = ".provenance.json"
DEFAULT_REVIEW_BELOW = 0.5


@dataclass(frozen=True)
class InputItem:
    """One image to score: `row` (position in the input listing / manifest row), absolute path,
    and `name`, how the output names it (`privacy.image_name`: "row N" for a manifest row,
    "file N" for the file at position N (= `row`, from 0) of the sorted --images listing; the path with --show-paths)."""

    row: int
    path: Path
    name: str = ""

    @property
    def shown(self) -> str:
        return self.name or str(self.path)


def list_inputs(
    images: str | Path | None, data: str | Path | None, split: str | None = None, show_paths: bool = False
) -> list[InputItem]:
    """The images named by `--images DIR` (every file below it, sorted; hidden files skipped) or
    `--data MANIFEST` (its rows, optionally one split). Each is named by row / file number in
    the output unless `show_paths` (file names may carry patient or case ids).

    Raises:
        ConfigError: neither or both given, the folder or manifest is missing, or nothing to score.
    """
    if (images is None) == (data is None):
        raise ConfigError("give exactly one of --images DIR or --data MANIFEST")
    if images is not None:
        root = Path(images).expanduser()
        if not root.is_dir():
            raise ConfigError(f"--images {images}: not a folder; give the folder holding the images")
        files = sorted(
            p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
        )
        items = [
            InputItem(i, p.resolve(), str(p.resolve()) if show_paths else f"file {i}")
            for i, p in enumerate(files)
        ]
    else:
        from domainclip.datasets.manifest import read_manifest

        man = read_manifest(data)
        rows = [r for r in man.rows if split is None or r.split == split]
        items = [
            InputItem(r.row, Path(man.image_path(r)), image_name(r.row, man.image_path(r), show_paths))
            for r in rows
        ]
    if not items:
        where = images if images is not None else f"{data}" + (f" (split {split})" if split else "")
        raise ConfigError(f"no images to score in {where}")
    return items


def batches(items: Sequence[InputItem], size: int) -> Iterator[list[InputItem]]:
    """`items` in consecutive batches of at most `size`."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def output_path(out: str | Path) -> Path:
    """The output file, checked: .csv or .jsonl, its folder created."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out {out}: the output must end in .csv or .jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def provenance_path(out: Path) -> Path:
    """The sidecar next to the output: predictions.csv -> predictions.csv.provenance.json."""
    return out.with_name(out.name + PROVENANCE_SUFFIX)


def review_threshold(given: float | None, calibrator: dict[str, Any] | None) -> tuple[float, str]:
    """(threshold, where it came from): `--review-below` > the calibrator record's
    `review_below` (written with the run's calibration) > 0.5."""
    if given is not None:
        if not 0.0 <= given <= 1.0:
            raise ConfigError(f"--review-below {given}: must be a probability in [0, 1]")
        return float(given), "--review-below"
    if calibrator and calibrator.get("review_below") is not None:
        return float(calibrator["review_below"]), "calibration.json review_below"
    return DEFAULT_REVIEW_BELOW, "default"


class DecisionRules:
    """What a calibration record adds to the rows: conformal prediction sets and the referral rule.

    Read through the calibrators' own readers (`calibrators.conformal.stored_thresholds`,
    `calibrators.record.referral_rule`; numpy only), the same for PyTorch and ONNX Runtime.
    """

    def __init__(self, calibrator: dict[str, Any] | None, source: str = "calibration record") -> None:
        from domainclip.calibrators.conformal import stored_thresholds
        from domainclip.calibrators.record import referral_rule

        self.thresholds = stored_thresholds(calibrator, source)
        self.refer = referral_rule(calibrator)

    @property
    def with_sets(self) -> bool:
        return self.thresholds is not None

    def sets(self, probs: np.ndarray, classes: Sequence[str]) -> list[list[str]] | None:
        """Per image, the classes (findings) in its conformal set, or None without thresholds."""
        if self.thresholds is None:
            return None
        member = self.thresholds.predict_sets(probs)
        return [[c for c, m in zip(classes, row, strict=True) if m] for row in member]


def score_rows(
    items: Sequence[InputItem],
    probs: np.ndarray,
    classes: Sequence[str],
    multi_label: bool,
    review_below: float,
    rules: DecisionRules | None = None,
    prompt_sims: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Output rows for scored images.

    Args:
        probs: [N, C] calibrated probabilities (softmax, or sigmoid per class when multi_label).
        rules: the record's conformal thresholds and referral rule (None: neither).
        prompt_sims: [N, P] cosine similarities to the `--prompt` texts, or None.
    Single-label: predicted = top-1, confidence = its probability. Multi-label: predicted = the
    classes with p >= 0.5 (joined by |), confidence = the least certain class's max(p, 1 - p).
    prediction_set: single-label, the conformal set; multi-label, the findings at or above their
    per-finding thresholds. refer (with a referral rule): confidence < its min_confidence.
    needs_review: confidence < review_below, or refer, or a single-label set that is not one class,
    or a multi-label set with findings that are not predicted.
    """
    rules = rules or DecisionRules(None)
    sets = rules.sets(probs, classes)
    out = []
    for i, item in enumerate(items):
        p = probs[i]
        if multi_label:
            chosen = [c for c, v in zip(classes, p, strict=True) if v >= 0.5]
            predicted, confidence = "|".join(chosen), float(np.min(np.maximum(p, 1.0 - p)))
        else:
            k = int(np.argmax(p))
            chosen, predicted, confidence = [classes[k]], classes[k], float(p[k])
        row: dict[str, Any] = {"row": item.row, "image": item.shown, "status": "ok", "reason": ""}
        row.update(predicted=predicted, confidence=round(confidence, 6))
        review = confidence < review_below
        if sets is not None:
            row["prediction_set"] = "|".join(sets[i])
            review = review or (bool(set(sets[i]) - set(chosen)) if multi_label else len(sets[i]) != 1)
        if rules.refer is not None:
            row["refer"] = confidence < float(rules.refer["min_confidence"])
            review = review or row["refer"]
        row["needs_review"] = bool(review)
        row.update({f"p_{c}": round(float(v), 6) for c, v in zip(classes, p, strict=True)})
        if prompt_sims is not None:
            row.update({f"prompt_{j}": round(float(s), 6) for j, s in enumerate(prompt_sims[i])})
        out.append(row)
    return out


def error_row(item: InputItem, reason: str, message: str) -> dict[str, Any]:
    """The output row of an image that could not be scored."""
    message = scrub_path(message, item.path, item.shown) if item.name else message
    return {"row": item.row, "image": item.shown, "status": "error", "reason": f"{reason}: {message}"}


class Progress:
    """A progress bar over images (tqdm when installed, else a line per 10% on stderr)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled, self._next = total, 0, enabled, 0.1
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc="predict", unit="img")
            except ImportError:
                self._bar = None

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.done >= self._next * self.total:
            print(f"predict: {self.done}/{self.total} images", file=sys.stderr)
            self._next += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class PredictionWriter:
    """Streams output rows to `out` (.csv or .jsonl), counting ok and failed images.

    CSV columns are fixed by the first scored row's keys (error rows leave the score columns
    empty); rows are written as they come, so memory does not grow with the number of images.
    """

    def __init__(self, out: str | Path, columns: Sequence[str]) -> None:
        self.path = output_path(out)
        self.columns = list(columns)
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._fh = self.partial.open("w", encoding="utf-8", newline="")
        self._csv = None
        if not self.jsonl:
            self._csv = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="raise")
            self._csv.writeheader()
        self.n_ok = 0
        self.failures: Counter[str] = Counter()
        self.started = time.time()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            if row["status"] == "ok":
                self.n_ok += 1
            else:
                self.failures[row["reason"].split(":", 1)[0]] += 1
            if self.jsonl:
                self._fh.write(json.dumps(row) + "\n")
            else:
                self._csv.writerow({k: row.get(k, "") for k in self.columns})

    @property
    def n_failed(self) -> int:
        return sum(self.failures.values())

    def close(self, provenance: dict[str, Any]) -> Path:
        """Finish the output (renamed into place) and write the provenance sidecar."""
        self._fh.close()
        self.partial.replace(self.path)
        provenance = {
            **provenance,
            "output": str(self.path),
            "counts": {"n_images": self.n_ok + self.n_failed, "n_scored": self.n_ok,
                       "n_failed": self.n_failed, "failures": dict(self.failures)},
            "seconds": round(time.time() - self.started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "domainclip_version": __version__,
        }
        return atomic_write_json(provenance_path(self.path), provenance)


def columns_for(classes: Sequence[str], n_prompts: int, rules: DecisionRules | None = None) -> list[str]:
    """The output columns (CSV header) for `classes`, `n_prompts` prompt texts and the record's
    decision rules (prediction_set with conformal thresholds, refer with a referral rule)."""
    cols = ["row", "image", "status", "reason", "predicted", "confidence"]
    cols += ["prediction_set"] if rules is not None and rules.with_sets else []
    cols += ["refer"] if rules is not None and rules.refer is not None else []
    cols += ["needs_review", *(f"p_{c}" for c in classes), *(f"prompt_{j}" for j in range(n_prompts))]
    return cols


def check_gate(gate: dict[str, Any] | None, allow_ungated: bool, what: str) -> None:
    """Refuse a model whose audit gate failed or was never run, unless `allow_ungated`.

    `gate`: {"verdict": "pass"|"fail", "spec", "version", "created", "path"} or None (no audit).
    """
    if allow_ungated:
        return
    if gate is None:
        raise DataError(
            f"{what} has never passed an audit gate (no audit.json): run `domainclip audit RUN "
            "--spec SPEC --gate` first, or pass --allow-ungated (recorded in the provenance)"
        )
    if gate.get("verdict") != "pass":
        raise DataError(
            f"{what}: its audit gate failed ({gate.get('spec')} version {gate.get('version')}, "
            f"{gate.get('created')}; {gate.get('path')}); fix the model or pass --allow-ungated "
            "(recorded in the provenance)"
        )


def check_calibrated(calibrator: dict[str, Any] | None, allow_uncalibrated: bool, what: str, hint: str) -> None:
    """Refuse a model without a fitted calibrator (its probabilities would be uncalibrated)."""
    if calibrator is None and not allow_uncalibrated:
        raise DataError(
            f"{what} has no fitted calibrator, so its probabilities are not calibrated: {hint}, "
            "or pass --allow-uncalibrated (T = 1, recorded in the provenance)"
        )
