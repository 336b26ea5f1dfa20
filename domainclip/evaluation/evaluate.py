"""`evaluate(...)`: zero-shot classification, retrieval, AUROC/AP with CIs and calibration of one split.

Every image is embedded once and every distinct text (prompts and the rows' own texts) once.
Discrimination metrics use the temperature-scaled probabilities the model is deployed with (for
single-label one-vs-rest AUROC this can differ slightly from T = 1, because softmax(z / T)_c is not a
monotone function of z_c alone); calibration is reported before (T = 1) and after scaling.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainclip.calibrators import Calibrator, TemperatureCalibrator, save_calibration
from domainclip.calibrators.conformal import CONFORMAL_KEY, ConformalThresholds, stored_thresholds
from domainclip.calibrators.record import SELECTIVE_KEY
from domainclip.datasets.geometry_report import GeometryReport, geometry_report
from domainclip.datasets.manifest import Manifest, normalize_split, read_manifest
from domainclip.datasets.subgroups import subgroup_values
from domainclip.errors import ConfigError
from domainclip.evaluation.baselines import DEFAULT_MIN_AUROC, DEFAULT_MIN_RECALL, failing_classes
from domainclip.evaluation.bootstrap import DEFAULT_N_BOOT, bootstrap_metrics
from domainclip.evaluation.calibration import bootstrap_ece_by_subgroup, calibration_report
from domainclip.evaluation.conformal import conformal_report
from domainclip.evaluation.embed import EmbeddedSplit, embed_split
from domainclip.evaluation.forgetting import (
    DEFAULT_ALPHAS,
    TaskSpec,
    forgetting_curve,
    write_forgetting,
)
from domainclip.evaluation.honest import baselines_for, run_warnings
from domainclip.evaluation.leakage import leakage_check
from domainclip.evaluation.metrics import multi_label_report, single_label_report
from domainclip.evaluation.outputs import write_outputs
from domainclip.evaluation.results import (
    CalibrationSummary,
    EvaluatedData,
    EvaluatedModel,
    EvaluationResult,
    InputUsed,
    PromptsUsed,
    TemperatureUsed,
)
from domainclip.evaluation.selective import DEFAULT_REFER_ERROR, referral_rule, risk_coverage
from domainclip.evaluation.shortcut import (
    ShortcutResult,
    ShortcutSettings,
    count_region_rows,
    shortcut_check,
)
from domainclip.evaluation.task import (
    Targets,
    ZeroShotTask,
    align_with_head,
    build_targets,
    probabilities,
    resolve_classes,
)
from domainclip.evaluation.uncertainty import (
    CALIB_SPLIT,
    SplitScores,
    check_not_test,
    conformal_split,
    fit_record,
    fit_thresholds,
    held_out_probabilities,
    split_scores,
)
from domainclip.models import Backbone
from domainclip.privacy import is_shown_column
from domainclip.runs import ResolvedModel, Run
from domainclip.runs.layout import CALIBRATION_FILE
from domainclip.runs.run import resolve_device, resolve_model
from domainclip.scoring.prompts import PromptSet, load_prompt_set
from domainclip.scoring.retrieval import retrieval_ranks, summarize_ranks
from domainclip.scoring.zeroshot import embed_unique_texts

log = logging.getLogger(__name__)

# Metadata columns that never define subgroups (geometry, file references, free text).
_NOT_SUBGROUPS = frozenset({"boxes", "mask", "doi", "license", "url", "filename", "notes"})
MAX_SUBGROUP_VALUES = 12


def auto_subgroup_columns(
    rows: Sequence[Any], allowed: Sequence[str] = (), bins: dict[str, float] | None = None
) -> list[str]:
    """Metadata columns with 2..MAX_SUBGROUP_VALUES distinct values among `rows` (e.g. view, sex),
    counted after binning numeric columns (age in decades, `datasets.subgroups`).

    Only columns on `privacy.SAFE_COLUMNS` or in `allowed` (`--show-column`) are chosen: the
    values of any other column (a patient or case id, ...) would be written into metrics.json
    and the report as subgroup names.
    """
    columns = dict.fromkeys(k for r in rows for k in r.meta)
    chosen = []
    for k in columns:
        if k in _NOT_SUBGROUPS or not is_shown_column(k, allowed):
            continue
        values = set(subgroup_values(k, [r.meta.get(k, "") for r in rows], bins))
        if 2 <= len(values) <= MAX_SUBGROUP_VALUES:
            chosen.append(k)
    return sorted(chosen)


def _retrieval(
    emb: EmbeddedSplit, text_feats: dict[str, torch.Tensor], n_boot: int, seed: int
) -> dict:
    """R@1/5/10 and median ranks both ways, with bootstrap CIs over queries (candidates held fixed)."""
    texts = [r.text for r in emb.rows]
    i2t, t2i = retrieval_ranks(emb.image_feats, torch.stack([text_feats[t] for t in texts]), texts)
    out: dict[str, Any] = {"n_images": len(i2t), "n_texts": len(t2i)}
    for prefix, ranks in (("i2t", i2t), ("t2i", t2i)):
        est = bootstrap_metrics(
            lambda idx, r=ranks, p=prefix: summarize_ranks(r[idx], p),
            np.zeros(len(ranks), dtype=np.int64),
            n_boot,
            seed,
        )
        out.update({k: v.to_dict() for k, v in est.items()})
    out["note"] = (
        "texts shared by several images count as one candidate; any image with the query's text is "
        "correct; ties count against the model; CIs resample queries"
    )
    return out


def _info(cal: Calibrator, source: str, **extra: Any) -> dict[str, Any]:
    """The `TemperatureUsed` fields of a calibrator (value: T, or 1.0 for other kinds)."""
    t = cal.temperature if isinstance(cal, TemperatureCalibrator) else 1.0
    return {"value": t, "source": source, "kind": cal.kind, "description": cal.describe(), **extra}


def _calibrator(
    resolved: ResolvedModel,
    kind: str | None,
    out_dir: Path | None,
    val: Callable[[], SplitScores],
    fit_args: tuple[ZeroShotTask, Manifest, int],
) -> tuple[Calibrator, dict[str, Any]]:
    """The calibrator to evaluate with and its description for metrics.json.

    The precedence (given > run's fitted > identity) is `resolve_model`'s; `kind` (temperature,
    bias, isotonic, auto) refits on the validation split (`val()`) and stores the result in the
    run (or `out_dir` for a plain backbone; None, when no --out was given for one: kept in
    memory, never saved into the working directory).
    """
    cal = resolved.calibrator
    task, man, n_bins = fit_args
    if resolved.calibration_origin == "given":
        return cal, _info(cal, "given")
    if kind:
        cal, record = fit_record(kind, val(), task, man, n_bins)
        where = resolved.run_dir or out_dir
        if where is None:
            log.info("fitted %s on %s (not saved: no output folder)", cal.describe(), record["split"])
            return cal, _info(cal, "fitted", fit=record)
        path = save_calibration(where, record)
        cal.source = str(path)
        log.info("fitted %s on %s (saved to %s)", cal.describe(), record["split"], path)
        return cal, _info(cal, "fitted", file=str(path), fit=record)
    if resolved.calibration_origin == "none":
        return cal, _info(cal, "none (no calibration.json; use --fit-temperature or --calibrate KIND)")
    info = _info(cal, "run calibration.json", fit=cal.to_record())
    if cal.fit.get("prompts_version") not in (None, task.ps.version):
        info["warning"] = (
            f"the calibrator was fitted with prompt set {cal.fit.get('prompts_version')}, evaluated "
            f"with {task.ps.version}; refit with --calibrate KIND (or --fit-temperature)"
        )
        log.warning(info["warning"])
    return cal, info


def _conformal(
    inp: _Inputs,
    opts: EvaluationOptions,
    cal: Calibrator,
    val: Callable[[], SplitScores],
    task: ZeroShotTask,
) -> ConformalThresholds | None:
    """Thresholds at `opts.conformal` (stored with the calibrator's record when it has a file),
    else the ones stored in the run's record, else None."""
    if opts.conformal is None:
        given = inp.resolved.calibration_origin == "given"
        return None if given else stored_thresholds(cal.fit, cal.source or "calibration record")
    calib_split = conformal_split(inp.man, opts.val_split)
    calib = val() if calib_split == opts.val_split else split_scores(
        inp.resolved, inp.man, task, calib_split, opts.skip_uncovered
    )
    multi = inp.ps.multi_label
    probs, folds = held_out_probabilities(cal, calib, multi, opts.seed)
    thr = fit_thresholds(
        probs, calib, opts.conformal, opts.conformal_method, opts.mondrian, multi,
        randomized=opts.conformal_randomized, seed=opts.seed, cross_fitted=folds,
    )
    rule = referral_rule(probs, calib.y, multi, opts.refer_error, calib.split)
    if inp.run is not None and calib_split != CALIB_SPLIT:
        log.warning(
            "conformal thresholds and the referral rule come from split %s, which also chose the "
            "run's best checkpoint: the model is optimistic there, so coverage on new data can fall "
            "short of %.2f (the demo's fell to 0.78 with a cross-fitted calibrator); hold out a "
            "`calib` split (`domainclip data split MANIFEST --calib-frac 0.15` moves train groups "
            "there; then fine-tune again)", calib_split, 1 - opts.conformal,
        )
    if folds:
        log.info(
            "the %s calibrator was fitted on split %s, where the conformal thresholds are computed: "
            "they come from %d-fold cross-fitted probabilities (approximate guarantee; a `calib` split "
            "in the manifest makes it exact)", cal.kind, calib_split, folds,
        )
    elif not cal.is_identity and cal.fit.get("split") == calib_split:
        log.warning(
            "the %s calibrator and the conformal thresholds were both fitted on split %s (too few "
            "images to cross-fit): its calibrated scores are optimistic there, so coverage can fall "
            "below the target; add a `calib` split to the manifest", cal.kind, calib_split,
        )
    if normalize_split(inp.split) == normalize_split(calib_split):
        log.warning("conformal thresholds were computed on split %s, the split evaluated: "
                    "its coverage is not a held-out estimate", calib_split)
    path = Path(cal.source)
    if path.name == CALIBRATION_FILE and path.is_file():
        cal.fit[CONFORMAL_KEY] = thr.to_dict()
        cal.fit[SELECTIVE_KEY] = rule
        save_calibration(path.parent, cal.to_record())
        log.info("stored conformal thresholds (%s, alpha %g) and the referral rule (confidence >= %.4g "
                 "for error <= %g) in %s", thr.method, thr.alpha, rule["min_confidence"], opts.refer_error, path)
    else:
        log.info("no calibration record to store the conformal thresholds in (metrics.json has them)")
    return thr


@dataclass(frozen=True)
class EvaluationOptions:
    """The keyword options of `evaluate` / `run_evaluation`.

    Attributes:
        name: evaluation name (default "<manifest folder>_<split>").
        classes: subset/order of classes to score (default: the prompt set's, else the data's).
        fit_temperature: fit T on `val_split` and save it (RUN/calibration.json, or out_dir for a
            plain backbone); otherwise a run's saved calibrator is applied (identity if none).
        calibrate: fit this calibrator kind instead (temperature | bias | isotonic | auto, see
            `domainclip.calibrators`) on `val_split` and save it the same way; never on test.
        conformal: alpha of conformal prediction sets (e.g. 0.1 for 90 % coverage), thresholds
            computed on the manifest's `calib` split, else `val_split`, stored with the
            calibrator record; None: use thresholds stored in the run's record, if any.
        conformal_method: lac | aps | raps (single-label; multi-label always controls the FNR);
            conformal_randomized: randomised APS/RAPS (tight coverage; seeded with `seed`).
        mondrian: one threshold per class (class-conditional coverage).
        refer_error: with `conformal`, the target error rate of the referral rule stored beside
            the thresholds (`evaluation.selective.referral_rule`; predict's `refer` column).
        temperature: use this T instead (overrides both).
        n_bins: calibration bins; n_boot: bootstrap replicates (0: no CIs); seed: bootstrap seed.
        subgroups: metadata columns for per-subgroup ECE (default: auto-detected, e.g. view, sex).
        skip_uncovered: single-label rows whose label no prompt covers are skipped (else an error).
        checkpoint, device: which run checkpoint to load, and where.
        fit, image_size: input geometry instead of the run's data.fit / data.image_size
            (backbones: letterbox at the native size); recorded in metrics.json `input`.
        write: write the result files (metrics.json, report.md, plots, predictions.csv).
        reference, reference_prompts, reference_split: a second task for the forgetting monitor
            (runs only): zero-shot on that manifest split, swept over WiSE-FT weights `alphas`
            together with this task (forgetting.json / forgetting.png).
        shortcut_check: the shortcut check (`evaluation.shortcut`: classify each row with its
            annotated region removed / alone; 3 image embeddings per row with a mask or boxes).
            None: on when at least `shortcut.min_rows` rows of the split have a region and the
            prompt set is single-label; True: whenever a row has one; False: off.
        shortcut: its settings (fill, threshold, ...; n_boot and seed are this evaluation's).
        show_columns: metadata columns beyond `privacy.SAFE_COLUMNS` that may become automatic
            subgroups and be shown in report.md (explicit `subgroups` are computed either way;
            the report names, but does not show, those not allowed).
        baselines: also score chance, the training prior, the untrained backbone (runs) and a
            linear probe on the frozen image features of `train_split` (default: the run's
            data.train_split, else "train"); False (`--no-baselines`) for speed.
        min_recall, min_auroc: a class with recall or one-vs-rest AUROC below these is listed in
            `failing_classes` (named as a failure in reports and the model card).
        show_paths: write image paths into predictions.csv (default: manifest row numbers,
            `privacy.image_name`).
        text_leakage: when some class's texts name their label, repeat retrieval with those
            words masked (`evaluation.leakage`).
        bin_columns: column -> bin width for numeric subgroup columns (default: age in decades;
            `datasets.subgroups`).
    """

    name: str | None = None
    classes: Sequence[str] | None = None
    fit_temperature: bool = False
    calibrate: str | None = None
    conformal: float | None = None
    conformal_method: str = "lac"
    conformal_randomized: bool = False
    mondrian: bool = False
    refer_error: float = DEFAULT_REFER_ERROR
    val_split: str = "val"
    temperature: float | None = None
    n_bins: int = 15
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    subgroups: Sequence[str] | None = None
    skip_uncovered: bool = False
    checkpoint: str = "best"
    device: str = "cpu"
    fit: str | None = None
    image_size: int | None = None
    write: bool = True
    reference: str | Path | None = None
    reference_prompts: str | Path | dict | PromptSet | None = None
    reference_split: str = "test"
    alphas: Sequence[float] = DEFAULT_ALPHAS
    shortcut_check: bool | None = None
    shortcut: ShortcutSettings = ShortcutSettings()
    show_columns: Sequence[str] = ()
    baselines: bool = True
    train_split: str | None = None
    min_recall: float = DEFAULT_MIN_RECALL
    min_auroc: float = DEFAULT_MIN_AUROC
    show_paths: bool = False
    text_leakage: bool = True
    bin_columns: dict[str, float] | None = None

    def __post_init__(self) -> None:
        # Sequences become tuples so options cannot change under a running evaluation.
        for key in ("classes", "subgroups", "alphas", "show_columns"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(value))


@dataclass
class _Inputs:
    """What an evaluation runs on, resolved from the arguments and the run's config."""

    resolved: ResolvedModel
    bb: Backbone
    run: Run | None
    run_dir: Path | None
    manifest: str | Path  # as given (named in messages)
    man: Manifest
    split: str
    ps: PromptSet
    classes: list[str]
    name: str
    out_dir: Path
    # False when no --out was given for a plain backbone (out_dir is then "."): a fitted calibrator
    # is used but not saved, so nothing lands in the working directory.
    out_given: bool = True


@dataclass
class _Scored:
    """What the model produced on the split: embeddings, targets, calibrated probabilities."""

    emb: EmbeddedSplit
    tgt: Targets
    text_feats: dict[str, torch.Tensor]
    n_prompts: int
    calibrator: Calibrator
    t_info: dict[str, Any]
    p_raw: np.ndarray  # [M, C] uncalibrated
    p_cal: np.ndarray  # [M, C] calibrated
    thresholds: ConformalThresholds | None = None


def evaluate(
    model_or_run: Backbone | str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    prompts: str | Path | dict | PromptSet | None = None,
    out_dir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a model on one split of a manifest and (by default) write the results.

    Args:
        model_or_run: a Backbone, a fine-tuning run directory (has config.yaml) or a backbone spec.
        manifest: manifest file; default for runs: the run's data.manifest.
        prompts: prompt-set YAML / dict / PromptSet; default for runs: the run's eval.prompts.
        out_dir: where to write; default for runs: RUN/eval/<name>; required otherwise (when write).
        **options: the fields of `EvaluationOptions` (name, fit_temperature, n_boot, ...).

    Returns:
        The metrics dict written to metrics.json (`EvaluationResult.to_json()`, see
        docs/DESIGN.md), with "outputs" listing files. `run_evaluation` returns the typed result.
    """
    options_ = EvaluationOptions(**options)
    return run_evaluation(model_or_run, manifest, split, prompts, out_dir, options_).to_json()


def run_evaluation(
    model_or_run: Backbone | str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    prompts: str | Path | dict | PromptSet | None = None,
    out_dir: str | Path | None = None,
    options: EvaluationOptions = EvaluationOptions(),
) -> EvaluationResult:
    """`evaluate` returning the typed `EvaluationResult` (resolve, score, build, write)."""
    t0 = time.perf_counter()
    inp = _resolve(model_or_run, manifest, split, prompts, out_dir, options)
    scored = _score(inp, options)
    result = _build_result(inp, scored, options)
    result.shortcut = _shortcut_for(inp, scored, options, transform=inp.resolved.preprocess)
    multi = inp.ps.multi_label
    result.failing_classes = {
        "min_recall": options.min_recall,
        "min_auroc": options.min_auroc,
        "classes": failing_classes(
            result.classification, multi, options.min_recall, options.min_auroc
        ),
    }
    if options.baselines:
        result.baselines = _baselines(inp, scored, options, result.classification)
    result.warnings = run_warnings(
        scored.t_info, result.data.n_unreadable, result.data.skipped, result.baselines
    )
    result.geometry = _geometry(inp)
    if options.text_leakage:
        result.text_leakage = leakage_check(
            inp.bb, scored.emb, inp.ps, _retrieval, options.n_boot, options.seed, scored.text_feats
        )
    extra: dict[str, str] = {}
    if options.reference is not None:
        result.forgetting = _forgetting_for(inp, options)
        if options.write:
            extra = write_forgetting(result.forgetting, inp.out_dir)
    result.seconds = round(time.perf_counter() - t0, 2)
    if options.write:
        write_outputs(
            result,
            inp.out_dir,
            scored.emb,
            scored.tgt,
            scored.p_cal,
            inp.classes,
            multi,
            extra,
            show_columns=options.show_columns,
            show_paths=options.show_paths,
        )
    return result


def _resolve(
    model_or_run: Backbone | str | Path,
    manifest: str | Path | None,
    split: str,
    prompts: str | Path | dict | PromptSet | None,
    out_dir: str | Path | None,
    opts: EvaluationOptions,
) -> _Inputs:
    """Load the model; fill manifest, prompts, classes and out_dir from the run where not given."""
    resolved = resolve_model(
        model_or_run,
        checkpoint=opts.checkpoint,
        device=opts.device,
        temperature=opts.temperature,
        fit=opts.fit,
        image_size=opts.image_size,
    )
    bb, run = resolved.backbone, resolved.run

    def setting(key: str) -> Any:
        return run.setting(key) if run is not None else None

    manifest = manifest or setting("data.manifest")
    if not manifest:
        raise ConfigError("no manifest to evaluate on: pass --data MANIFEST")
    prompts = prompts or setting("eval.prompts")
    if not prompts:
        raise ConfigError(
            "no prompt set: pass --prompts (e.g. configs/prompts/neu_det.yaml); zero-shot "
            "classification needs class prompts"
        )
    classes = opts.classes or setting("data.classes") or None
    ps = load_prompt_set(prompts)
    man = read_manifest(manifest)
    classes = align_with_head(bb, resolve_classes(ps, man, classes))
    name = opts.name or f"{Path(manifest).resolve().parent.name}_{split}"
    out_given = out_dir is not None or run is not None
    if out_dir is None:
        if run is None and opts.write:
            raise ConfigError(f"{bb.spec} is not a run directory: pass --out DIR for the results")
        out_dir = run.layout.eval_dir(name) if run is not None else Path(".")
    return _Inputs(
        resolved, bb, run, resolved.run_dir, manifest, man, split, ps, classes, name, Path(out_dir), out_given
    )


def _score(inp: _Inputs, opts: EvaluationOptions) -> _Scored:
    """Embed the split and the prompts once, score, and apply the calibrator."""
    bb, ps, classes = inp.bb, inp.ps, inp.classes
    emb = embed_split(bb, inp.man, inp.split, transform=inp.resolved.preprocess)
    tgt = build_targets(emb.rows, classes, ps, opts.skip_uncovered)
    texts = [r.text for r in emb.rows]
    prompt_texts = [t for ts in ps.class_texts(classes).values() for t in ts]
    if ps.multi_label:
        prompt_texts += [t for ts in ps.negative_texts(classes).values() for t in ts]
    text_feats = embed_unique_texts(bb, prompt_texts + texts)
    task = ZeroShotTask.build(bb, ps, classes, cache=text_feats)
    logits = emb.scores(lambda f: task.logits(bb, f), tgt.keep)

    cache: dict[str, SplitScores] = {}

    def val() -> SplitScores:
        check_not_test(opts.val_split, "a calibrator or conformal thresholds")
        if "val" not in cache:
            cache["val"] = split_scores(inp.resolved, inp.man, task, opts.val_split, opts.skip_uncovered)
        return cache["val"]

    kind = opts.calibrate or ("temperature" if opts.fit_temperature else None)
    save_to = inp.out_dir if inp.out_given else None
    cal, t_info = _calibrator(inp.resolved, kind, save_to, val, (task, inp.man, opts.n_bins))
    cal.check_classes(classes)
    thresholds = _conformal(inp, opts, cal, val, task)
    p_raw = probabilities(logits, ps.multi_label)
    p_cal = cal.probabilities(logits, ps.multi_label)
    return _Scored(
        emb, tgt, text_feats, len(set(prompt_texts)), cal, t_info, p_raw, p_cal, thresholds
    )


def _build_result(inp: _Inputs, s: _Scored, opts: EvaluationOptions) -> EvaluationResult:
    """Metrics with CIs (classification, calibration, retrieval) as an `EvaluationResult`."""
    multi, classes, n_boot, seed = inp.ps.multi_label, inp.classes, opts.n_boot, opts.seed
    report_fn = multi_label_report if multi else single_label_report
    return EvaluationResult(
        name=inp.name,
        model=EvaluatedModel(
            spec=inp.bb.spec,
            family=inp.bb.family,
            run=str(inp.run_dir) if inp.run_dir else None,
            checkpoint=opts.checkpoint if inp.run_dir else None,
            head=getattr(inp.bb.head, "kind", "classifier") if inp.bb.head is not None else None,
        ),
        data=_data_info(inp.man, inp.split, s.emb, s.tgt),
        prompts=PromptsUsed(
            source=inp.ps.source,
            version=inp.ps.version,
            mode=inp.ps.mode,
            n_prompts=s.n_prompts,
            classes=classes,
        ),
        temperature=TemperatureUsed(**s.t_info),
        classification=report_fn(s.p_cal, s.tgt.y, classes, n_boot=n_boot, seed=seed),
        calibration=_calibration(inp, s, opts),
        retrieval=_retrieval(s.emb, s.text_feats, n_boot, seed),
        input=InputUsed.of(inp.resolved.input),
        conformal=None
        if s.thresholds is None
        else conformal_report(s.thresholds, s.p_cal, s.tgt.y, classes),
        selective=risk_coverage(s.p_cal, s.tgt.y, multi),
    )


def _baselines(
    inp: _Inputs, s: _Scored, opts: EvaluationOptions, report: dict[str, Any]
) -> dict[str, Any]:
    """Chance, prior, untrained backbone and linear probe beside the model (`honest.baselines_for`)."""
    untrained = None
    spec = inp.run.setting("backbone.spec") if inp.run is not None else None
    if spec:
        def untrained() -> dict[str, Any]:
            return _untrained_report(inp, opts, str(spec))

    train_split = opts.train_split or (inp.run.setting("data.train_split") if inp.run else None)
    train_split = str(train_split or "train")
    keep = torch.as_tensor(s.tgt.keep, dtype=torch.long)
    return baselines_for(
        bb=inp.bb,
        man=inp.man,
        ps=inp.ps,
        classes=inp.classes,
        y=s.tgt.y,
        test_x=s.emb.image_feats[keep].numpy(),
        train_split=normalize_split(train_split) or train_split,
        split=normalize_split(inp.split) or inp.split,
        transform=inp.resolved.preprocess,
        untrained=untrained,
        n_boot=opts.n_boot,
        seed=opts.seed,
        model_report=report,
    )


def _untrained_report(inp: _Inputs, opts: EvaluationOptions, spec: str) -> dict[str, Any]:
    """The classification report of the run's base backbone, zero-shot at T = 1, on the same
    rows, classes and input geometry (tiled runs: the backbone's default geometry)."""
    fit = inp.resolved.input
    tiled = fit["fit"] == "tile"
    options = dataclasses.replace(
        opts,
        baselines=False,
        text_leakage=False,
        write=False,
        shortcut_check=False,
        reference=None,
        fit_temperature=False,
        calibrate=None,
        conformal=None,
        temperature=None,
        classes=tuple(inp.classes),
        fit=None if tiled else fit["fit"],
        image_size=None if tiled else int(fit["image_size"]),
    )
    log.info("baseline: the untrained backbone %s on %s", spec, inp.split)
    return run_evaluation(spec, inp.manifest, inp.split, inp.ps, None, options).classification


def _shortcut_for(
    inp: _Inputs, s: _Scored, opts: EvaluationOptions, transform: Any
) -> ShortcutResult | None:
    """The shortcut check when `opts.shortcut_check` asks for it (None: when enough rows of a
    single-label task have a region), through the evaluation's task, calibrator and `transform`."""
    if opts.shortcut_check is False:
        return None
    n_regions = count_region_rows(inp.man, inp.split)
    if opts.shortcut_check is None:
        if inp.ps.multi_label or n_regions < opts.shortcut.min_rows:
            return None
    elif n_regions == 0:
        log.warning("shortcut check: no row of split %s has a mask or boxes", inp.split)
    task = ZeroShotTask.build(inp.bb, inp.ps, inp.classes, cache=s.text_feats)  # all cached
    settings = dataclasses.replace(opts.shortcut, n_boot=opts.n_boot, seed=opts.seed)
    log.info("shortcut check: %d rows with a region (3 embeddings each)", n_regions)
    return shortcut_check(inp.bb, inp.man, inp.split, task, s.calibrator, transform, settings)


def _calibration(inp: _Inputs, s: _Scored, opts: EvaluationOptions) -> CalibrationSummary:
    """Calibration before and after scaling (after: None at T = 1) and ECE per subgroup."""
    multi, y, n_bins, n_boot, seed = inp.ps.multi_label, s.tgt.y, opts.n_bins, opts.n_boot, opts.seed
    kept_rows = [s.emb.rows[i] for i in s.tgt.keep]
    cols = _subgroup_columns(
        kept_rows, opts.subgroups, inp.manifest, opts.show_columns, opts.bin_columns
    )
    return CalibrationSummary(
        before=calibration_report(s.p_raw, y, multi, n_bins, n_boot, seed),
        after=calibration_report(s.p_cal, y, multi, n_bins, n_boot, seed)
        if not s.calibrator.is_identity
        else None,
        subgroups=bootstrap_ece_by_subgroup(
            s.p_cal,
            y,
            {
                c: subgroup_values(c, [r.meta.get(c, "") for r in kept_rows], opts.bin_columns)
                for c in cols
            },
            multi,
            n_bins,
            n_boot=n_boot,
            seed=seed,
        ),
    )


def _subgroup_columns(
    kept_rows: Sequence[Any],
    subgroups: Sequence[str] | None,
    manifest: str | Path,
    allowed: Sequence[str] = (),
    bins: dict[str, float] | None = None,
) -> list[str]:
    """The subgroup columns asked for (checked against the rows' metadata), else auto-detected."""
    if subgroups is not None:
        cols = list(subgroups)
    else:
        cols = auto_subgroup_columns(kept_rows, allowed, bins)
    missing_cols = [c for c in cols if not any(c in r.meta for r in kept_rows)]
    if missing_cols:
        raise ConfigError(
            f"subgroup column(s) {', '.join(missing_cols)} are not in {manifest} "
            f"(metadata columns: {', '.join(sorted({k for r in kept_rows for k in r.meta})) or 'none'})"
        )
    return cols


def _forgetting_for(inp: _Inputs, opts: EvaluationOptions) -> dict[str, Any]:
    """The forgetting curve of this task and the reference task (runs only)."""
    if inp.run is None:
        raise ConfigError(
            "--reference (forgetting monitor) needs a fine-tuning run: it compares the run's "
            "weights with those of its base backbone"
        )
    target = TaskSpec(inp.name, inp.man, inp.split, inp.ps, inp.classes, use_head=True)
    return _forgetting(
        inp.resolved,
        inp.run,
        target,
        opts.reference,
        opts.reference_prompts,
        opts.reference_split,
        opts.alphas,
        opts.n_boot,
        opts.seed,
        resolve_device(opts.device),
    )


def _forgetting(
    resolved: ResolvedModel,
    run: Run,
    target: TaskSpec,
    reference: str | Path,
    reference_prompts: Any,
    reference_split: str,
    alphas: Sequence[float],
    n_boot: int,
    seed: int,
    device: str,
) -> dict[str, Any]:
    from domainclip.models import load_backbone

    if not reference_prompts:
        raise ConfigError("--reference needs --reference-prompts (the reference task's prompt set)")
    spec = run.setting("backbone.spec")
    if not spec:
        raise ConfigError(
            "the run's config.yaml names no backbone.spec: cannot load the base model"
        )
    base = load_backbone(str(spec), device=device)
    ps_ref = load_prompt_set(reference_prompts)
    man_ref = read_manifest(reference)
    ref = TaskSpec(
        f"{Path(reference).resolve().parent.name}_{reference_split}",
        man_ref,
        reference_split,
        ps_ref,
        resolve_classes(ps_ref, man_ref),
        use_head=False,
    )
    return forgetting_curve(
        base, resolved.backbone, target, ref, alphas, n_boot, seed, transform=resolved.preprocess
    )


def _geometry(inp: _Inputs) -> GeometryReport | None:
    """What the evaluation's fit policy and input size do to the split's boxes/masks (None
    without any)."""
    split = normalize_split(inp.split) or inp.split
    annotated = any(
        r.meta.get("boxes", "").strip() or r.meta.get("mask", "").strip()
        for r in inp.man.rows
        if r.split == split
    )
    if not annotated:
        return None
    fit = inp.resolved.input
    if fit["fit"] == "tile":  # tiles keep every pixel at native resolution: nothing is cut or shrunk
        return None
    return geometry_report(inp.man, int(fit["image_size"]), fit["fit"], split=split)


def _data_info(man: Manifest, split: str, emb: EmbeddedSplit, tgt: Targets) -> EvaluatedData:
    return EvaluatedData(
        manifest=str(man.path),
        split=split,
        n_rows=len(emb) + len(emb.failures),
        n_unreadable=len(emb.failures),
        n_evaluated=len(tgt.keep),
        skipped=tgt.skipped,
        uncovered_labels=tgt.uncovered,
        notes=tgt.notes,
    )
