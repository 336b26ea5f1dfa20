"""Similar-cases data for the dashboard page (no Streamlit): the run's case indexes and the
checks that keep a search inside the dashboard's rules.

An index is usable on the page when it lies in the run (RUN/index/<name>/index.json, read through
`RunsAccess.run_file`), was built with this run (so the model loaded is the run's own) and keeps
its vectors in its Milvus Lite folder: an index on a Milvus server is refused, because the
dashboard makes no outbound connection.
"""

from __future__ import annotations

from pathlib import Path

from domainclip.dashboard.access import PathAccessError
from domainclip.retrieval.index import INDEX_FILE, IndexInfo
from domainclip.runs.layout import INDEX_DIR


def index_names(run_dir: Path) -> list[str]:
    """Names of the run's case indexes (folders RUN/index/<name> with an index.json)."""
    root = run_dir / INDEX_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / INDEX_FILE).is_file())


def usable_index(index_dir: Path, run_dir: Path) -> IndexInfo:
    """index.json of an index the page may search.

    Raises:
        PathAccessError: built with another run or a backbone, or its vectors live on a server.
        ConfigError: not a readable index.
    """
    info = IndexInfo.read(index_dir)
    if info.uri:
        raise PathAccessError(
            f"{index_dir} keeps its vectors on the Milvus server {info.uri}; the dashboard makes no "
            "outbound connections: search it with `domainclip search`"
        )
    built = info.model.get("run")
    if not built or Path(built).resolve() != run_dir.resolve():
        raise PathAccessError(
            f"{index_dir} was built with {built or info.model.get('spec')}, not this run; the page "
            "searches an index with the model of the run it belongs to"
        )
    return info
