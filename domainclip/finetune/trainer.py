"""The training loop for the gradient-based methods (LoRA, full, locked-image, CLIP-Adapter, Tip-F*).

Small parts, one job each:
  `StepModule`   pure feature computation of one micro-batch (what DDP wraps);
  `Trainer.fit`  steps -> (log, checkpoint, validate, early stop);
  `_train_step`  `accumulate` micro-batches, NaN guard, clip, optimizer/scheduler step.
(*Tip-Adapter-F trains its cache keys in closed form over cached features: see methods/tip_adapter.)

An epoch is `len(batches) // accumulate` optimizer steps (leftover micro-batches are dropped), so
checkpoints and evaluations always fall on step boundaries and the resume position is just
(epoch, step in epoch).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from domainclip.errors import ConfigError
from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune import health
from domainclip.finetune.adaptation import Adaptation
from domainclip.finetune.anchor import ProjectionAnchor
from domainclip.finetune.config import FinetuneConfig
from domainclip.finetune.data import CachedFeatures, GlobalBatches, Splits, image_batches
from domainclip.finetune.distributed import DistInfo, gather_features, gather_objects
from domainclip.finetune.errors import TrainingDiverged
from domainclip.finetune.losses import multi_positive_loss, positive_mask, supervised_loss
from domainclip.finetune.metric_names import resolve_metric
from domainclip.finetune.optim import build_optimizer, build_scheduler
from domainclip.finetune.robustness import FramingObjective, GradBalance
from domainclip.finetune.runlog import RunLog
from domainclip.finetune.texttop import TextTop
from domainclip.finetune.tiles import TiledLoss, cached_images, tile_rule
from domainclip.finetune.validate import ValFeatures, class_texts, validation_metrics
from domainclip.runs.layout import CHECKPOINTS_DIR

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"loss"}


@dataclass
class TrainState:
    """Everything about the loop's position that a resume needs (weights/optimizer aside)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    best_value: float | None = None
    best_step: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    initial_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    skipped_batches: int = 0
    skipped_draws: int = 0  # unreadable train images drawn into a batch and dropped from it
    unreadable_train: list[int] = field(default_factory=list)  # distinct failed rows (decoded path)
    unreadable_val: int = 0  # val images that failed at the last validation (decoded path)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # health.RunWarning dicts
    last_eval_step: int = -1
    train_seconds: float = 0.0


class StepModule(nn.Module):
    """Features of one micro-batch (DDP wraps this, so gradient sync sees every trained module).

    forward(pooled_image=[b,Dpre] | pixels=[b,3,H,W], text_ids=[u,L] | texts=[u] (through the
            cached frozen text part, `finetune.texttop`: top layers, or a locked tower's projection))
        -> (image_feats [b,D], text_feats [u,D], logit_scale scalar), features unnormalised.
    """

    def __init__(self, adapt: Adaptation, text_top: TextTop | None = None) -> None:
        super().__init__()
        self.model = adapt.model  # registered: its parameters are the ones DDP synchronises
        object.__setattr__(self, "adapt", adapt)  # not a submodule (same parameters)
        object.__setattr__(self, "text_top", text_top)

    def forward(
        self,
        pooled_image: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        texts: list[str] | None = None,
    ):
        a = self.adapt
        img = (
            a.image_from_pooled(pooled_image)
            if pooled_image is not None
            else a.model.encode_image(pixels)
        )
        txt = self.text_top.encode(texts) if texts is not None else a.model.encode_text(text_ids)
        return img, txt, a.model.logit_scale


