"""The vector database behind a case index: one Milvus collection, through `pymilvus`.

The same client code serves both places a collection can live:

* **Milvus Lite** (default): `INDEX/cases.db`, a local folder the embedded `milvus-lite` package
  serves in this process (a gRPC server on 127.0.0.1 in a background thread, stopped by `close`).
  One process at a time may open it (its `LOCK` file).
* **A Milvus server** (`--uri http://host:19530`): the collection lives on the server; connecting
  is bounded by `CONNECT_TIMEOUT_S` (a clear error, never a hang).

Schema (no dynamic fields, so a misspelt field in a filter is an error, not an empty result):
`id` (primary key, the row id), `vector` (float [D], L2-normalised image feature; COSINE metric,
AUTOINDEX = HNSW in Milvus Lite), `image`, `row`, `text`, `label` (`|`-joined), `labels`
(array), `split`, `group` (keyed pseudonym), `meta` (JSON of safe metadata columns), `manifest`.
The collection is named after the model fingerprint (`domainclip_cases_<16 hex>`), so vectors of
two models never share a collection, on a server either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainclip.errors import ConfigError

log = logging.getLogger(__name__)

LITE_FILE = "cases.db"
COLLECTION_PREFIX = "domainclip_cases_"
CONNECT_TIMEOUT_S = 10.0
# HNSW search breadth (Milvus Lite's own default is 64: recall@10 0.987 at 100k vectors; 128 is
# the default here, benchmarks/retrieval_index.py). Servers with another index type ignore it.
SEARCH_EF = 128
# VARCHAR limits of the schema (bytes); longer reports are cut (the index says so in its log).
TEXT_BYTES = 65_000
SHORT_BYTES = 4_096
LABELS_MAX = 64
INSTALL_HINT = 'pip install pymilvus "milvus-lite; sys_platform != \'win32\'"'
OUTPUT_FIELDS = ("image", "row", "text", "label", "split", "group", "meta", "manifest")


def _client_class():
    """pymilvus.MilvusClient, or a ConfigError naming the pip command when it is absent."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise ConfigError(
            f"case indexes need the vector database client (pymilvus, milvus-lite): {exc}. "
            f"Install them with `{INSTALL_HINT}` (they are dependencies of domainclip; a "
            "`--no-deps` install leaves them out)"
        ) from None
    # pymilvus logs every failed call with a traceback at ERROR, and Milvus Lite's in-process gRPC
    # server logs the calls it does not implement (AllocTimestamp); our errors say what happened.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    return MilvusClient


