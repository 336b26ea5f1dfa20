"""Run an exported model (`domainclip export --format onnx`) on ONNX Runtime, without torch.

Imports only numpy, pillow, onnxruntime, tokenizers and torch-free parts of domainclip
(`domainclip.datasets.geometry` / `imageio`, `domainclip.deploy.output`, `domainclip.io`), so the
`domainclip[runtime]` extra is enough to deploy; `tests/deploy/test_onnx.py` runs
`domainclip predict --onnx` in a process where importing torch fails.

The export folder (`manifest.json`, format `domainclip.onnx/1`, written by
`domainclip.deploy.export`) holds the image graph (pixels in [0, 1] after the run's fit ->
L2-normalised features; normalisation and projection inside), the text graph (token ids ->
L2-normalised features), the tokenizer files, the class text embeddings, the logit scale, the
calibrator record and the provenance. Classification needs the image graph only:
logits = logit_scale * features @ class_embeddings.T (multi-label: positive minus negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from domainclip.datasets.geometry import plan_fit
from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.deploy import output as out_mod
from domainclip.errors import ConfigError
from domainclip.io import read_json

MANIFEST_FILE = "manifest.json"
FORMAT = "domainclip.onnx/1"
PRECISIONS = ("fp32", "int8")


def preprocess(img: Image.Image, size: int, fit: str, fill: tuple[int, ...]) -> np.ndarray:
    """PIL RGB image -> float32 [3, size, size] in [0, 1]: the run's fit (resample bicubic,
    letterbox padding `fill`, the normalisation mean in uint8), exactly as the PyTorch pipeline
    (`domainclip.datasets.transforms`) before its normalisation, which the graph does."""
    arr = np.asarray(plan_fit(img.width, img.height, size, fit).apply(img, fill=fill), dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) / 255.0)


def read_export_manifest(folder: str | Path) -> dict[str, Any]:
    """The export's manifest.json, checked (format and the files it names).

    Raises:
        ConfigError: not an export folder, another format, or a graph / tokenizer file missing.
    """
    root = Path(folder).expanduser()
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError(
            f"--onnx {folder}: no {MANIFEST_FILE} there; give a folder written by "
            "`domainclip export RUN --format onnx --out DIR`"
        )
    man = read_json(path, "ONNX export manifest")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a domainclip ONNX export manifest (format {FORMAT}); re-run `domainclip export`")
    needed = [g for graphs in man["graphs"].values() for k, g in graphs.items() if k in ("image", "text")]
    if man["text"].get("tokenizer"):
        needed.append(man["text"]["tokenizer"])
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise ConfigError(
            f"--onnx {folder}: missing {', '.join(missing)} named by {MANIFEST_FILE}; copy the whole "
            "export folder, or re-run `domainclip export RUN --format onnx --out DIR`"
        )
    return man


@dataclass
class OnnxModel:
    """An exported model loaded into ONNX Runtime sessions (image graph now, text graph on use).

    Args:
        folder: the export folder.
        precision: "fp32" or "int8" (default: the export's `default_precision`).
        threads: intra-op threads (None: ONNX Runtime's default).
    """

    folder: Path
    manifest: dict[str, Any]
    precision: str
    threads: int | None = None

    @classmethod
    def load(cls, folder: str | Path, precision: str | None = None, threads: int | None = None) -> OnnxModel:
        man = read_export_manifest(folder)
        precision = precision or man.get("default_precision", "fp32")
        if precision not in man["graphs"]:
            raise ConfigError(
                f"--onnx {folder} has no {precision} graphs (it has {', '.join(man['graphs'])}); "
                "re-export with --quantize int8, or choose --precision fp32"
            )
        model = cls(Path(folder).expanduser(), man, precision, threads)
        model._image = model._session("image")
        model._text = None
        model._tokenizer = None
        return model

    def _session(self, graph: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        path = self.folder / self.manifest["graphs"][self.precision][graph]
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    # -- facts ------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def multi_label(self) -> bool:
        return self.manifest["mode"] == "multi_label"

    @property
    def calibrator(self) -> dict[str, Any] | None:
        return self.manifest.get("calibrator")

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """PIL image -> [3, S, S] float32 input of the image graph."""
        inp = self.manifest["input"]
        return preprocess(img, int(inp["image_size"]), inp["fit"], tuple(inp["fill"]))

    # -- encoders ---------------------------------------------------------------------------
    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, S, S] float32 in [0, 1] -> [B, D] L2-normalised image features."""
        name = self.manifest["input"]["input_name"]
        return self._image.run(None, {name: pixels.astype(np.float32, copy=False)})[0]

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """texts -> int64 [B, L] token ids, as the run's tokenizer makes them."""
        text = self.manifest["text"]
        if not text.get("tokenizer"):
            raise ConfigError(
                f"{self.folder}: this export has no tokenizer file ({text.get('note', '')}); score "
                "free-text prompts with `domainclip predict RUN` (PyTorch) instead"
            )
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.folder / text["tokenizer"]))
            length = int(text["context_length"])
            tok.enable_truncation(length)
            tok.enable_padding(pad_id=int(text["pad_id"]), pad_token=text["pad_token"],
                               length=None if text["trim"] else length)
            self._tokenizer = tok
        enc = self._tokenizer.encode_batch([" ".join(t.split()) for t in texts])
        return np.array([e.ids for e in enc], dtype=np.int64)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """texts -> [N, D] L2-normalised text features (text graph)."""
        if self._text is None:
            self._text = self._session("text")
        name = self.manifest["text"]["input_name"]
        return self._text.run(None, {name: self.tokenize(texts)})[0]

    # -- scoring ----------------------------------------------------------------------------
    def class_logits(self, feats: np.ndarray) -> np.ndarray:
        """[N, D] image features -> [N, C] logits (multi-label: positive minus negative)."""
        scale = float(self.manifest["logit_scale"])
        w = np.asarray(self.manifest["class_embeddings"], dtype=np.float32)
        logits = scale * feats @ w.T
        if self.manifest.get("negative_embeddings") is not None:
            neg = np.asarray(self.manifest["negative_embeddings"], dtype=np.float32)
            logits = logits - scale * feats @ neg.T
        return logits

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """[N, C] logits -> calibrated probabilities (float64): the calibrator record applied
        (any kind, `calibrators.record.record_probabilities`), then softmax (single-label) or
        sigmoid (multi-label)."""
        from domainclip.calibrators.record import record_probabilities

        return record_probabilities(self.calibrator, logits, self.multi_label,
                                    f"{self.folder / MANIFEST_FILE} calibrator")


