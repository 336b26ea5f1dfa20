"""`Run`: one fine-tuning run directory, and `resolve_model`, the one way commands load a model.

Loading rebuilds the base backbone from RUN/config.yaml and applies the checkpoint (LoRA through
peft, projections/temperature/fully trained towers from heads.safetensors, CLIP-Adapters folded
into encode_image/encode_text, Tip-Adapter / linear-probe classifiers as `Backbone.head`); the
method code that knows how lives in `domainclip.finetune` (`adaptation.prepare`).

Input geometry precedence, coded here only: the caller's `fit` / `image_size` (CLI `--fit`,
`--image-size`) > the run's `data.fit` / `data.image_size` (runs written before fit policies:
"crop") > letterbox at the backbone's native size. `ResolvedModel.preprocess` is that transform.

Calibration precedence, coded here only: a temperature given by the caller > the run's fitted
calibrator (RUN/calibration.json, written by `domainclip evaluate --fit-temperature`) > identity.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainclip.calibrators import Calibrator, TemperatureCalibrator, load_calibrator
from domainclip.calibrators import save_calibration as _save_calibration
from domainclip.datasets.tiling import TileSettings
from domainclip.datasets.transforms import (
    DEFAULT_FIT,
    INPUT_POLICIES,
    ImageTransform,
    eval_transform,
)
from domainclip.errors import ConfigError
from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune.adaptation import LORA_DIRS, Adaptation, prepare
from domainclip.finetune.config import FinetuneConfig, load_config, migrate_config_dict
from domainclip.finetune.errors import CheckpointError
from domainclip.finetune.methods import lora as lora_mod
from domainclip.io import load_yaml
from domainclip.models import Backbone, load_backbone, save_backbone
from domainclip.runs.layout import RunLayout, is_run

log = logging.getLogger(__name__)


class Run:
    """A fine-tuning run directory (see `domainclip.runs.layout` for what it holds).

    Raises:
        ConfigError: `path` is not a run directory (no config.yaml).
    """

    def __init__(self, path: str | Path) -> None:
        root = Path(path).expanduser()
        if not is_run(root):
            raise ConfigError(
                f"{root} is not a fine-tuning run directory (no config.yaml); give a run folder "
                "written by `domainclip finetune`, or a backbone spec"
            )
        self.root = root.resolve()
        self.layout = RunLayout(self.root)
        self._config: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # -- config -------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The resolved config as saved (plain mapping; unreadable or not a mapping: ConfigError).

        Read once per `Run` object; the returned mapping is a copy the caller may change.
        """
        if self._config is None:
            data = load_yaml(self.layout.config)
            if not isinstance(data, dict):
                raise ConfigError(f"{self.layout.config} is not a mapping of config sections")
            # Older layouts read as today's (e.g. no data.fit: the run trained with "crop").
            self._config = migrate_config_dict(data, str(self.layout.config))
        return copy.deepcopy(self._config)

    def config(self) -> FinetuneConfig:
        """The resolved config as the typed fine-tuning config."""
        return load_config(self.config_dict())

    def setting(self, dotted: str) -> Any:
        """The saved config's value at 'section.key' (e.g. 'data.manifest'), or None."""
        node: Any = self.config_dict()
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def input_settings(self) -> tuple[str, int | None]:
        """(fit policy, input size or None = the backbone's native size) the run trained with."""
        size = self.setting("data.image_size")
        fit = str(self.setting("data.fit") or "crop")
        if fit == "auto":
            # `finetune` records the policy auto chose; a config that still says auto was written
            # by hand (or never trained): score it with the policy that never discards pixels.
            log.warning("%s: data.fit is 'auto' (not resolved by a fine-tune); using letterbox", self.root)
            fit = "letterbox"
        return fit, (None if size is None else int(size))

    def tile_settings(self) -> TileSettings:
        """The run's data.tile (defaults when it has none: a run not trained with tiles)."""
        tile = self.setting("data.tile")
        if not isinstance(tile, dict):
            return TileSettings()
        return TileSettings(tile.get("size"), float(tile.get("overlap", 0.25)), str(tile.get("aggregate", "lse")))

    def preprocess(
        self, bb: Backbone, fit: str | None = None, image_size: int | None = None
    ) -> ImageTransform:
        """The run's eval transform for `bb` (its data.fit at data.image_size, data.tile), or the
        overrides."""
        run_fit, run_size = self.input_settings()
        return eval_transform(bb, fit or run_fit, image_size or run_size, self.tile_settings())

    # -- checkpoints and calibration ----------------------------------------------------------
    def checkpoint(self, name: str = "best") -> Path:
        """The complete checkpoint folder `name` ("best" or "last"), surviving an interrupted swap."""
        if not self.layout.checkpoints.is_dir():
            raise ConfigError(
                f"{self.root} has no checkpoints yet (training has not written one); wait for the "
                "first checkpoint or resume with `domainclip finetune CONFIG --out RUN --resume`"
            )
        return ckpt.checkpoint_dir(self.root, name)

    def calibration(self, temperature: float | None = None) -> Calibrator:
        """The calibrator this run's probabilities use: `temperature` if given, else the fitted
        one (RUN/calibration.json), else the identity (T = 1, with a hint how to fit one)."""
        if temperature is not None:
            return TemperatureCalibrator(float(temperature), "given")
        fitted = load_calibrator(self.root)
        if fitted is not None:
            return fitted
        return TemperatureCalibrator(
            1.0, f"none fitted (T = 1; run `domainclip evaluate {self.root} --fit-temperature`)"
        )

    def save_calibration(self, calibrator: Calibrator | dict[str, Any]) -> Path:
        """Store the fitted calibrator as RUN/calibration.json (atomically)."""
        return _save_calibration(self.root, calibrator)

    # -- loading ------------------------------------------------------------------------------
    def load_adaptation(
        self, checkpoint: str = "best", device: str = "cpu", merge: bool = False
    ) -> Adaptation:
        """The run's `Adaptation` (feature functions, layout, head) with `checkpoint` applied."""
        cfg = self.config()
        where = self.checkpoint(checkpoint)
        bb = load_backbone(cfg.backbone.spec, device=device)
        # The clamp the run trained with travels with the model: evaluating with another clamp
        # would score differently from how it trained.
        bb.max_logit_scale = float(cfg.loss.max_logit_scale)
        ckpt.verify_files(where)  # a truncated or hand-edited file is named, not a traceback
        try:
            adapt = prepare(bb, cfg.method, checkpoint=where, trainable=False)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            # e.g. an adapter_config.json naming modules the model does not have, or weights
            # whose shapes do not match the backbone in config.yaml
            raise CheckpointError(ckpt.damaged_message("its adapter files", where, exc)) from None
        if merge:
            for tower, wrap in (("image", adapt.layout.image_wrap), ("text", adapt.layout.text_wrap)):
                if (where / LORA_DIRS[tower]).is_dir():
                    lora_mod.merge_lora(adapt.base, wrap)
        bb.model.to(device)
        if bb.head is not None:
            bb.head.to(device)
        bb.model.eval()
        bb.info.update(
            run=str(self.root),
            checkpoint=str(where),
            method=cfg.method.name,
            step=ckpt.read_meta(where).get("step"),
            merged=merge,
        )
        return adapt

    def load(self, checkpoint: str = "best", device: str = "cpu", merge: bool = False) -> Backbone:
        """The adapted model behind the Backbone interface, in eval mode on `device`.

        Args:
            checkpoint: "best" or "last".
            merge: fold LoRA adapters into the base weights (peft merge_and_unload): plain
                modules, slightly faster; outputs equal the unmerged model within float rounding.
        """
        return self.load_adaptation(checkpoint, device, merge).bb


