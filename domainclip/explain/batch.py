"""Explain images to files: maps (.npy), overlays (.png), token HTML and an index JSON.

The index (`index.json`, `domainclip.explain.index.ExplainIndex`, format
`domainclip.explain.index/1`) lists every map with its scores and checks; the model card and the
CLI summary read it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from domainclip.datasets.transforms import ImageTransform, eval_transform
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
from domainclip.explain.index import (
    INDEX_FILE,
    ExplainIndex,
    IndexItem,
    MethodSummary,
    SkippedRow,
    TokenRecord,
)
from domainclip.explain.inputs import ModelInput, original_map, prepare_image
from domainclip.explain.localisation import localise, summarise
from domainclip.explain.render import render_overlay, save_html, save_map
from domainclip.explain.sanity import (
    UNRELATED_PROMPTS,
    deletion_insertion,
    randomised_copy,
    spearman,
)
from domainclip.explain.text import token_attribution
from domainclip.explain.tiles import stitched
from domainclip.models import Backbone
from domainclip.privacy import image_name, scrub_path

log = logging.getLogger(__name__)

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
        tolerance: pointing-game tolerance in pixels of the ORIGINAL image (maps are compared
            with the region in original pixels); pointing_tolerance: the tolerant one beside it.
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
    pointing_tolerance: float = 15.0
    seed: int = 0


class _Session:
    """One backbone + settings + image transform; holds the explainers (layers resolved once)
    and the random copy."""

    def __init__(
        self,
        bb: Backbone,
        settings: ExplainSettings,
        out: Path,
        preprocess: ImageTransform | None = None,
        show_paths: bool = False,
    ) -> None:
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
        self.show_paths = show_paths  # image paths in the index (default: rows, privacy.image_name)
        self.preprocess = preprocess or eval_transform(bb)
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
        """`pool`: the row's prompts (text, prompt_b); with `others` they form the softmax set.
        Tiled inputs: each tile explained on its own, stitched (`explain.tiles.stitched`)."""

        def one(pixels: torch.Tensor) -> SaliencyMap:
            return explainer.explain(
                pixels,
                prompt,
                method,
                others=competitors(prompt, [*pool, *self.s.others]),
                score=self.s.score,
                temperature=self.s.temperature,
                **self.s.options.get(method, {}),
            )

        if inp.tiles is None:
            return one(inp.pixels)
        aggregate = getattr(self.preprocess.tile, "aggregate", "lse")
        return stitched(one, inp.pixels, inp.tiles, aggregate)


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
    if inp.tiles is not None:
        checks = [c for c in checks if c == "localisation"]  # sanity checks run on one input
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
) -> tuple[list[IndexItem], TokenRecord | None]:
    """Every method's map (and contrast map) of one image, and its token attribution."""
    if region is not None and not np.asarray(region[0]).any():
        region = None  # an empty mask (a defect-free image): nothing to localise
    region_kind = region[1] if region is not None else None
    pool = [prompt, *([sess.s.prompt_b] if sess.s.prompt_b else [])]
    items: list[IndexItem] = []
    for method in sess.s.methods:
        sal = sess.explain(sess.explainer, inp, prompt, method, pool)
        stem = f"{row:05d}_{method}"
        title = f"{method}: {prompt[:70]}\nscore {sal.score:.3f}"
        map_file, overlay = _write_map(sess, inp, stem, sal.map, title, diverging=is_signed(method))
        loc = None
        if region is not None and "localisation" in sess.s.checks:
            loc = localise(
                original_map(inp, sal.map), region[0], sess.s.tolerance, sess.s.pointing_tolerance
            )
        item = IndexItem(
            row=row,
            image=image_name(row, inp.path, sess.show_paths),
            prompt=prompt,
            label=label,
            method=method,
            kind="saliency",
            map=map_file,
            overlay=overlay,
            score=sal.score,
            seconds=sal.seconds,
            params=sal.params,
            region=region_kind,
            localisation=loc,
            sanity=_sanity(sess, inp, sal, pool),
        )
        items.append(item)
        if sess.s.prompt_b:
            items.append(_contrast_item(sess, inp, item, sal, pool, stem))
    tokens = sess.s.token_attribution and inp.tiles is None  # token attribution needs one input
    return items, _tokens(sess, inp, prompt, row) if tokens else None


def _contrast_item(
    sess: _Session, inp: ModelInput, item: IndexItem, sal: SaliencyMap, pool: list[str], stem: str
) -> IndexItem:
    """The map of prompt A minus prompt B (same method), next to A's saliency item."""
    b = sess.explain(sess.explainer, inp, sess.s.prompt_b, sal.method, pool)
    diff = (sal.map - b.map).astype(np.float32)
    title = f"{sal.method}: A - B\nA: {item.prompt[:50]}\nB: {sess.s.prompt_b[:50]}"
    map_file, overlay = _write_map(sess, inp, f"{stem}_contrast", diff, title, True)
    return dataclasses.replace(
        item,
        kind="contrast",
        prompt_b=sess.s.prompt_b,
        map=map_file,
        overlay=overlay,
        score_b=b.score,
        seconds=sal.seconds + b.seconds,
        region=None,
        localisation=None,
        sanity={},
    )


