"""Framing-robust fine-tuning (`robustness` config section): the remedy for what the audit finds.

For the training images of a micro-batch with a known class (single-label) or finding labels
(multi-label), each step draws from the prompt set one neutral template and one name per class,
K invariant framings and one negated framing from the pool (`domainclip.finetune.framings`), and
encodes all of them in ONE text batch (C classes x (1 + K + 1) prompts, with gradients through
whatever trains the text side). Then, with p the target probability (softmax over the class
prompts, or per finding the binary probability of positive vs the neutral negative prompt):

    consistency = mean_k  (p_k - sg(p_neutral))^2        divergence: squared (default)
                  or KL(sg(q_neutral) || q_k)            divergence: kl (whole class distribution)
    negation    = mean  relu(p_negated - sg(p_neutral) + margin)   (sg: no gradient; 0 if margin 0)

With `space: logit` the consistency term compares log-odds instead: for single-label sets the
target's z_y - logsumexp(z_others) (`target_log_odds`), for multi-label the finding's positive
minus negative logit. A probability near 1 has almost no gradient (most training images of a
fitted run), although its log-odds still drop by nats under a new wording; the log-odds keep that
gradient. `start`/`ramp` delay and ramp the weight (shares of the run's steps; `factor`).

The terms train the text side only (image features and logit scale are detached).
(`anchored: false` lets the consistency gradient reach the neutral side too. Anchored is the
default: on the synthetic benchmark the symmetric form dragged the neutral classification towards
the framed prompts, test accuracy 1.000 -> 0.861.)
    loss       += weight * (consistency + negation)

`balance: gradnorm` (`GradBalance`) takes the terms' gradient apart from the main loss's and
scales it to at most `max_ratio` x the main gradient's norm on the parameters both reach, before
`optim.grad_clip`: with `none` the terms' gradient (5-10x the main one on the benchmark) dominated
the clipped sum and the contrastive step shrank.

Control classes (`robustness.controls`, e.g. clean) keep their neutral text under every framing
and still compete in every softmax, as in the audit; the negation term skips images whose target
is a control (the negated wording does not change its text). The negation term is also what keeps
the degenerate fix away: a text tower that ignored wording would satisfy consistency but not it.

The trainer calls `FramingObjective.of(cfg, classes, prompts)` once and, per micro-batch,
`objective.loss(img, labels, scale, encode, step, tiled)`; `augment(texts, step)` rewords
paired texts when `augment_reports` is on. Head-only methods are refused in `FinetuneConfig.resolve`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from domainclip.errors import ConfigError
from domainclip.finetune.config import FinetuneConfig
from domainclip.finetune.framings import FramingPool, PoolFraming, check_pool, load_pool
from domainclip.scoring.prompts import PromptSet
from domainclip.scoring.tiles import aggregate_tiles
from domainclip.templates import Slot, Template, humanise

_PLAIN = Template.parse("{label}", (Slot("label"),), source="<robustness>", where="neutral")
AUGMENT_FRACTION = 0.5  # share of paired texts reworded per step with augment_reports


def consistency_term(
    neutral: torch.Tensor, framed: torch.Tensor, divergence: str = "squared"
) -> torch.Tensor:
    """Deviation of framed probabilities from the neutral ones.

    Args:
        neutral: [n] target probabilities under the neutral prompts (squared), or [n, C] class
            distributions (kl; binary multi-label cells are [n, 2]).
        framed: [K, n] (squared) or [K, n, C] (kl) under K framings.
    Returns:
        Scalar: mean over framings and rows (0 when n = 0).
    """
    if neutral.shape[0] == 0:
        return framed.sum() * 0.0
    if divergence == "squared":
        return ((framed - neutral.unsqueeze(0)) ** 2).mean()
    p = neutral.clamp_min(1e-8).unsqueeze(0)
    q = framed.clamp_min(1e-8)
    return (p * (p.log() - q.log())).sum(-1).mean()


def target_log_odds(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_y - log(1 - p_y) of the softmax over the classes: z_y - logsumexp of the others.

    Args:
        logits: [n, C] class logits. y: [n] target indices.
    Returns:
        [n] log-odds (finite even where p_y rounds to 1, unlike the probability's gradient).
    """
    others = logits.scatter(1, y[:, None], float("-inf"))
    return logits.gather(1, y[:, None])[:, 0] - torch.logsumexp(others, dim=1)


