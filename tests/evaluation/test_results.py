"""`EvaluationResult`: metrics.json round trip, schema versions and clear errors for bad files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from domainclip.errors import ConfigError, ResultFileError
from domainclip.evaluation.evaluate import EvaluationOptions, evaluate, run_evaluation
from domainclip.evaluation.results import SCHEMA, EvaluationResult
from domainclip.models import save_backbone
from domainclip.models.testing import tiny_open_clip_backbone

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


@pytest.fixture(scope="module")
def written(tmp_path_factory, synthetic_manifest) -> tuple[EvaluationResult, Path]:
    """A real evaluation of a tiny saved backbone (temperature given, so "after" exists)."""
    root = tmp_path_factory.mktemp("results")
    backbone = save_backbone(tiny_open_clip_backbone("cnn", seed=3), root / "bb")
    options = EvaluationOptions(temperature=1.5, n_boot=30, subgroups=["texture"])
    result = run_evaluation(backbone, synthetic_manifest, "test", PROMPTS, root / "eval", options)
    return result, root / "eval" / "metrics.json"


def test_what_is_written_reads_back_equal(written) -> None:
    result, path = written
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA == "domainclip.evaluation/2"
    assert data == result.to_json()
    again = EvaluationResult.read(path)
    assert again == EvaluationResult.from_json(result.to_json()) == result
    assert again.to_json() == data
    # the typed fields carry what was computed
    assert again.data.n_evaluated == result.data.n_evaluated > 0
    assert again.temperature.value == 1.5 and again.temperature.source == "given"
    assert again.calibration.after is not None
    assert set(again.calibration.subgroups) == {"texture"}
    assert again.prompts.classes == result.prompts.classes
    assert again.outputs["metrics"] == str(path)


def test_keyword_api_returns_the_metrics_json(written, synthetic_manifest, tmp_path) -> None:
    result, _ = written
    backbone = Path(result.model.spec)
    d = evaluate(
        str(backbone), synthetic_manifest, "test", PROMPTS, tmp_path, temperature=1.5, n_boot=30
    )
    assert d == json.loads((tmp_path / "metrics.json").read_text())
    assert d["classification"]["accuracy"] == result.classification["accuracy"]
    with pytest.raises(TypeError, match="n_bins_typo"):
        evaluate(str(backbone), synthetic_manifest, "test", PROMPTS, tmp_path, n_bins_typo=3)


def test_options_are_frozen_tuples() -> None:
    opts = EvaluationOptions(subgroups=["sex"], alphas=[0, 1])
    assert opts.subgroups == ("sex",) and opts.alphas == (0, 1)
    with pytest.raises(AttributeError):
        opts.n_boot = 3  # type: ignore[misc]


def test_input_geometry_is_recorded_and_older_files_read_without_it(written) -> None:
    result, _ = written
    # a plain backbone: letterbox at its native size (64 px for the tiny CNN)
    assert result.input is not None and vars(result.input) == {"fit": "letterbox", "image_size": 64}
    assert result.to_json()["input"] == {"fit": "letterbox", "image_size": 64}
    old = result.to_json()
    del old["input"]  # written before fit policies
    assert EvaluationResult.from_json(old).input is None
    bad = result.to_json()
    bad["input"] = {"fit": "letterbox", "image_size": "big"}
    with pytest.raises(ResultFileError, match=r"'input.image_size'"):
        EvaluationResult.from_json(bad)


def test_fit_and_image_size_options_change_the_input(written, synthetic_manifest, tmp_path) -> None:
    result, _ = written
    options = EvaluationOptions(temperature=1.5, n_boot=0, fit="crop", image_size=96, write=False)
    again = run_evaluation(result.model.spec, synthetic_manifest, "test", PROMPTS, None, options)
    assert vars(again.input) == {"fit": "crop", "image_size": 96}
    assert again.data.n_evaluated == result.data.n_evaluated


def test_version_1_without_schema_is_migrated(written) -> None:
    result, _ = written
    old = result.to_json()
    del old["schema"]
    assert EvaluationResult.from_json(old) == EvaluationResult.from_json(result.to_json())


def _drop(d: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    del d[last]


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: _drop(d, "calibration"), "'calibration' is missing"),
        (lambda d: _drop(d, "data.n_evaluated"), "'data.n_evaluated' is missing"),
        (lambda d: _set(d, "data.n_evaluated", "ten"), "'data.n_evaluated' is \"ten\""),
        (lambda d: _drop(d, "calibration.before.ece.value"), "'calibration.before.ece.value'"),
        (lambda d: _set(d, "calibration.before.ece.ci95", [0.1]), "has 1 bounds"),
        (lambda d: _drop(d, "calibration.after.bins_width.count"), "bins_width.count"),
        (
            lambda d: _set(d, "calibration.before.bins_mass.count", [1]),
            "lists of different lengths",
        ),
        (lambda d: _set(d, "prompts.mode", "both"), "expected single_label or multi_label"),
        (lambda d: _drop(d, "classification.accuracy"), "'classification.accuracy' is missing"),
        (lambda d: _set(d, "calibration.subgroups.texture.cast.n", None), "subgroups.texture"),
        (lambda d: _set(d, "temperature.value", True), "expected a number"),
        (lambda d: _drop(d, "retrieval.t2i_R@1"), "'retrieval.t2i_R@1' is missing"),
    ],
)
def test_malformed_content_names_file_key_and_command(written, tmp_path, change, expected):
    result, _ = written
    data = copy.deepcopy(result.to_json())
    change(data)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError) as info:
        EvaluationResult.read(path, "domainclip evaluate RUN --fit-temperature")
    message = str(info.value)
    assert str(path) in message and expected in message, message
    assert "re-run `domainclip evaluate RUN --fit-temperature`" in message
    assert not info.value.outdated
    assert isinstance(info.value, ConfigError)  # the CLI prints it without a traceback


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"schema": "domainclip.audit/1"}', "'schema' is 'domainclip.audit/1'"),
    ],
)
def test_not_a_metrics_file(tmp_path, text, expected) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(ResultFileError, match="domainclip evaluate") as info:
        EvaluationResult.read(path)
    assert expected in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("schema", "age"), [("domainclip.evaluation/0", "an older"), ("domainclip.evaluation/3", "a newer")]
)
def test_other_schema_versions_are_outdated(written, schema, age) -> None:
    data = written[0].to_json()
    data["schema"] = schema
    with pytest.raises(ResultFileError) as info:
        EvaluationResult.from_json(data, "x/metrics.json")
    assert info.value.outdated
    assert f"written by {age} domainclip ('{schema}'" in str(info.value)
    assert "re-run `domainclip evaluate" in str(info.value).lower()