@dataclass
class ResolvedModel:
    """A model to score with, where it came from, the calibrator its probabilities use and the
    transform its images go through (`preprocess`: PIL image or sample dict -> Tensor[3, S, S];
    default: letterbox at the backbone's native size)."""

    backbone: Backbone
    run: Run | None
    calibrator: Calibrator
    label: str
    # "given" (the caller's temperature), "run" (the run's fitted calibrator) or "none" (identity)
    calibration_origin: str = "none"
    preprocess: ImageTransform = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = eval_transform(self.backbone)

    @property
    def input(self) -> dict[str, object]:
        """{"fit": policy, "image_size": S}: the input geometry images are scored at."""
        return self.preprocess.input

    @property
    def run_dir(self) -> Path | None:
        return None if self.run is None else self.run.root

    @property
    def temperature(self) -> float:
        """T of a temperature calibrator (1.0 for other kinds, whose effect T does not describe)."""
        cal = self.calibrator
        return cal.temperature if isinstance(cal, TemperatureCalibrator) else 1.0


def resolve_model(
    model_or_run: Backbone | str | Path,
    *,
    checkpoint: str = "best",
    device: str = "cpu",
    temperature: float | None = None,
    fit: str | None = None,
    image_size: int | None = None,
) -> ResolvedModel:
    """What the user named -> model + calibrator + image transform. The one loader every
    command uses.

    Args:
        model_or_run: a Backbone object, a run directory, or a `load_backbone` spec
            ('default', 'open_clip:ARCH@FILE', 'hf-clip:DIR', a saved backbone folder).
        checkpoint: for runs, "best" or "last".
        temperature: use this T instead of the run's fitted calibrator.
        fit, image_size: input geometry instead of the run's (data.fit, data.image_size);
            for backbones the default is letterbox at the native size.
    """
    device = resolve_device(device)
    run: Run | None = None
    if isinstance(model_or_run, Backbone):
        bb, label = model_or_run, model_or_run.spec
    elif is_run(model_or_run):
        run = Run(model_or_run)
        bb, label = run.load(checkpoint=checkpoint, device=device), str(run.root)
    else:
        bb, label = load_backbone(str(model_or_run), device=device), str(model_or_run)
    if run is not None:
        cal = run.calibration(temperature)
    elif temperature is not None:
        cal = TemperatureCalibrator(float(temperature), "given")
    else:
        cal = TemperatureCalibrator(1.0, "none fitted (T = 1)")
    if temperature is not None:
        origin = "given"
    else:
        origin = "run" if run is not None and run.layout.calibration.is_file() else "none"
    if run is not None:
        preprocess = run.preprocess(bb, fit, image_size)
    else:
        preprocess = eval_transform(bb, fit or DEFAULT_FIT, image_size)
    return ResolvedModel(bb, run, cal, label, origin, preprocess)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--fit` / `--image-size` options of the commands that score images (evaluate, audit,
    explain); pass them to `resolve_model(fit=..., image_size=...)`."""
    parser.add_argument(
        "--fit",
        choices=INPUT_POLICIES,
        help="how images become the square input: letterbox | crop | stretch | tile (overlapping "
        "tiles at native resolution, settings from the run's data.tile) (default: the run's "
        "data.fit; letterbox for a backbone)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="input side in px (default: the run's data.image_size, else the backbone's native size)",
    )


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    run_or_spec: str | Path, checkpoint: str = "best", device: str = "cpu", merge: bool = False
) -> Backbone:
    """A fine-tuning run (or any backbone spec) as a Backbone (see `Run.load`)."""
    if is_run(run_or_spec):
        return Run(run_or_spec).load(checkpoint, device, merge)
    return load_backbone(str(run_or_spec), device=device)


def load_adaptation(
    run: str | Path, checkpoint: str = "best", device: str = "cpu", merge: bool = False
) -> Adaptation:
    """`Run(run).load_adaptation(...)`: the run's Adaptation (feature functions, layout, head)."""
    return Run(run).load_adaptation(checkpoint, device, merge)


def export_merged(run: str | Path, out_dir: str | Path, checkpoint: str = "best") -> Path:
    """Merge LoRA into the base weights and save a directory that `load_backbone` reloads.

    Only runs whose result is a plain image-text model can be exported this way (LoRA, full
    fine-tuning, locked-image tuning). CLIP-Adapter, Tip-Adapter and linear-probe runs keep extra
    modules that a plain open_clip/HF checkpoint cannot hold; use `load_model(RUN)` for them.
    """
    r = Run(run)
    bb = r.load(checkpoint=checkpoint, merge=True)
    method = bb.info["method"]
    if bb.head is not None or method == "clip_adapter":
        raise ConfigError(
            f"{run} was trained with {method}, whose extra modules cannot be written into a plain "
            "backbone checkpoint. Load it with domainclip.runs.load_model(RUN) instead."
        )
    bb.spec = f"{bb.spec} + {r.root.name}/{checkpoint} (merged)"
    return save_backbone(bb, out_dir)


def weights_sha256(checkpoint_dir: Path) -> str:
    """sha256 over every file of a checkpoint folder (relative names and bytes, sorted): what a
    deployed model's provenance and a case index record as the weights' identity."""
    h = hashlib.sha256()
    for path in sorted(p for p in checkpoint_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(checkpoint_dir)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
