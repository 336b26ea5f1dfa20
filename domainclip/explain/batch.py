"""Explain images to files: maps (.npy), overlays (.png), token HTML and an index JSON.

The index (`index.json`, format `domainclip.explain.index/1`) is what the dashboard reads:

    {"format": ..., "complete": bool (false while a batch runs or after it was interrupted),
     "backbone": spec, "run": dir|null, "manifest": path|null, "split": str|null,
     "score": "similarity"|"probability", "temperature": T, "methods": [...], "checks": [...],
     "settings": {ExplainSettings as a dict}, "created": iso time,
     "items": [{"row", "image" (absolute), "prompt", "label", "method", "kind": "saliency"|"contrast",
                "prompt_b" (contrast only), "map", "overlay" (paths relative to the index folder),
                "score", "seconds", "params", "region": "mask"|"boxes"|null,
                "localisation": {pointing, energy, area, pointing_baseline}|null,
                "sanity": {randomisation_spearman, text_max_spearman, text_spearman: {prompt: rho},
                           deletion_auc, insertion_auc, random_deletion_auc, random_insertion_auc}}],
     "tokens": [{"row", "image", "text", "html", "words", "scores", "score", "convergence_delta"}],
     "skipped": [{"row", "image", "reason"}],
     "summary": {method: {"n", "mean_seconds", "localisation": {`localisation.summarise`},
                          "sanity": {mean of each number}}}}
NaN values are written as null.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainclip.errors import DomainClipError
from domainclip.explain.errors import ExplainError
from domainclip.explain.forward import check_prompts
from domainclip.explain.image import (
    ImageExplainer,
    SaliencyMap,
    competitors,
    is_signed,
    methods_for,
)
from domainclip.explain.inputs import ModelInput, mask_to_view, prepare_image
from domainclip.explain.localisation import Localisation, localise, summarise
from domainclip.explain.render import render_overlay, save_html, save_map
from domainclip.explain.sanity import (
    UNRELATED_PROMPTS,
    deletion_insertion,
    randomised_copy,
    spearman,
)
from domainclip.explain.text import token_attribution
from domainclip.models import Backbone

log = logging.getLogger(__name__)

INDEX_FORMAT = "domainclip.explain.index/1"
CHECKS = ("randomisation", "text", "deletion", "localisation")


@dataclass
class ExplainSettings:
    """What to compute for each image.

    Attributes:
        methods: saliency methods (`methods_for(bb)` filters to those valid for the backbone).
        checks: subset of CHECKS; localisation runs whenever a region is known and it is listed.
        score / temperature / others: see `PromptScorer` (others compete in the softmax).
        prompt_b: optional second prompt; adds a contrast map (A - B) per method.
        token_attribution: also attribute the text to its words.
        options: method options, e.g. {"ig": {"steps": 32, "baseline": "black"}}.
        tolerance: pointing-game tolerance in pixels of the model input.
        seed: seed of the randomised model copy and the random pixel orders.
    """

    methods: Sequence[str] = ("gradcam",)
    checks: Sequence[str] = ()
    score: str = "similarity"
    temperature: float = 1.0
    others: Sequence[str] = ()
    prompt_b: str | None = None
    token_attribution: bool = False
    options: dict[str, dict] = field(default_factory=dict)
    tolerance: float = 0.0
    seed: int = 0


class _Session:
    """One backbone + settings; holds the explainers (layers resolved once) and the random copy."""

    def __init__(self, bb: Backbone, settings: ExplainSettings, out: Path) -> None:
        unknown = [c for c in settings.checks if c not in CHECKS]
        if unknown:
            raise ExplainError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
        valid = methods_for(bb)
        bad = [m for m in settings.methods if m not in valid]
        if bad:
            raise ExplainError(
                f"method(s) {', '.join(bad)} do not apply to {bb.spec} ({bb.image_arch} image "
                f"tower); use one of: {', '.join(valid)}"
            )
        if not settings.methods:
            raise ExplainError(f"no method chosen; use one of: {', '.join(valid)}")
        self.bb, self.s, self.out = bb, settings, out
        self.explainer = ImageExplainer(bb)
        self._random: ImageExplainer | None = None

    def random_explainer(self) -> ImageExplainer:
        # Built once per session: re-initialising a copy per image would dominate the run time.
        if self._random is None:
            rand_bb, _ = randomised_copy(self.bb, 1.0, self.s.seed)
            self._random = ImageExplainer(rand_bb)
        return self._random

    def explain(
        self, explainer: ImageExplainer, inp: ModelInput, prompt: str, method: str, pool: list[str]
    ) -> SaliencyMap:
        """`pool`: the row's prompts (text, prompt_b); with `others` they form the softmax set."""
        return explainer.explain(
            inp.pixels,
            prompt,
            method,
            others=competitors(prompt, [*pool, *self.s.others]),
            score=self.s.score,
            temperature=self.s.temperature,
            **self.s.options.get(method, {}),
        )