def negation_term(neutral: torch.Tensor, negated: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge relu(p_negated - p_neutral + margin), mean over rows; p_neutral carries no gradient,
    so the term lowers the negated probability rather than raising the neutral one.

    Args:
        neutral, negated: [n] target probabilities (or log-odds). margin: in the same units.
    """
    if neutral.shape[0] == 0 or margin <= 0:
        return negated.sum() * 0.0
    return F.relu(negated - neutral.detach() + margin).mean()


def balance_factor(main_norm: float, robust_norm: float, max_ratio: float) -> float:
    """The factor applied to the terms' gradient under `balance: gradnorm`: min(1, max_ratio x
    main_norm / robust_norm), so the scaled gradient's norm is at most max_ratio x the main one
    (and unchanged when already below). A zero terms' gradient keeps factor 1.
    """
    if robust_norm <= 0.0:
        return 1.0
    return min(1.0, max_ratio * main_norm / robust_norm)


@dataclass
class GradBalance:
    """`balance: gradnorm`: the terms' gradient kept apart from `.grad`, then scaled and added.

    Per micro-batch `accumulate(robust_loss, params)` takes the terms' gradient with
    `torch.autograd.grad` (their graph is separate from the main loss's: image features and scale
    are detached, the prompts encoded on their own), while the main loss goes through the usual
    backward. Before clipping, `apply(params)` measures both norms on the parameters the terms
    reach (the text side), scales the terms' gradient by `balance_factor` and adds it to `.grad`.
    The optimizer step then sees main + s * robust, and `optim.grad_clip` clips that sum.
    """

    max_ratio: float
    grads: dict[int, torch.Tensor] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def accumulate(self, robust: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        """Add d robust / d params (params: the trainable tensors, [any] each) to the buffer."""
        if not robust.requires_grad:  # warm-up: the terms are a constant 0
            return
        for i, g in enumerate(torch.autograd.grad(robust, list(params), allow_unused=True)):
            if g is not None:
                self.grads[i] = g if i not in self.grads else self.grads[i] + g

    def apply(self, params: Sequence[torch.Tensor]) -> dict[str, float]:
        """Scale the buffered gradient and add it to the params' `.grad`; clear the buffer.

        Returns:
            {"robust_grad_ratio": robust norm / main norm before scaling, "robust_grad_scale": s}
            ({} when the terms produced no gradient this step).
        """
        if not self.grads:
            self.last = {}
            return self.last
        params = list(params)
        idx = sorted(self.grads)
        robust = _norm([self.grads[i] for i in idx])
        main = _norm([params[i].grad for i in idx if params[i].grad is not None])
        s = balance_factor(main, robust, self.max_ratio)
        for i in idx:
            g = self.grads[i].to(params[i].dtype) * s
            params[i].grad = g if params[i].grad is None else params[i].grad.add_(g)
        self.grads.clear()
        ratio = robust / main if main > 0 else float("inf")
        self.last = {"robust_grad_ratio": ratio, "robust_grad_scale": s}
        return self.last


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    """L2 norm of a list of tensors taken as one vector (0 for none)."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().float().norm() for t in tensors])))


@dataclass
class PromptDraw:
    """The texts of one step: neutral [C], framed [K][C], negated [C] | None, and for multi-label
    sets the neutral negative prompt per finding `negatives` [C] | None."""

    neutral: list[str]
    framed: list[list[str]]
    negated: list[str] | None
    negatives: list[str] | None = None

    def texts(self) -> list[str]:
        """Every text once, in a stable order (one encoder batch)."""
        groups = [self.neutral, *self.framed, self.negated or [], self.negatives or []]
        return list(dict.fromkeys(t for g in groups for t in g))


