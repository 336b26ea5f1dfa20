"""Typed fine-tuning configuration (peft-style dataclasses with help text) and its YAML loader.

Every field carries `metadata={"help": ...}` and, where it applies, the allowed `choices` or numeric
`range`; `load_config` checks them all generically, so an error always names the full key path and
what is allowed. Cross-field rules (which tower modes a method accepts, ...) live in
`FinetuneConfig.resolve`, which also fills method-dependent defaults so that the resolved
config.yaml written into a run says exactly what ran.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainclip.errors import ConfigError

METHODS = ("lora", "full", "clip_adapter", "tip_adapter", "linear_probe")
TOWER_MODES = ("locked", "lora", "full")
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


def _f(default: Any, help: str, *, choices=None, range=None, factory=None) -> Any:
    """A dataclass field with help text and the constraints `load_config` enforces."""
    md: dict[str, Any] = {"help": help}
    if choices is not None:
        md["choices"] = tuple(choices)
    if range is not None:
        md["range"] = range  # (low, high, "[]" | "(]" | "[)" | "()"); None = unbounded
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def _sub(cls: type) -> Any:
    return field(default_factory=cls, metadata={"help": cls.__doc__.splitlines()[0]})


@dataclass
class BackboneConfig:
    """Which pretrained model to adapt and where it runs."""

    spec: str = _f(
        "default", "backbone spec: default | open_clip:ARCH@WEIGHTS | hf-clip:DIR | saved DIR"
    )
    device: str = _f("auto", "auto (cuda if available, else cpu) | cpu | cuda | cuda:N")
    precision: str = _f(
        "auto",
        "auto: bf16 autocast on CUDA when supported, fp32 on CPU; or force fp32 | bf16 | fp16",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    channels_last: bool = _f(
        True, "channels_last memory format for a trained CNN image tower (faster on CPU and GPU)"
    )


@dataclass
class DataConfig:
    """Paired data: the manifest and how to read it."""

    manifest: str = _f(
        "", "manifest CSV/JSONL (relative paths are relative to the current directory)"
    )
    train_split: str = _f("train", "split used for training")
    val_split: str = _f("val", "split used for per-epoch validation and early stopping")
    classes: list[str] = _f(
        None, "class vocabulary; empty = every label found in the manifest", factory=list
    )
    augment: str = _f(
        "none",
        "augmentation preset for training images when the image tower is trained (no feature "
        "cache); 'none' keeps position-bearing texts true",
        choices=("industrial", "cxr", "none"),
    )
    max_train: int = _f(
        0, "use at most this many training rows (seeded choice); 0 = all", range=(0, None, "[]")
    )
    max_val: int = _f(0, "use at most this many validation rows; 0 = all", range=(0, None, "[]"))
    num_workers: int = _f(0, "DataLoader worker processes for image decoding", range=(0, 64, "[]"))


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (HF peft) for the towers whose mode is 'lora'."""

    r: int = _f(8, "rank of the low-rank update", range=(1, 1024, "[]"))
    alpha: float = _f(
        16.0, "scaling numerator: the update is scaled by alpha / r", range=(0, None, "()")
    )
    dropout: float = _f(0.0, "dropout on the LoRA input", range=(0, 1, "[)"))
    image_targets: str = _f(
        "", "regex of image-tower modules to adapt (relative to the tower); empty = family preset"
    )
    text_targets: str = _f(
        "", "regex of text-tower modules to adapt (relative to the tower); empty = family preset"
    )


@dataclass
class ClipAdapterSettings:
    """CLIP-Adapter: residual bottleneck MLP on the projected features."""

    reduction: int = _f(4, "bottleneck width = feature dim / reduction", range=(1, 256, "[]"))
    ratio: float = _f(0.2, "mixing: out = ratio * adapter(f) + (1 - ratio) * f", range=(0, 1, "[]"))
    image: bool = _f(True, "adapter on image features")
    text: bool = _f(False, "adapter on text features")


@dataclass
class TipAdapterSettings:
    """Tip-Adapter: a cache of training features as a key-value classifier."""

    train_keys: bool = _f(True, "Tip-Adapter-F: fine-tune the cache keys (False: training-free)")
    alpha: list[float] = _f(
        None,
        "cache weights tried on the val split (best val accuracy, ties broken by val loss); the "
        "zero-shot logits they are added to are exp(logit_scale) * cosine",
        factory=lambda: [0.5, 1.0, 2.0, 5.0, 10.0, 20.0],
    )
    beta: list[float] = _f(
        None, "cache sharpness values tried on the val split", factory=lambda: [1.0, 3.0, 5.5, 8.0]
    )
    shots: int = _f(
        0, "cache at most this many training images per class; 0 = all", range=(0, None, "[]")
    )
    epochs: int = _f(20, "Tip-Adapter-F epochs over the cached features", range=(1, 10000, "[]"))
    lr: float = _f(1e-3, "Tip-Adapter-F learning rate (AdamW)", range=(0, 1, "(]"))


