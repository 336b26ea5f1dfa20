"""`domainclip export RUN --format onnx --out DIR [--quantize int8]`: the run as ONNX graphs.

Writes (format `domainclip.onnx/1`, read by `domainclip.deploy.onnx_runtime`):
    DIR/image.onnx        pixels float32 [B, 3, S, S] in [0, 1] after the run's fit -> features
                          [B, D], L2-normalised (normalisation, tower, projection inside)
    DIR/text.onnx         token ids int64 [B, L] -> features [B, D], L2-normalised
    DIR/image.int8.onnx, DIR/text.int8.onnx   with --quantize int8 (ONNX Runtime quantization)
    DIR/tokenizer/        the tokenizer files (tokenizer.json for the `tokenizers` library)
    DIR/manifest.json     preprocessing, classes, class text embeddings, logit scale, calibrator
                          record, provenance, measured parity
LoRA is merged into the weights; CLIP-Adapter modules are part of encode_image/encode_text and
so of the graphs. Refused (ConfigError): runs with a classifier head (Tip-Adapter, linear probe:
the head is not in these graphs, so an export would score differently) and tiled runs.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.datasets.manifest import read_manifest
from domainclip.deploy.onnx_runtime import FORMAT, MANIFEST_FILE, OnnxModel, cosine
from domainclip.deploy.provenance import DeployTask, load_task, provenance
from domainclip.errors import ConfigError
from domainclip.io import atomic_write_json

log = logging.getLogger(__name__)
OPSET = 17
INT8_MIN_COSINE = 0.99  # below this (measured at export) the int8 image graph is not the default


class ImageGraph(nn.Module):
    """pixels [B, 3, S, S] in [0, 1] -> normalised features [B, D] (mean/std inside)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - self.mean) / self.std
        return nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)


class TextGraph(nn.Module):
    """token ids [B, L] -> normalised features [B, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.model.encode_text(ids).float(), dim=-1)


def _export_graph(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, dynamic: dict) -> None:
    # nn.MultiheadAttention's inference fast path (a fused op ONNX has no export for) is off while
    # tracing, so attention is traced as the plain matmul/softmax it computes.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), (example,), str(path), input_names=[input_name], output_names=["features"],
                dynamic_axes={input_name: dynamic, "features": {0: "batch"}}, opset_version=OPSET, dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _refuse_unfaithful(t: DeployTask) -> None:
    bb = t.resolved.backbone
    if bb.head is not None:
        raise ConfigError(
            f"{t.run.root} was trained with {bb.info.get('method')}, whose classifier head (on image "
            "features) is not part of the ONNX graphs, so an export would not score as the run does. "
            "Score it with `domainclip predict RUN` (PyTorch), or export a LoRA / CLIP-Adapter / full run"
        )


def _tokenizer_record(t: DeployTask, out: Path) -> dict[str, Any]:
    tok = t.resolved.backbone.tokenizer
    rec: dict[str, Any] = {"input_name": "input_ids", "context_length": tok.context_length,
                           "pad_id": tok.pad_id, "trim": tok.trim, "kind": tok.kind, "tokenizer": None}
    if tok.kind == "hf" and getattr(tok.impl, "is_fast", False):
        tok.impl.save_pretrained(str(out / "tokenizer"))
        if (out / "tokenizer" / "tokenizer.json").is_file():
            rec.update(tokenizer="tokenizer/tokenizer.json", pad_token=str(tok.impl.pad_token))
            return rec
    rec["note"] = (
        "open_clip's SimpleTokenizer has no tokenizer.json; the text graph takes ids from "
        f"open_clip.tokenize(texts, context_length={tok.context_length})"
    )
    return rec


def _images(t: DeployTask, split: str, limit: int) -> list[Any]:
    """Up to `limit` readable images of the run's `split` (PIL), in manifest order."""
    man = read_manifest(t.run.setting("data.manifest"))
    out = []
    for row in (r for r in man.rows if r.split == split):
        try:
            out.append(load_image(man.image_path(row)))
        except ImageReadError:
            continue
        if len(out) >= limit:
            break
    return out


