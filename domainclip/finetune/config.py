"""Typed fine-tuning configuration (peft-style dataclasses with help text) and its YAML loader.

Every field carries help text and, where it applies, the allowed `choices` or numeric `range`
(`domainclip.configschema`); `load_config` checks them all generically, so an error always names
the file, the full key path and what is allowed. Cross-field rules (which tower modes a method
accepts, ...) live in `FinetuneConfig.resolve`, which also fills method-dependent defaults so that
the resolved config.yaml written into a run says exactly what ran.

Per-method sections: each method with settings has its own dataclass (`METHOD_SETTINGS`), selected
by `method.name`; the resolved config records only the chosen method's section, e.g.
``method: {name: lora, image_tower: locked, text_tower: lora, ..., lora: {r: 8, ...}}``. A
section given for another method is checked but neither used nor recorded (a note is logged). Runs
written before this recorded every method's section: their config.yaml loads the same way, and
`migrate_config_dict` drops the unused sections before a resume compares configs. Runs written
before fit policies record no `data.fit`: they trained with "crop", which the migration fills in;
runs written before `method.lora.text_layers` had LoRA on every text layer (filled in as 0).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from domainclip.configschema import (
    apply_overrides,
    build,
    describe,
    flatten,
    leaf_keys,
    option,
    section,
)
from domainclip.datasets.tiling import TILE_AGGREGATES, TileSettings
from domainclip.datasets.transforms import CONFIG_POLICIES
from domainclip.errors import ConfigError

log = logging.getLogger(__name__)

TOWER_MODES = ("locked", "lora", "full")
# method.text_tower auto (method lora): locked above this median length of the distinct training
# texts in word pieces (finetune.texttop.choose_text_tower), else lora
TEXT_AUTO_TOKENS = 48
# Keys that may change between a killed run and its resume: they do not affect the weights.
RESUME_SAFE_KEYS = frozenset(
    {
        "data.num_workers",
        "train.progress",
        "backbone.device",
        "train.log_every",
        "train.feature_cache_dir",
    }
)


@dataclass
class BackboneConfig:
    """Which pretrained model to adapt and where it runs."""

    spec: str = option(
        "default", "backbone spec: default | open_clip:ARCH@WEIGHTS | hf-clip:DIR | saved DIR"
    )
    device: str = option("auto", "auto (cuda if available, else cpu) | cpu | cuda | cuda:N")
    precision: str = option(
        "auto",
        "auto: bf16 autocast on CUDA when supported, fp32 on CPU; or force fp32 | bf16 | fp16",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: bool = option(
        True, "channels_last memory format for a trained CNN image tower (faster on CPU and GPU)"
    )


@dataclass
class TileConfig:
    """Tiling (data.fit: tile): overlapping tiles at native resolution for large images."""

    size: int | None = option(
        None,
        "tile side in ORIGINAL pixels; empty = the model input size (native resolution: a 20 px "
        "defect stays 20 px)",
        range=(16, 8192, "[]"),
    )
    overlap: float = option(
        0.25, "fraction of a tile shared with its neighbour (a finding on a seam is whole in one)",
        range=(0, 0.9, "[]"),
    )
    aggregate: str = option(
        "lse",
        "how tile logits become the image's (zero-shot and in training, multiple-instance): lse "
        "(log-mean-exp, a smooth max: 'is the finding in some tile?'), max, mean",
        choices=TILE_AGGREGATES,
    )

    def settings(self) -> TileSettings:
        """As the datasets layer's `TileSettings`."""
        return TileSettings(self.size, self.overlap, self.aggregate)