@dataclass
class LinearProbeSettings:
    """Linear probe: scikit-learn logistic regression on frozen image features."""

    C: list[float] = _f(
        None,
        "inverse regularisation strengths tried on the val split (best val accuracy, ties "
        "broken by val log-loss)",
        factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0],
    )
    max_iter: int = _f(2000, "solver iterations", range=(10, 100000, "[]"))


@dataclass
class MethodConfig:
    """What is trained: the method, each tower's mode, and the method's settings."""

    name: str = _f("lora", "adaptation method", choices=METHODS)
    image_tower: str = _f(
        "",
        "locked | lora | full; empty = the method's default (lora: locked, full: full, others: locked)",
        choices=("",) + TOWER_MODES,
    )
    text_tower: str = _f(
        "",
        "locked | lora | full; empty = the method's default (lora: lora, full: full, others: locked)",
        choices=("",) + TOWER_MODES,
    )
    train_projections: bool = _f(True, "train the image/text projections into the shared space")
    train_logit_scale: bool = _f(True, "learn the temperature (logit scale)")
    lora: LoraSettings = _sub(LoraSettings)
    clip_adapter: ClipAdapterSettings = _sub(ClipAdapterSettings)
    tip_adapter: TipAdapterSettings = _sub(TipAdapterSettings)
    linear_probe: LinearProbeSettings = _sub(LinearProbeSettings)


@dataclass
class LossConfig:
    """Contrastive loss (and optional supervised term)."""

    positives: str = _f(
        "text",
        "which pairs count as positives: 'text' = identical texts (multi-positive), 'label' = "
        "identical label sets too, 'pair' = only the own pair (plain symmetric InfoNCE)",
        choices=("text", "label", "pair"),
    )
    supervised_weight: float = _f(
        0.0,
        "weight of a cross-entropy over class-prompt embeddings (one prompt per class drawn per "
        "step from eval.prompts, or the class names); rows without a label are ignored",
        range=(0, None, "[]"),
    )
    max_logit_scale: float = _f(100.0, "clamp of exp(logit_scale)", range=(1, 1000, "[]"))


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = _f(1e-3, "peak learning rate", range=(0, 1, "(]"))
    weight_decay: float = _f(
        0.01, "AdamW weight decay (not on biases, norms, logit scale)", range=(0, 1, "[]")
    )
    betas: list[float] = _f(None, "AdamW betas", factory=lambda: [0.9, 0.98])
    eps: float = _f(1e-6, "AdamW epsilon", range=(0, 1, "()"))
    warmup_steps: int = _f(10, "linear warmup steps", range=(0, None, "[]"))
    min_lr_ratio: float = _f(0.0, "final learning rate as a fraction of lr", range=(0, 1, "[]"))
    schedule: str = _f(
        "cosine", "learning-rate schedule after warmup", choices=("cosine", "constant")
    )
    grad_clip: float = _f(
        1.0, "clip the global gradient norm to this; 0 = off", range=(0, None, "[]")
    )
    accumulate: int = _f(
        1,
        "gradient accumulation micro-batches per step (each its own contrastive batch)",
        range=(1, 1024, "[]"),
    )


@dataclass
class TrainConfig:
    """Loop length, batching, reproducibility and checkpoints."""

    seed: int = _f(
        0, "seed of weights init, data order and augmentation", range=(0, 2**31 - 1, "[]")
    )
    deterministic: bool = _f(True, "deterministic algorithms (bit-exact resume)")
    batch_size: int = _f(
        32, "pairs per micro-batch (global batch across processes)", range=(2, 65536, "[]")
    )
    max_steps: int = _f(300, "optimizer steps; 0 = use epochs", range=(0, None, "[]"))
    epochs: int = _f(0, "epochs when max_steps is 0", range=(0, None, "[]"))
    cache_features: str = _f(
        "auto",
        "reuse frozen-tower features computed once: auto (whenever a tower is locked) | always | never",
        choices=("auto", "always", "never"),
    )
    feature_cache_dir: str = _f(
        "",
        "directory where frozen-tower features are kept across runs (keyed by weights, transform "
        "and image files); empty = recompute per run, in memory",
    )
    checkpoint_every: int = _f(
        0,
        "also write checkpoints/last every N steps (0 = at each evaluation only)",
        range=(0, None, "[]"),
    )
    log_every: int = _f(10, "log training loss every N steps", range=(1, None, "[]"))
    progress: bool = _f(True, "show tqdm progress bars")


@dataclass
class EvalConfig:
    """Per-epoch validation and early stopping."""

    prompts: str = _f(
        "",
        "prompt-set YAML for zero-shot accuracy (e.g. configs/prompts/neu_det.yaml); empty = class names",
    )
    at_start: bool = _f(
        True, "also evaluate the untrained model before the first step (logged as step 0)"
    )
    every_epochs: int = _f(1, "evaluate every N epochs", range=(1, None, "[]"))
    every_steps: int = _f(
        0, "evaluate every N steps instead of per epoch (0 = per epoch)", range=(0, None, "[]")
    )
    metric: str = _f(
        "zero_shot_acc",
        "metric that picks the best checkpoint and drives early stopping",
        choices=("zero_shot_acc", "zero_shot_macro_f1", "loss", "t2i_R@1", "i2t_R@1"),
    )
    patience: int = _f(
        0, "stop after this many evaluations without improvement; 0 = never", range=(0, None, "[]")
    )