def _reason(exc: Exception) -> str:
    """The first line of a client error's message (pymilvus' `message`, without its wrapper)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def cut_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (never inside a character)."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


@dataclass
class Hit:
    """One neighbour: row id, cosine similarity and the stored fields."""

    id: str
    score: float
    fields: dict[str, Any]


class VectorStore:
    """One collection of case vectors (see the module docstring).

    Raises (on open):
        ConfigError: the client is not installed, the server cannot be reached within the
            timeout, the Lite folder is locked by another process, or (create False) there is
            no collection of this model (`fingerprint`).
    """

    def __init__(self, uri: str, dim: int | None, fingerprint: str, create: bool,
                 timeout: float | None = None) -> None:
        self.uri = uri
        self.collection = COLLECTION_PREFIX + fingerprint[:16]
        self.lite = not uri.startswith(("http://", "https://", "tcp://", "unix:"))
        client_cls = _client_class()
        timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
        try:
            self.client = client_cls(uri=uri, timeout=timeout)
        except Exception as exc:  # pymilvus raises MilvusException or grpc errors
            raise ConfigError(self._connect_message(exc, timeout)) from None
        self._check_or_create(dim, fingerprint, create)

    def _connect_message(self, exc: Exception, timeout: float) -> str:
        text = _reason(exc)
        if self.lite:
            locked = "lock" in text.lower()
            return (
                f"{self.uri}: the Milvus Lite index cannot be opened ({text})"
                + ("; another process (a running `domainclip index` or dashboard) has it open: "
                   "wait for it to finish" if locked else "")
            )
        return (
            f"cannot reach the Milvus server at {self.uri} within {timeout:g} s ({text}); check "
            "the address and port (the gRPC port, default 19530) and that the server runs"
        )

    def _check_or_create(self, dim: int | None, fingerprint: str, create: bool) -> None:
        if self.client.has_collection(self.collection):
            self.client.load_collection(self.collection)
            return
        if not create or dim is None:
            raise ConfigError(
                f"{self.uri} holds no case collection {self.collection} (of this model); build one "
                "with `domainclip index`"
            )
        self._create(dim, fingerprint)

    def _create(self, dim: int, fingerprint: str) -> None:
        from pymilvus import DataType

        c = self.client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False, description=fingerprint)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("image", DataType.VARCHAR, max_length=SHORT_BYTES)
        schema.add_field("row", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_BYTES)
        schema.add_field("label", DataType.VARCHAR, max_length=SHORT_BYTES)
        schema.add_field("labels", DataType.ARRAY, element_type=DataType.VARCHAR,
                         max_capacity=LABELS_MAX, max_length=256)
        schema.add_field("split", DataType.VARCHAR, max_length=256)
        schema.add_field("group", DataType.VARCHAR, max_length=64)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("manifest", DataType.VARCHAR, max_length=SHORT_BYTES)
        params = c.prepare_index_params()
        params.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
        c.create_collection(self.collection, schema=schema, index_params=params)

    # -- rows ---------------------------------------------------------------------------------
    def existing(self, ids: Sequence[str], chunk: int = 512) -> set[str]:
        """The row ids of `ids` already stored."""
        found: set[str] = set()
        for start in range(0, len(ids), chunk):
            part = list(ids[start:start + chunk])
            for rec in self.client.get(self.collection, ids=part, output_fields=["id"]):
                found.add(str(rec["id"]))
        return found

    def insert(self, rows: list[dict[str, Any]], chunk: int = 1000) -> None:
        """Store rows (dicts with every schema field; `vector` a list of floats); upserted, so a
        row id already stored is replaced, never duplicated."""
        for start in range(0, len(rows), chunk):
            self.client.upsert(self.collection, rows[start:start + chunk])

    def flush(self) -> None:
        """Seal what was inserted (Milvus builds the vector index of sealed segments; searches
        of unsealed rows scan them)."""
        self.client.flush(self.collection)

    def count(self) -> int:
        """Rows in the collection."""
        return int(self.client.get_collection_stats(self.collection).get("row_count", 0))

    def search(self, vectors: Sequence[Sequence[float]], k: int, where: str = "") -> list[list[Hit]]:
        """The `k` nearest rows (cosine) of each query vector, optionally filtered.

        Raises:
            ConfigError: the filter is not a valid Milvus boolean expression over the fields.
        """
        try:
            res = self.client.search(
                self.collection, data=[list(map(float, v)) for v in vectors], limit=int(k),
                filter=where or "", output_fields=list(OUTPUT_FIELDS), anns_field="vector",
                search_params={"metric_type": "COSINE", "params": {"ef": max(SEARCH_EF, int(k))}},
            )
        except Exception as exc:
            if not where:
                raise
            raise ConfigError(
                f"--filter {where!r} is not a valid filter: {_reason(exc)}. "
                "Filters are Milvus expressions over the fields label, labels, split, group, row, "
                "image, text, meta, e.g. \"label == 'pneumonia'\", \"array_contains(labels, "
                "'crack')\", \"split in ['train', 'val']\", 'meta[\"sex\"] == \"F\"'"
            ) from None
        return [[Hit(str(h["id"]), float(h["distance"]), dict(h.get("entity", {}))) for h in q] for q in res]

    def all_ids(self) -> Iterator[str]:
        """Every stored row id (for tests and small indexes)."""
        for rec in self.client.query(self.collection, filter="row >= 0", output_fields=["id"], limit=16384):
            yield str(rec["id"])

    def close(self) -> None:
        """Close the client and, for Milvus Lite, stop this process's server of the folder (so
        another process may open it)."""
        self.client.close()
        if self.lite:
            try:
                from milvus_lite.server_manager import server_manager_instance
            except ImportError:
                return
            server_manager_instance.release_server(self.uri)

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lite_uri(index_dir: Path) -> str:
    """The Milvus Lite location of an index folder."""
    return str(index_dir / LITE_FILE)


def make_private(folder: Path) -> None:
    """Owner-only permissions under `folder` (folders 0700, files 0600): an index holds report
    text and must be treated like the source data."""
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o700)
        for d in dirs:
            os.chmod(Path(root) / d, 0o700)
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                os.chmod(p, 0o600)
