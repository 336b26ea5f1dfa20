"""Computations behind the Saliency explorer (no Streamlit; the page caches the results).

The model comes from `domainclip.runs.resolve_model` (with the run's calibrator), maps from
`domainclip.explain`. Uploaded images are decoded from bytes in memory and never written;
overlays are rendered to PNG bytes in memory (`domainclip.explain.render.overlay_png`).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from domainclip.calibrators import Calibrator, TemperatureCalibrator
from domainclip.explain.errors import ExplainError
from domainclip.models import Backbone

# Uploads larger than this are refused before decoding (decompression bombs).
MAX_UPLOAD_PIXELS = 50_000_000
UPLOAD_TYPES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")


@dataclass
class LoadedModel:
    """A run's model as the explorer uses it.

    Attributes:
        bb: the adapted backbone (best checkpoint).
        explainer: `ImageExplainer` reused for every map (it caches layer lookups).
        calibrator: the run's calibrator (identity if none was fitted); `temperature` is its T.
        methods: saliency methods that apply to this backbone.
        preprocess: the run's image transform (`resolve_model(run).preprocess`: its fit policy
            and input size); None = `eval_transform(bb)`.
        lock: held by every computation on `bb`. Streamlit shares one model between sessions
            and, on a widget change, starts a new script thread while the old one may still be
            computing; maps and token attribution put temporary hooks on the model, so
            overlapping calls would run through each other's hooks and return wrong scores,
            which the page would then cache.
    """

    bb: Backbone
    explainer: Any
    calibrator: Calibrator
    methods: tuple[str, ...]
    preprocess: Any = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def temperature(self) -> float:
        cal = self.calibrator
        return cal.temperature if isinstance(cal, TemperatureCalibrator) else 1.0

    def prepare(self, image: Image.Image) -> Any:
        """`explain.inputs.prepare_image` with the run's transform (a `ModelInput`)."""
        from domainclip.explain.inputs import prepare_image

        return prepare_image(self.bb, image, self.preprocess)


def load_run_model(run_dir: Path) -> LoadedModel:
    """Load a run's best checkpoint on the CPU, with its explainer and calibrator."""
    from domainclip.explain.image import ImageExplainer, methods_for
    from domainclip.runs import resolve_model

    resolved = resolve_model(run_dir, checkpoint="best", device="cpu")
    bb = resolved.backbone
    return LoadedModel(
        bb, ImageExplainer(bb), resolved.calibrator, methods_for(bb), resolved.preprocess
    )


def decode_upload(data: bytes) -> Image.Image:
    """Decode uploaded image bytes in memory to RGB (EXIF orientation applied).

    Raises:
        ExplainError: not a decodable image, or too many pixels.
    """
    from domainclip.datasets.imageio import to_rgb

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise ExplainError(
                    f"the uploaded image has {w}x{h} pixels, more than {MAX_UPLOAD_PIXELS:,}"
                )
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ExplainError(f"the uploaded file is not a readable image ({exc})") from exc


def prompt_choices(prompt_set_path: Path | None, classes: list[str]) -> dict[str, list[str]]:
    """Prompts of the run's prompt set per class ({} without a prompt set).

    Multi-label sets contribute their negative prompts too, under "no <class>".
    """
    if prompt_set_path is None or not classes:
        return {}
    from domainclip.scoring.prompts import load_prompt_set

    ps = load_prompt_set(prompt_set_path)
    covered = [c for c in classes if ps.covers(c) and c not in ps.negative_labels]
    if not covered:
        return {}
    out = dict(ps.class_texts(covered))
    if ps.multi_label:
        out.update({f"no {c}": texts for c, texts in ps.negative_texts(covered).items()})
    return out


@dataclass
class MapResult:
    """One saliency map with the numbers shown next to it."""

    map: np.ndarray
    view: np.ndarray
    method: str
    prompt: str
    similarity: float
    seconds: float
    params: dict


def compute_map(model: LoadedModel, image: Image.Image, prompt: str, method: str) -> MapResult:
    """Saliency of `prompt` on `image` with `method` (similarity score, as the explain CLI)."""
    inp = model.prepare(image)
    with model.lock:
        sal = model.explainer.explain(inp.pixels, prompt, method)
    return MapResult(sal.map, inp.view, method, prompt, sal.score, sal.seconds, sal.params)


def pair_probabilities(model: LoadedModel, image: Image.Image, prompts: list[str]) -> list[float]:
    """Temperature-scaled softmax over `prompts` for the image (which prompt fits better)."""
    import torch

    from domainclip.explain.forward import PromptScorer

    inp = model.prepare(image)
    with model.lock, torch.no_grad():
        scorer = PromptScorer(model.bb, prompts, "probability", calibrator=model.calibrator)
        return [float(v) for v in scorer(inp.pixels)[0]]


def token_attribution_html(model: LoadedModel, image: Image.Image, text: str) -> tuple[str, dict]:
    """Token attribution of `text` against `image`: (escaped HTML, numbers)."""
    from domainclip.explain.text import token_attribution

    inp = model.prepare(image)
    with model.lock:
        ta = token_attribution(model.bb, inp.pixels, text)
    numbers = {
        "similarity": ta.score,
        "reference similarity": ta.baseline_score,
        "convergence delta": ta.convergence_delta,
        "words": dict(zip(ta.words, ta.scores, strict=True)),
    }
    return ta.to_html(), numbers


def sanity_numbers(
    model: LoadedModel, image: Image.Image, prompt: str, method: str, smap: np.ndarray
) -> dict[str, Any]:
    """Sanity checks of one map: model randomisation, text sensitivity, deletion/insertion."""
    from domainclip.explain.sanity import (
        deletion_insertion,
        method_explainer,
        randomisation_check,
        text_sensitivity_check,
    )

    inp = model.prepare(image)
    explain = method_explainer(method)
    with model.lock:
        rand = randomisation_check(explain, model.bb, inp.pixels, prompt, mode="full")
        text = text_sensitivity_check(explain, model.bb, inp.pixels, prompt)
        di = deletion_insertion(model.bb, inp.pixels, prompt, smap)
    return {
        "randomisation": {
            "spearman_full": rand.spearman_full,
            "threshold": rand.threshold,
            "passed": rand.passed,
        },
        "text_sensitivity": {
            "correlations": text.correlations,
            "max_correlation": text.max_correlation,
            "threshold": text.threshold,
            "passed": text.passed,
        },
        "deletion_insertion": {
            "deletion_auc": di.deletion_auc,
            "random_deletion_auc": di.random_deletion_auc,
            "insertion_auc": di.insertion_auc,
            "random_insertion_auc": di.random_insertion_auc,
            "passed": di.passed,
            "fractions": di.fractions,
            "deletion": di.deletion,
            "insertion": di.insertion,
        },
    }