@dataclass
class FinetuneConfig:
    """A complete fine-tuning run."""

    backbone: BackboneConfig = _sub(BackboneConfig)
    data: DataConfig = _sub(DataConfig)
    method: MethodConfig = _sub(MethodConfig)
    loss: LossConfig = _sub(LossConfig)
    optim: OptimConfig = _sub(OptimConfig)
    train: TrainConfig = _sub(TrainConfig)
    eval: EvalConfig = _sub(EvalConfig)

    # ------------------------------------------------------------------ derived views
    @property
    def tower_modes(self) -> tuple[str, str]:
        """(image, text) tower modes after method defaults."""
        return self.method.image_tower, self.method.text_tower

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for config.yaml)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"a.b": value} for every leaf."""
        return _flatten(self.to_dict())

    def resolve(self) -> FinetuneConfig:
        """Fill method-dependent defaults and check cross-field rules. Returns self."""
        m = self.method
        defaults = {"lora": ("locked", "lora"), "full": ("full", "full")}
        img_d, txt_d = defaults.get(m.name, ("locked", "locked"))
        m.image_tower = m.image_tower or img_d
        m.text_tower = m.text_tower or txt_d
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
        for key, values in (
            ("method.tip_adapter.alpha", m.tip_adapter.alpha),
            ("method.tip_adapter.beta", m.tip_adapter.beta),
            ("method.linear_probe.C", m.linear_probe.C),
        ):
            if not values or any(v <= 0 for v in values):
                raise ConfigError(
                    f"{key} must be a non-empty list of positive numbers, got {values}"
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


# ---------------------------------------------------------------------------------------------
# Loading


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def valid_keys(cls: type = FinetuneConfig, prefix: str = "") -> list[str]:
    """Every leaf key path of a config class, e.g. ['backbone.spec', ..., 'eval.patience']."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += valid_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _unknown_key(path: str, cls: type, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    leaf = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    return ConfigError(
        f"{where}: unknown key {path!r}{hint}. Valid keys here: "
        + ", ".join(parent + n for n in names)
    )


def _check_range(path: str, value: float, spec: tuple) -> None:
    low, high, kind = spec
    ok_low = low is None or (value >= low if kind[0] == "[" else value > low)
    ok_high = high is None or (value <= high if kind[1] == "]" else value < high)
    if not (ok_low and ok_high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(
            f"{path} = {value!r} is out of range; allowed: {kind[0]}{lo}, {hi}{kind[1]}"
        )


def _coerce(path: str, value: Any, typ: Any, f: dataclasses.Field) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if value is None:
            value = []
        if not isinstance(value, list):
            value = [value]  # `--set data.classes=scratch` means a one-element list
        return [_coerce(f"{path}[{i}]", v, item, f) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{path} must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        value = float(value)
    elif typ is str:
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        value = str(value)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{path} = {value!r} is not allowed; choose one of {', '.join(map(repr, choices))}"
        )
    if "range" in f.metadata and typ in (int, float):
        _check_range(path, value, f.metadata["range"])
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from nested `data`, checking keys, types, choices and ranges."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise _unknown_key(f"{prefix}{key}", cls, where)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, data[name], where, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", data[name], typ, f)
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults must pass the same checks (ranges of list items)
        if name not in data and not dataclasses.is_dataclass(hints[name]):
            _coerce(f"{prefix}{name}", copy.deepcopy(getattr(obj, name)), hints[name], f)
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) to a nested dict (copied)."""
    import yaml

    data = copy.deepcopy(data)
    valid = set(valid_keys())
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=5e-4")
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=3)
            raise ConfigError(
                f"--set {key}: unknown key"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + ". Valid keys: "
                + ", ".join(sorted(valid))
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from exc
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return data


def load_config(
    source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """Load a YAML file (or a dict; None = all defaults), apply overrides, validate and resolve.

    Raises:
        ConfigError: unreadable file, unknown key (listing the valid keys), wrong type or a value
            outside its allowed set/range, or a cross-field conflict.
    """
    import yaml

    where = "config"
    if source is None:
        data: Any = {}
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    else:
        from domainclip.resources import resolve_config_path

        path = resolve_config_path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found (examples are in configs/)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    return from_dict(FinetuneConfig, data, where).resolve()


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore=RESUME_SAFE_KEYS) -> list[str]:
    """Keys whose values differ between two nested config dicts, as 'key: a -> b' lines."""
    fa, fb = _flatten(a), _flatten(b)
    out = []
    for k in sorted(set(fa) | set(fb)):
        if k in ignore:
            continue
        if fa.get(k) != fb.get(k):
            out.append(f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}")
    return out


def describe_fields(cls: type = FinetuneConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every leaf, for `--help`-style listings and docs."""
    hints = typing.get_type_hints(cls)
    out = []
    inst = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += describe_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", getattr(inst, f.name), f.metadata.get("help", "")))
    return out