@dataclass
class FramingObjective:
    """The framing-consistency and negation terms for one run (see the module docstring)."""

    pool: FramingPool
    classes: list[str]
    names: list[tuple[str, ...]]
    templates: tuple[Template, ...]
    negative_templates: tuple[Template, ...]
    controls: frozenset[str]
    k: int
    weight: float
    divergence: str
    margin: float
    seed: int
    anchored: bool = True
    augment_reports: bool = False
    space: str = "probability"
    start: float = 0.0
    ramp: float = 0.0
    total_steps: int = 0
    balance: str = "none"
    max_ratio: float = 1.0
    settle: float = 0.0
    last: dict[str, float] = field(default_factory=dict)

    @property
    def multi_label(self) -> bool:
        return bool(self.negative_templates)

    @classmethod
    def of(
        cls, cfg: FinetuneConfig, classes: Sequence[str], prompts: PromptSet | None,
        total_steps: int = 0,
    ) -> FramingObjective | None:
        """The objective of a config (None when `robustness.enabled` is off). `total_steps`: the
        run's optimizer steps (what `robustness.start` and `ramp` are shares of).

        Raises:
            ConfigError: unknown pool, a pool template equal to an audit template, a control
                class that is not a class of the data.
        """
        r = cfg.robustness
        if not r.enabled:
            return None
        pool = load_pool(r.pool)
        check_pool(pool, r.held_out)
        classes = list(classes)
        unknown = sorted(set(r.controls) - set(classes))
        if unknown:
            raise ConfigError(
                f"robustness.controls: {', '.join(map(repr, unknown))} not among the classes "
                f"({', '.join(classes)})"
            )
        multi = prompts is not None and prompts.multi_label
        if multi:
            classes = [c for c in classes if c not in prompts.negative_labels and prompts.covers(c)]
        names = [_names(prompts, c) for c in classes]
        return cls(
            pool=pool, classes=classes, names=names,
            templates=prompts.templates if prompts is not None else (_PLAIN,),
            negative_templates=prompts.negative_templates if multi else (),
            controls=frozenset(() if multi else r.controls), k=r.k, weight=r.weight,
            divergence=r.divergence, margin=r.negation_margin, seed=cfg.train.seed,
            anchored=r.anchored, augment_reports=r.augment_reports, space=r.space,
            start=r.start, ramp=r.ramp, total_steps=total_steps, balance=r.balance,
            max_ratio=r.max_ratio, settle=r.settle,
        )

    # ------------------------------------------------------------------ drawing texts
    def _generator(self, step: int, salt: int) -> torch.Generator:
        """Seeded by (seed, step): every process and a resumed run draw alike."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step * 7919 + salt)

    def draw(self, step: int) -> PromptDraw:
        """The step's neutral, K framed and negated class prompts (see `PromptDraw`)."""
        g = self._generator(step, 1)

        def pick(seq: Sequence) -> Any:
            return seq[int(torch.randint(len(seq), (1,), generator=g))]

        names = [pick(n) for n in self.names]
        template = pick(self.templates)
        neutral = [template.fill(label=n) for n in names]
        inv = self.pool.invariant
        chosen = torch.randperm(len(inv), generator=g)[: self.k].tolist()
        chosen += [pick(range(len(inv))) for _ in range(self.k - len(chosen))]  # k > pool size
        framed = [self._framed(inv[i], names, neutral, template) for i in chosen]
        negated = (
            self._framed(pick(self.pool.negated), names, neutral, template)
            if self.pool.negated else None
        )
        negatives = None
        if self.multi_label:
            neg_t = pick(self.negative_templates)
            negatives = [neg_t.fill(label=n) for n in names]
        return PromptDraw(neutral, framed, negated, negatives)

    def all_texts(self) -> list[str]:
        """Every class prompt a draw can produce (neutral, framed, negated, negatives): what a
        run with a cached lower text tower computes once before training."""
        out: list[str] = []
        for names in self.names:
            for n in names:
                out += [t.fill(label=n) for t in (*self.templates, *self.negative_templates)]
                out += [self._fill(f, n, t) for f in self.pool.framings for t in self.templates]
        return list(dict.fromkeys(out))

    def _fill(self, framing: PoolFraming, name: str, template: Template) -> str:
        """A framed prompt: the pool's sentence, or (`fill: prompt`) its phrase inside the prompt
        set's template."""
        text = framing.fill(name)
        return template.fill(label=text) if self.pool.fill == "prompt" else text

    def _framed(
        self, framing: PoolFraming, names: list[str], neutral: list[str], template: Template
    ) -> list[str]:
        return [
            neutral[i] if c in self.controls else self._fill(framing, names[i], template)
            for i, c in enumerate(self.classes)
        ]

    def augment(self, texts: list[str], step: int) -> list[str]:
        """With augment_reports: about half of the paired texts reworded by an invariant framing
        (the text fills the template's {finding}); else `texts` unchanged."""
        if not self.augment_reports:
            return texts
        g = self._generator(step, 2)
        inv = self.pool.invariant
        out = []
        for t in texts:
            if float(torch.rand((), generator=g)) < AUGMENT_FRACTION:
                t = inv[int(torch.randint(len(inv), (1,), generator=g))].fill(t)
            out.append(t)
        return out

    # ------------------------------------------------------------------ the loss
    def factor(self, step: int) -> float:
        """The share of `weight` applied at `step`: 0 before `start` x total_steps, then rising
        linearly to 1 over `ramp` x total_steps (1 throughout when both are 0 or the run's
        length is unknown)."""
        if self.total_steps <= 0:
            return 1.0
        begin, width = self.start * self.total_steps, self.ramp * self.total_steps
        if step < begin:
            return 0.0
        return 1.0 if width <= 0 else min(1.0, (step - begin + 1) / width)

    def full_from(self) -> int:
        """The number of completed optimizer steps from which a checkpoint may become best:
        the first step with the terms at full weight, plus `settle` x the run's steps (at least
        one step). Checkpoint selection (best on val, early stopping) ignores validations before
        it. Without the rule a run whose val metric peaks early keeps a checkpoint the terms never
        touched (covid-cxr: best at step 24 of 200 with start 0.25, identical to the plain
        recipe); with only the first full step as the bar, a NEU-DET run whose val accuracy tied
        from step 78 on kept step 78, 3 steps into the terms, and audited like plain. Capped at
        the run's length: otherwise the last checkpoint is the one chosen."""
        if self.total_steps <= 0:
            return 0
        step = math.ceil(self.start * self.total_steps)
        while step < self.total_steps and self.factor(step) < 1.0:
            step += 1
        settle = max(1, math.ceil(self.settle * self.total_steps))
        return min(step + settle, self.total_steps)

    def loss(
        self,
        img: torch.Tensor,
        labels: Sequence[Sequence[str]],
        scale: torch.Tensor,
        encode: Callable[[list[str]], torch.Tensor],
        step: int,
        tiled: Any = None,
    ) -> torch.Tensor:
        """weight * (consistency + negation) for one micro-batch.

        Args:
            img: [B, D] L2-normalised image features (tiled: [sum T, D], `tiled.counts`/`rule`).
            labels: per image its labels (rows without a usable one are ignored).
            scale: exp(logit_scale), clamped. encode: texts -> [n, D] features with gradients.
            step: optimizer step (seeds the draw). tiled: a `finetune.tiles.TiledLoss` or None.
        """
        # Text side only: the image features and the temperature get no gradient from these terms.
        # Through them the cheapest way to shrink a probability shift is to flatten every
        # probability (a lower logit scale) or to move images towards the control prompt, which
        # cost classification in the benchmark; wording invariance belongs to the text encoder.
        img, scale = img.detach(), scale.detach()
        factor = self.factor(step)
        if factor == 0.0:  # warm-up: the main loss alone, nothing encoded
            self.last = {"robust_consistency": 0.0, "robust_negation": 0.0}
            return img.sum() * 0.0
        draw = self.draw(step)
        texts = draw.texts()
        feats = F.normalize(encode(texts).float(), dim=-1)
        where = {t: i for i, t in enumerate(texts)}

        def logits(group: list[str]) -> torch.Tensor:  # [B, C]
            s = scale * img @ feats[[where[t] for t in group]].T
            return aggregate_tiles(s, tiled.counts, tiled.rule) if tiled is not None else s

        groups = [draw.neutral, *draw.framed] + ([draw.negated] if draw.negated else [])
        if self.multi_label:
            neg = logits(draw.negatives)
            terms = self._multi_label([logits(g) - neg for g in groups], labels, draw.negated is not None)
        else:
            terms = self._single_label([logits(g) for g in groups], labels, draw.negated is not None)
        self.last = {f"robust_{k}": float(v.detach()) for k, v in terms.items()}
        return factor * self.weight * (terms["consistency"] + terms["negation"])

    def _single_label(
        self, logits: list[torch.Tensor], labels: Sequence[Sequence[str]], has_negated: bool
    ) -> dict[str, torch.Tensor]:
        """Terms on the softmax over the class prompts (logits: neutral, K framed, [negated])."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        y = torch.tensor(
            [lookup.get(lab[0], -1) if lab else -1 for lab in labels], device=logits[0].device
        )
        keep = y >= 0
        probs = [torch.softmax(z[keep], dim=-1) for z in logits]
        if self.anchored:
            probs[0] = probs[0].detach()
        yk = y[keep]
        target = [p.gather(1, yk[:, None])[:, 0] for p in probs]
        framed = probs[1 : 1 + self.k]
        if self.space == "logit":  # both terms on the target's log-odds
            target = [target_log_odds(z[keep], yk) for z in logits]
            if self.anchored:
                target[0] = target[0].detach()
            cons = consistency_term(target[0], torch.stack(target[1 : 1 + self.k]))
        elif self.divergence == "kl":
            cons = consistency_term(probs[0], torch.stack(framed), "kl")
        else:
            cons = consistency_term(target[0], torch.stack(target[1 : 1 + self.k]))
        neg = target[0].sum() * 0.0
        if has_negated:
            framed_target = torch.tensor(
                [self.classes[i] not in self.controls for i in yk.tolist()],
                dtype=torch.bool, device=yk.device,
            )
            neg = negation_term(target[0][framed_target], target[-1][framed_target], self.margin)
        return {"consistency": cons, "negation": neg}

    def _multi_label(
        self, logits: list[torch.Tensor], labels: Sequence[Sequence[str]], has_negated: bool
    ) -> dict[str, torch.Tensor]:
        """Terms on each finding's binary probability (logits: positive minus neutral negative).
        Consistency over every finding of a labelled image; negation over its present findings."""
        labelled = torch.tensor([bool(lab) for lab in labels], device=logits[0].device)
        present = torch.tensor(
            [[c in lab for c in self.classes] for lab in labels], device=logits[0].device
        )[labelled]
        p = [torch.sigmoid(z[labelled]) for z in logits]
        if self.anchored:
            p[0] = p[0].detach()
        if self.space == "logit":  # both terms on the finding's positive-vs-negative logit
            p = [x[labelled] for x in logits]
            if self.anchored:
                p[0] = p[0].detach()
            cons = consistency_term(p[0].reshape(-1), torch.stack([q.reshape(-1) for q in p[1 : 1 + self.k]]))
        elif self.divergence == "kl":
            two = [torch.stack([q, 1 - q], -1).reshape(-1, 2) for q in p]
            cons = consistency_term(two[0], torch.stack(two[1 : 1 + self.k]), "kl")
        else:
            cons = consistency_term(p[0].reshape(-1), torch.stack([q.reshape(-1) for q in p[1 : 1 + self.k]]))
        neg = p[0].sum() * 0.0
        if has_negated:
            neg = negation_term(p[0][present], p[-1][present], self.margin)
        return {"consistency": cons, "negation": neg}

    def describe(self) -> dict[str, Any]:
        """What result.json records under info.robustness."""
        return {
            "pool": self.pool.describe(), "k": self.k, "weight": self.weight,
            "divergence": self.divergence, "negation_margin": self.margin, "anchored": self.anchored,
            "controls": sorted(self.controls), "augment_reports": self.augment_reports,
            "space": self.space, "start": self.start, "ramp": self.ramp,
            "balance": self.balance, "max_ratio": self.max_ratio, "settle": self.settle,
            "classes": list(self.classes), "texts_per_step": len(self.draw(0).texts()),
            "select_from_step": self.full_from(),
        }


def _names(prompts: PromptSet | None, c: str) -> tuple[str, ...]:
    """A class's names: the prompt set's synonyms, else the class name as words."""
    if prompts is not None and c in prompts.classes and prompts.classes[c].names:
        return tuple(prompts.classes[c].names)
    return (humanise(c),)
