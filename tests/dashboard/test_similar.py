"""The Similar cases page on a copy of the session's runs directory with a case index of the LoRA
run: neighbours as the library finds them, the draft, confinement of thumbnails and indexes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from domainclip.privacy import pseudonym_key

from .conftest import APP, PATIENT_NAMES, DashRuns, serve
from .helpers import no_exceptions, page_text, widget


@pytest.fixture(scope="module")
def indexed_runs(dash_runs: DashRuns, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the runs directory whose LoRA run has RUN/index/train."""
    from domainclip.retrieval.index import build_index

    root = tmp_path_factory.mktemp("similar") / "runs"
    shutil.copytree(dash_runs.root, root)
    build_index(root / "lora", dash_runs.manifest, root / "lora" / "index" / "train", split="train")
    return root


def _page(monkeypatch, runs: Path, *roots: Path) -> AppTest:
    serve(monkeypatch, runs, *roots)
    pseudonym_key(runs)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("views/similar.py").run()
    return at


def test_similar_cases_text_and_image(monkeypatch, indexed_runs: Path, dash_runs: DashRuns) -> None:
    from domainclip.retrieval.search import search_index

    at = _page(monkeypatch, indexed_runs, dash_runs.data)
    no_exceptions(at)
    assert at.title[0].value == "Similar cases"
    widget(at, "radio", "Query").set_value("Text").run()
    at.text_input[0].input("a crack on a metal surface").run()
    no_exceptions(at)
    want = search_index(indexed_runs / "lora" / "index" / "train", text="a crack on a metal surface", k=5)
    text = page_text(at)
    for n in want.neighbours:
        assert f"similarity **{n.score:.3f}**" in text and n.excerpt() in text
    assert not any(name in text for name in PATIENT_NAMES)  # withheld column never stored or shown
    assert len(at.image) == len(want.neighbours)  # thumbnails from the allowed data root
    widget(at, "radio", "Query").set_value("Run's manifest").run()
    no_exceptions(at)
    text = page_text(at)
    assert "Draft (retrieved, not generated)" in text and "from case 1" in text


def test_similar_cases_confined(monkeypatch, indexed_runs: Path) -> None:
    """Without --data-root the neighbours' images are not read; an index built with another run
    (copied into this one) is refused."""
    at = _page(monkeypatch, indexed_runs)
    widget(at, "radio", "Query").set_value("Text").run()
    at.text_input[0].input("a scratch").run()
    no_exceptions(at)
    assert "thumbnail withheld" in page_text(at) and len(at.image) == 0
    other = indexed_runs / "probe" / "index" / "train"
    shutil.copytree(indexed_runs / "lora" / "index" / "train", other)
    at.sidebar.selectbox[0].set_value("probe").run()
    widget(at, "radio", "Query").set_value("Text").run()
    at.text_input[0].input("a scratch").run()
    no_exceptions(at)
    assert "not this run" in page_text(at)
