"""`evaluate(...)`: zero-shot classification, retrieval, AUROC/AP with CIs and calibration of one split.

Every image is embedded once and every distinct text (prompts and the rows' own texts) once.
Discrimination metrics use the temperature-scaled probabilities the model is deployed with (for
single-label one-vs-rest AUROC this can differ slightly from T = 1, because softmax(z / T)_c is not a
monotone function of z_c alone); calibration is reported before (T = 1) and after scaling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainclip import __version__
from domainclip.datasets.manifest import Manifest, read_manifest
from domainclip.errors import ConfigError
from domainclip.evaluation.bootstrap import DEFAULT_N_BOOT, bootstrap_metrics
from domainclip.evaluation.calibration import bootstrap_ece_by_subgroup, calibration_report
from domainclip.evaluation.embed import EmbeddedSplit, embed_split
from domainclip.evaluation.forgetting import (
    DEFAULT_ALPHAS,
    TaskSpec,
    forgetting_curve,
    write_forgetting,
)
from domainclip.evaluation.loading import (
    load_for_eval,
    read_run_config,
    resolve_device,
    run_setting,
)
from domainclip.evaluation.metrics import multi_label_report, single_label_report
from domainclip.evaluation.outputs import write_outputs
from domainclip.evaluation.task import (
    Targets,
    ZeroShotTask,
    align_with_head,
    build_targets,
    probabilities,
    resolve_classes,
)
from domainclip.evaluation.temperature import (
    fit_temperature as fit_temperature_fn,
)
from domainclip.evaluation.temperature import (
    load_calibration,
    nll_from_logits,
    save_calibration,
)
from domainclip.models import Backbone
from domainclip.privacy import is_identifying_column
from domainclip.scoring.prompts import PromptSet, load_prompt_set
from domainclip.scoring.retrieval import retrieval_ranks, summarize_ranks
from domainclip.scoring.zeroshot import embed_unique_texts

log = logging.getLogger(__name__)

# Metadata columns that never define subgroups (geometry, file references, free text).
_NOT_SUBGROUPS = frozenset({"boxes", "mask", "doi", "license", "url", "filename", "notes"})
MAX_SUBGROUP_VALUES = 12


def auto_subgroup_columns(rows: Sequence[Any]) -> list[str]:
    """Metadata columns with 2..MAX_SUBGROUP_VALUES distinct values among `rows` (e.g. view, sex).

    Columns whose name looks like a direct identifier (patient name, MRN, ...) are never chosen:
    their values would be written into metrics.json as subgroup names.
    """
    values: dict[str, set[str]] = {}
    for r in rows:
        for k, v in r.meta.items():
            values.setdefault(k, set()).add(v)
    return sorted(
        k
        for k, vs in values.items()
        if k not in _NOT_SUBGROUPS
        and not is_identifying_column(k)
        and 2 <= len(vs) <= MAX_SUBGROUP_VALUES
    )


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


def _fit_on_val(
    bb: Backbone,
    man: Manifest,
    task: ZeroShotTask,
    val_split: str,
    n_bins: int,
    skip_uncovered: bool,
) -> dict[str, Any]:
    """Fit T on the validation split; returns the calibration record (not yet saved)."""
    from domainclip.evaluation.calibration import expected_calibration_error

    emb = embed_split(bb, man, val_split)
    tgt = build_targets(emb.rows, task.classes, task.ps, skip_uncovered=skip_uncovered)
    logits = task.logits(bb, emb.image_feats[tgt.keep])
    multi = task.ps.multi_label
    y = torch.as_tensor(tgt.y)
    t = fit_temperature_fn(logits, y, multi)
    p0, p1 = probabilities(logits, multi), probabilities(logits, multi, t)
    return {
        "temperature": t,
        "mode": task.ps.mode,
        "split": val_split,
        "n": len(tgt.keep),
        "manifest": str(man.path),
        "prompts": task.ps.source,
        "prompts_version": task.ps.version,
        "classes": task.classes,
        "nll_before": nll_from_logits(logits, y, multi),
        "nll_after": nll_from_logits(logits / t, y, multi),
        "ece_before": expected_calibration_error(p0, tgt.y, n_bins, multi_label=multi),
        "ece_after": expected_calibration_error(p1, tgt.y, n_bins, multi_label=multi),
        "n_bins": n_bins,
    }


def _temperature(
    given: float | None,
    fit: bool,
    run_dir: Path | None,
    out_dir: Path,
    fit_args: tuple,
    ps: PromptSet,
) -> tuple[float, dict[str, Any]]:
    if given is not None:
        return float(given), {"value": float(given), "source": "given"}
    if fit:
        record = _fit_on_val(*fit_args)
        path = save_calibration(run_dir or out_dir, record)
        log.info(
            "fitted temperature %.4f on %s (saved to %s)",
            record["temperature"],
            record["split"],
            path,
        )
        return record["temperature"], {
            "value": record["temperature"],
            "source": "fitted",
            "file": str(path),
            "fit": record,
        }
    record = load_calibration(run_dir) if run_dir is not None else None
    if record is None:
        return 1.0, {"value": 1.0, "source": "none (no calibration.json; use --fit-temperature)"}
    info = {"value": float(record["temperature"]), "source": "run calibration.json", "fit": record}
    if record.get("prompts_version") not in (None, ps.version):
        info["warning"] = (
            f"temperature was fitted with prompt set {record.get('prompts_version')}, evaluated with "
            f"{ps.version}; refit with --fit-temperature"
        )
        log.warning(info["warning"])
    return float(record["temperature"]), info


def evaluate(
    model_or_run: Backbone | str | Path,
    manifest: str | Path | None = None,
    split: str = "test",
    prompts: str | Path | dict | PromptSet | None = None,
    out_dir: str | Path | None = None,
    *,
    name: str | None = None,
    classes: Sequence[str] | None = None,
    fit_temperature: bool = False,
    val_split: str = "val",
    temperature: float | None = None,
    n_bins: int = 15,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    subgroups: Sequence[str] | None = None,
    skip_uncovered: bool = False,
    checkpoint: str = "best",
    device: str = "cpu",
    write: bool = True,
    reference: str | Path | None = None,
    reference_prompts: str | Path | dict | PromptSet | None = None,
    reference_split: str = "test",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> dict[str, Any]:
    """Evaluate a model on one split of a manifest and (by default) write the results.

    Args:
        model_or_run: a Backbone, a fine-tuning run directory (has config.yaml) or a backbone spec.
        manifest: manifest file; default for runs: the run's data.manifest.
        prompts: prompt-set YAML / dict / PromptSet; default for runs: the run's eval.prompts.
        out_dir: where to write; default for runs: RUN/eval/<name>; required otherwise (when write).
        name: evaluation name (default "<manifest folder>_<split>").
        classes: subset/order of classes to score (default: the prompt set's, else the data's).
        fit_temperature: fit T on `val_split` and save it (RUN/calibration.json, or out_dir for a
            plain backbone); otherwise a run's saved T is applied (1.0 if none).
        temperature: use this T instead (overrides both).
        n_bins: calibration bins; n_boot: bootstrap replicates (0: no CIs); seed: bootstrap seed.
        subgroups: metadata columns for per-subgroup ECE (default: auto-detected, e.g. view, sex).
        skip_uncovered: single-label rows whose label no prompt covers are skipped (else an error).
        reference, reference_prompts, reference_split: a second task for the forgetting monitor
            (runs only): zero-shot on that manifest split, swept over WiSE-FT weights `alphas`
            together with this task (forgetting.json / forgetting.png).

    Returns:
        The metrics dict written to metrics.json (see docs/DESIGN.md), with "outputs" listing files.
    """
    t0 = time.perf_counter()
    bb, run_dir = load_for_eval(model_or_run, checkpoint, resolve_device(device))
    cfg = read_run_config(run_dir) if run_dir is not None else {}
    manifest = manifest or run_setting(cfg, "data.manifest")
    if not manifest:
        raise ConfigError("no manifest to evaluate on: pass --data MANIFEST")
    prompts = prompts or run_setting(cfg, "eval.prompts")
    if not prompts:
        raise ConfigError(
            "no prompt set: pass --prompts (e.g. configs/prompts/neu_det.yaml); zero-shot "
            "classification needs class prompts"
        )
    classes = classes or run_setting(cfg, "data.classes") or None
    ps = load_prompt_set(prompts)
    man = read_manifest(manifest)
    classes = align_with_head(bb, resolve_classes(ps, man, classes))
    name = name or f"{Path(manifest).resolve().parent.name}_{split}"
    if out_dir is None:
        if run_dir is None and write:
            raise ConfigError(f"{bb.spec} is not a run directory: pass --out DIR for the results")
        out_dir = (run_dir / "eval" / name) if run_dir is not None else Path(".")
    out_dir = Path(out_dir)

    emb = embed_split(bb, man, split)
    tgt = build_targets(emb.rows, classes, ps, skip_uncovered)
    texts = [r.text for r in emb.rows]
    prompt_texts = [t for ts in ps.class_texts(classes).values() for t in ts]
    if ps.multi_label:
        prompt_texts += [t for ts in ps.negative_texts(classes).values() for t in ts]
    text_feats = embed_unique_texts(bb, prompt_texts + texts)
    task = ZeroShotTask.build(bb, ps, classes, cache=text_feats)
    logits = task.logits(bb, emb.image_feats[tgt.keep])

    T, t_info = _temperature(
        temperature,
        fit_temperature,
        run_dir,
        out_dir,
        (bb, man, task, val_split, n_bins, skip_uncovered),
        ps,
    )
    multi = ps.multi_label
    p_raw = probabilities(logits, multi)
    p_cal = probabilities(logits, multi, T)
    report = (
        multi_label_report(p_cal, tgt.y, classes, n_boot=n_boot, seed=seed)
        if multi
        else single_label_report(p_cal, tgt.y, classes, n_boot=n_boot, seed=seed)
    )
    calib: dict[str, Any] = {
        "before": calibration_report(p_raw, tgt.y, multi, n_bins, n_boot, seed),
        "after": calibration_report(p_cal, tgt.y, multi, n_bins, n_boot, seed)
        if T != 1.0
        else None,
    }
    kept_rows = [emb.rows[i] for i in tgt.keep]
    cols = list(subgroups) if subgroups is not None else auto_subgroup_columns(kept_rows)
    missing_cols = [c for c in cols if not any(c in r.meta for r in kept_rows)]
    if missing_cols:
        raise ConfigError(
            f"subgroup column(s) {', '.join(missing_cols)} are not in {manifest} "
            f"(metadata columns: {', '.join(sorted({k for r in kept_rows for k in r.meta})) or 'none'})"
        )
    calib["subgroups"] = bootstrap_ece_by_subgroup(
        p_cal,
        tgt.y,
        {c: [r.meta.get(c, "") for r in kept_rows] for c in cols},
        multi,
        n_bins,
        n_boot=n_boot,
        seed=seed,
    )
    result: dict[str, Any] = {
        "domainclip_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "name": name,
        "model": {
            "spec": bb.spec,
            "family": bb.family,
            "run": str(run_dir) if run_dir else None,
            "checkpoint": checkpoint if run_dir else None,
        },
        "data": _data_info(man, split, emb, tgt),
        "prompts": {
            "source": ps.source,
            "version": ps.version,
            "mode": ps.mode,
            "n_prompts": len(set(prompt_texts)),
            "classes": classes,
        },
        "temperature": t_info,
        "classification": report,
        "calibration": calib,
        "retrieval": _retrieval(emb, text_feats, n_boot, seed),
        "seconds": None,
    }
    extra: dict[str, str] = {}
    if reference is not None:
        if run_dir is None:
            raise ConfigError(
                "--reference (forgetting monitor) needs a fine-tuning run: it compares the run's "
                "weights with those of its base backbone"
            )
        target = TaskSpec(name, man, split, ps, classes, use_head=True)
        result["forgetting"] = _forgetting(
            bb,
            cfg,
            target,
            reference,
            reference_prompts,
            reference_split,
            alphas,
            n_boot,
            seed,
            resolve_device(device),
        )
        if write:
            extra = write_forgetting(result["forgetting"], out_dir)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if write:
        result["outputs"] = write_outputs(
            result, out_dir, emb, tgt, p_cal, classes, multi, extra_files=extra
        )
    return result


def _forgetting(
    ft: Backbone,
    cfg: dict[str, Any],
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
    spec = run_setting(cfg, "backbone.spec")
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
    return forgetting_curve(base, ft, target, ref, alphas, n_boot, seed)


def _data_info(man: Manifest, split: str, emb: EmbeddedSplit, tgt: Targets) -> dict[str, Any]:
    return {
        "manifest": str(man.path),
        "split": split,
        "n_rows": len(emb) + len(emb.failures),
        "n_unreadable": len(emb.failures),
        "n_evaluated": len(tgt.keep),
        "skipped": tgt.skipped,
        "uncovered_labels": tgt.uncovered,
        "notes": tgt.notes,
    }
