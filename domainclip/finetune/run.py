"""`finetune(config, out_dir, resume=False) -> RunResult`: one complete fine-tuning run.

Order of work: processes and device -> seeds -> run directory (refuse to clobber, or check the
config of the run being resumed) -> backbone -> method -> data -> frozen-feature cache ->
step loop (or head fitting) -> result.json. Every part lives in its own module; this one only
wires them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune import health
from domainclip.finetune.adaptation import Adaptation, prepare
from domainclip.finetune.anchor import ProjectionAnchor
from domainclip.finetune.config import FinetuneConfig, config_diff, migrate_config_dict
from domainclip.finetune.data import (
    CachedFeatures,
    Splits,
    fingerprint_state,
    load_or_compute,
    load_splits,
)
from domainclip.finetune.distributed import DistInfo, barrier, init_from_env, shutdown
from domainclip.finetune.errors import CheckpointError
from domainclip.finetune.framings import SHIPPED_POOLS
from domainclip.finetune.robustness import FramingObjective
from domainclip.finetune.runlog import RunLog
from domainclip.finetune.tiles import TILE_METHODS
from domainclip.finetune.tiles import check_supported as check_tiles
from domainclip.io import atomic_write_text, load_yaml
from domainclip.runs.layout import CHECKPOINTS_DIR, CONFIG_FILE, RESULT_FILE

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Summary of a finished run (also written as RUN/result.json)."""

    run_dir: Path
    method: str
    best_metrics: dict[str, float]
    best_step: int
    steps: int
    trainable_params: int
    total_params: int
    trainable_fraction: float
    wall_seconds: float
    train_seconds: float
    cache_seconds: float
    initial_metrics: dict[str, float] = field(default_factory=dict)
    skipped_batches: int = 0
    # distinct unreadable images left out, train + val (per split: info["unreadable_images"])
    skipped_images: int = 0
    skipped_draws: int = 0  # times an unreadable train image was drawn into a batch and dropped
    truncated_texts: dict[str, int] = field(default_factory=dict)  # split -> rows cut at the context
    stopped_early: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # health.RunWarning dicts

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def resolve_device(spec: str, dist: DistInfo) -> torch.device:
    """'auto' -> cuda (this process's local GPU) when available, else cpu."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            from domainclip.errors import ConfigError

            raise ConfigError(
                f"backbone.device={spec} but CUDA is not available here; use cpu or auto"
            )
        if device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed every RNG. Deterministic mode matters on CUDA (cuBLAS/cuDNN kernel choice); the CPU
    kernels used here are deterministic for a fixed thread count (the resume test checks it), and
    switching the flag on imports torch's compiler stack (~3 s), so it is only set for CUDA."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _prepare_run_dir(cfg: FinetuneConfig, run_dir: Path, resume: bool) -> Path | None:
    """Check/create the run dir. Returns the checkpoint to resume from (None for a fresh run)."""
    cfg_path = run_dir / CONFIG_FILE
    if not resume:
        if (run_dir / CHECKPOINTS_DIR).exists() or cfg_path.exists():
            raise CheckpointError(
                f"{run_dir} already holds a run. Continue it with --resume, or choose another --out."
            )
        return None
    if not cfg_path.is_file():
        raise CheckpointError(f"--resume: {run_dir} is not a run directory (no {CONFIG_FILE})")
    saved = load_yaml(cfg_path)
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"--resume: {cfg_path} is not a config mapping; the run cannot resume"
        )
    saved = migrate_config_dict(saved, str(cfg_path))
    # A run written before per-method sections recorded every method's settings: compare the
    # chosen method's only. `data.fit: auto` was resolved when the run started: compare with that.
    # Likewise `method.text_tower: auto`.
    chosen = _with_text_tower(_with_fit(cfg, _saved_fit(saved)), _saved_text_tower(saved))
    diff = config_diff(saved, chosen.to_dict())
    if diff:
        raise CheckpointError(
            f"--resume: the config differs from the one {run_dir} was started with:\n  "
            + "\n  ".join(diff)
            + "\nResume with the original config (same --set options), or start a new run with --out."
        )
    try:
        return ckpt.checkpoint_dir(run_dir, "last")
    except CheckpointError:
        log.info("%s has no checkpoint yet: starting from scratch in it", run_dir)
        return None


AUTO_CHOICES = ("letterbox", "tile")  # what `data.fit: auto` resolves to (choose_fit)


def _saved_fit(saved: dict) -> str | None:
    data = saved.get("data")
    return data.get("fit") if isinstance(data, dict) else None


def _with_fit(cfg: FinetuneConfig, fit: str | None) -> FinetuneConfig:
    """`cfg` with `data.fit: auto` replaced by `fit` when auto could have chosen it (letterbox or
    tile; a run that trained with crop or stretch did not choose auto). Other policies stay."""
    if cfg.data.fit != "auto" or fit not in AUTO_CHOICES:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fit=fit))


def _resolve_fit(
    cfg: FinetuneConfig, bb, run_dir: Path, resume: bool, world: int
) -> tuple[FinetuneConfig, str | None]:
    """`data.fit: auto` -> letterbox or tile (`geometry_report.choose_fit` on the training split
    at the model's input size), logged and returned with the reason; a resumed run keeps the
    choice it recorded. Other policies are returned as they are (reason None)."""
    if cfg.data.fit != "auto":
        return cfg, None
    if resume and (run_dir / CONFIG_FILE).is_file():
        fit = _saved_fit(load_yaml(run_dir / CONFIG_FILE))
        return _with_fit(cfg, fit), f"data.fit auto: {fit}, as chosen when the run started"
    from domainclip.datasets.geometry_report import choose_fit

    size = int(cfg.data.image_size or bb.image_size)
    fit, reason = choose_fit(cfg.data.manifest, size, split=cfg.data.train_split)
    if fit == "tile" and (cfg.method.name not in TILE_METHODS or world > 1):
        fit = "letterbox"
        reason += (
            f"; but method {cfg.method.name} on {world} process(es) cannot train on tiles "
            f"(tiles need one of {', '.join(TILE_METHODS)} on one process): letterbox"
        )
    reason = f"data.fit auto -> {fit}: {reason}"
    log.info("%s", reason)
    return _with_fit(cfg, fit), reason


def _saved_text_tower(saved: dict) -> str | None:
    method = saved.get("method")
    return method.get("text_tower") if isinstance(method, dict) else None


def _with_text_tower(cfg: FinetuneConfig, mode: str | None) -> FinetuneConfig:
    """`cfg` with `method.text_tower: auto` replaced by `mode` when auto could have chosen it."""
    if cfg.method.text_tower != "auto" or mode not in ("locked", "lora"):
        return cfg
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, text_tower=mode))


def _resolve_text_tower(
    cfg: FinetuneConfig, splits: Splits, run_dir: Path, resume: bool
) -> tuple[FinetuneConfig, str | None]:
    """`method.text_tower: auto` -> locked or lora (`texttop.choose_text_tower` on the training
    texts), logged and returned with the reason; a resumed run keeps its recorded choice."""
    if cfg.method.text_tower != "auto":
        return cfg, None
    if resume and (run_dir / CONFIG_FILE).is_file():
        mode = _saved_text_tower(load_yaml(run_dir / CONFIG_FILE))
        return _with_text_tower(cfg, mode), f"method.text_tower auto: {mode}, as chosen when the run started"
    from domainclip.finetune.config import TEXT_AUTO_TOKENS
    from domainclip.finetune.texttop import choose_text_tower
    from domainclip.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.backbone.spec)
    mode, reason = choose_text_tower(splits.train.texts, tokenizer, TEXT_AUTO_TOKENS)
    log.info("%s", reason)
    return _with_text_tower(cfg, mode), reason


def _image_cache(
    cfg: FinetuneConfig, adapt: Adaptation, splits: Splits, device: torch.device
) -> dict[str, CachedFeatures] | None:
    """Frozen image-tower outputs for train and val, or None when the image tower is trained."""
    locked = adapt.modes["image"] == "locked"
    mode = cfg.train.cache_features
    if mode == "always" and not locked:
        from domainclip.errors import ConfigError

        raise ConfigError(
            "train.cache_features=always needs a locked image tower (method.image_tower=locked)"
        )
    if not locked or (mode == "never" and cfg.needs_training):
        return None
    bb = adapt.bb
    # The run's eval transform: `domainclip evaluate` on the run embeds with the same one
    # (`resolve_model(run).preprocess`), so features seen in training and evaluation are identical.
    transform = _eval_transform(cfg, bb)
    desc = f"{transform!r}|{transform.mean}|{transform.std}"
    image_state = {
        k: v
        for k, v in adapt.base.state_dict().items()
        if k.startswith(adapt.layout.image_prefixes)
    }
    fp = fingerprint_state(image_state) if cfg.train.feature_cache_dir else ""
    out = {}
    for name, split in (("train", splits.train), ("val", splits.val)):
        out[name] = load_or_compute(
            split,
            adapt.pooled_image,
            cfg.train.feature_cache_dir,
            fp,
            desc,
            transform=transform,
            device=device,
            batch_size=64,
            num_workers=cfg.data.num_workers,
            progress=cfg.train.progress,
            desc=f"caching {name} image features",
        )
    return out


def finetune(config: FinetuneConfig, out_dir: str | Path, resume: bool = False) -> RunResult:
    """Run one fine-tuning job described by `config` into `out_dir` (see module docstring).

    Args:
        config: a resolved config (`load_config`).
        out_dir: the run directory (created; must not hold a run unless resume=True).
        resume: continue the run in out_dir from its last checkpoint (same config required).

    Returns:
        RunResult with the run directory, best validation metrics, parameter counts and timings.

    Raises:
        ConfigError / DataError / CheckpointError / TrainingDiverged with an actionable message.
    """
    t0 = time.perf_counter()
    cfg = absolute_paths(config)
    run_dir = Path(out_dir)
    dist = init_from_env(_device_kind(cfg.backbone.device))
    stack = contextlib.ExitStack()  # holds the run folder's lock (rank 0) until the end
    try:
        device = resolve_device(cfg.backbone.device, dist)
        seed_everything(cfg.train.seed, cfg.train.deterministic, device)
        # Data and prompt problems surface before a model is loaded or the run folder is made.
        check_tiles(cfg, dist.world)  # fit: tile needs a method that trains on tile features
        splits = load_splits(cfg.data, cfg.train.seed)
        prompts = _prompts(cfg, splits)
        robust = FramingObjective.of(cfg, splits.classes, prompts)  # pool problems: no run folder yet
        if robust is not None and robust.pool.name == "generic":
            log.warning(
                "robustness.pool is the generic pool: on the synthetic benchmark it lowered the "
                "shifts but the negated wording then lowered the target for only 79%% of images "
                "(industrial pool: 100%%); prefer a domain pool (industrial, medical) or your own "
                "in your domain's wording (README 'Framing-robust fine-tuning')"
            )
        stack.enter_context(ckpt.run_lock(run_dir) if dist.is_main else contextlib.nullcontext())
        resume_ckpt = _prepare_run_dir(cfg, run_dir, resume)
        cfg, tower_reason = _resolve_text_tower(cfg, splits, run_dir, resume)
        adapt, anchor = _adapt(cfg, device, resume_ckpt)
        cfg, fit_reason = _resolve_fit(cfg, adapt.bb, run_dir, resume, dist.world)
        truncated = health.truncation(splits, adapt.bb.tokenizer)
        _write_config(cfg, run_dir, dist)  # after loading: a bad backbone spec leaves no config
        meta = {"method": cfg.method.name, "parameters": adapt.parameter_counts()}
        tc = time.perf_counter()
        cache = _image_cache(cfg, adapt, splits, device)
        cache_s = time.perf_counter() - tc
        if cfg.needs_training:
            result = _train(
                cfg, adapt, splits, cache, prompts, run_dir, dist, device, resume_ckpt, meta, anchor
            )
        else:
            result = _fit(cfg, adapt, splits, cache, prompts, run_dir, device, meta)
        # The input geometry the run trained with (S resolved: None in the config = native).
        result.setdefault("info", {})["input"] = _eval_transform(cfg, adapt.bb).input
        if fit_reason:
            result["info"]["fit_choice"] = fit_reason
        if tower_reason:
            result["info"]["text_tower_choice"] = tower_reason
        _input_findings(result, cache, *truncated)
        rr = _result(cfg, adapt, run_dir, result, wall_s=time.perf_counter() - t0, cache_s=cache_s)
        if dist.is_main:
            atomic_write_text(
                run_dir / RESULT_FILE, json.dumps(rr.to_dict(), indent=2, default=float)
            )
        barrier(dist)
        return rr
    finally:
        stack.close()
        shutdown(dist)


def _input_findings(
    result: dict,
    cache: dict[str, CachedFeatures] | None,
    truncated: dict[str, int],
    warnings: list[health.RunWarning],
) -> None:
    """Put the input findings into `result`: unreadable images (distinct, per split and in total;
    the trainer's own count when it decoded images itself) and truncated texts with warnings."""
    info = result.setdefault("info", {})
    unreadable = {k: c.n_failed for k, c in cache.items()} if cache else info.get("unreadable_images")
    if unreadable is not None:
        info["unreadable_images"] = unreadable
        result["skipped_images"] = sum(unreadable.values())
    result["truncated_texts"] = truncated
    result["warnings"] = [w.to_dict() for w in warnings] + result.get("warnings", [])


def _device_kind(spec: str) -> str:
    """ "cuda" or "cpu": which process-group backend `backbone.device` needs."""
    if spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def _write_config(cfg: FinetuneConfig, run_dir: Path, dist: DistInfo) -> None:
    """After every rank has checked the run folder: (rank 0) create it and write the config."""
    barrier(dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.cleanup_temp(run_dir)
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _adapt(
    cfg: FinetuneConfig, device: torch.device, resume_ckpt: Path | None
) -> tuple[Adaptation, ProjectionAnchor | None]:
    """Load the backbone and prepare it for the method (resumed adapters/heads when given).
    Returns it with the projections' starting point when `loss.anchor_weight` is set (taken
    before a resumed checkpoint's trained projections are loaded)."""
    from domainclip.models import load_backbone

    bb = load_backbone(cfg.backbone.spec, device=device)
    anchor = ProjectionAnchor.of(bb) if cfg.loss.anchor_weight > 0 else None
    torch.manual_seed(cfg.train.seed)  # LoRA init does not depend on how the backbone was built
    if cfg.needs_training:
        adapt = prepare(bb, cfg.method, checkpoint=resume_ckpt, trainable=True)
    else:
        adapt = prepare(bb, cfg.method, trainable=False)
    counts = adapt.parameter_counts()
    if cfg.needs_training or counts["trainable"]:
        log.info(
            "%s: %d trainable of %d parameters (%.3f%%)",
            cfg.method.name,
            counts["trainable"],
            counts["total"],
            100 * counts["fraction"],
        )
    else:  # a closed-form head does not exist yet: counted (as in result.json) once fitted
        log.info("%s: its head is fitted from cached features; parameters counted once fitted", cfg.method.name)
    return adapt, anchor


def _result(
    cfg: FinetuneConfig,
    adapt: Adaptation,
    run_dir: Path,
    result: dict,
    wall_s: float,
    cache_s: float,
) -> RunResult:
    """The RunResult of a finished run; parameters are counted again (fitted heads exist only now)."""
    counts = adapt.parameter_counts()
    log.info(
        "%s: %d trainable (learned) of %d parameters (%.3f%%)",
        cfg.method.name,
        counts["trainable"],
        counts["total"],
        100 * counts["fraction"],
    )
    result.update(
        run_dir=run_dir,
        method=cfg.method.name,
        trainable_params=int(counts["trainable"]),
        total_params=int(counts["total"]),
        trainable_fraction=float(counts["fraction"]),
        wall_seconds=wall_s,
        cache_seconds=cache_s,
    )
    return RunResult(**result)


def absolute_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """A copy with file paths made absolute (relative = to the current directory), so the run's
    config.yaml stays valid from anywhere and a resume from another directory compares equal."""
    import copy

    from domainclip.resources import resolve_config_path

    cfg = copy.deepcopy(cfg)

    def absolute(p: str) -> str:
        return str(Path(p).expanduser().resolve()) if p else p

    cfg.data.manifest = absolute(cfg.data.manifest)
    # A shipped `configs/...` prompt set names the package's file, wherever the run is started.
    cfg.eval.prompts = absolute(str(resolve_config_path(cfg.eval.prompts)) if cfg.eval.prompts else "")
    cfg.train.feature_cache_dir = absolute(cfg.train.feature_cache_dir)
    pool = resolve_config_path(cfg.robustness.pool)
    if cfg.robustness.pool not in SHIPPED_POOLS and pool.is_file():  # a pool file (else the error names it as typed)
        cfg.robustness.pool = absolute(str(pool))
    cfg.robustness.held_out = [  # audit spec files, like the pool (shipped names stay names)
        absolute(h) if Path(h).expanduser().is_file() else h for h in cfg.robustness.held_out
    ]
    spec = cfg.backbone.spec
    if spec.startswith("hf-clip:"):
        cfg.backbone.spec = "hf-clip:" + absolute(spec[len("hf-clip:") :])
    elif spec.startswith("open_clip:") and "@" in spec:
        arch, _, weights = spec.partition("@")
        if Path(weights).expanduser().exists():
            cfg.backbone.spec = f"{arch}@{absolute(weights)}"
    elif spec != "default" and Path(spec).expanduser().exists():  # a saved backbone directory
        cfg.backbone.spec = absolute(spec)
    return cfg


def _prompts(cfg: FinetuneConfig, splits: Splits):
    if not cfg.eval.prompts:
        return None
    from domainclip.scoring.prompts import load_prompt_set

    ps = load_prompt_set(cfg.eval.prompts)
    if not ps.multi_label:
        ps.class_texts(splits.classes)  # fails early, listing uncovered classes
    return ps


def _eval_transform(cfg: FinetuneConfig, bb):
    """The run's eval transform (`data.fit` at `data.image_size`): what evaluation uses too."""
    from domainclip.datasets.transforms import eval_transform

    return eval_transform(bb, cfg.data.fit, cfg.data.image_size, cfg.data.tile_settings())


def _train(
    cfg, adapt, splits, cache, prompts, run_dir, dist, device, resume_ckpt, meta, anchor=None
) -> dict:
    from domainclip.datasets.transforms import train_transform
    from domainclip.finetune.trainer import Trainer

    bb = adapt.bb
    if adapt.modes["image"] != "locked" and bb.image_arch == "cnn" and cfg.backbone.channels_last:
        adapt.base.visual.to(memory_format=torch.channels_last)
    transforms = {
        "train": train_transform(
            bb, cfg.data.augment, cfg.data.fit, cfg.data.image_size, seed=cfg.train.seed,
            tile=cfg.data.tile_settings(),
        ),
        "val": _eval_transform(cfg, bb),
    }
    state = ckpt.load_state(resume_ckpt) if resume_ckpt is not None else None
    runlog = RunLog(
        run_dir, resume_step=state["loop"]["step"] if state else None, enabled=dist.is_main
    )
    text_top = _text_top(cfg, adapt, splits, prompts, device)
    try:
        trainer = Trainer(
            cfg, adapt, splits, cache, transforms, run_dir, dist, device, runlog, prompts, meta,
            text_top, anchor,
        )
        if state is not None:
            trainer.resume_from(state)
            log.info("resumed %s at step %d", run_dir, trainer.state.step)
        s = trainer.fit()
    finally:
        runlog.close()
    info = {"unreadable_images": {"train": len(s.unreadable_train), "val": s.unreadable_val}}
    if text_top is not None:
        info["text_cache"] = dict(text_top.cache.info)
    if trainer.robust is not None:  # the Trainer's objective knows the run's length (select_from_step)
        info["robustness"] = trainer.robust.describe()
    return {
        "best_metrics": s.best_metrics,
        "initial_metrics": s.initial_metrics,
        "best_step": s.best_step,
        "steps": s.step,
        "train_seconds": s.train_seconds,
        "skipped_batches": s.skipped_batches,
        "skipped_draws": s.skipped_draws,
        # decoded every step (no cache): the distinct images the trainer saw fail
        "info": info,
        "stopped_early": bool(cfg.eval.patience and s.bad_evals >= cfg.eval.patience),
        "warnings": list(s.warnings),
    }


def _text_top(cfg, adapt, splits, prompts, device):
    """Cached lower text layers (`finetune.texttop`) for every text the run encodes: training and
    validation texts and the class prompts; None when they do not apply."""
    from domainclip.finetune.texttop import build_text_top
    from domainclip.finetune.validate import class_texts

    texts = [*splits.train.texts, *splits.val.texts]
    if prompts is None or not prompts.multi_label:
        texts += [t for ts in class_texts(prompts, splits.classes).values() for t in ts]
    return build_text_top(cfg, adapt, device, texts)


def _fit(cfg, adapt, splits, cache, prompts, run_dir, device, meta) -> dict:
    from domainclip.finetune.closed_form import fit_head

    t = time.perf_counter()
    metrics, info = fit_head(cfg, adapt, splits, cache, prompts, device, run_dir, meta)
    runlog = RunLog(run_dir, tensorboard=True)
    runlog.event("val", 0, **metrics, **{f"fit_{k}": v for k, v in info.items()})
    runlog.close()
    return {
        "best_metrics": metrics,
        "best_step": 0,
        "steps": 0,
        "train_seconds": time.perf_counter() - t,
        "info": info,
    }