def _write_map(
    sess: _Session, inp: ModelInput, stem: str, smap: np.ndarray, title: str, diverging: bool
) -> tuple[str, str]:
    npy = save_map(smap, sess.out / "maps" / f"{stem}.npy")
    png = render_overlay(
        inp.view, smap, sess.out / "overlays" / f"{stem}.png", title=title, diverging=diverging
    )
    return str(npy.relative_to(sess.out)), str(png.relative_to(sess.out))


def _sanity(sess: _Session, inp: ModelInput, sal: SaliencyMap, pool: list[str]) -> dict:
    checks, out = sess.s.checks, {}
    if "randomisation" in checks:
        rand = sess.explain(sess.random_explainer(), inp, sal.prompt, sal.method, pool)
        out["randomisation_spearman"] = spearman(sal.map, rand.map)
    if "text" in checks:
        corr = {
            o: spearman(sal.map, sess.explain(sess.explainer, inp, o, sal.method, pool).map)
            for o in UNRELATED_PROMPTS
        }
        out["text_spearman"] = corr
        out["text_max_spearman"] = max(corr.values())
    if "deletion" in checks:
        prompts = [sal.prompt, *competitors(sal.prompt, [*pool, *sess.s.others])]
        scorer = sess.explainer.scorer(prompts, sess.s.score, sess.s.temperature)
        d = deletion_insertion(
            sess.bb, inp.pixels, sal.prompt, sal.map, scorer=scorer, seed=sess.s.seed
        )
        out.update(
            {k: getattr(d, k) for k in ("deletion_auc", "insertion_auc")}
            | {k: getattr(d, k) for k in ("random_deletion_auc", "random_insertion_auc")}
        )
    return out


def _explain_row(
    sess: _Session,
    inp: ModelInput,
    prompt: str,
    row: int,
    label: list[str],
    region: tuple[np.ndarray, str] | None,
) -> tuple[list[dict], dict | None]:
    items: list[dict] = []
    view_mask = mask_to_view(sess.bb, region[0]) if region is not None else None
    if view_mask is not None and not view_mask.any():
        view_mask = None  # the region was cropped away by the centre crop
    pool = [prompt, *([sess.s.prompt_b] if sess.s.prompt_b else [])]
    for method in sess.s.methods:
        sal = sess.explain(sess.explainer, inp, prompt, method, pool)
        stem = f"{row:05d}_{method}"
        title = f"{method}: {prompt[:70]}\nscore {sal.score:.3f}"
        map_file, overlay = _write_map(sess, inp, stem, sal.map, title, diverging=is_signed(method))
        loc = None
        if view_mask is not None and "localisation" in sess.s.checks:
            loc = localise(sal.map, view_mask, sess.s.tolerance).to_dict()
        items.append(
            {
                "row": row,
                "image": inp.path,
                "prompt": prompt,
                "label": label,
                "method": method,
                "kind": "saliency",
                "map": map_file,
                "overlay": overlay,
                "score": sal.score,
                "seconds": sal.seconds,
                "params": sal.params,
                "region": region[1] if region is not None and view_mask is not None else None,
                "localisation": loc,
                "sanity": _sanity(sess, inp, sal, pool),
            }
        )
        if sess.s.prompt_b:
            b = sess.explain(sess.explainer, inp, sess.s.prompt_b, method, pool)
            diff = (sal.map - b.map).astype(np.float32)
            title = f"{method}: A - B\nA: {prompt[:50]}\nB: {sess.s.prompt_b[:50]}"
            map_file, overlay = _write_map(sess, inp, f"{stem}_contrast", diff, title, True)
            items.append(
                {
                    **{k: items[-1][k] for k in ("row", "image", "prompt", "label", "method")},
                    "kind": "contrast",
                    "prompt_b": sess.s.prompt_b,
                    "map": map_file,
                    "overlay": overlay,
                    "score": sal.score,
                    "score_b": b.score,
                    "seconds": sal.seconds + b.seconds,
                    "params": sal.params,
                    "region": None,
                    "localisation": None,
                    "sanity": {},
                }
            )
    tokens = None
    if sess.s.token_attribution:
        ta = token_attribution(sess.bb, inp.pixels, prompt, **sess.s.options.get("tokens", {}))
        page = save_html(ta.to_html(), sess.out / "tokens" / f"{row:05d}.html")
        tokens = {
            "row": row,
            "image": inp.path,
            "text": prompt,
            "html": str(page.relative_to(sess.out)),
            "words": ta.words,
            "scores": ta.scores,
            "score": ta.score,
            "convergence_delta": ta.convergence_delta,
        }
    return items, tokens


