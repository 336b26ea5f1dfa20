"""`domainclip index`: embed a manifest's images once with a run's model and store them, with
their reports and safe metadata, in a vector database (`domainclip.retrieval.store`).

INDEX/ (folder 0700, files 0600: it holds report text, so treat it like the source data):
    index.json   what the index is: format, the model (run, checkpoint, weights sha256, backbone,
                 input geometry) and its fingerprint, the store (Milvus Lite file or server URI),
                 dim, rows, the manifests added with counts, the pseudonym-key folder.
    cases.db/    the Milvus Lite collection (absent with --uri: the vectors live on the server).

Rows: id = "c-" + 16 hex of sha256(absolute image path, NUL, report text), so re-running adds new
rows and skips existing ones; the image's L2-normalised feature (for `fit: tile` runs the
normalised mean tile feature, `EmbeddedSplit.image_feats`); label, split, the group as its keyed
pseudonym (`privacy.pseudonym`, the key of the run's runs directory: the dashboard's
pseudonyms), the report text, and only metadata columns on `privacy.SAFE_COLUMNS` (no
`--show-column` here: an index is passed around like a data set).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainclip import __version__
from domainclip.datasets.manifest import Manifest, ManifestRow, read_manifest
from domainclip.errors import ConfigError, DataError
from domainclip.evaluation.embed import embed_split
from domainclip.io import atomic_write_json, read_json
from domainclip.privacy import is_shown_column, pseudonym, session_key
from domainclip.retrieval import store as store_mod
from domainclip.runs import ResolvedModel, resolve_model, weights_sha256

log = logging.getLogger(__name__)

FORMAT = "domainclip.index/1"
INDEX_FILE = "index.json"
# Safe columns that are manifest machinery, not case facts: not stored.
_SKIP_META = frozenset({"boxes", "mask", "width", "height", "label", "split", "textsource"})


@dataclass
class IndexInfo:
    """index.json (see the module docstring)."""

    model: dict[str, Any]
    fingerprint: str
    uri: str | None  # None: the Milvus Lite file INDEX/cases.db
    dim: int
    key_dir: str
    rows: int = 0
    added: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    version: str = __version__
    format: str = FORMAT

    def store_uri(self, index_dir: Path) -> str:
        return self.uri or store_mod.lite_uri(index_dir)

    @classmethod
    def read(cls, index_dir: Path) -> IndexInfo:
        """INDEX/index.json (ConfigError naming the folder when it is not an index)."""
        path = Path(index_dir) / INDEX_FILE
        if not path.is_file():
            raise ConfigError(
                f"{index_dir} is not a case index (no {INDEX_FILE}); build one with "
                "`domainclip index RUN --data MANIFEST --out INDEX`"
            )
        data = read_json(path, "case index")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(
                f"{path}: not a {FORMAT} index file (format {data.get('format') if isinstance(data, dict) else '?'!r}); "
                "rebuild it with `domainclip index`"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def write(self, index_dir: Path) -> None:
        atomic_write_json(Path(index_dir) / INDEX_FILE, dataclasses.asdict(self))


@dataclass
class IndexSummary:
    """What one `index` call did."""

    index_dir: Path
    added: int
    skipped_existing: int
    unreadable: dict[str, str]
    total: int
    seconds: float
    embed_seconds: float


def model_identity(resolved: ResolvedModel, checkpoint: str) -> tuple[dict[str, Any], str]:
    """(record, fingerprint) of the model vectors come from: the run, checkpoint and weights
    sha256 (or the backbone spec) and the input geometry. Equal fingerprints = comparable vectors."""
    record: dict[str, Any] = {"input": resolved.input, "backbone": resolved.backbone.spec}
    if resolved.run is not None:
        where = resolved.run.checkpoint(checkpoint)
        record.update(run=str(resolved.run.root), checkpoint=checkpoint,
                      weights_sha256=weights_sha256(where))
    else:
        record.update(run=None, checkpoint=None, weights_sha256=None, spec=resolved.label)
    ident = {k: record[k] for k in ("input", "backbone", "weights_sha256")}
    ident["spec"] = record.get("spec")
    fp = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return record, fp


def row_id(image_path: Path | str, text: str) -> str:
    """Stable id of a manifest row: its absolute image path and its report."""
    return "c-" + hashlib.sha256(f"{image_path}\0{text}".encode()).hexdigest()[:16]


def _safe_meta(row: ManifestRow) -> dict[str, str]:
    return {k: v for k, v in row.meta.items()
            if is_shown_column(k) and re.sub(r"[^a-z0-9]", "", k.lower()) not in _SKIP_META}


def case_record(manifest: Manifest, row: ManifestRow, key: bytes) -> dict[str, Any]:
    """The stored fields of one row (no vector): only safe columns; the group as a pseudonym."""
    cut = store_mod.cut_utf8
    return {
        "id": row_id(manifest.image_path(row), row.text),
        "image": cut(str(manifest.image_path(row)), store_mod.SHORT_BYTES),
        "row": int(row.row),
        "text": cut(row.text, store_mod.TEXT_BYTES),
        "label": cut("|".join(row.label), store_mod.SHORT_BYTES),
        "labels": [cut(x, 256) for x in row.label[: store_mod.LABELS_MAX]],
        "split": cut(row.split or "", 256),
        "group": pseudonym(row.group, key),
        "meta": _safe_meta(row),
        "manifest": cut(str(manifest.path or ""), store_mod.SHORT_BYTES),
    }


def _prepare_dir(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.chmod(0o700)


def open_store(index_dir: Path, info: IndexInfo, create: bool = False) -> store_mod.VectorStore:
    """The vector store of an index (its fingerprint checked)."""
    return store_mod.VectorStore(info.store_uri(index_dir), info.dim, info.fingerprint, create)


def build_index(
    model: str | Path | ResolvedModel,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    uri: str | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    batch_size: int = 32,
) -> IndexSummary:
    """Embed the rows of `data` (one split or all) not yet in the index at `out` and add them.

    Args:
        model: a run directory (or backbone spec, or an already resolved model).
        uri: a Milvus server (`http://host:19530`); default the Milvus Lite file in `out`.

    Raises:
        ConfigError: the index holds another model's vectors, its store cannot be opened, or
            the server cannot be reached (bounded timeout).
        DataError: the split has no rows or none of its images can be read.
    """
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, checkpoint=checkpoint, device=device)
    record, fp = model_identity(resolved, checkpoint)
    info = _existing_info(out, record, fp, uri)
    manifest = read_manifest(data)
    rows = [r for r in manifest.rows if split is None or r.split == split]
    if not rows:
        raise DataError(f"{manifest.path}: split {split!r} has no rows (rows per split: {manifest.split_counts()})")
    _prepare_dir(out)
    key_dir = Path(info.key_dir) if info else (resolved.run.root.parent if resolved.run else out.parent)
    key = session_key(key_dir)
    ids = [row_id(manifest.image_path(r), r.text) for r in rows]
    dim = info.dim if info else _feature_dim(resolved)
    info = info or IndexInfo(record, fp, uri, dim, str(key_dir), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    # The store is closed while embedding (minutes for a large set): an idle client channel is
    # not kept open, and another process may use the index meanwhile. Rows are upserted, so a row
    # added by someone else in between is written once.
    with open_store(out, info, create=True) as store:
        have = store.existing(ids)
    new_rows, seen = [], set(have)
    for r, i in zip(rows, ids, strict=True):
        if i not in seen:
            seen.add(i)
            new_rows.append(r)
    unreadable: dict[str, str] = {}
    t_embed = time.perf_counter()
    records = []
    if new_rows:
        emb = embed_split(resolved.backbone, dataclasses.replace(manifest, rows=new_rows), None,
                          batch_size=batch_size, transform=resolved.preprocess)
        unreadable = emb.failures
        feats = emb.image_feats.detach().float().cpu().numpy()
        records = [{**case_record(manifest, r, key), "vector": feats[i].tolist()} for i, r in enumerate(emb.rows)]
    embed_s = time.perf_counter() - t_embed
    with open_store(out, info, create=True) as store:
        if records:
            store.insert(records)
            store.flush()
        info.rows = store.count()
    added = len(records)
    info.added.append({"manifest": str(manifest.path), "split": split, "added": added,
                       "skipped_existing": len(rows) - len(new_rows), "unreadable": len(unreadable),
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    info.write(out)
    store_mod.make_private(out)
    return IndexSummary(out, added, len(rows) - len(new_rows), unreadable, info.rows,
                        time.perf_counter() - t0, embed_s)


def _existing_info(out: Path, record: dict[str, Any], fp: str, uri: str | None) -> IndexInfo | None:
    """The index already at `out` (None: a new one); refuses another model or another store."""
    if not (out / INDEX_FILE).exists():
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} exists and is not a case index; choose another --out")
        return None
    info = IndexInfo.read(out)
    if info.fingerprint != fp:
        raise ConfigError(
            f"{out} was built with another model ({_describe(info.model)}); this model is "
            f"{_describe(record)}. Vectors of two models are not comparable: write a new index "
            "(--out) or delete this one"
        )
    if uri and uri != info.uri:
        raise ConfigError(f"{out} stores its vectors at {info.uri or 'its Milvus Lite file'}, not {uri}")
    return info


def _describe(model: dict[str, Any]) -> str:
    if model.get("run"):
        sha = str(model.get("weights_sha256") or "")[:12]
        return f"run {model['run']}, checkpoint {model.get('checkpoint')}, weights {sha}, input {model.get('input')}"
    return f"backbone {model.get('spec') or model.get('backbone')}, input {model.get('input')}"


def _feature_dim(resolved: ResolvedModel) -> int:
    """Width of the model's joint embedding (one text embedded)."""
    return int(resolved.backbone.encode_texts(["x"]).shape[-1])