def _read_batch(model: OnnxModel, batch: list[out_mod.InputItem]) -> tuple[list, np.ndarray | None, list]:
    """(scored items, pixels [B', 3, S, S] or None, error rows) of one batch."""
    ok, pixels, errors = [], [], []
    for item in batch:
        try:
            pixels.append(model.preprocess(load_image(item.path)))
            ok.append(item)
        except ImageReadError as exc:
            errors.append(out_mod.error_row(item, exc.reason, str(exc).split(": ", 1)[-1]))
        except (OSError, ValueError) as exc:  # a decoder failing on a damaged file
            errors.append(out_mod.error_row(item, "decode", str(exc)))
    return ok, (np.stack(pixels) if pixels else None), errors


def predict_onnx(opts: Any) -> dict[str, Any]:
    """`domainclip predict --onnx DIR ...`: score images with an exported model.

    `opts` carries the CLI options (onnx, images, data, split, out, batch_size, prompt,
    review_below, allow_ungated, allow_uncalibrated, precision, threads, progress).
    Returns the provenance written beside the output.
    """
    model = OnnxModel.load(opts.onnx, opts.precision, opts.threads)
    man = model.manifest
    what = f"the model exported to {opts.onnx}"
    out_mod.check_gate(man["provenance"].get("gate"), opts.allow_ungated, what)
    out_mod.check_calibrated(model.calibrator, opts.allow_uncalibrated, what,
                             "fit one with `domainclip evaluate RUN --fit-temperature` and export again")
    items = out_mod.list_inputs(
        opts.images, opts.data, opts.split, bool(getattr(opts, "show_paths", False))
    )
    prompts = list(opts.prompt or [])
    prompt_feats = model.encode_texts(prompts) if prompts else None
    threshold, threshold_source = out_mod.review_threshold(opts.review_below, model.calibrator)
    rules = out_mod.DecisionRules(model.calibrator, f"{opts.onnx}/{MANIFEST_FILE} calibrator")
    writer = out_mod.PredictionWriter(opts.out, out_mod.columns_for(model.classes, len(prompts), rules))
    bar = out_mod.Progress(len(items), opts.progress)
    try:
        for batch in out_mod.batches(items, opts.batch_size):
            ok, pixels, errors = _read_batch(model, batch)
            writer.write(errors)
            if pixels is not None:
                feats = model.encode_images(pixels)
                probs = model.probabilities(model.class_logits(feats))
                sims = feats @ prompt_feats.T if prompt_feats is not None else None
                writer.write(out_mod.score_rows(ok, probs, model.classes, model.multi_label, threshold,
                                                rules, sims))
            bar.update(len(batch))
    finally:
        bar.close()
    prov = {
        **man["provenance"],
        "backend": f"onnxruntime ({model.precision})",
        "export": str(Path(opts.onnx).expanduser().resolve()),
        "calibrator": model.calibrator,
        "allow_ungated": bool(opts.allow_ungated),
        "allow_uncalibrated": bool(opts.allow_uncalibrated),
        "review_below": {"value": threshold, "source": threshold_source},
        "prompts": prompts,
        "classes": model.classes,
        "input": {k: man["input"][k] for k in ("image_size", "fit")},
    }
    writer.close(prov)
    return {**prov, "counts": {"n_scored": writer.n_ok, "n_failed": writer.n_failed}}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)
