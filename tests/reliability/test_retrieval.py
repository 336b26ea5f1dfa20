"""Reliability of `domainclip index` and `domainclip search`: what is not an index, damaged index
files, unreadable query images, bad filters, another model, unreachable servers (a deleted run:
tests/retrieval).

Each case gets a fresh copy (`_stage`, the small helper this file adds to the harness) of one
index built once per module from a saved tiny backbone (no fine-tuning: `index` takes a run or a
backbone spec), so a case can break its copy without touching the others.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.reliability.harness import Case, Outcome, run_case


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """data/ (12 synthetic images), bb/ and bb2/ (two different tiny backbones), index/ of bb."""
    from domainclip.cli import main
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    root = tmp_path_factory.mktemp("rel_retrieval")
    generate_synthetic(root / "data", n=12, size=64, seed=4)
    save_backbone(tiny_open_clip_backbone("cnn", image_size=64, seed=1), root / "bb")
    save_backbone(tiny_open_clip_backbone("cnn", image_size=64, seed=9), root / "bb2")
    assert main(["index", str(root / "bb"), "--data", str(root / "data" / "manifest.csv"),
                 "--split", "train", "--out", str(root / "index")]) == 0
    return root


def _stage(staged: Path, tmp: Path) -> None:
    for name in ("data", "bb", "bb2", "index"):
        shutil.copytree(staged / name, tmp / name)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def _search(tmp: Path, *more: str) -> list:
    return ["search", tmp / "index", *more]


def _image(tmp: Path) -> str:
    return str(sorted((tmp / "data" / "images").glob("*.png"))[0])


def _bad_image(tmp: Path) -> list:
    (tmp / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return _search(tmp, "--image", tmp / "scan.png")


def _damaged_index_json(tmp: Path) -> list:
    (tmp / "index" / "index.json").write_text("{ not json")
    return _search(tmp, "--text", "a crack")


def _not_an_index(tmp: Path) -> list:
    (tmp / "empty").mkdir()
    return ["search", tmp / "empty", "--text", "a crack"]


def _other_model(tmp: Path) -> list:
    return ["index", tmp / "bb2", "--data", tmp / "data" / "manifest.csv", "--out", tmp / "index"]


def _out_not_index(tmp: Path) -> list:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "a.txt").write_text("mine")
    return ["index", tmp / "bb", "--data", tmp / "data" / "manifest.csv", "--out", tmp / "notes"]


def _unreachable(tmp: Path) -> list:
    return ["index", tmp / "bb", "--data", tmp / "data" / "manifest.csv", "--out", tmp / "srv",
            "--uri", f"http://127.0.0.1:{_closed_port()}"]


def _check_untouched(tmp: Path, outcome: Outcome) -> None:
    assert (tmp / "notes" / "a.txt").read_text() == "mine" and not (tmp / "notes" / "index.json").exists()


CASES = [
    Case("a query image that cannot be read", _bad_image, r"query image .*scan\.png cannot be read"),
    Case("a query image that does not exist", lambda tmp: _search(tmp, "--image", tmp / "nope.png"),
         r"query image .*nope\.png cannot be read \(missing"),
    Case("a damaged index.json", _damaged_index_json, r"index\.json: this case index cannot be read"),
    Case("a folder that is not an index", _not_an_index, r"is not a case index.*domainclip index"),
    Case("a misspelt filter field", lambda tmp: _search(tmp, "--text", "x", "--filter", "lable == 'crack'"),
         r"not a valid filter.*unknown field 'lable'"),
    Case("a filter that does not parse", lambda tmp: _search(tmp, "--text", "x", "--filter", "label = = 'a'"),
         r"not a valid filter"),
    Case("--draft needs an image", lambda tmp: _search(tmp, "--text", "x", "--draft"), r"--draft .*give --image"),
    Case("-k below 1", lambda tmp: _search(tmp, "--image", _image(tmp), "-k", "0"), r"-k must be at least 1"),
    Case("output neither json nor csv", lambda tmp: _search(tmp, "--text", "x", "--out", tmp / "n.txt"),
         r"write \.json or \.csv"),
    Case("another model into the same index", _other_model, r"built with another model.*not comparable"),
    Case("--out a folder that is not an index", _out_not_index, r"exists and is not a case index",
         check=_check_untouched),
    Case("a Milvus server that cannot be reached", _unreachable, r"cannot reach the Milvus server at http://127\.0\.0\.1:\d+ within"),
    Case("--uri that is not a server address", lambda tmp: [*_other_model(tmp)[:4], "--out", tmp / "x", "--uri", "milvus.db"],
         r"give a Milvus server address"),
    Case("a text search works", lambda tmp: _search(tmp, "--text", "a crack", "-k", "2", "--format", "csv"),
         r"rank,id,score,label", code=0),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_retrieval_case(case: Case, staged: Path, tmp_path: Path, capsys) -> None:
    _stage(staged, tmp_path)
    run_case(case, tmp_path, capsys)