def _mean(values: list[float]) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _summary(items: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for method in dict.fromkeys(i["method"] for i in items if i["kind"] == "saliency"):
        rows = [i for i in items if i["method"] == method and i["kind"] == "saliency"]
        locs = [i["localisation"] for i in rows if i["localisation"]]
        loc_objs = [Localisation(**d) for d in locs]
        keys = sorted({k for i in rows for k, v in i["sanity"].items() if not isinstance(v, dict)})
        out[method] = {
            "n": len(rows),
            "mean_seconds": _mean([i["seconds"] for i in rows]),
            "localisation": summarise(loc_objs),
            "sanity": {k: _mean([i["sanity"].get(k, math.nan) for i in rows]) for k in keys},
        }
    return out


def _write_index(out: Path, index: dict) -> Path:
    path = out / "index.json"
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        # nan is not JSON; null is what a reader (the dashboard) can handle.
        json.dump(_nan_to_none(index), fh, indent=2, allow_nan=False)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def _nan_to_none(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


def _index(
    header: dict, complete: bool, items: list[dict], tokens: list[dict], skipped: list[dict]
) -> dict:
    return {
        **header,
        "complete": complete,
        "items": items,
        "tokens": tokens,
        "skipped": skipped,
        "summary": _summary(items),
    }


def _header(bb: Backbone, s: ExplainSettings, **extra: object) -> dict:
    return {
        "format": INDEX_FORMAT,
        "backbone": bb.spec,
        "score": s.score,
        "temperature": s.temperature,
        "methods": list(s.methods),
        "checks": list(s.checks),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": dataclasses.asdict(s),
        **extra,
    }


def explain_files(
    bb: Backbone,
    image: str | os.PathLike[str],
    prompt: str,
    out: str | os.PathLike[str],
    settings: ExplainSettings,
    region: tuple[np.ndarray, str] | None = None,
    run: str | None = None,
) -> Path:
    """Explain one image file; write maps, overlays (and token HTML) and `out/index.json`.

    Args:
        region: optional ground truth (bool mask in original pixels, "mask"|"boxes").
    Returns:
        path of the index JSON.
    """
    prompt = check_prompts([prompt])[0]
    out = Path(out)
    sess = _Session(bb, settings, out)
    inp = prepare_image(bb, image)
    w, h = inp.original_size
    if region is not None and region[0].shape != (h, w):
        raise ExplainError(
            f"the {region[1]} is {region[0].shape[1]}x{region[0].shape[0]} but {image} is {w}x{h}"
        )
    items, tokens = _explain_row(sess, inp, prompt, 0, [], region)
    header = _header(bb, settings, run=run, manifest=None, split=None)
    return _write_index(out, _index(header, True, items, [tokens] if tokens else [], []))


def explain_manifest(
    bb: Backbone,
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: ExplainSettings,
    split: str | None = "test",
    limit: int | None = None,
    run: str | None = None,
) -> Path:
    """Explain every row of a manifest split (its own text as the prompt); write `out/index.json`.

    Rows whose image cannot be read are skipped and listed under "skipped" (the batch goes on).
    Localisation uses the row's `mask` (preferred) or `boxes` metadata.
    """
    from domainclip.datasets import read_manifest
    from domainclip.explain.inputs import region_from_meta

    man = read_manifest(manifest)
    rows = [r for r in man.rows if split is None or r.split == split]
    if not rows:
        raise ExplainError(
            f"{manifest}: no rows in split {split!r} (splits: {man.split_counts()}); "
            "pick another with --split"
        )
    if limit is not None and limit < 1:
        raise ExplainError(f"--limit must be at least 1, got {limit}")
    rows = rows[:limit] if limit else rows
    out = Path(out)
    sess = _Session(bb, settings, out)
    items, tokens, skipped = [], [], []
    header = _header(bb, settings, run=run, manifest=str(Path(manifest).resolve()), split=split)
    t0 = time.perf_counter()
    for n, row in enumerate(rows):
        image = man.image_path(row)
        try:
            inp = prepare_image(bb, image)
            region = region_from_meta(row.meta, man.root, inp.original_size)
            got, tok = _explain_row(sess, inp, row.text, row.row, row.label, region)
        except DomainClipError as exc:
            skipped.append({"row": row.row, "image": str(image), "reason": str(exc)})
            log.warning("skipped row %d: %s", row.row, exc)
            continue
        items.extend(got)
        tokens.extend([tok] if tok else [])
        log.info("explained %d/%d (%.1f s)", n + 1, len(rows), time.perf_counter() - t0)
        # Rewritten after every row (atomically): an interrupted batch keeps what it computed,
        # and a reader sees progress ("complete" stays false until the last row).
        _write_index(out, _index(header, n + 1 == len(rows), items, tokens, skipped))
    return _write_index(out, _index(header, True, items, tokens, skipped))
