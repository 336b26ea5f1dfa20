"""`ExplainIndex`: the typed content of an explanation batch's index.json.

`domainclip explain` writes it (after every row of a batch, atomically) and the model card and
the CLI summary read it back with `ExplainIndex.read`, which checks every key they use: a
damaged file is a `ResultFileError` naming the file, the key and the command to re-run.

Format `domainclip.explain.index/1` (key "format"):

    {"format", "complete": bool (false while a batch runs or after it was interrupted),
     "backbone": spec, "run": dir|null, "manifest": path|null, "split": str|null,
     "score": "similarity"|"probability", "temperature": T, "methods": [...], "checks": [...],
     "settings": {ExplainSettings as a dict}, "created": iso time,
     "items": [{"row", "image" (absolute), "prompt", "label", "method", "kind": "saliency"|"contrast",
                "prompt_b", "score_b" (contrast only), "map", "overlay" (paths relative to the
                index folder), "score", "seconds", "params", "region": "mask"|"boxes"|null,
                "localisation": {pointing, energy, area, pointing_baseline,
                    pointing_tolerant?, pointing_tolerant_baseline?, tolerance_px?}|null,
                "sanity": {randomisation_spearman, text_max_spearman, text_spearman: {prompt: rho},
                           deletion_auc, insertion_auc, random_deletion_auc, random_insertion_auc}}],
     "tokens": [{"row", "image", "text", "html", "words", "scores", "score", "convergence_delta"}],
     "skipped": [{"row", "image", "reason"}],
     "summary": {method: {"n", "mean_seconds", "localisation": {`localisation.summarise`},
                          "sanity": {mean of each number}}}}
NaN values are written as null.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from domainclip.explain.localisation import Localisation
from domainclip.io import finite_json
from domainclip.resultfile import Fields, ResultFile, ResultKind

INDEX_FORMAT = "domainclip.explain.index/1"
INDEX_FILE = "index.json"
EXPLAIN_INDEX = ResultKind(
    what="an explanation index (index.json)",
    schema=INDEX_FORMAT,
    command="domainclip explain RUN_OR_BACKBONE --manifest MANIFEST",
    key="format",
)
_NUM = (float, type(None))  # numbers may be null (NaN when written)


@dataclass(frozen=True)
class IndexItem:
    """One map: a saliency map of `prompt`, or (kind "contrast") the map of prompt - prompt_b."""

    row: int
    image: str
    prompt: str
    label: list[str]
    method: str
    kind: str
    map: str
    overlay: str
    score: float | None
    seconds: float
    params: dict[str, Any]
    region: str | None = None
    localisation: Localisation | None = None
    sanity: dict[str, Any] = field(default_factory=dict)
    prompt_b: str | None = None
    score_b: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("prompt_b", "score_b"):  # contrast maps only
            if out[key] is None:
                del out[key]
        return out


@dataclass(frozen=True)
class TokenRecord:
    """Token attribution of one row's text: words and their scores, and the HTML page."""

    row: int
    image: str
    text: str
    html: str
    words: list[str]
    scores: list[float | None]
    score: float | None
    convergence_delta: float | None


@dataclass(frozen=True)
class SkippedRow:
    """A manifest row the batch could not explain, with the reason."""

    row: int
    image: str
    reason: str


@dataclass(frozen=True)
class MethodSummary:
    """Means over one method's saliency maps: time, localisation (`localisation.summarise`:
    {"n", and when n > 0 pointing, pointing_random, ...}) and each sanity number."""

    n: int
    mean_seconds: float | None
    localisation: dict[str, Any]
    sanity: dict[str, float | None]


@dataclass
class ExplainIndex(ResultFile):
    """The index of an explanation batch (see the module docstring)."""

    backbone: str
    score: str
    temperature: float
    methods: list[str]
    checks: list[str]
    settings: dict[str, Any]
    run: str | None = None
    manifest: str | None = None
    split: str | None = None
    # {"fit", "image_size"}: the input geometry the maps were computed at (None in older files)
    input: dict[str, Any] | None = None
    complete: bool = False
    items: list[IndexItem] = field(default_factory=list)
    tokens: list[TokenRecord] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    summary: dict[str, MethodSummary] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format: str = INDEX_FORMAT

    KIND = EXPLAIN_INDEX

    def to_json(self) -> dict[str, Any]:
        """The index.json content (strict JSON: NaN becomes null)."""
        out = {
            "format": self.format,
            "backbone": self.backbone,
            "score": self.score,
            "temperature": self.temperature,
            "methods": self.methods,
            "checks": self.checks,
            "created": self.created,
            "settings": self.settings,
            "run": self.run,
            "manifest": self.manifest,
            "split": self.split,
            "input": self.input,
            "complete": self.complete,
            "items": [i.to_json() for i in self.items],
            "tokens": [asdict(t) for t in self.tokens],
            "skipped": [asdict(s) for s in self.skipped],
            "summary": {m: asdict(s) for m, s in self.summary.items()},
        }
        return finite_json(out)

    @classmethod
    def _parse(cls, f: Fields) -> ExplainIndex:
        return f.build(
            cls,
            items=[_item(i) for i in f.objects("items")],
            tokens=[_tokens(t) for t in f.objects("tokens", optional=True)],
            skipped=[s.build(SkippedRow) for s in f.objects("skipped", optional=True)],
            summary={m: _method_summary(s) for m, s in f.mapping("summary").items()},
        )


def _item(f: Fields) -> IndexItem:
    loc = f.obj("localisation", nullable=True)
    localisation = None
    if loc is not None:  # numbers may be null (NaN when written)
        keys = [k.name for k in fields(Localisation)]
        optional = {"pointing_tolerant", "pointing_tolerant_baseline", "tolerance_px"}  # newer
        localisation = Localisation(**{k: loc.get(k, *_NUM, optional=k in optional) for k in keys})
    return f.build(IndexItem, localisation=localisation)


def _tokens(f: Fields) -> TokenRecord:
    record = f.build(TokenRecord, scores=f.numbers("scores"))
    if len(record.words) != len(record.scores):
        raise f.error(f"'{f.path('words')}' and '{f.path('scores')}' differ in length")
    return record


def _method_summary(f: Fields) -> MethodSummary:
    loc = f.obj("localisation")
    if loc.get("n", int) > 0:
        for key in ("pointing", "pointing_random", "energy", "energy_random"):
            loc.get(key, *_NUM)
    sanity = f.obj("sanity")
    return f.build(
        MethodSummary,
        localisation=loc.data,
        sanity={k: sanity.get(k, *_NUM) for k in sanity.data},
    )