def export_onnx(
    run: str | Path, out: str | Path, *, quantize: str | None = None, checkpoint: str = "best",
    calibration_images: int = 64, parity_images: int = 32, allow_uncalibrated: bool = False,
) -> dict[str, Any]:
    """Export `run` to `out` (see the module docstring). Returns the manifest written.

    Raises:
        ConfigError: a head method, a tiled run, no fitted calibrator (unless allowed), `out`
            an existing non-export folder.
    """
    started = time.time()
    t = load_task(run, checkpoint, merge=True)
    _refuse_unfaithful(t)
    if t.calibration is None and not allow_uncalibrated:
        raise ConfigError(
            f"{t.run.root} has no fitted calibrator (calibration.json): run `domainclip evaluate "
            f"{t.run.root} --fit-temperature` first, or pass --allow-uncalibrated (recorded)"
        )
    out = _prepare_out(Path(out).expanduser())
    bb, tf = t.resolved.backbone, t.resolved.preprocess
    size = int(tf.input["image_size"])
    _export_graph(ImageGraph(bb.model, bb.mean, bb.std), torch.rand(2, 3, size, size), out / "image.onnx",
                  "pixels", {0: "batch"})
    ids = bb.tokenizer(["a photo of a defect", "an x-ray"])
    _export_graph(TextGraph(bb.model), ids, out / "text.onnx", "input_ids",
                  {0: "batch", 1: "length"} if bb.tokenizer.trim else {0: "batch"})
    W = t.task.W.float()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "graphs": {"fp32": {"image": "image.onnx", "text": "text.onnx"}},
        "default_precision": "fp32",
        "input": {"input_name": "pixels", "image_size": size, "fit": tf.input["fit"], "mean": list(bb.mean),
                  "std": list(bb.std), "fill": list(tf.fill), "resample": "bicubic", "layout":
                  "float32 NCHW RGB in [0, 1]: the image fitted to S x S (letterbox padding = fill), "
                  "divided by 255; the graph subtracts mean and divides by std"},
        "text": _tokenizer_record(t, out),
        "classes": t.classes,
        "mode": t.ps.mode,
        "class_embeddings": W.tolist(),
        "negative_embeddings": None if t.task.W_neg is None else t.task.W_neg.float().tolist(),
        "logit_scale": bb.logit_scale_value(),
        "calibrator": t.calibration,
        "provenance": {**provenance(t), "family": bb.family, "image_arch": bb.image_arch, "merged_lora": True},
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    pixels = _pixels(t, "test", parity_images)
    manifest["parity"] = {"fp32": _parity(t, out, "fp32", pixels)}
    if quantize == "int8":
        manifest["graphs"]["int8"] = _quantize(t, out, calibration_images)
        atomic_write_json(out / MANIFEST_FILE, manifest)
        manifest["parity"]["int8"] = _parity(t, out, "int8", pixels)
        ok = manifest["parity"]["int8"]["image_cosine_min"] >= INT8_MIN_COSINE
        manifest["default_precision"] = "int8" if ok else "fp32"
        if not ok:
            log.warning("int8 image features differ from fp32 (min cosine %.4f < %.2f): the export's "
                        "default stays fp32 (use --precision int8 to choose int8)",
                        manifest["parity"]["int8"]["image_cosine_min"], INT8_MIN_COSINE)
    manifest["seconds"] = round(time.time() - started, 1)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


def _prepare_out(out: Path) -> Path:
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ConfigError(f"--out {out} exists and is not an ONNX export folder; choose a new folder")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _pixels(t: DeployTask, split: str, limit: int) -> torch.Tensor:
    """[N, 3, S, S] in [0, 1] of up to `limit` images of `split` (the run's fit, unnormalised)."""
    from domainclip.deploy.onnx_runtime import preprocess

    tf = t.resolved.preprocess
    size, fit = int(tf.input["image_size"]), tf.input["fit"]
    imgs = _images(t, split, limit) or _images(t, "train", limit)
    if not imgs:
        return torch.rand(4, 3, size, size)
    return torch.from_numpy(np.stack([preprocess(im, size, fit, tuple(tf.fill)) for im in imgs]))


def _parity(t: DeployTask, out: Path, precision: str, pixels: torch.Tensor) -> dict[str, Any]:
    """Cosine of ONNX vs PyTorch image features (on `pixels`) and class-text features, and top-1
    agreement of the class decision."""
    bb = t.resolved.backbone
    model = OnnxModel.load(out, precision)
    mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.std).view(1, 3, 1, 1)
    ref = bb.encode_images((pixels - mean) / std).numpy()
    got = model.encode_images(pixels.numpy())
    top_ref = model.class_logits(ref).argmax(1)
    top_got = model.class_logits(got).argmax(1)
    texts = [x for xs in t.ps.class_texts(t.classes).values() for x in xs][:64]
    ids = bb.tokenizer(texts)
    sess = model._session("text")
    txt = sess.run(None, {"input_ids": ids.numpy()})[0]
    txt_ref = bb.encode_texts(texts).numpy()
    img_cos, txt_cos = cosine(got, ref), cosine(txt, txt_ref)
    return {
        "n_images": len(pixels),
        "image_cosine_min": float(img_cos.min()),
        "image_cosine_mean": float(img_cos.mean()),
        "text_cosine_min": float(txt_cos.min()),
        "n_texts": len(texts),
        "top1_agreement": float((top_ref == top_got).mean()),
    }


def _quantize(t: DeployTask, out: Path, n_calibration: int) -> dict[str, str]:
    """int8 graphs: the image graph statically (QDQ, per-channel weights, activation ranges from
    the 99.999th percentile over up to `n_calibration` images of the run's train split; MinMax
    and entropy calibration gave lower cosine on EfficientNet-Lite0), the text graph dynamically."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = _pixels(t, "train", n_calibration).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # one image per call: the histogram calibrators need equal-shaped batches
            self.it = iter([{"pixels": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    pre = out / "image.pre.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(out / "image.onnx"), str(pre))
        quantize_static(str(pre), str(out / "image.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.Percentile)
        quantize_dynamic(str(out / "text.onnx"), str(out / "text.int8.onnx"), weight_type=QuantType.QInt8)
    pre.unlink()
    return {"image": "image.int8.onnx", "text": "text.int8.onnx", "image_method": "static (QDQ, per-channel, percentile calibration)",
            "text_method": "dynamic", "calibration_images": str(len(calib))}
