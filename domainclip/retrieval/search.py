"""`domainclip search`: the k nearest cases of an image or a text, and retrieval-based drafting.

The query is embedded with the index's own model (the run and checkpoint in index.json, loaded
through `domainclip.runs.resolve_model`, with the same input geometry); a run whose checkpoint
changed since the index was built is refused (its fingerprint differs). Tiled runs: the query's
vector is the normalised mean tile feature, like the stored ones.

Drafting (`--draft`, CXR-RePaiR style): the report sentences of the k nearest cases are ranked by
the similarity of each sentence's text embedding to the query image (cosine) and the best
`n_sentences` distinct sentences are returned, each with its source case and score. The draft is
retrieved, not generated: every sentence is verbatim from a stored report.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.errors import ConfigError, DataError
from domainclip.privacy import image_name
from domainclip.retrieval.index import IndexInfo, model_identity, open_store
from domainclip.runs import ResolvedModel, resolve_model
from domainclip.scoring.tiles import TiledFeatures

DRAFT_NOTE = (
    "retrieved, not generated: every sentence is copied verbatim from the report of a similar "
    "prior case (its source is given); review before use"
)
EXCERPT_CHARS = 300
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


@dataclass
class Neighbour:
    """One similar case: rank (1 = nearest), row id, cosine similarity and its stored fields."""

    rank: int
    id: str
    score: float
    label: str
    split: str
    group: str
    image: str
    row: int
    report: str
    meta: dict[str, Any] = field(default_factory=dict)

    def excerpt(self, chars: int = EXCERPT_CHARS) -> str:
        return self.report if len(self.report) <= chars else self.report[: chars - 1] + "…"


@dataclass
class DraftSentence:
    """A report sentence of a neighbour, scored against the query image."""

    rank: int
    sentence: str
    score: float
    source_case: str
    source_rank: int
    source_image: str


@dataclass
class SearchResult:
    """Neighbours of one query (and the draft when asked for)."""

    query: dict[str, Any]
    neighbours: list[Neighbour]
    index_rows: int
    model: dict[str, Any]
    draft: list[DraftSentence] | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": self.query,
            "index_rows": self.index_rows,
            "model": self.model,
            "neighbours": [{**asdict(n), "report": n.excerpt()} for n in self.neighbours],
        }
        if self.draft is not None:
            out["draft"] = {"note": DRAFT_NOTE, "sentences": [asdict(s) for s in self.draft]}
        if self.note:
            out["note"] = self.note
        return out

    def named(self, show_paths: bool = False) -> SearchResult:
        """A copy whose neighbour and draft-source images are named by `privacy.image_name` (manifest
        row unless `show_paths`): file names often carry patient or case ids. The dashboard keeps
        the stored paths (it resolves thumbnails from them under its confinement)."""
        by_rank = {n.rank: n for n in self.neighbours}
        neighbours = [replace(n, image=image_name(n.row, n.image, show_paths)) for n in self.neighbours]
        draft = None
        if self.draft is not None:
            draft = [
                replace(s, source_image=image_name(by_rank[s.source_rank].row, s.source_image, show_paths))
                if s.source_rank in by_rank
                else s
                for s in self.draft
            ]
        return replace(self, neighbours=neighbours, draft=draft)


def split_sentences(text: str) -> list[str]:
    """Sentences of a report (split after . ! ? ; and at line breaks; empty pieces dropped)."""
    return [s.strip() for s in _SENTENCE_END.split(text or "") if len(s.strip()) > 1]


def read_query_image(path: str | Path) -> Image.Image:
    """The query image, or a DataError naming the file and what to do."""
    try:
        return load_image(path)
    except ImageReadError as exc:
        raise DataError(
            f"query image {path} cannot be read ({exc.reason}: {exc}); give a readable image "
            "file (PNG, JPEG, TIFF, BMP or DICOM)"
        ) from None


class CaseSearcher:
    """An open index with its model: embed queries, find neighbours, draft.

    Raises:
        ConfigError: not an index; the model cannot be loaded; the run's checkpoint changed since
            the index was built; the store cannot be opened.
    """

    def __init__(self, index_dir: str | Path, device: str = "cpu",
                 resolved: ResolvedModel | None = None) -> None:
        self.index_dir = Path(index_dir).expanduser()
        self.info = IndexInfo.read(self.index_dir)
        self.resolved = resolved or _load_model(self.info, device)
        _, fp = model_identity(self.resolved, self.info.model.get("checkpoint") or "best")
        if fp != self.info.fingerprint:
            raise ConfigError(
                f"{self.index_dir} was built with {self.info.model.get('run') or self.info.model.get('spec')} "
                f"(weights {str(self.info.model.get('weights_sha256'))[:12]}), which has changed since "
                "(another checkpoint or input geometry); rebuild the index with `domainclip index`"
            )
        self.store = open_store(self.index_dir, self.info)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> CaseSearcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @torch.no_grad()
    def embed_image(self, image: Image.Image) -> torch.Tensor:
        """[D] L2-normalised feature of a PIL image (tiled runs: the normalised mean tile feature)."""
        bb = self.resolved.backbone
        x = self.resolved.preprocess(image)
        if x.dim() == 4:  # tiles [T, 3, S, S]
            feats = bb.encode_images(x.to(bb.device))
            return TiledFeatures(feats, [x.shape[0]], "mean").pooled()[0].float().cpu()
        return F.normalize(bb.encode_images(x[None].to(bb.device)).float(), dim=-1)[0].cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[M, D] L2-normalised text features."""
        return F.normalize(self.resolved.backbone.encode_texts(texts).float(), dim=-1).cpu()

    def neighbours(self, vector: torch.Tensor, k: int = 10, where: str = "") -> list[Neighbour]:
        """The k nearest cases of a query vector [D] (optionally filtered)."""
        if k < 1:
            raise ConfigError(f"-k must be at least 1 (got {k})")
        hits = self.store.search([vector.tolist()], k, where)[0]
        return [
            Neighbour(i + 1, h.id, h.score, str(h.fields.get("label", "")), str(h.fields.get("split", "")),
                      str(h.fields.get("group", "")), str(h.fields.get("image", "")),
                      int(h.fields.get("row", 0)), str(h.fields.get("text", "")), dict(h.fields.get("meta") or {}))
            for i, h in enumerate(hits)
        ]

    def draft(self, image_vec: torch.Tensor, neighbours: list[Neighbour], n_sentences: int = 5) -> list[DraftSentence]:
        """The best `n_sentences` distinct report sentences of `neighbours`, scored by cosine
        with the query image (first source kept for a sentence found in several reports)."""
        seen: dict[str, tuple[str, Neighbour]] = {}
        for nb in neighbours:
            for s in split_sentences(nb.report):
                seen.setdefault(s.lower(), (s, nb))
        if not seen:
            return []
        items = list(seen.values())
        sims = self.embed_texts([s for s, _ in items]) @ image_vec.float()
        order = torch.argsort(sims, descending=True)[:n_sentences].tolist()
        return [
            DraftSentence(r + 1, items[i][0], float(sims[i]), items[i][1].id, items[i][1].rank, items[i][1].image)
            for r, i in enumerate(order)
        ]