@dataclass
class DataConfig:
    """Paired data: the manifest and how to read it."""

    manifest: str = option(
        "", "manifest CSV/JSONL (relative paths are relative to the current directory)"
    )
    train_split: str = option("train", "split used for training")
    val_split: str = option("val", "split used for per-epoch validation and early stopping")
    classes: list[str] = option(
        None, "class vocabulary; empty = every label found in the manifest", factory=list
    )
    augment: str = option(
        "none",
        "augmentation preset for training images when the image tower is trained (no feature "
        "cache); 'none' keeps position-bearing texts true",
        choices=("industrial", "cxr", "none"),
    )
    max_train: int = option(
        0, "use at most this many training rows (seeded choice); 0 = all", range=(0, None, "[]")
    )
    max_val: int = option(
        0, "use at most this many validation rows; 0 = all", range=(0, None, "[]")
    )
    num_workers: int = option(
        0, "DataLoader worker processes for image decoding", range=(0, 64, "[]")
    )
    allow_group_leakage: bool = option(
        False,
        "train although a group (patient, study, lot) or image is in more than one split; "
        "off: such a manifest is refused, because its test metrics would be inflated",
    )
    fit: str = option(
        "auto",
        "how an image becomes the square model input: auto (tile when a quarter of the training "
        "split's annotated findings would be under 8 px at a letterboxed input, else letterbox; "
        "the choice and why are recorded in the run), letterbox (resize the longer side, pad "
        "with the mean colour: never discards pixels), crop (resize the shorter side, centre "
        "crop: cuts the ends of non-square images), stretch (resize both sides: distorts); "
        "the same for square images; tile: overlapping tiles at native resolution (data.tile), "
        "for images much larger than the input with small findings",
        choices=CONFIG_POLICIES,
    )
    image_size: int | None = option(
        None,
        "side of the model input in px; empty = the backbone's native size. CNN towers are "
        "fully convolutional (e.g. 448 or 640 for small findings); ViT towers interpolate their "
        "position embeddings",
        range=(16, 4096, "[]"),
    )
    tile: TileConfig | None = section(TileConfig, optional=True)

    def tile_settings(self) -> TileSettings | None:
        """The tile settings when fit is tile (defaults when data.tile is not given), else None."""
        if self.fit != "tile":
            return None
        return (self.tile or TileConfig()).settings()


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (HF peft) for the towers whose mode is 'lora'."""

    r: int = option(8, "rank of the low-rank update", range=(1, 1024, "[]"))
    alpha: float = option(
        16.0, "scaling numerator: the update is scaled by alpha / r", range=(0, None, "()")
    )
    dropout: float = option(0.0, "dropout on the LoRA input", range=(0, 1, "[)"))
    image_targets: str = option(
        "", "regex of image-tower modules to adapt (relative to the tower); empty = family preset"
    )
    text_targets: str = option(
        "", "regex of text-tower modules to adapt (relative to the tower); empty = family preset"
    )
    text_layers: int = option(
        2,
        "adapt only the top N layers of the text tower (0 = every layer). The frozen layers "
        "below are then run once per distinct text and their outputs cached (on disk under "
        "train.feature_cache_dir), so a step runs only the top N layers; its cost still grows "
        "with report length. Fewer layers = faster, less text adaptation. No text layer at all "
        "(projection only, cost independent of length): method.text_tower=locked",
        range=(0, 1024, "[]"),
    )


@dataclass
class ClipAdapterSettings:
    """CLIP-Adapter: residual bottleneck MLP on the projected features."""

    reduction: int = option(4, "bottleneck width = feature dim / reduction", range=(1, 256, "[]"))
    ratio: float = option(
        0.2, "mixing: out = ratio * adapter(f) + (1 - ratio) * f", range=(0, 1, "[]")
    )
    image: bool = option(True, "adapter on image features")
    text: bool = option(False, "adapter on text features")


@dataclass
class TipAdapterSettings:
    """Tip-Adapter: a cache of training features as a key-value classifier."""

    train_keys: bool = option(
        True, "Tip-Adapter-F: fine-tune the cache keys (False: training-free)"
    )
    alpha: list[float] = option(
        None,
        "cache weights tried on the val split (best val accuracy, ties broken by val loss); the "
        "zero-shot logits they are added to are exp(logit_scale) * cosine",
        factory=lambda: [0.5, 1.0, 2.0, 5.0, 10.0, 20.0],
    )
    beta: list[float] = option(
        None, "cache sharpness values tried on the val split", factory=lambda: [1.0, 3.0, 5.5, 8.0]
    )
    shots: int = option(
        0, "cache at most this many training images per class; 0 = all", range=(0, None, "[]")
    )
    epochs: int = option(
        20, "Tip-Adapter-F epochs over the cached features", range=(1, 10000, "[]")
    )
    lr: float = option(1e-3, "Tip-Adapter-F learning rate (AdamW)", range=(0, 1, "(]"))


@dataclass
class LinearProbeSettings:
    """Linear probe: scikit-learn logistic regression on frozen image features."""

    C: list[float] = option(
        None,
        "inverse regularisation strengths tried on the val split (best val accuracy, ties "
        "broken by val log-loss)",
        factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0],
    )
    max_iter: int = option(2000, "solver iterations", range=(10, 100000, "[]"))


# One settings dataclass per method that has settings, selected by `method.name` (peft style);
# "full" has none: it is tower mode "full" on both towers. Read-only: not a registry to add to.
METHOD_SETTINGS: Mapping[str, type | None] = MappingProxyType(
    {
        "lora": LoraSettings,
        "full": None,
        "clip_adapter": ClipAdapterSettings,
        "tip_adapter": TipAdapterSettings,
        "linear_probe": LinearProbeSettings,
    }
)
METHODS = tuple(METHOD_SETTINGS)


@dataclass
class MethodConfig:
    """What is trained: the method, each tower's mode, and the chosen method's settings.

    Only the section named by `name` is used and recorded (`to_dict`); it is filled with its
    defaults when not given. A section of another method (e.g. `--set method.tip_adapter.alpha=2`
    with name lora) is still checked, but is neither used nor written to the run's config.yaml.
    """

    name: str = option("lora", "adaptation method", choices=METHODS)
    image_tower: str = option(
        "",
        "locked | lora | full; empty = the method's default (lora: locked, full: full, others: locked)",
        choices=("",) + TOWER_MODES,
    )
    text_tower: str = option(
        "",
        "locked | lora | full; empty = the method's default (lora: lora, full: full, others: locked). "
        "locked: the tower's pooled output is cached per distinct text (on disk under "
        "train.feature_cache_dir) and only the text projection trains (ProLIP-style; with "
        "loss.anchor_weight as the pull toward its start), so a step costs the same for long "
        "reports and short descriptions. auto (method lora): locked when the distinct training "
        f"texts' median length exceeds {TEXT_AUTO_TOKENS} word pieces (long reports), else lora; "
        "chosen when the run starts, logged with the reason and recorded in config.yaml",
        choices=("",) + TOWER_MODES + ("auto",),
    )
    train_projections: bool = option(True, "train the image/text projections into the shared space")
    train_logit_scale: bool = option(True, "learn the temperature (logit scale)")
    lora: LoraSettings | None = section(LoraSettings, optional=True)
    clip_adapter: ClipAdapterSettings | None = section(ClipAdapterSettings, optional=True)
    tip_adapter: TipAdapterSettings | None = section(TipAdapterSettings, optional=True)
    linear_probe: LinearProbeSettings | None = section(LinearProbeSettings, optional=True)

    def __post_init__(self) -> None:
        self.fill_settings()

    def fill_settings(self) -> None:
        """Give the chosen method its default settings section when none was given."""
        cls = METHOD_SETTINGS.get(self.name)
        if cls is not None and getattr(self, self.name) is None:
            setattr(self, self.name, cls())

    @property
    def settings(self) -> Any:
        """The chosen method's settings dataclass (None for `full`, which has none)."""
        return getattr(self, self.name) if METHOD_SETTINGS.get(self.name) else None

    def other_sections(self) -> list[str]:
        """Names of settings sections given for methods other than the chosen one."""
        return [
            n
            for n, cls in METHOD_SETTINGS.items()
            if cls is not None and n != self.name and getattr(self, n) is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        """The common fields plus the chosen method's section only (what config.yaml records)."""
        out = {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in METHOD_SETTINGS
        }
        if self.settings is not None:
            out[self.name] = dataclasses.asdict(self.settings)
        return out


@dataclass
class LossConfig:
    """Contrastive loss (and optional supervised term)."""

    positives: str = option(
        "text",
        "which pairs count as positives: 'text' = identical texts (multi-positive), 'label' = "
        "identical label sets too, 'pair' = only the own pair (plain symmetric InfoNCE)",
        choices=("text", "label", "pair"),
    )
    supervised_weight: float = option(
        0.0,
        "weight of a cross-entropy over class-prompt embeddings (one prompt per class drawn per "
        "step from eval.prompts, or the class names); rows without a label are ignored",
        range=(0, None, "[]"),
    )
    anchor_weight: float = option(
        0.0,
        "ProLIP-style pull of the trained projections toward their initial weights: adds "
        "weight x sum of squared differences (0 = off)",
        range=(0, None, "[]"),
    )
    max_logit_scale: float = option(100.0, "clamp of exp(logit_scale)", range=(1, 1000, "[]"))


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = option(1e-3, "peak learning rate", range=(0, 1, "(]"))
    weight_decay: float = option(
        0.01, "AdamW weight decay (not on biases, norms, logit scale)", range=(0, 1, "[]")
    )
    betas: list[float] = option(None, "AdamW betas", factory=lambda: [0.9, 0.98])
    eps: float = option(1e-6, "AdamW epsilon", range=(0, 1, "()"))
    warmup_steps: int = option(10, "linear warmup steps", range=(0, None, "[]"))
    min_lr_ratio: float = option(0.0, "final learning rate as a fraction of lr", range=(0, 1, "[]"))
    schedule: str = option(
        "cosine", "learning-rate schedule after warmup", choices=("cosine", "constant")
    )
    grad_clip: float = option(
        1.0, "clip the global gradient norm to this; 0 = off", range=(0, None, "[]")
    )
    accumulate: int = option(
        1,
        "gradient accumulation micro-batches per step (each its own contrastive batch)",
        range=(1, 1024, "[]"),
    )


@dataclass
class TrainConfig:
    """Loop length, batching, reproducibility and checkpoints."""

    seed: int = option(
        0, "seed of weights init, data order and augmentation", range=(0, 2**31 - 1, "[]")
    )
    deterministic: bool = option(True, "deterministic algorithms (bit-exact resume)")
    batch_size: int = option(
        32, "pairs per micro-batch (global batch across processes)", range=(2, 65536, "[]")
    )
    max_steps: int = option(300, "optimizer steps; 0 = use epochs", range=(0, None, "[]"))
    epochs: int = option(0, "epochs when max_steps is 0", range=(0, None, "[]"))
    cache_features: str = option(
        "auto",
        "reuse frozen-tower features computed once: auto (whenever a tower is locked) | always | never",
        choices=("auto", "always", "never"),
    )
    feature_cache_dir: str = option(
        "",
        "directory where frozen-tower features are kept across runs (keyed by weights, transform "
        "and image files); empty = recompute per run, in memory",
    )
    checkpoint_every: int = option(
        0,
        "also write checkpoints/last every N steps (0 = at each evaluation only)",
        range=(0, None, "[]"),
    )
    log_every: int = option(10, "log training loss every N steps", range=(1, None, "[]"))
    progress: bool = option(True, "show tqdm progress bars")


@dataclass
class EvalConfig:
    """Per-epoch validation and early stopping."""

    prompts: str = option(
        "",
        "prompt-set YAML for zero-shot accuracy (e.g. configs/prompts/neu_det.yaml); empty = class names",
    )
    at_start: bool = option(
        True, "also evaluate the untrained model before the first step (logged as step 0)"
    )
    every_epochs: int = option(1, "evaluate every N epochs", range=(1, None, "[]"))
    every_steps: int = option(
        0, "evaluate every N steps instead of per epoch (0 = per epoch)", range=(0, None, "[]")
    )
    metric: str = option(
        "zero_shot_acc",
        "metric that picks the best checkpoint and drives early stopping (zero_shot_acc means "
        "head_acc for methods with a classifier head)",
        choices=(
            "zero_shot_acc",
            "zero_shot_macro_f1",
            "head_acc",
            "head_macro_f1",
            "loss",
            "t2i_R@1",
            "i2t_R@1",
        ),
    )
    patience: int = option(
        0, "stop after this many evaluations without improvement; 0 = never", range=(0, None, "[]")
    )


ROBUST_METHODS = ("lora", "full", "clip_adapter")  # methods whose step loop can take the framing loss


@dataclass
class RobustnessConfig:
    """Framing-robust fine-tuning (`domainclip.finetune.robustness`): the class prompts' target
    probability must not move under wordings sampled from a framing pool, and must drop under
    negated ones. Recorded in config.yaml only when enabled."""

    enabled: bool = option(
        False,
        "add the framing-consistency and negation terms to the training loss (lora, full, "
        "clip_adapter). Off in the code's default, because the pool and the control classes are "
        "domain choices; on in the shipped NEU-DET and covid-cxr recipes, where the benchmark "
        "showed held-out framing shifts reduced without losing accuracy or retrieval (README "
        "'Framing-robust fine-tuning')",
    )
    pool: str = option(
        "generic",
        "training framing pool: a shipped pool (generic | industrial | medical, "
        "configs/framings/<name>.yaml) or the path of a pool YAML; disjoint from every shipped "
        "audit spec by construction",
    )
    k: int = option(
        1, "invariant framings sampled per step (each adds one prompt per class)", range=(1, 64, "[]")
    )
    weight: float = option(
        1.0, "lambda: weight of the consistency and negation terms", range=(0, None, "[]")
    )
    divergence: str = option(
        "squared",
        "consistency term with space: probability: squared (target probability under a framing "
        "minus under the neutral prompt, squared) or kl (KL of the framed class distribution "
        "from the neutral one); space: logit always compares log-odds, squared",
        choices=("squared", "kl"),
    )
    space: str = option(
        "logit",
        "where the consistency term compares a framing with the neutral prompt: probability (the "
        "target probability, or the class distribution with kl) or logit (the target's log-odds "
        "against the other classes; multi-label: the finding's positive-vs-negative logit), "
        "which keeps a gradient on confident images whose probability is saturated",
        choices=("probability", "logit"),
    )
    start: float = option(
        0.25,
        "share of the training steps before the terms start (the main loss converges first); "
        "no prompt is encoded for them before",
        range=(0, 1, "[)"),
    )
    ramp: float = option(
        0.0,
        "share of the training steps over which the weight then rises linearly from 0 to weight",
        range=(0, 1, "[]"),
    )
    settle: float = option(
        0.25,
        "share of the training steps the terms must have trained at full weight before a "
        "checkpoint may become the best one on val (or count towards eval.patience); the run's "
        "result.json records the step as info.robustness.select_from_step",
        range=(0, 1, "[]"),
    )
    balance: str = option(
        "none",
        "how the terms' gradient is weighed against the main loss's before optim.grad_clip: none "
        "(one backward of the sum; the terms can dominate the clipped step) or gradnorm (the "
        "terms' gradient is taken apart and scaled down to at most max_ratio x the main loss's "
        "gradient norm on the parameters both train; it recovers retrieval R@1 but passed the "
        "synthetic gate on 2 of 3 seeds, so none stays the default: docs/finetune.md "
        "'Balancing the terms against the main loss')",
        choices=("none", "gradnorm"),
    )
    max_ratio: float = option(
        1.0,
        "with balance: gradnorm, the largest allowed norm of the terms' gradient as a multiple "
        "of the main loss's gradient norm on the shared parameters",
        range=(0, None, "()"),
    )
    anchored: bool = option(
        True,
        "the neutral prompt is the anchor: the consistency term moves the framed probabilities "
        "towards it and gives the neutral one no gradient (false: both move towards each other)",
    )
    negation_margin: float = option(
        0.5,
        "a negated framing must lower the target's log-odds by at least this much, in nats "
        "(space: probability: its probability, e.g. 0.1); 0 = no negation term",
        range=(0, 1, "[]"),
    )
    controls: list[str] = option(
        None,
        "control classes whose text stays the same under every framing (absence classes such as "
        "clean or no_defect: 'urgent no visible defects' is not a sentence); they still compete "
        "in every softmax",
        factory=list,
    )
    augment_reports: bool = option(
        False,
        "also reword half of each batch's paired texts with an invariant framing of the pool "
        "(the text fills the template's {finding})",
    )
    held_out: list[str] = option(
        None,
        "audit specs (names or paths) besides the shipped ones whose templates the pool must not "
        "contain (a pool template equal to one of them is refused)",
        factory=list,
    )


@dataclass
class FinetuneConfig:
    """A complete fine-tuning run."""

    backbone: BackboneConfig = section(BackboneConfig)
    data: DataConfig = section(DataConfig)
    method: MethodConfig = section(MethodConfig)
    loss: LossConfig = section(LossConfig)
    optim: OptimConfig = section(OptimConfig)
    train: TrainConfig = section(TrainConfig)
    eval: EvalConfig = section(EvalConfig)
    robustness: RobustnessConfig = section(RobustnessConfig)

    # ------------------------------------------------------------------ derived views
    @property
    def tower_modes(self) -> tuple[str, str]:
        """(image, text) tower modes after method defaults."""
        return self.method.image_tower, self.method.text_tower

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for config.yaml): only the chosen method's settings section."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if f.name == "method" else dataclasses.asdict(value)
        if out["data"].get("tile") is None:
            out["data"].pop("tile", None)  # recorded only for fit: tile (resolve fills it in)
        if not self.robustness.enabled:
            out.pop("robustness")  # recorded only when on: plain runs' config.yaml is unchanged
        return out

    def flat(self) -> dict[str, Any]:
        """{"a.b": value} for every leaf."""
        return flatten(self.to_dict())

    def resolve(self) -> FinetuneConfig:
        """Fill method-dependent defaults and check cross-field rules. Returns self."""
        m = self.method
        m.fill_settings()
        if self.data.fit == "tile" and self.data.tile is None:
            self.data.tile = TileConfig()  # recorded in config.yaml: the run's tiles are explicit
        defaults = {"lora": ("locked", "lora"), "full": ("full", "full")}
        img_d, txt_d = defaults.get(m.name, ("locked", "locked"))
        m.image_tower = m.image_tower or img_d
        m.text_tower = m.text_tower or txt_d
        if m.text_tower == "auto" and m.name != "lora":
            raise ConfigError(
                f"method.text_tower=auto chooses between lora and locked for method.name=lora; "
                f"for {m.name} set it to locked, lora or full, or leave it empty"
            )
        if m.name == "full" and (m.image_tower, m.text_tower) != ("full", "full"):
            raise ConfigError(
                "method.name=full trains both towers: leave method.image_tower/text_tower empty or "
                "'full' (use method.name=lora with a 'full' tower for mixed recipes)"
            )
        if m.name in ("clip_adapter", "tip_adapter", "linear_probe") and self.tower_modes != (
            "locked",
            "locked",
        ):
            raise ConfigError(
                f"method.name={m.name} keeps both towers frozen: set method.image_tower and "
                f"method.text_tower to 'locked' (got {m.image_tower!r}, {m.text_tower!r})"
            )
        if m.name == "clip_adapter" and not (m.clip_adapter.image or m.clip_adapter.text):
            raise ConfigError("method.clip_adapter: enable at least one of image, text")
        if len(self.optim.betas) != 2 or not all(0 <= b < 1 for b in self.optim.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.optim.betas}")
        _check_grids(m)
        if self.robustness.enabled and m.name not in ROBUST_METHODS:
            raise ConfigError(robustness_not_applicable(m.name))
        if m.other_sections():
            log.info(
                "method.name is %r: the settings given for %s are not used and not recorded "
                "(runs before per-method sections recorded every method's settings)",
                m.name,
                ", ".join(f"method.{n}" for n in m.other_sections()),
            )
        if self.train.max_steps == 0 and self.train.epochs == 0 and self.needs_training:
            raise ConfigError("set train.max_steps or train.epochs (both are 0)")
        if not self.data.manifest:
            raise ConfigError(
                "data.manifest is empty: pass --set data.manifest=PATH/manifest.csv (create one "
                "with `domainclip data import ...`)"
            )
        return self

    @property
    def needs_training(self) -> bool:
        """True for the methods the step loop trains; the linear probe and Tip-Adapter(-F) are fitted
        on cached features by their own short procedures."""
        return self.method.name in ("lora", "full", "clip_adapter")


