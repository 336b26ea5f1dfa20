"""`ExplainIndex`: index.json round trip and clear errors for damaged or older files."""

from __future__ import annotations

import copy
import json
import math

import pytest

from domainclip.errors import ResultFileError
from domainclip.explain import ExplainSettings, explain_manifest
from domainclip.explain.index import INDEX_FORMAT, ExplainIndex


@pytest.fixture(scope="module")
def index_path(tiny_cnn, synthetic_dir, tmp_path_factory):
    settings = ExplainSettings(
        methods=("gradcam",),
        checks=("localisation", "deletion"),
        prompt_b="a clean metal surface",
        token_attribution=True,
        options={"tokens": {"steps": 4}},
    )
    out = tmp_path_factory.mktemp("index")
    return explain_manifest(tiny_cnn, synthetic_dir / "manifest.csv", out, settings, limit=2)


def test_what_is_written_reads_back_equal(index_path) -> None:
    data = json.loads(index_path.read_text())
    index = ExplainIndex.read(index_path)
    assert index.format == data["format"] == INDEX_FORMAT
    assert index.to_json() == data
    assert ExplainIndex.from_json(index.to_json()) == index
    kinds = [i.kind for i in index.items]
    assert kinds == ["saliency", "contrast"] * 2
    contrast = index.items[1]
    assert contrast.prompt_b == "a clean metal surface" and contrast.score_b is not None
    assert "prompt_b" not in data["items"][0] and "score_b" not in data["items"][0]
    assert len(index.tokens) == 2 and len(index.tokens[0].words) == len(index.tokens[0].scores)
    summary = index.summary["gradcam"]
    assert summary.n == 2
    saliency = [i for i in index.items if i.method == "gradcam" and i.kind == "saliency"]
    want = sum(i.sanity["deletion_auc"] for i in saliency) / 2
    assert math.isclose(summary.sanity["deletion_auc"], want, rel_tol=1e-9)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("items"), "'items' is missing"),
        (lambda d: d["items"][1].pop("overlay"), "'items[1].overlay' is missing"),
        (lambda d: d["items"][0].update(localisation=[1]), "'items[0].localisation' is [1]"),
        (lambda d: d["tokens"][0].update(scores=[0.1]), "differ in length"),
        (lambda d: d["summary"]["gradcam"].pop("sanity"), "'summary.gradcam.sanity' is missing"),
        (lambda d: d.update(complete="yes"), "'complete' is \"yes\", expected true/false"),
    ],
)
def test_malformed_index_names_file_key_and_command(index_path, tmp_path, change, expected):
    data = copy.deepcopy(json.loads(index_path.read_text()))
    change(data)
    path = tmp_path / "index.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError) as info:
        ExplainIndex.read(path)
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)
    assert "re-run `domainclip explain" in str(info.value)


def test_other_format_versions(index_path) -> None:
    data = json.loads(index_path.read_text())
    with pytest.raises(ResultFileError, match="written by a newer domainclip") as info:
        ExplainIndex.from_json({**data, "format": "domainclip.explain.index/2"})
    assert info.value.outdated
    with pytest.raises(ResultFileError, match="no 'format' key"):
        ExplainIndex.from_json({k: v for k, v in data.items() if k != "format"})
