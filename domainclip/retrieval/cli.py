"""`domainclip index` and `domainclip search` (see domainclip.retrieval)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from domainclip.errors import ConfigError
from domainclip.io import atomic_write_text
from domainclip.privacy import add_show_paths_argument

_NEIGHBOUR_COLUMNS = ("rank", "id", "score", "label", "split", "group", "image", "row", "report")
_DRAFT_COLUMNS = ("rank", "sentence", "score", "source_case", "source_rank", "source_image", "kind")


def _index(args: argparse.Namespace) -> int:
    from domainclip.retrieval.index import build_index

    if args.uri and not args.uri.startswith(("http://", "https://")):
        raise ConfigError(f"--uri {args.uri!r}: give a Milvus server address such as http://host:19530")
    s = build_index(args.run, args.data, args.out, split=args.split, uri=args.uri,
                    checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size)
    print(f"index {s.index_dir}: added {s.added}, skipped {s.skipped_existing} already indexed, "
          f"{len(s.unreadable)} unreadable; {s.total} cases in all ({s.seconds:.1f} s, embedding "
          f"{s.embed_seconds:.1f} s)")
    for path, why in list(s.unreadable.items())[:5]:
        print(f"  unreadable: {path}: {why}")
    print("  the index holds report text: keep it with owner-only access, like the source data")
    return 0


def _search(args: argparse.Namespace) -> int:
    from domainclip.retrieval.search import search_index

    res = search_index(args.index, image=args.image, text=args.text, k=args.k, where=args.filter or "",
                       draft=args.draft, n_sentences=args.sentences, device=args.device).named(args.show_paths)
    fmt = args.format or (Path(args.out).suffix.lstrip(".").lower() if args.out else "json")
    if fmt not in ("json", "csv"):
        raise ConfigError(f"--out {args.out}: write .json or .csv (or give --format)")
    text = json.dumps(res.to_json(), indent=2, ensure_ascii=False) + "\n" if fmt == "json" else _csv(res)
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(f"wrote {len(res.neighbours)} neighbours to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if res.note:
        print(f"note: {res.note}", file=sys.stderr)
    return 0


def _csv(res: Any) -> str:
    """Neighbours as CSV; with a draft, the draft's sentences (marked retrieved, not generated)."""
    buf = io.StringIO()
    if res.draft is not None:
        w = csv.DictWriter(buf, fieldnames=_DRAFT_COLUMNS)
        w.writeheader()
        for s in res.draft:
            w.writerow({**s.__dict__, "score": f"{s.score:.4f}", "kind": "retrieved, not generated"})
        return buf.getvalue()
    w = csv.DictWriter(buf, fieldnames=_NEIGHBOUR_COLUMNS)
    w.writeheader()
    for n in res.neighbours:
        w.writerow({c: getattr(n, c) for c in _NEIGHBOUR_COLUMNS} | {"score": f"{n.score:.4f}", "report": n.excerpt()})
    return buf.getvalue()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `index` and `search` commands."""
    p = sub.add_parser("index", help="embed a manifest's images with a run's model into a case index "
                       "(Milvus Lite, or a Milvus server with --uri)")
    p.add_argument("run", help="run directory (or a backbone spec such as 'default')")
    p.add_argument("--data", required=True, metavar="MANIFEST", help="manifest whose images and reports to index")
    p.add_argument("--split", help="only this split (default: every row)")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder (re-running adds new rows only)")
    p.add_argument("--uri", help="store the vectors on a Milvus server, e.g. http://host:19530 "
                   "(default: a Milvus Lite file in INDEX)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_index)

    s = sub.add_parser("search", help="the most similar indexed cases of an image or a text; "
                       "--draft ranks their report sentences")
    s.add_argument("index", metavar="INDEX", help="folder written by `domainclip index`")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", metavar="PATH", help="query image")
    q.add_argument("--text", help="query text")
    s.add_argument("-k", type=int, default=10, help="neighbours to return (default 10)")
    s.add_argument("--filter", help="Milvus filter over label, labels, split, group, meta, e.g. "
                   "\"label == 'pneumonia'\" or \"array_contains(labels, 'crack')\"")
    s.add_argument("--draft", action="store_true", help="rank the neighbours' report sentences against "
                   "the image (retrieved, not generated)")
    s.add_argument("--sentences", type=int, default=5, help="sentences in the draft (default 5)")
    s.add_argument("--out", help="write FILE.json or FILE.csv (default: JSON on stdout)")
    s.add_argument("--format", choices=("json", "csv"), help="output format (default: from --out, else json)")
    s.add_argument("--device", default="cpu")
    add_show_paths_argument(s)
    s.set_defaults(func=_search)