def _load_model(info: IndexInfo, device: str) -> ResolvedModel:
    model = info.model
    if model.get("run"):
        if not Path(model["run"]).is_dir():
            raise ConfigError(
                f"the index's run {model['run']} no longer exists; queries must be embedded with "
                "the model that built the index (restore the run or rebuild the index)"
            )
        return resolve_model(model["run"], checkpoint=model.get("checkpoint") or "best", device=device)
    inp = model.get("input") or {}
    return resolve_model(model.get("spec") or model.get("backbone"), device=device,
                         fit=inp.get("fit"), image_size=inp.get("image_size"))


def search_index(
    index_dir: str | Path,
    *,
    image: str | Path | Image.Image | None = None,
    text: str | None = None,
    k: int = 10,
    where: str = "",
    draft: bool = False,
    n_sentences: int = 5,
    device: str = "cpu",
    searcher: CaseSearcher | None = None,
) -> SearchResult:
    """Neighbours of an image (a file, or a decoded PIL image) or a text (exactly one), and the
    draft (image queries only).

    Raises:
        ConfigError: bad arguments, a bad filter, or the index cannot be used.
        DataError: the query image cannot be read (the message names the file).
    """
    if (image is None) == (text is None):
        raise ConfigError("give exactly one query: --image PATH or --text \"...\"")
    if draft and image is None:
        raise ConfigError("--draft ranks report sentences against an image: give --image PATH")
    pil = image if isinstance(image, Image.Image) else read_query_image(image) if image is not None else None
    own = searcher is None
    searcher = searcher or CaseSearcher(index_dir, device)
    try:
        vec = searcher.embed_image(pil) if pil is not None else searcher.embed_texts([str(text)])[0]
        rows = searcher.store.count()
        nbs = searcher.neighbours(vec, k, where) if rows else []
        query = {"image": "(decoded image)" if isinstance(image, Image.Image) else str(image)} if image is not None else {"text": text}
        result = SearchResult({**query, "k": k, "filter": where or None}, nbs, rows, searcher.info.model)
        if not rows:
            result.note = f"the index {searcher.index_dir} is empty: add cases with `domainclip index`"
        elif not nbs:
            result.note = "no case matches the filter"
        if draft:
            result.draft = searcher.draft(vec, nbs, n_sentences) if pil is not None else []
        return result
    finally:
        if own:
            searcher.close()


__all__ = ["DRAFT_NOTE", "CaseSearcher", "SearchResult", "search_index", "split_sentences"]
