"""One factory for every backbone: `load_backbone(spec) -> Backbone` (model + tokenizer + input facts).

Specs (never reach a model hub implicitly):
    default                               embedded default (EfficientNet-Lite0 + MiniLM), offline
    open_clip:ARCH@/path/weights.safetensors   open_clip architecture + local checkpoint (.safetensors/.pt)
    open_clip:ARCH@TAG                    pretrained tag, only if already in the local cache
    open_clip:ARCH@random                 untrained (random) weights, for experiments and tests
    hf-clip:/path/to/dir                  Hugging Face CLIPModel directory (+ tokenizer files)
    /path/to/dir                          a directory written by `save_backbone` / `domainclip export`,
                                          an open_clip local-dir (open_clip_config.json) or an HF CLIP dir
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from domainclip.errors import BackboneError, ConfigError
from domainclip.models import default as default_model
from domainclip.models.tokenizer import TextTokenizer
from domainclip.runs.layout import CHECKPOINTS_DIR
from domainclip.runs.layout import CONFIG_FILE as RUN_CONFIG_FILE

log = logging.getLogger(__name__)

FAMILIES = ("default", "open_clip", "hf_clip")
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
# Beside a saved HF CLIP directory: what the HF format has no field for (the logit-scale clamp).
DOMAINCLIP_HF_FILE = "domainclip.json"


@dataclass
class Backbone:
    """A contrastive image-text model with everything needed to feed it.

    Attributes:
        model: nn.Module with `encode_image([B,3,H,W]) -> [B,D]`, `encode_text([B,L]) -> [B,D]`
            and `logit_scale` (log of the inverse temperature).
        tokenizer: texts -> LongTensor[B, L].
        family: "default" | "open_clip" | "hf_clip".
        image_arch: "cnn" | "vit" (decides which explainers apply).
        spec: the spec it was loaded from.
        image_size, mean, std: native input resolution and normalisation of the image tower.
            Images are turned into pixels by `domainclip.datasets.transforms.eval_transform(bb,
            fit, image_size)` (the one image pipeline); the tower accepts other square sizes too
            (position embeddings are interpolated, `domainclip.models.resolution`).
        head: optional image-feature classifier for methods that are not pure image-text similarity
            (Tip-Adapter, linear probe): `head(image_feats [N,D], class_text_feats [C,D]) -> logits [N,C]`.
            None means classification is `similarity(image_feats, class_text_feats)`.
        info: free-form provenance (e.g. load time, checkpoint path).
    """

    model: nn.Module
    tokenizer: TextTokenizer
    family: str
    image_arch: str
    spec: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_cfg: dict | None = None
    head: Callable | None = None
    info: dict = field(default_factory=dict)
    # Clamp of exp(logit_scale). It travels with the model (fine-tuning runs set it from
    # `loss.max_logit_scale`, saved backbones store it) so a model scores as it trained.
    max_logit_scale: float = 100.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """pixels: [N,3,H,W] preprocessed -> [N,D] L2-normalised features (eval mode, no grad)."""
        was_training = self.model.training
        self.model.eval()
        out = [
            self.model.encode_image(pixels[i : i + batch_size].to(self.device), normalize=True)
            for i in range(0, len(pixels), batch_size)
        ]
        self.model.train(was_training)
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """texts -> [N,D] L2-normalised features (eval mode, no grad)."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            out.append(self.model.encode_text(ids, normalize=True))
        self.model.train(was_training)
        return torch.cat(out).float().cpu()

    def logit_scale_value(self) -> float:
        """exp(logit_scale): the multiplier that turns cosine similarity into logits."""
        return float(self.model.logit_scale.detach().exp().clamp(max=self.max_logit_scale))

    def similarity(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """[N,D] x [M,D] normalised features -> [N,M] logits (scaled cosine similarity)."""
        return self.logit_scale_value() * image_feats @ text_feats.T

    def class_logits(
        self, image_feats: torch.Tensor, class_text_feats: torch.Tensor
    ) -> torch.Tensor:
        """[N,D] image features x [C,D] class-prompt features -> [N,C] logits (uses `head` if set)."""
        if self.head is not None:
            return self.head(image_feats, class_text_feats)
        return self.similarity(image_feats, class_text_feats)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a load report and progress bars for the MiniLM weights; keep the CLI clean."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _image_arch(model: nn.Module) -> str:
    import open_clip

    visual = getattr(model, "visual", None)
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        return "vit"
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and any(
        k in type(trunk).__name__.lower() for k in ("vision", "vit", "eva")
    ):
        return "vit"
    return "cnn"


def _load_default(spec: str, cfg: dict | None = None, weights: Path | None = None) -> Backbone:
    kwargs = {}
    if cfg is not None:
        kwargs = {
            "embed_dim": cfg["embed_dim"],
            "context_length": cfg["text_cfg"]["context_length"],
            "image_size": cfg["vision_cfg"]["image_size"],
        }
    with _quiet_transformers():
        model = default_model.build_default_model(**kwargs, load_pretrained_towers=weights is None)
        if weights is not None:
            _load_weights_strict(model, weights)
        tok = _hf_tokenizer(default_model.minilm_dir())
    size = (
        model.visual.image_size[0]
        if isinstance(model.visual.image_size, tuple)
        else model.visual.image_size
    )
    cfg_used = default_model.model_config(**kwargs)
    return Backbone(
        model=model,
        # open_clip reports the HF tower's position limit (512); we use the configured length.
        tokenizer=TextTokenizer(tok, "hf", cfg_used["text_cfg"]["context_length"], trim=True),
        family="default",
        image_arch="cnn",
        spec=spec,
        image_size=int(size),
        mean=default_model.LITE_MEAN,
        std=default_model.LITE_STD,
        model_cfg=cfg_used,
    )


def _hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _load_weights_strict(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = (
        load_file(str(path))
        if str(path).endswith(".safetensors")
        else torch.load(path, map_location="cpu", weights_only=True)
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneError(
            f"weights in {path} do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


def _finish_open_clip(model: nn.Module, spec: str, tokenizer, model_cfg: dict | None) -> Backbone:
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pre.get("size", getattr(model.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(pre.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(pre.get("std", (0.26862954, 0.26130258, 0.27577711)))
    from domainclip.models.resolution import enable_any_resolution

    enable_any_resolution(model)
    custom_hf = tokenizer.__class__.__name__ == "HFTokenizer"
    tok = (
        TextTokenizer(tokenizer.tokenizer, "hf", model.context_length, trim=True)
        if custom_hf
        else TextTokenizer(tokenizer, "open_clip", model.context_length, trim=False)
    )
    model.eval()
    return Backbone(
        model=model,
        tokenizer=tok,
        family="open_clip",
        image_arch=_image_arch(model),
        spec=spec,
        image_size=size,
        mean=mean,
        std=std,
        model_cfg=model_cfg,
    )


def _cached_tag_file(arch: str, tag: str) -> str:
    """The local file of open_clip's pretrained `tag`, looked up in the caches only.

    Never a download, whatever HF_HUB_OFFLINE says: the Hugging Face cache is read with
    `try_to_load_from_cache` (a file lookup), the URL cache by file name. Offline mode is set once
    at import (`domainclip/__init__.py`), never toggled: toggling it per call raced between the
    dashboard's threads and did not reach huggingface_hub, which reads it only at its import.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    found: str | None = None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        hub = cfg["hf_hub"]  # 'org/model/file.bin', or 'org/model/' for open_clip's default name
        repo, filename = os.path.split(hub) if not hub.endswith("/") else (hub[:-1], "")
        filename = filename or "open_clip_pytorch_model.bin"
        for name in (filename.rsplit(".", 1)[0] + ".safetensors", filename):
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                found = hit
                break
    if found is None and cfg.get("url"):
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        found = str(candidate) if candidate.is_file() else None
    if found is None:
        raise BackboneError(
            f"pretrained weights {arch}@{tag} are not available offline. Download them on a "
            f"connected machine (open_clip.create_model('{arch}', pretrained='{tag}') fills "
            f"the Hugging Face cache), copy the checkpoint here and use "
            f"open_clip:{arch}@/path/to/open_clip_model.safetensors"
        )
    return found


def _load_open_clip(spec: str, arch: str, pretrained: str | None) -> Backbone:
    import open_clip

    if arch not in open_clip.list_models():
        raise BackboneError(
            f"unknown open_clip architecture {arch!r}; see open_clip.list_models() "
            f"(e.g. {', '.join(open_clip.list_models()[:4])}, ...)"
        )
    if pretrained is None:
        raise ConfigError(
            f"spec {spec!r} gives no weights. Use open_clip:{arch}@/path/to/weights.safetensors "
            f"(a local checkpoint), open_clip:{arch}@TAG (a tag already in the local cache) or "
            f"open_clip:{arch}@random (untrained)."
        )
    kwargs: dict = {"pretrained_text": False, "pretrained_image": False}
    if pretrained != "random":
        path = Path(pretrained).expanduser()
        if path.exists():
            kwargs["pretrained"] = str(path)
        elif any(sep in pretrained for sep in "/\\") or pretrained.endswith(
            (".pt", ".bin", ".safetensors")
        ):
            raise BackboneError(f"checkpoint file not found: {path}")
        else:
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            if pretrained not in tags:
                raise BackboneError(
                    f"{arch} has no pretrained tag {pretrained!r}; known tags: {tags}"
                )
            kwargs["pretrained"] = _cached_tag_file(arch, pretrained)
    try:
        model = open_clip.create_model(arch, **kwargs)
    except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors for bad weights
        raise BackboneError(f"cannot build open_clip model {spec!r}: {exc}") from exc
    return _finish_open_clip(
        model, spec, open_clip.get_tokenizer(arch), open_clip.get_model_config(arch)
    )


def _load_open_clip_dir(spec: str, path: Path) -> Backbone:
    import open_clip

    cfg = json.loads((path / CONFIG_NAME).read_text())
    family = cfg.get("domainclip", {}).get("family", "open_clip")
    weights = next(
        (path / n for n in (WEIGHTS_NAME, "open_clip_pytorch_model.bin") if (path / n).exists()),
        None,
    )
    if family == "default":
        if weights is None:
            raise BackboneError(f"{path} has {CONFIG_NAME} but no {WEIGHTS_NAME}")
        bb = _load_default(spec, cfg["model_cfg"], weights)
    else:
        with _quiet_transformers():
            model = open_clip.create_model(
                f"local-dir:{path}", pretrained_text=False, pretrained_image=False
            )
            tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        bb = _finish_open_clip(model, spec, tokenizer, cfg.get("model_cfg"))
    bb.max_logit_scale = float(cfg.get("domainclip", {}).get("max_logit_scale", bb.max_logit_scale))
    return bb


def _load_hf(spec: str, path: Path) -> Backbone:
    from domainclip.models.hf_clip import load_hf_clip

    with _quiet_transformers():
        model, tok, pre = load_hf_clip(path)
    ctx = int(model.clip.config.text_config.max_position_embeddings)
    return Backbone(
        model=model,
        tokenizer=TextTokenizer(tok, "hf", ctx, trim=True),
        family="hf_clip",
        image_arch="vit",
        spec=spec,
        image_size=pre["size"],
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        max_logit_scale=_saved_hf_clamp(path),
    )


def _saved_hf_clamp(path: Path) -> float:
    """The logit-scale clamp `save_backbone` stored beside an HF CLIP directory (100 otherwise)."""
    extra = path / DOMAINCLIP_HF_FILE
    if not extra.is_file():
        return 100.0
    try:
        return float(json.loads(extra.read_text())["max_logit_scale"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"{extra} is unreadable ({exc}); delete it to use the default 100") from exc


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """Split a spec into (kind, target, pretrained). kind: default|open_clip|hf_clip|dir."""
    spec = spec.strip()
    if spec == "default":
        return "default", "", None
    if spec.startswith("open_clip:"):
        body = spec[len("open_clip:") :]
        arch, _, pre = body.partition("@")
        return "open_clip", arch, pre or None
    if spec.startswith("hf-clip:"):
        return "hf_clip", spec[len("hf-clip:") :], None
    if spec.startswith(("hf-hub:", "http://", "https://")):
        raise BackboneError(
            f"{spec!r}: domainclip never downloads models. Download the checkpoint on a connected "
            "machine, copy it here and pass a local path (see `domainclip models --help`)."
        )
    if Path(spec).expanduser().exists():
        return "dir", str(Path(spec).expanduser()), None
    raise ConfigError(
        f"unknown backbone spec {spec!r} (no such file or directory). Valid forms: 'default', "
        "'open_clip:ARCH@WEIGHTS', 'hf-clip:DIR', or a saved backbone directory."
    )


def load_backbone(spec: str = "default", device: str | torch.device = "cpu") -> Backbone:
    """Load a backbone from a spec (see module docstring). Never downloads.

    Returns:
        Backbone with the model in eval mode on `device`.
    """
    t0 = time.perf_counter()
    kind, target, pretrained = parse_spec(spec)
    if kind == "default":
        bb = _load_default(spec)
    elif kind == "open_clip":
        bb = _load_open_clip(spec, target, pretrained)
    elif kind == "hf_clip":
        bb = _load_hf(spec, Path(target))
    else:
        path = Path(target)
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            bb = _load_open_clip_dir(spec, path)
        elif path.is_dir() and (path / "config.json").is_file():
            bb = _load_hf(spec, path)
        elif path.is_dir() and (path / CHECKPOINTS_DIR).is_dir():
            raise BackboneError(
                f"{path} looks like a fine-tuning run without its {RUN_CONFIG_FILE} (it has "
                f"{CHECKPOINTS_DIR}/ but no {RUN_CONFIG_FILE}, which records the backbone and the "
                f"method): restore {RUN_CONFIG_FILE} from a copy, or re-train"
            )
        else:
            raise BackboneError(
                f"{path} is not a saved backbone: expected {CONFIG_NAME} (domainclip/open_clip) or "
                "config.json (Hugging Face CLIP) inside. Fine-tuning runs are loaded with "
                "domainclip.finetune.load_model(RUN)."
            )
    bb.model.to(device)
    bb.info["load_seconds"] = round(time.perf_counter() - t0, 3)
    log.debug(
        "loaded %s (%s, %s) in %.2fs", spec, bb.family, bb.image_arch, bb.info["load_seconds"]
    )
    return bb


def save_backbone(bb: Backbone, out_dir: str | Path) -> Path:
    """Write `bb` so that `load_backbone(out_dir)` (and open_clip, for open_clip models) reloads it.

    default/open_clip: open_clip's local-dir layout (open_clip_config.json + open_clip_model.safetensors
    + tokenizer files); the default model's config names the bundled MiniLM by a placeholder instead of
    an absolute site-packages path. hf_clip: `save_pretrained` of model and tokenizer.
    Files are written into a temporary sibling directory and renamed into place (atomic).
    """
    import shutil
    import tempfile

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if bb.family == "hf_clip":
            bb.model.clip.save_pretrained(tmp)
            bb.tokenizer.impl.save_pretrained(tmp)
            (tmp / DOMAINCLIP_HF_FILE).write_text(
                json.dumps({"max_logit_scale": bb.max_logit_scale})
            )
            (tmp / "preprocessor_config.json").write_text(
                json.dumps(
                    {
                        "image_mean": list(bb.mean),
                        "image_std": list(bb.std),
                        "crop_size": bb.image_size,
                    }
                )
            )
        else:
            if bb.model_cfg is None:
                raise BackboneError(f"cannot save {bb.spec}: its open_clip model config is unknown")
            cfg = {
                "model_cfg": bb.model_cfg,
                "preprocess_cfg": {
                    "size": bb.image_size,
                    "mean": list(bb.mean),
                    "std": list(bb.std),
                    "interpolation": "bicubic",
                    "resize_mode": "shortest",
                },
                "domainclip": {
                    "family": bb.family,
                    "source_spec": bb.spec,
                    "max_logit_scale": bb.max_logit_scale,
                },
            }
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
            state = {k: v.detach().cpu().contiguous() for k, v in bb.model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))
            if bb.tokenizer.kind == "hf" and bb.family == "open_clip":
                bb.tokenizer.impl.save_pretrained(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_tokenizer(spec: str = "default") -> TextTokenizer:
    """The tokenizer of a backbone spec. Fast for `default` (no model weights are read)."""
    if spec.strip() == "default":
        tok = _hf_tokenizer(default_model.minilm_dir())
        return TextTokenizer(tok, "hf", default_model.DEFAULT_CONTEXT_LENGTH, trim=True)
    return load_backbone(spec).tokenizer