def _tokens(sess: _Session, inp: ModelInput, prompt: str, row: int) -> TokenRecord:
    ta = token_attribution(sess.bb, inp.pixels, prompt, **sess.s.options.get("tokens", {}))
    page = save_html(ta.to_html(), sess.out / "tokens" / f"{row:05d}.html")
    return TokenRecord(
        row=row,
        image=image_name(row, inp.path, sess.show_paths),
        text=prompt,
        html=str(page.relative_to(sess.out)),
        words=ta.words,
        scores=ta.scores,
        score=ta.score,
        convergence_delta=ta.convergence_delta,
    )


def _mean(values: list[float]) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _summary(items: list[IndexItem]) -> dict[str, MethodSummary]:
    out: dict[str, MethodSummary] = {}
    saliency = [i for i in items if i.kind == "saliency"]
    for method in dict.fromkeys(i.method for i in saliency):
        rows = [i for i in saliency if i.method == method]
        keys = sorted({k for i in rows for k, v in i.sanity.items() if not isinstance(v, dict)})
        out[method] = MethodSummary(
            n=len(rows),
            mean_seconds=_mean([i.seconds for i in rows]),
            localisation=summarise([i.localisation for i in rows if i.localisation]),
            sanity={k: _mean([i.sanity.get(k, math.nan) for i in rows]) for k in keys},
        )
    return out


def _index(
    header: ExplainIndex,
    complete: bool,
    items: list[IndexItem],
    tokens: list[TokenRecord],
    skipped: list[SkippedRow],
) -> ExplainIndex:
    return dataclasses.replace(
        header,
        complete=complete,
        items=list(items),
        tokens=list(tokens),
        skipped=list(skipped),
        summary=_summary(items),
    )


def _header(sess: _Session, **where: str | None) -> ExplainIndex:
    """The index before any row: backbone, settings, input and `where` (run, manifest, split)."""
    bb, s = sess.bb, sess.s
    return ExplainIndex(
        backbone=bb.spec,
        input=sess.preprocess.input,
        score=s.score,
        temperature=s.temperature,
        methods=list(s.methods),
        checks=list(s.checks),
        settings=dataclasses.asdict(s),
        **where,
    )


def explain_files(
    bb: Backbone,
    image: str | os.PathLike[str],
    prompt: str,
    out: str | os.PathLike[str],
    settings: ExplainSettings,
    region: tuple[np.ndarray, str] | None = None,
    run: str | None = None,
    preprocess: ImageTransform | None = None,
    show_paths: bool = False,
) -> Path:
    """Explain one image file; write maps, overlays (and token HTML) and `out/index.json`
    (the image is named `privacy.GIVEN_IMAGE` there unless `show_paths`).

    Args:
        region: optional ground truth (bool mask in original pixels, "mask"|"boxes").
        preprocess: the image transform (a run's `resolve_model(...).preprocess`); default
            `eval_transform(bb)`.
    Returns:
        path of the index JSON.
    """
    prompt = check_prompts([prompt])[0]
    out = Path(out)
    sess = _Session(bb, settings, out, preprocess, show_paths)
    inp = prepare_image(bb, image, sess.preprocess)
    w, h = inp.original_size
    if region is not None and region[0].shape != (h, w):
        raise ExplainError(
            f"the {region[1]} is {region[0].shape[1]}x{region[0].shape[0]} but {image} is {w}x{h}"
        )
    items, tokens = _explain_row(sess, inp, prompt, 0, [], region)
    header = _header(sess, run=run, manifest=None, split=None)
    return _index(header, True, items, [tokens] if tokens else [], []).write(out / INDEX_FILE)


def explain_manifest(
    bb: Backbone,
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: ExplainSettings,
    split: str | None = "test",
    limit: int | None = None,
    run: str | None = None,
    preprocess: ImageTransform | None = None,
    show_paths: bool = False,
) -> Path:
    """Explain every row of a manifest split (its own text as the prompt); write `out/index.json`.
    Images go through `preprocess` (default `eval_transform(bb)`); the index names them by row
    (`privacy.image_name`) unless `show_paths`.

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
    sess = _Session(bb, settings, out, preprocess, show_paths)
    items: list[IndexItem] = []
    tokens: list[TokenRecord] = []
    skipped: list[SkippedRow] = []
    header = _header(sess, run=run, manifest=str(Path(manifest).resolve()), split=split)
    t0 = time.perf_counter()
    for n, row in enumerate(rows):
        image = man.image_path(row)
        try:
            inp = prepare_image(bb, image, sess.preprocess)
            region = region_from_meta(row.meta, man.root, inp.original_size)
            got, tok = _explain_row(sess, inp, row.text, row.row, row.label, region)
        except DomainClipError as exc:
            name = image_name(row.row, image, show_paths)
            why = str(exc) if show_paths else scrub_path(str(exc), image, name)
            skipped.append(SkippedRow(row.row, name, why))
            log.warning("skipped row %d: %s", row.row, exc)
            continue
        items.extend(got)
        tokens.extend([tok] if tok else [])
        log.info("explained %d/%d (%.1f s)", n + 1, len(rows), time.perf_counter() - t0)
        # Rewritten after every row (atomically): an interrupted batch keeps what it computed,
        # and a reader sees progress ("complete" stays false until the last row).
        _index(header, n + 1 == len(rows), items, tokens, skipped).write(out / INDEX_FILE)
    return _index(header, True, items, tokens, skipped).write(out / INDEX_FILE)
