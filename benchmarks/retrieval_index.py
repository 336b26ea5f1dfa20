"""Case retrieval (`domainclip index` / `search`): the vector index itself, and whether neighbours
share the finding.

Scale (synthetic vectors, the default Milvus Lite store and index parameters: AUTOINDEX = HNSW,
COSINE): recall@10 of the index vs exact brute-force search on the same vectors, single-query
latency p50/p95 through the client, build time per 1k vectors (insert + index build).
Vectors: a mixture of 100 Gaussian clusters in D dimensions, L2-normalised; queries are held-out
draws from the same mixture.

Labels (`--neu MANIFEST`, from `domainclip data import neu-det ...`): the test split searched
against an index of the train split (the real `build_index` / `search_index` path); top-1
agreement (the nearest case has the query's label) and top-5 agreement (fraction of the 5
nearest with the query's label), 95% bootstrap CIs over queries, for each model given with
`--model` (a backbone spec or a run) vs a random training case.

    python benchmarks/retrieval_index.py --scale 10000
    python benchmarks/retrieval_index.py --scale 100000 --keep /tmp/r100k   # build (then again: query)
    python benchmarks/retrieval_index.py --neu /tmp/neu/manifest.csv --model default --model RUN
    python benchmarks/retrieval_index.py --neu /tmp/neu/manifest.csv --per-class 30 15   # a sample
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _mixture(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def scale(n: int, dim: int = 384, n_queries: int = 100, seed: int = 0, keep: Path | None = None) -> dict:
    """Recall@10 vs brute force, latency p50/p95, build seconds per 1k vectors.

    keep: build the store in this folder and keep it; a later call with the same folder, n, dim
    and seed reuses it (the vectors are regenerated from the seed) and only queries, so a large
    build and its queries can run as two processes of a few minutes each."""
    from domainclip.retrieval.store import VectorStore, lite_uri

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, dim)) / np.sqrt(dim)
    data = _mixture(n, dim, rng, centres)
    queries = _mixture(n_queries, dim, rng, centres)
    tmp = keep or Path(tempfile.mkdtemp(prefix="retr_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    done = tmp / f"built-{n}-{dim}-{seed}.json"
    try:
        t0 = time.perf_counter()
        store = VectorStore(lite_uri(tmp), dim, f"{seed:064x}", create=True)
        if done.is_file():
            build = json.loads(done.read_text())["build_s"]
        else:
            rows = [{"id": f"r{i}", "vector": data[i].tolist(), "image": "", "row": i, "text": "",
                     "label": "", "labels": [], "split": "train", "group": "", "meta": {},
                     "manifest": ""} for i in range(n)]
            store.insert(rows, chunk=5000)
            t_insert = time.perf_counter() - t0
            store.flush()  # as `domainclip index` does: sealed segments get the HNSW index
            store.search([queries[0].tolist()], 10)
            build = time.perf_counter() - t0
            print(f"  n={n}: insert {t_insert:.1f} s, + flush/index {build - t_insert:.1f} s",
                  file=sys.stderr, flush=True)
            if keep:
                done.write_text(json.dumps({"build_s": build}))
                store.close()
                return {"n": n, "dim": dim, "build_s_per_1k": build / n * 1000, "build_s": build}
        lat, recall = [], []
        exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]  # brute force, exact
        for q, truth in zip(queries, exact, strict=True):
            t = time.perf_counter()
            hits = store.search([q.tolist()], 10)[0]
            lat.append(time.perf_counter() - t)
            recall.append(len({int(h.id[1:]) for h in hits} & set(truth.tolist())) / 10)
        store.close()
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    ms = np.array(lat) * 1000
    return {"n": n, "dim": dim, "recall@10": float(np.mean(recall)), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "build_s_per_1k": build / n * 1000, "build_s": build}


def _ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float, float]:
    boots = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def agreement(manifest: Path, model: str, work: Path, seed: int = 0) -> dict:
    """Top-1 / top-5 label agreement of test queries against an index of the train split (the
    model loaded once; queries embedded as a batch with `embed_split`, as `search` embeds one)."""
    from domainclip.datasets.manifest import read_manifest
    from domainclip.evaluation.embed import embed_split
    from domainclip.retrieval.index import build_index
    from domainclip.retrieval.search import CaseSearcher
    from domainclip.runs import resolve_model

    resolved = resolve_model(model)
    out = work / f"index_{abs(hash(model)) % 10**8}"
    t0 = time.perf_counter()
    s = build_index(resolved, manifest, out, split="train", batch_size=64)
    build = time.perf_counter() - t0
    queries = embed_split(resolved.backbone, read_manifest(manifest), "test", batch_size=64,
                          transform=resolved.preprocess)
    top1, top5, lat = [], [], []
    with CaseSearcher(out, resolved=resolved) as searcher:
        for r, vec in zip(queries.rows, queries.image_feats.float(), strict=True):
            t = time.perf_counter()
            nbs = searcher.neighbours(vec, k=5)
            lat.append(time.perf_counter() - t)
            truth = set(r.label)
            same = [bool(truth & set(n.label.split("|"))) for n in nbs]
            top1.append(float(same[0]))
            top5.append(float(np.mean(same)))
    rng = np.random.default_rng(seed)
    return {"model": model, "n_train": s.total, "n_test": len(queries), "index_s": build,
            "top1": _ci(np.array(top1), rng), "top5": _ci(np.array(top5), rng),
            "search_p50_ms": float(np.percentile(np.array(lat) * 1000, 50))}


def random_neighbour(manifest: Path, seed: int = 0) -> dict:
    """Agreement of a training case drawn at random (5 draws per query for top-5)."""
    from domainclip.datasets.manifest import read_manifest

    man = read_manifest(manifest)
    train = [set(r.label) for r in man.rows if r.split == "train"]
    test = [set(r.label) for r in man.rows if r.split == "test"]
    rng = np.random.default_rng(seed)
    top1 = np.array([float(bool(t & train[rng.integers(len(train))])) for t in test])
    top5 = np.array([np.mean([bool(t & train[j]) for j in rng.integers(0, len(train), 5)]) for t in test])
    return {"model": "random neighbour", "top1": _ci(top1, rng), "top5": _ci(top5, rng)}


def subset(manifest: Path, per_class_train: int, per_class_test: int, out: Path, seed: int = 0,
           val: bool = False) -> Path:
    """A class-stratified sample of the train and test splits (absolute image paths), for a
    machine too slow to embed the whole data set within a few minutes; with `val`, also
    `per_class_test` val images per class (to fine-tune on the sample; train/test unchanged)."""
    import dataclasses

    from domainclip.datasets.manifest import read_manifest, write_manifest

    man = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    keep = []
    splits = [("train", per_class_train), ("test", per_class_test)] + ([("val", per_class_test)] if val else [])
    for split, per in splits:
        by: dict[str, list] = {}
        for r in man.rows:
            if r.split == split:
                by.setdefault("|".join(r.label), []).append(r)
        for rows in by.values():
            for i in rng.permutation(len(rows))[:per]:
                keep.append(dataclasses.replace(rows[i], image=str(man.image_path(rows[i]))))
    return write_manifest(keep, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, nargs="*", default=[], help="synthetic index sizes, e.g. 10000 100000")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--keep", type=Path, help="build into this folder and stop; run again to query it")
    p.add_argument("--neu", type=Path, help="NEU-DET manifest (label agreement)")
    p.add_argument("--per-class", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                   help="sample this many train and test images per class (slow machines)")
    p.add_argument("--write-sample", type=Path, metavar="CSV",
                   help="with --per-class: write the sample (with val images) here and stop")
    p.add_argument("--model", action="append", default=[], help="backbone spec or run (repeatable)")
    p.add_argument("--out", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.write_sample:
        print(subset(args.neu, *args.per_class, args.write_sample, val=True))
        return 0
    results: dict = {"scale": [], "labels": []}
    for n in args.scale:
        r = scale(n, args.dim, args.queries, keep=args.keep)
        results["scale"].append(r)
        if "recall@10" not in r:
            print(f"n={n:>7}: built in {r['build_s']:.1f} s ({r['build_s_per_1k']:.2f} s/1k); run again to query")
            continue
        print(f"n={n:>7} dim={r['dim']}: recall@10 {r['recall@10']:.4f}  p50 {r['p50_ms']:.1f} ms  "
              f"p95 {r['p95_ms']:.1f} ms  build {r['build_s_per_1k']:.2f} s/1k ({r['build_s']:.1f} s)", flush=True)
    if args.neu:
        work = Path(tempfile.mkdtemp(prefix="retr_labels_"))
        neu = subset(args.neu, *args.per_class, work / "subset.csv") if args.per_class else args.neu
        try:
            rows = [agreement(neu, m, work) for m in args.model or ["default"]]
            rows.append(random_neighbour(neu))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results["labels"] = rows
        for r in rows:
            t1, t5 = r["top1"], r["top5"]
            extra = f"  (index {r['n_train']} cases in {r['index_s']:.0f} s)" if "index_s" in r else ""
            print(f"{r['model']}: top-1 {t1[0]:.3f} [{t1[1]:.3f}, {t1[2]:.3f}]  "
                  f"top-5 {t5[0]:.3f} [{t5[1]:.3f}, {t5[2]:.3f}]{extra}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
