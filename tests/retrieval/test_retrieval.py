"""Case index and search on a tiny real run: round trip against brute force, incremental add,
model mismatch, filters, an empty index, tiles, privacy of what is stored, the CLI."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from domainclip.datasets.imageio import load_image
from domainclip.datasets.manifest import read_manifest
from domainclip.errors import ConfigError, DataError
from domainclip.evaluation.embed import embed_split
from domainclip.privacy import pseudonym, pseudonym_key
from domainclip.retrieval import store as store_mod
from domainclip.retrieval.index import IndexInfo, build_index, open_store, row_id
from domainclip.retrieval.search import DRAFT_NOTE, CaseSearcher, search_index, split_sentences
from domainclip.runs import resolve_model


def _rows(manifest: Path, split: str | None = None):
    man = read_manifest(manifest)
    return man, [r for r in man.rows if split is None or r.split == split]


def test_round_trip_matches_brute_force(built_index, tiny_run, retrieval_data):
    man, train = _rows(retrieval_data, "train")
    info = IndexInfo.read(built_index)
    assert info.rows == len(train) and info.model["run"] == str(tiny_run.resolve())
    assert len(info.model["weights_sha256"]) == 64 and info.model["input"]["fit"] == "letterbox"
    # exact cosine over the same features embedded by evaluation's embed_split
    resolved = resolve_model(tiny_run)
    emb = embed_split(resolved.backbone, man, "train", transform=resolved.preprocess)
    feats = torch.nn.functional.normalize(emb.image_feats.float(), dim=-1)
    with CaseSearcher(built_index) as s:
        vec = s.embed_image(load_image(man.image_path(train[3])))
        assert torch.allclose(vec, feats[3], atol=1e-5)
        got = s.neighbours(vec, k=len(train))
    exact = (feats @ vec).numpy()
    assert [n.id for n in got][:1] == [row_id(man.image_path(train[int(np.argmax(exact))]), train[int(np.argmax(exact))].text)]
    np.testing.assert_allclose([n.score for n in got], np.sort(exact)[::-1], atol=1e-4)
    by_id = {row_id(man.image_path(r), r.text): r for r in train}
    key = pseudonym_key(tiny_run.parent)
    for n in got:  # stored fields are the row's, the group its dashboard pseudonym
        r = by_id[n.id]
        assert n.report == r.text and n.label == "|".join(r.label) and n.split == "train"
        assert n.group == pseudonym(r.group, key) and Path(n.image) == man.image_path(r)


def test_incremental_add_skips_existing(index_copy, tiny_run, retrieval_data):
    _, rows = _rows(retrieval_data)
    _, train = _rows(retrieval_data, "train")
    s = build_index(tiny_run, retrieval_data, index_copy)
    assert (s.added, s.skipped_existing, s.total) == (len(rows) - len(train), len(train), len(rows))
    again = build_index(tiny_run, retrieval_data, index_copy)
    assert (again.added, again.skipped_existing, again.total) == (0, len(rows), len(rows))
    info = IndexInfo.read(index_copy)
    assert [a["added"] for a in info.added] == [len(train), len(rows) - len(train), 0]
    with open_store(index_copy, info) as st:
        assert sorted(st.all_ids()) == sorted({row_id(read_manifest(retrieval_data).image_path(r), r.text) for r in rows})


def test_model_mismatch_refused(index_copy, tiny_run, retrieval_data):
    other = resolve_model(str(tiny_run.parent.parent / "bb"))  # the untrained base: another model
    with pytest.raises(ConfigError, match="built with another model.*not comparable"):
        build_index(other, retrieval_data, index_copy)
    with pytest.raises(ConfigError, match="has changed since.*rebuild"):
        CaseSearcher(index_copy, resolved=other)
    assert IndexInfo.read(index_copy).rows == len(_rows(retrieval_data, "train")[1])


def test_deleted_run_is_named(tmp_path, tiny_run, retrieval_data):
    run = tmp_path / "runs" / "copy"
    shutil.copytree(tiny_run, run)
    build_index(run, retrieval_data, tmp_path / "idx", split="val")
    shutil.rmtree(run)
    with pytest.raises(ConfigError, match=r"run .*copy no longer exists.*rebuild the index"):
        search_index(tmp_path / "idx", text="a crack")


def test_filters(built_index, retrieval_data):
    _, train = _rows(retrieval_data, "train")
    label = train[0].label[0]
    want = sum(label in r.label for r in train)
    res = search_index(built_index, text="a defect", k=50, where=f"array_contains(labels, '{label}')")
    assert len(res.neighbours) == want and all(label in n.label.split("|") for n in res.neighbours)
    assert search_index(built_index, text="x", k=50, where="split == 'test'").neighbours == []
    with pytest.raises(ConfigError, match="not a valid filter.*lable"):
        search_index(built_index, text="x", where="lable == 'crack'")


def test_empty_index(tmp_path, tiny_run):
    from domainclip.retrieval.index import model_identity

    resolved = resolve_model(tiny_run)
    record, fp = model_identity(resolved, "best")
    out = tmp_path / "empty"
    out.mkdir()
    info = IndexInfo(record, fp, None, int(resolved.backbone.encode_texts(["x"]).shape[-1]), str(tmp_path))
    with open_store(out, info, create=True):
        pass
    info.write(out)
    res = search_index(out, text="a crack", k=5)
    assert res.neighbours == [] and res.index_rows == 0 and "empty" in res.note
    assert search_index(out, text="a crack", draft=False).to_json()["neighbours"] == []


def test_unreadable_query_image(built_index, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"query image .*scan\.png cannot be read"):
        search_index(built_index, image=bad)
    with pytest.raises(DataError, match="missing.png"):
        search_index(built_index, image=tmp_path / "missing.png")


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []

    def accept() -> None:
        while True:
            try:
                conns.append(srv.accept())
            except OSError:  # closed by the test
                return

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_unreachable_server_is_bounded(monkeypatch, tmp_path, tiny_run, retrieval_data):
    monkeypatch.setattr(store_mod, "CONNECT_TIMEOUT_S", 1.5)
    srv, port = _silent_server()
    try:
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=rf"cannot reach the Milvus server at http://127.0.0.1:{port} within 1.5 s"):
            store_mod.VectorStore(f"http://127.0.0.1:{port}", 8, "ab" * 32, create=True)
        assert 1.0 < time.monotonic() - t0 < 10  # waited for the timeout, then gave up
        with pytest.raises(ConfigError, match="cannot reach the Milvus server"):
            build_index(tiny_run, retrieval_data, tmp_path / "idx", split="train", uri=f"http://127.0.0.1:{port}")
    finally:
        srv.close()


def test_draft_sentences_are_retrieved(built_index, retrieval_data):
    man, test = _rows(retrieval_data, "test")
    res = search_index(built_index, image=man.image_path(test[0]), k=4, draft=True, n_sentences=3)
    reports = {n.id: n.report for n in res.neighbours}
    assert 0 < len(res.draft) <= 3
    for s in res.draft:  # verbatim from the named source's report, scores in descending order
        assert s.sentence in split_sentences(reports[s.source_case])
    assert [s.score for s in res.draft] == sorted((s.score for s in res.draft), reverse=True)
    assert res.to_json()["draft"]["note"] == DRAFT_NOTE and "not generated" in DRAFT_NOTE
    assert split_sentences("No effusion. Mild cardiomegaly;  stable.\nNo pneumothorax") == [
        "No effusion.", "Mild cardiomegaly;", "stable.", "No pneumothorax"]


def test_privacy_of_stored_rows(tmp_path, tiny_run, retrieval_data):
    """Only safe columns reach the index (checked in the database's bytes), the group is a
    pseudonym, and the folder is owner-only."""
    import csv

    with retrieval_data.open(newline="") as fh:
        src = list(csv.DictReader(fh))
    for i, rec in enumerate(src):
        rec["patient_id"], rec["sex"], rec["group"] = f"MRN-{9000 + i}", "F", f"PAT{i:04d}"
    path = retrieval_data.parent / "with_ids.csv"  # beside the original: same relative image paths
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(src[0]))
        w.writeheader()
        w.writerows(src)
    out = tmp_path / "idx"
    build_index(tiny_run, path, out, split="train")
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"MRN-9" not in blob and b"PAT00" not in blob and b"patient_id" not in blob
    res = search_index(out, text="a crack", k=3)
    assert all(n.meta.get("sex") == "F" and "patient_id" not in n.meta for n in res.neighbours)
    assert all(n.group.startswith("grp-") for n in res.neighbours)
    for p in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"


def test_tiled_model_stores_pooled_tile_feature(tmp_path, tiny_run, retrieval_data):
    from domainclip.scoring.tiles import TiledFeatures

    resolved = resolve_model(tiny_run.parent.parent / "bb", fit="tile", image_size=32)
    out = tmp_path / "tiled"
    build_index(resolved, retrieval_data, out, split="val")
    assert IndexInfo.read(out).model["input"]["fit"] == "tile"
    man, val = _rows(retrieval_data, "val")
    img = load_image(man.image_path(val[0]))
    tiles = resolved.preprocess(img)
    assert tiles.dim() == 4 and tiles.shape[0] > 1
    pooled = TiledFeatures(resolved.backbone.encode_images(tiles), [tiles.shape[0]], "mean").pooled()[0]
    with CaseSearcher(out, resolved=resolved) as s:
        vec = s.embed_image(img)
        assert torch.allclose(vec, pooled.float(), atol=1e-5)
        top = s.neighbours(vec, k=len(val))
    assert row_id(man.image_path(val[0]), val[0].text) in [n.id for n in top if n.score > 0.9999]


def test_cli_index_and_search(tmp_path, capsys, tiny_run, retrieval_data):
    from domainclip.cli import main

    out = tmp_path / "idx"
    assert main(["index", str(tiny_run), "--data", str(retrieval_data), "--split", "train", "--out", str(out)]) == 0
    assert "added 16" in capsys.readouterr().out
    man, test = _rows(retrieval_data, "test")
    img = str(man.image_path(test[0]))
    assert main(["search", str(out), "--image", img, "-k", "3", "--out", str(tmp_path / "n.csv")]) == 0
    lines = (tmp_path / "n.csv").read_text().splitlines()
    assert lines[0].startswith("rank,id,score,label") and len(lines) == 4
    assert main(["search", str(out), "--image", img, "--draft", "--format", "csv"]) == 0
    assert "retrieved, not generated" in capsys.readouterr().out
    assert main(["search", str(out), "--text", "a crack", "-k", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["query"]["text"] == "a crack" and len(data["neighbours"]) == 2


def test_search_names_neighbours_by_row_unless_show_paths(tmp_path, capsys, tiny_run, retrieval_data):
    """Neighbour file names (often MRNs or accession numbers) stay out of search output by default."""
    from domainclip.cli import main

    out = tmp_path / "idx"
    assert main(["index", str(tiny_run), "--data", str(retrieval_data), "--split", "train", "--out", str(out)]) == 0
    man, train = _rows(retrieval_data, "train")
    names = {man.image_path(r).name for r in train}
    _, test = _rows(retrieval_data, "test")
    img = str(man.image_path(test[0]))
    capsys.readouterr()
    assert main(["search", str(out), "--image", img, "-k", "5", "--draft"]) == 0
    data = json.loads(capsys.readouterr().out)
    shown = [n["image"] for n in data["neighbours"]] + [s["source_image"] for s in data["draft"]["sentences"]]
    assert shown and all(s.startswith("row ") for s in shown)
    assert not any(name in json.dumps(data) for name in names)
    assert main(["search", str(out), "--image", img, "-k", "5", "--show-paths"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(Path(n["image"]).name in names for n in data["neighbours"])