class Trainer:
    """Runs the loop for one Adaptation on prepared data (see module docstring).

    Args:
        cfg: resolved config; adapt: the prepared model; splits: train/val data.
        image_cache: pooled frozen-image features per split ("train"/"val"), or None to decode
            images every step (image tower trained, or cache off).
        image_transforms: {"train": augmenting transform, "val": eval transform}.
        run_dir, dist, device, runlog: where to write, process placement, device, event log.
    """

    def __init__(
        self,
        cfg: FinetuneConfig,
        adapt: Adaptation,
        splits: Splits,
        image_cache: dict[str, CachedFeatures] | None,
        image_transforms: dict[str, Any],
        run_dir: Path,
        dist: DistInfo,
        device: torch.device,
        runlog: RunLog,
        prompts=None,
        meta: dict | None = None,
        text_top: TextTop | None = None,
        anchor: ProjectionAnchor | None = None,
    ) -> None:
        self.cfg, self.adapt, self.splits = cfg, adapt, splits
        self.image_cache, self.transforms = image_cache, image_transforms
        self.run_dir, self.dist, self.device, self.runlog = run_dir, dist, device, runlog
        self.prompts, self.meta = prompts, dict(meta or {})
        t = cfg.train
        self.sampler = GlobalBatches(len(splits.train), t.batch_size, t.seed, dist.rank, dist.world)
        acc = cfg.optim.accumulate
        if acc > len(self.sampler):
            raise ConfigError(
                f"optim.accumulate={acc} exceeds the {len(self.sampler)} batches of one epoch; lower it "
                "or train.batch_size"
            )
        self.steps_per_epoch = len(self.sampler) // acc
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.params = adapt.trainable_parameters()
        if not self.params:
            raise ConfigError(
                "nothing to train: every tower is locked and projections/logit scale are frozen"
            )
        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.optim)
        # cached frozen text part (finetune.texttop): lower layers under top-N LoRA, or a locked
        # tower's pooled output; None = the whole text tower runs every step
        self.text_top = text_top
        self.anchor = anchor  # initial projections for loss.anchor_weight (finetune.anchor)
        self.step_module = StepModule(adapt, text_top)
        self.ddp = self._wrap_ddp()
        self.state = TrainState()
        self.precision = _precision(cfg.backbone.precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self._cache_pos = self._cache_positions()
        self.robust = FramingObjective.of(cfg, splits.classes, prompts, self.total_steps)  # None unless enabled
        if self.robust is not None and text_top is not None:  # the pool's lower layers once, not per step
            text_top.cache.ensure(self.robust.all_texts())
        if self.robust is not None:
            log.info(
                "robustness: the best checkpoint is chosen among validations from step %d (the "
                "framing terms at full weight)", self.robust.full_from(),
            )
        # balance: gradnorm -> the terms' gradient is taken apart and scaled before the clip
        self.balance = (
            GradBalance(self.robust.max_ratio)
            if self.robust is not None and self.robust.balance == "gradnorm" else None
        )

    # ------------------------------------------------------------------ setup helpers
    def _wrap_ddp(self) -> nn.Module:
        if not self.dist.enabled:
            return self.step_module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # A fully trained tower can hold parameters the forward never uses (e.g. BERT's pooler
        # under mean pooling); DDP must then look for them, which costs a graph walk per step.
        full = "full" in self.adapt.modes.values()
        return DistributedDataParallel(
            self.step_module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=full
        )

    def _cache_positions(self) -> torch.Tensor | None:
        """split row -> row of the train cache (-1: image unreadable, not cached)."""
        if not self.image_cache:
            return None
        c = self.image_cache["train"]
        pos = torch.full((len(self.splits.train),), -1, dtype=torch.long)
        pos[c.rows] = torch.arange(len(c.rows))
        return pos

    def resume_from(self, state: dict[str, Any]) -> None:
        """Restore optimizer, scheduler, RNG and loop position from a state.pt dict."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        loop = dict(state["loop"])
        if "skipped_images" in loop:  # states written before the draw/distinct split
            loop["skipped_draws"] = loop.pop("skipped_images")
        self.state = TrainState(**loop)
        ckpt.set_rng_state(state["rng"])

    def _autocast(self):
        """Mixed precision context (bf16 on CUDA by default; fp32 = no autocast)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ features
    def _text_ids(self, texts: list[str]) -> torch.Tensor:
        """Unique texts -> token ids [u, L] (the whole tower runs: no `text_top` cache applies)."""
        return self.adapt.bb.tokenizer(texts).to(self.device)

    def _micro_loss(self, item: tuple | None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(loss, robust terms) of one micro-batch over the global batch, or None when it is
        skipped. The robust terms are returned apart only under `robustness.balance: gradnorm`
        (else they are in the loss and the second item is None).

        item: (split rows, pixels or None for cached features, tiles per image or None), or None
            when every image failed.
        Every process takes part in the size exchange, so all of them skip or none does.
        """
        split = self.splits.train
        rows, pixels, n_tiles = item if item is not None else ([], None, None)
        kw: dict[str, Any] = {}
        if item is not None and pixels is None:
            pos = self._cache_pos[rows]
            self.state.skipped_draws += int((pos < 0).sum())
            rows = [r for r, p in zip(rows, pos.tolist(), strict=True) if p >= 0]
            feats, n_tiles = cached_images(self.image_cache["train"], pos[pos >= 0])
            kw["pooled_image"] = feats.to(self.device)
        elif pixels is not None:
            kw["pixels"] = pixels.to(
                self.device, memory_format=_memory_format(self.adapt, self.cfg)
            )
        sizes = gather_objects(len(rows), self.dist)
        if min(sizes) == 0 or sum(sizes) < 2:  # a slice without pairs, or no negative at all
            return None
        texts = [split.texts[r] for r in rows]
        if self.robust is not None:
            texts = self.robust.augment(texts, self.state.step)
        uniq = list(dict.fromkeys(texts))
        if self.text_top is not None:
            kw["texts"] = uniq
        else:
            kw["text_ids"] = self._text_ids(uniq)
        with self._autocast():
            img, txt_u, log_scale = self.ddp(**kw)
            where = {t: i for i, t in enumerate(uniq)}
            txt = txt_u[[where[t] for t in texts]]
            img = _gather_padded(F.normalize(img.float(), dim=-1), sizes, self.dist)
            txt = _gather_padded(F.normalize(txt.float(), dim=-1), sizes, self.dist)
            all_texts = sum(gather_objects(texts, self.dist), [])
            all_labels = sum(gather_objects([split.labels[r] for r in rows], self.dist), [])
            scale = log_scale.float().exp().clamp(max=self.cfg.loss.max_logit_scale)
            pos_mask = positive_mask(all_texts, all_labels, self.cfg.loss.positives, img.device)
            tiled = TiledLoss.of(self.cfg, n_tiles)  # fit: tile -> losses on aggregated tile logits
            loss = tiled.contrastive(img, txt, scale, pos_mask) if tiled else multi_positive_loss(img, txt, scale, pos_mask)
            if self.cfg.loss.supervised_weight > 0:
                loss = loss + self.cfg.loss.supervised_weight * self._supervised(
                    img, all_labels, scale, tiled
                )
            if self.anchor is not None:
                loss = loss + self.cfg.loss.anchor_weight * self.anchor.penalty(self.adapt.base)
            robust = None
            if self.robust is not None:  # framing consistency + negation (finetune.robustness)
                robust = self.robust.loss(
                    img, all_labels, scale, self._encode_with_grad, self.state.step, tiled
                )
                if self.balance is None:
                    loss, robust = loss + robust, None
        return loss, robust

    def _encode_with_grad(self, texts: list[str]) -> torch.Tensor:
        """texts -> [n, D] unnormalised features with gradients through what trains the text side
        (a locked text tower: its cached pooled output through the projection/adapter; top-N text
        LoRA: the top layers over the cached lower ones)."""
        if self.text_top is not None:
            return self.text_top.encode(texts)
        return self.adapt.model.encode_text(self._text_ids(texts))

    def _supervised(
        self, img: torch.Tensor, labels: list[list[str]], scale: torch.Tensor, tiled: TiledLoss | None = None
    ) -> torch.Tensor:
        """Cross-entropy against class weights from ONE prompt per class, drawn per step.

        Encoding every prompt of every class each step would cost more than the batch itself
        (NEU-DET: 48 prompts); one draw per class is an unbiased sample of the prompt ensemble.
        The draw is seeded by (seed, step), so every process and a resumed run draw alike.
        """
        ct = class_texts(self.prompts, self.splits.classes)
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.state.step)
        prompts = [ts[int(torch.randint(len(ts), (1,), generator=g))] for ts in ct.values()]
        W = F.normalize(self._encode_with_grad(prompts).float(), dim=-1)
        lookup = {c: i for i, c in enumerate(self.splits.classes)}
        y = torch.tensor(
            [lookup.get(lab[0], -1) if lab else -1 for lab in labels], device=img.device
        )
        return tiled.supervised(img, W, scale, y) if tiled else supervised_loss(img, W, scale, y)

    # ------------------------------------------------------------------ one step
    def _micro_batches(self, epoch: int, start_step: int):
        """Yield (step_in_epoch, [(rows, pixels | None, n_tiles | None) or None for a failed batch]
        * accumulate)."""
        acc = self.cfg.optim.accumulate
        batches = self.sampler.epoch(epoch)[start_step * acc : self.steps_per_epoch * acc]
        if self.image_cache:
            stream = ((b, None, None) for b in batches)
        else:
            stream = (
                self._decoded(rows, batch)
                for rows, batch in zip(batches, image_batches(
                    self.splits.train,
                    self.transforms["train"],
                    batches,
                    self.cfg.train.seed,
                    epoch,
                    self.cfg.data.num_workers,
                ), strict=True)
            )
        group: list = []
        step = start_step
        for item in stream:
            group.append(item)
            if len(group) == acc:
                yield step, group
                group, step = [], step + 1

    def _decoded(self, requested: list[int], batch: dict | None) -> tuple | None:
        """(rows, pixels, n_tiles) of a decoded batch (None: every image failed); the images that
        failed are counted (draws) and remembered (distinct rows)."""
        failed = set(requested) - set(batch["rows"] if batch is not None else [])
        if failed:
            self.state.skipped_draws += len(failed)
            self.state.unreadable_train = sorted(failed | set(self.state.unreadable_train))
        return None if batch is None else (batch["rows"], batch["image"], batch.get("n_tiles"))

    def _train_step(self, group: list) -> float | None:
        """One optimizer step over `accumulate` micro-batches. Returns the mean loss (None: all skipped)."""
        acc = len(group)
        self.adapt.set_train(True)
        losses = []
        for item in group:
            # No DDP no_sync() for accumulation: a skipped last micro-batch would leave gradients
            # unsynchronised; syncing every micro-batch costs only communication.
            out = self._micro_loss(item)
            if out is None:
                self.state.skipped_batches += 1
                log.warning(
                    "step %d: a batch without usable pairs (unreadable images) was skipped",
                    self.state.step + 1,
                )
                continue
            loss, robust = out
            total = loss if robust is None else loss + robust.detach()
            if not torch.isfinite(total):
                self._diverged(f"the loss became {float(total.detach())}")
            scaled = loss / acc
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if robust is not None:  # balance: gradnorm, kept apart until the step
                scaled = robust / acc
                self.balance.accumulate(
                    self.scaler.scale(scaled) if self.scaler else scaled, list(self.params.values())
                )
            losses.append(float(total.detach()))
        if losses:
            if self.balance is not None:
                self.robust.last.update(self.balance.apply(list(self.params.values())))
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            norm = _grad_norm(self.params.values(), self.cfg.optim.grad_clip)
            # fp16: the GradScaler skips steps with inf gradients itself (expected while it calibrates)
            if not math.isfinite(norm) and self.scaler is None:
                self._diverged(f"the gradient norm became {norm}")
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return sum(losses) / len(losses) if losses else None

    def _diverged(self, what: str) -> None:
        """Stop: keep the last good weights (not yet touched by this step) as checkpoints/last."""
        step = self.state.step
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        where = self._save("last", with_state=True, reason="diverged")
        raise TrainingDiverged(
            f"{what} at step {step + 1} (learning rate {lr:.3g}). Training stopped; the last good "
            f"weights (after step {step}) are in {where}. Lower the learning rate, e.g. "
            f"--set optim.lr={self.cfg.optim.lr / 10:g}, or check the data for broken pairs."
        )

    # ------------------------------------------------------------------ validation
    def _val_image_features(self) -> ValFeatures:
        a = self.adapt
        if self.image_cache:
            c = self.image_cache["val"]
            with torch.no_grad(), self._autocast():
                f = torch.cat(
                    [
                        a.image_from_pooled(c.feats[i : i + 1024].to(self.device)).float()
                        for i in range(0, len(c.feats), 1024)
                    ]
                )
            counts = None if c.counts is None else c.counts.tolist()
            return ValFeatures(F.normalize(f, dim=-1).cpu(), c.rows.tolist(), counts, tile_rule(self.cfg))
        split = self.splits.val
        order = list(range(len(split)))
        bs = self.cfg.train.batch_size
        feats, rows, counts = [], [], []
        it = image_batches(
            split,
            self.transforms["val"],
            [order[i : i + bs] for i in range(0, len(order), bs)],
            0,
            0,
            self.cfg.data.num_workers,
        )
        with torch.no_grad(), self._autocast():
            for batch in it:
                if batch is None:
                    continue
                pix = batch["image"].to(self.device, memory_format=_memory_format(a, self.cfg))
                feats.append(a.model.encode_image(pix).float().cpu())
                rows += batch["rows"]
                counts += batch.get("n_tiles") or []
        self.state.unreadable_val = len(split) - len(rows)
        return ValFeatures(F.normalize(torch.cat(feats), dim=-1), rows, counts or None, tile_rule(self.cfg))

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        with self._autocast():
            return self._encode_with_grad(texts).float().cpu()  # no_grad: the decorator

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current weights (every process computes the same numbers)."""
        self.adapt.set_train(False)
        t0 = time.perf_counter()
        metrics = validation_metrics(
            self.adapt,
            self.splits.val,
            self._val_image_features(),
            self._encode_texts,
            self.prompts,
            self.cfg.loss.positives,
            self.cfg.train.batch_size,
            self.cfg.loss.max_logit_scale,
        )
        metrics["seconds"] = time.perf_counter() - t0
        metrics["logit_scale"] = float(self.adapt.model.logit_scale.detach().float().exp())
        return metrics

    def _after_eval(self, metrics: dict[str, float]) -> bool:
        """Record best, write checkpoints. Returns True when early stopping triggers."""
        s = self.state
        name = resolve_metric(metrics, self.cfg.eval.metric)  # head_acc for zero_shot_acc
        if name not in metrics:
            raise ConfigError(
                f"eval.metric={name} is not available on this data (the val rows have no labels or "
                f"the prompt set is multi-label); available: {', '.join(sorted(k for k in metrics if k != 'n'))}"
            )
        value = metrics[name]
        lower = name in LOWER_IS_BETTER
        better = s.best_value is None or (value < s.best_value if lower else value > s.best_value)
        s.last_eval_step = s.step
        collapsed = self._collapse_check(metrics)
        # With robustness on, only checkpoints trained with the terms at full weight may become
        # "best" or count towards patience (FramingObjective.full_from says why).
        eligible = self.robust is None or s.step >= self.robust.full_from()
        better = better and not collapsed and eligible
        self.runlog.event("val", s.step, epoch=s.epoch, collapsed=collapsed, **metrics)
        log.info(
            "step %d: val %s",
            s.step,
            ", ".join(
                f"{k} {v:.4f}"
                for k, v in metrics.items()
                if k in ("loss", "zero_shot_acc", "head_acc", "t2i_R@1", "i2t_R@1")
            ),
        )
        if better:
            s.best_value, s.best_step, s.bad_evals = value, s.step, 0
            s.best_metrics = {k: float(v) for k, v in metrics.items()}
            self._save("best", with_state=False, reason="best")
        elif eligible:
            s.bad_evals += 1
        self._save("last", with_state=True, reason="eval")
        patience = self.cfg.eval.patience
        return bool(patience and s.bad_evals >= patience)

    def _collapse_check(self, metrics: dict[str, float]) -> bool:
        """True (and a recorded warning) when this validation shows a collapsed model (health)."""
        lr = self.cfg.optim.lr
        s = self.state
        warning = health.collapse_warning(
            metrics, s.step, self.cfg.train.batch_size, lr, s.initial_metrics
        )
        if warning is not None:
            health.record(warning, s.warnings, self.runlog)
        return warning is not None

    # ------------------------------------------------------------------ checkpoints
    def _save(self, name: str, with_state: bool, reason: str) -> Path:
        """Write checkpoint `name` (rank 0 only; others return the path)."""
        path = self.run_dir / CHECKPOINTS_DIR / name
        if not self.dist.is_main:
            return path
        state = None
        if with_state:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "loop": asdict(self.state),
                "rng": ckpt.rng_state(),  # ranks share seeds and RNG use: rank 0's serves all
                "config": self.cfg.to_dict(),
                "world": self.dist.world,
            }
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
        meta = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "reason": reason,
            "best_step": self.state.best_step,
            "best_metrics": self.state.best_metrics,
            **self.meta,
        }
        return ckpt.write_checkpoint(self.run_dir, name, self.adapt.save, meta, state)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        """Train until total_steps (or early stop). Returns the final loop state."""
        from tqdm.auto import tqdm

        s, t = self.state, self.cfg.train
        bar = tqdm(
            total=self.total_steps,
            initial=s.step,
            desc="fine-tuning",
            disable=not (t.progress and self.dist.is_main),
        )
        stop = False
        t_start = time.perf_counter() - s.train_seconds
        if s.step == 0 and self.cfg.eval.at_start:
            metrics = self.evaluate()
            s.initial_metrics = {k: float(v) for k, v in metrics.items()}
            stop = self._after_eval(metrics)
        while s.step < self.total_steps and not stop:
            for step_in_epoch, group in self._micro_batches(s.epoch, s.step_in_epoch):
                loss = self._train_step(group)
                s.step += 1
                s.step_in_epoch = step_in_epoch + 1
                s.train_seconds = time.perf_counter() - t_start
                bar.update(1)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.4f}")
                if s.step % t.log_every == 0 or s.step == 1:
                    self.runlog.event(
                        "train",
                        s.step,
                        epoch=s.epoch,
                        loss=loss if loss is not None else float("nan"),
                        lr=self.optimizer.param_groups[0]["lr"],
                        skipped_batches=s.skipped_batches,
                        skipped_draws=s.skipped_draws,
                        **(self.robust.last if self.robust is not None else {}),
                    )
                if (
                    s.step_in_epoch == self.steps_per_epoch
                ):  # epoch done: next position is a new epoch
                    s.epoch, s.step_in_epoch = s.epoch + 1, 0
                    if not self.cfg.eval.every_steps and s.epoch % self.cfg.eval.every_epochs == 0:
                        stop = self._after_eval(self.evaluate())
                if self.cfg.eval.every_steps and s.step % self.cfg.eval.every_steps == 0:
                    stop = self._after_eval(self.evaluate())
                if (
                    t.checkpoint_every
                    and s.step % t.checkpoint_every == 0
                    and s.last_eval_step != s.step
                ):
                    self._save("last", with_state=True, reason="periodic")
                if stop or s.step >= self.total_steps:
                    break
        bar.close()
        if s.last_eval_step != s.step:
            self._after_eval(self.evaluate())
        if stop:
            log.info(
                "early stopping at step %d: no improvement of %s for %d evaluations",
                s.step,
                self.cfg.eval.metric,
                s.bad_evals,
            )
        return s


def _gather_padded(x: torch.Tensor, sizes: list[int], dist: DistInfo) -> torch.Tensor:
    """All-gather [b_r, D] slices of different sizes (with gradients): pad, gather, unpad."""
    if not dist.enabled:
        return x
    m = max(sizes)
    padded = torch.cat([x, x.new_zeros(m - len(x), *x.shape[1:])]) if len(x) < m else x
    full = gather_features(padded, dist)
    return torch.cat([full[r * m : r * m + n] for r, n in enumerate(sizes)])


def _grad_norm(params, clip: float) -> float:
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(
        torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params]))
    )


def _precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _memory_format(adapt: Adaptation, cfg: FinetuneConfig) -> torch.memory_format:
    if cfg.backbone.channels_last and adapt.bb.image_arch == "cnn":
        return torch.channels_last
    return torch.contiguous_format