def robustness_not_applicable(method: str) -> str:
    """Why `robustness.enabled` is refused for a head-only method (the ConfigError's message)."""
    why = {
        "linear_probe": "its classifier is a logistic regression on frozen image features that "
        "never reads a prompt, so no wording can move its decisions",
        "tip_adapter": "its classifier is fitted by its own procedure on frozen features (cache "
        "keys and values) while the text tower and the class prompts stay frozen, so nothing it "
        "trains reads a wording and a framing loss has nothing to act on",
    }[method]
    return (
        f"robustness.enabled: framing-robust fine-tuning does not apply to method.name={method}: "
        f"{why}. Use method.name=lora (default), clip_adapter or full, or set "
        "robustness.enabled=false"
    )


def _check_grids(m: MethodConfig) -> None:
    """The value grids searched on the val split must be non-empty lists of positive numbers."""
    grids = []
    if m.tip_adapter is not None:
        grids.append(("method.tip_adapter.alpha", m.tip_adapter.alpha))
        grids.append(("method.tip_adapter.beta", m.tip_adapter.beta))
    if m.linear_probe is not None:
        grids.append(("method.linear_probe.C", m.linear_probe.C))
    for key, values in grids:
        if not values or any(v <= 0 for v in values):
            raise ConfigError(f"{key} must be a non-empty list of positive numbers, got {values}")


