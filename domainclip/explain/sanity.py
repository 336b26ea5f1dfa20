"""Sanity checks for saliency maps: does the map depend on the model, on the text, on the pixels?

An *explainer* here is any `Callable[[Backbone, Tensor[1,3,H,W], str], ndarray[H,W]]`;
`method_explainer("gradcam")` wraps the built-in methods, `edge_map_control` is a deliberately
broken one (an edge detector that ignores model and text) that the checks must flag.

- `randomisation_check` (Adebayo et al. 2018, "Sanity checks for saliency maps"): re-initialise
  the image tower, from the top layers down (cascading) or all at once, and compare maps by
  Spearman rank correlation. A faithful explainer changes: rho of the fully randomised model
  must be below `threshold` (a negative rho means the ranking flipped: the map did change).
- `text_sensitivity_check`: maps for the true description vs unrelated and gibberish prompts;
  a map that does not change with the text (rho >= threshold) explains the image, not the pair.
- `deletion_insertion` (Petsiuk et al. 2018, RISE): remove (or insert) pixels in the map's order
  and track the score; deletion AUC should be below and insertion AUC above a random order's.

Thresholds are heuristics, reported next to the numbers; the numbers are what to read.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import sobel
from scipy.stats import spearmanr

from domainclip.explain.errors import ExplainError
from domainclip.explain.forward import PromptScorer, eval_mode
from domainclip.explain.image import ImageExplainer, make_baseline
from domainclip.explain.layers import image_tower
from domainclip.models import Backbone

Explainer = Callable[[Backbone, torch.Tensor, str], np.ndarray]

# An everyday scene and a string of non-words: neither should light up a steel or X-ray image
# the way its true description does.
UNRELATED_PROMPTS = ("a photo of a dog playing on the grass", "zorblat quenmix vartul plimdex")


def method_explainer(method: str, **options: object) -> Explainer:
    """A built-in method as an Explainer (`options` as for `ImageExplainer.explain`)."""

    def explain(bb: Backbone, pixels: torch.Tensor, prompt: str) -> np.ndarray:
        return ImageExplainer(bb).explain(pixels, prompt, method, **options).map

    explain.__name__ = f"{method}_explainer"
    return explain


def edge_map_control(bb: Backbone, pixels: torch.Tensor, prompt: str) -> np.ndarray:
    """A broken explainer for negative controls: Sobel edge magnitude of the image.

    It looks plausible (it outlines scratches and cracks) but depends on neither the model nor
    the text, so randomisation and text-sensitivity correlations are exactly 1.
    """
    grey = pixels.detach().float().cpu().reshape(3, *pixels.shape[-2:]).mean(0).numpy()
    return np.hypot(sobel(grey, axis=0), sobel(grey, axis=1)).astype(np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (1.0 for identical maps, also constant ones)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ExplainError(f"maps differ in size: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map carries no ranking to agree with
    return float(spearmanr(a, b).statistic)


@dataclass
class RandomisationResult:
    """Correlation of the original map with maps of progressively randomised image towers."""

    mode: str
    stages: list[dict] = field(
        default_factory=list
    )  # {"randomised": str, "fraction": f, "spearman": r}
    spearman_full: float = float("nan")  # fully randomised tower
    threshold: float = 0.5
    passed: bool = False


def _reinit_(params: Sequence[torch.nn.Parameter], generator: torch.Generator) -> None:
    """Scale-matched Gaussian re-initialisation, in place.

    Each tensor gets N(mean, std) of its own values: random weights at the trained scale, so a
    deep network still gives finite activations (a blind reset of batch-norm layers can blow up).
    """
    with torch.no_grad():
        for p in params:
            x = p.detach().float()
            mean = float(x.mean())
            std = float(x.std()) if x.numel() > 1 else 0.0
            std = std if std > 0 else max(abs(mean) * 0.1, 0.02)
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_((noise * std + mean).to(p.dtype).to(p.device))


def tower_parameters_top_down(bb: Backbone) -> list[str]:
    """Names of the image tower's parameters from the output towards the input.

    Registration order is not execution order (open_clip's ViT registers its output projection
    next to the class embedding), so the order is measured: one backward pass through a copy of
    the tower, recording when each parameter's gradient is accumulated (output layers first).
    Parameters that get no gradient come last.
    """
    model = copy.deepcopy(bb.model)
    prefixes = [name for name, _ in image_tower(model)]
    named = [
        (n, p)
        for n, p in model.named_parameters()
        if any(n == t or n.startswith(f"{t}.") for t in prefixes)
    ]
    order: list[str] = []
    handles = []
    for name, p in named:
        p.requires_grad_(True)
        handles.append(p.register_post_accumulate_grad_hook(lambda _p, n=name: order.append(n)))
    try:
        model.eval()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, bb.image_size, bb.image_size, generator=gen).to(bb.device)
        model.encode_image(x).float().square().sum().backward()
    finally:
        for h in handles:
            h.remove()
    seen = set(order)
    return list(dict.fromkeys(order)) + [n for n, _ in named if n not in seen]


def randomised_copy(
    bb: Backbone, fraction: float = 1.0, seed: int = 0, order: Sequence[str] | None = None
) -> tuple[Backbone, list[str]]:
    """A deep copy of `bb` whose image tower's top `fraction` of parameter tensors is random.

    Args:
        order: parameter names from output to input (`tower_parameters_top_down(bb)`, computed
            if not given).
    Returns:
        the copy and the names of the re-initialised tensors. The text tower is untouched.
    """
    order = list(order) if order is not None else tower_parameters_top_down(bb)
    k = max(1, round(fraction * len(order)))
    model = copy.deepcopy(bb.model)
    gen = torch.Generator().manual_seed(seed)
    _reinit_([model.get_parameter(n) for n in order[:k]], gen)
    return dataclasses.replace(bb, model=model, info={**bb.info, "randomised": k}), order[:k]


def randomisation_check(
    explain: Explainer,
    bb: Backbone,
    pixels: torch.Tensor,
    prompt: str,
    mode: str = "cascading",
    stages: int = 3,
    threshold: float = 0.5,
    seed: int = 0,
) -> RandomisationResult:
    """Model-parameter randomisation test.

    Args:
        explain: the explainer under test.
        mode: "cascading" (top 1/stages of the tower, then 2/stages, ..., all) or "full".
        stages: number of cascading steps.
        threshold: pass if rho of the fully randomised tower is below this.
    """
    if mode not in ("cascading", "full"):
        raise ExplainError(f"mode must be 'cascading' or 'full', not {mode!r}")
    original = explain(bb, pixels, prompt)
    fractions = [(i + 1) / stages for i in range(stages)] if mode == "cascading" else [1.0]
    result = RandomisationResult(mode=mode, threshold=threshold)
    order = tower_parameters_top_down(bb)
    for frac in fractions:
        rand_bb, names = randomised_copy(bb, frac, seed, order)
        rho = spearman(original, explain(rand_bb, pixels, prompt))
        result.stages.append(
            {
                "fraction": frac,
                "randomised": f"{len(names)} tensors down to {names[-1]}",
                "spearman": rho,
            }
        )
        del rand_bb
    result.spearman_full = result.stages[-1]["spearman"]
    result.passed = bool(result.spearman_full < threshold)
    return result


@dataclass
class TextSensitivityResult:
    """Correlation between the map of the true prompt and maps of unrelated prompts."""

    prompt: str
    correlations: dict[str, float]
    max_correlation: float
    threshold: float
    passed: bool


def text_sensitivity_check(
    explain: Explainer,
    bb: Backbone,
    pixels: torch.Tensor,
    prompt: str,
    others: Sequence[str] = UNRELATED_PROMPTS,
    threshold: float = 0.9,
) -> TextSensitivityResult:
    """Pass if every unrelated prompt's map has rho < threshold with the true prompt's map."""
    if not others:
        raise ExplainError("text sensitivity needs at least one unrelated prompt")
    base = explain(bb, pixels, prompt)
    corr = {o: spearman(base, explain(bb, pixels, o)) for o in others}
    worst = max(corr.values())
    return TextSensitivityResult(prompt, corr, worst, threshold, bool(worst < threshold))


@dataclass
class DeletionInsertionResult:
    """Score curves while pixels are removed (deletion) or revealed (insertion) in map order."""

    fractions: list[float]
    deletion: list[float]
    insertion: list[float]
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    passed: bool  # deletion AUC below random and insertion AUC above random


def _auc(fractions: np.ndarray, curve: np.ndarray) -> float:
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def _curves(
    scorer: PromptScorer,
    pixels: torch.Tensor,
    reference: torch.Tensor,
    order: np.ndarray,
    fractions: np.ndarray,
    batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    h, w = pixels.shape[-2:]
    n = h * w
    rank = torch.empty(n, dtype=torch.long)
    rank[torch.from_numpy(order)] = torch.arange(n)
    rank = rank.view(1, 1, h, w).to(pixels.device)
    counts = [round(f * n) for f in fractions]
    deleted = [torch.where(rank < c, reference, pixels) for c in counts]
    inserted = [torch.where(rank < c, pixels, reference) for c in counts]
    out = []
    with torch.no_grad():
        for images in (deleted, inserted):
            x = torch.cat(images)
            scores = torch.cat([scorer(x[i : i + batch])[:, 0] for i in range(0, len(x), batch)])
            out.append(scores.float().cpu().numpy())
    return out[0], out[1]


def deletion_insertion(
    bb: Backbone,
    pixels: torch.Tensor,
    prompt: str,
    smap: np.ndarray,
    steps: int = 16,
    baseline: str = "blur",
    seed: int = 0,
    batch: int = 16,
    scorer: PromptScorer | None = None,
) -> DeletionInsertionResult:
    """Deletion/insertion curves of `smap` and of a random pixel order (same seed, same steps).

    Args:
        smap: [H, W] map at the input resolution; pixels are taken highest value first.
        steps: number of equal fractions between 0 and 1 (steps + 1 points per curve).
        baseline: what removed pixels become ("blur" keeps colour statistics, "black", "mean").
        scorer: column 0 must be `prompt` (defaults to the similarity to `prompt`).
    """
    h, w = pixels.shape[-2:]
    smap = np.asarray(smap, dtype=np.float64)
    if smap.shape != (h, w):
        raise ExplainError(f"map {smap.shape} does not match the input {(h, w)}")
    scorer = scorer or PromptScorer(bb, [prompt])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(h * w)  # random tie-breaking, and the random-order baseline
    order = perm[np.argsort(-smap.ravel()[perm], kind="stable")]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    reference = make_baseline(pixels, baseline, bb)
    with eval_mode(bb.model):
        dele, ins = _curves(scorer, pixels, reference, order, fractions, batch)
        rdel, rins = _curves(scorer, pixels, reference, perm, fractions, batch)
    d_auc, i_auc = _auc(fractions, dele), _auc(fractions, ins)
    rd_auc, ri_auc = _auc(fractions, rdel), _auc(fractions, rins)
    return DeletionInsertionResult(
        fractions=fractions.tolist(),
        deletion=dele.tolist(),
        insertion=ins.tolist(),
        deletion_auc=d_auc,
        insertion_auc=i_auc,
        random_deletion_auc=rd_auc,
        random_insertion_auc=ri_auc,
        passed=bool(d_auc < rd_auc and i_auc > ri_auc),
    )