# ---------------------------------------------------------------------------------------------
# Loading


def valid_keys(cls: type = FinetuneConfig, prefix: str = "") -> list[str]:
    """Every leaf key path of a config class, e.g. ['backbone.spec', ..., 'eval.patience'] (the
    settings of every method included: any of them may be chosen)."""
    return leaf_keys(cls, prefix)


def migrate_config_dict(data: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """A copy of a config mapping in the current layout (only the chosen method's section), e.g.
    a run's saved config.yaml before it is compared with `config_diff` or loaded by `Run`.

    Runs written before fit policies have no `data.fit`; they trained with "crop" (filled in).

    Runs written before per-method sections recorded the settings of every method in
    config.yaml; the sections of the methods that did not run are dropped, with a logged note.
    Anything else (an unknown method name, a non-mapping) is left for `load_config` to report.
    """
    data = copy.deepcopy(dict(data))
    section_ = data.get("data")
    if isinstance(section_, dict) and "fit" not in section_:
        # Written before fit policies: the image was resized (shorter side) and centre-cropped.
        section_["fit"] = "crop"
        log.info("%s: records no data.fit (written before fit policies): it trained with 'crop'", where)
    method = data.get("method")
    if not isinstance(method, dict):
        return data
    name = method.get("name", MethodConfig.name)
    if name not in METHOD_SETTINGS:
        return data
    lora = method.get("lora")
    if name == "lora" and isinstance(lora, dict) and "text_layers" not in lora:
        # Written before method.lora.text_layers: LoRA was on every text layer.
        lora["text_layers"] = 0
        log.info("%s: records no method.lora.text_layers (written before it): every layer", where)
    unused = [n for n in METHOD_SETTINGS if n != name and n in method]
    if unused:
        for n in unused:
            del method[n]
        log.info(
            "%s: records settings of methods other than %r (the layout before per-method "
            "sections); ignoring %s, which did not affect the run",
            where,
            name,
            ", ".join(f"method.{n}" for n in unused),
        )
    return data


def load_config(
    source: str | Path | Mapping[str, Any] | None = None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """Load a YAML file (or a mapping; None = all defaults), apply overrides, validate and resolve.

    A mapping or file in the layout before per-method sections (every method's settings) loads:
    the other methods' sections are checked, then left out of `to_dict` (with a logged note).

    Raises:
        ConfigError: unreadable file, a key given twice in the file (both lines named), unknown
            key (listing the valid keys), wrong type or a value outside its allowed set/range,
            or a cross-field conflict.
    """
    from domainclip.io import load_yaml

    where = "config"
    if source is None:
        data: Any = {}
    elif isinstance(source, Mapping):
        data = source
    else:
        from domainclip.resources import resolve_config_path

        path = resolve_config_path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (examples are in configs/)")
        data = load_yaml(path) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [], valid_keys())
    return build(FinetuneConfig, data, where).resolve()


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore=RESUME_SAFE_KEYS) -> list[str]:
    """Keys whose values differ between two nested config dicts, as 'key: a -> b' lines."""
    fa, fb = flatten(a), flatten(b)
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k in ignore:
            continue
        if fa.get(k) != fb.get(k):
            out.append(f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}")
    return out


def describe_fields(cls: type = FinetuneConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every leaf, for `--help`-style listings and docs."""
    return describe(cls, prefix)


def list_keys_text() -> str:
    """`domainclip finetune --list-keys`: every key with its default and help; each method's
    settings under their own heading (only the chosen method's section is used)."""
    lines: list[str] = []
    heading = None
    for key, default, help_ in describe_fields():
        parts = key.split(".")
        in_method = parts[0] == "method" and parts[1] in METHOD_SETTINGS and len(parts) > 2
        current = parts[1] if in_method else None
        if current != heading:
            lines.append("")  # a blank line around each method's section
            if current is not None:
                doc = (METHOD_SETTINGS[current].__doc__ or "").strip().splitlines()[0]
                lines.append(f"# method.{current}: used only with method.name={current}. {doc}")
        heading = current
        lines.append(f"{key} (default {default!r}): {help_}")
    return "\n".join(lines).strip("\n")
