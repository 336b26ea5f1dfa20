"""Model cards from run directories: every section read from the real files, or "not run yet"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from domainclip.audit import run_audit, write_card
from domainclip.cli import main
from domainclip.errors import ConfigError
from tests.audit.conftest import small_spec


def _config(manifest: Path) -> dict:
    from domainclip.finetune import load_config

    # as `finetune` writes it: data.fit resolved (a run's config.yaml never says "auto")
    cfg = load_config(
        "configs/demo_synthetic_lora.yaml",
        [f"data.manifest={manifest}", "train.max_steps=4", "data.fit=letterbox"],
    )
    return cfg.to_dict()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_run):
    """A copy of the tiny run with an audit and a saliency batch with sanity checks, written by
    the library into the run's default places (the model is loaded once for both)."""
    from domainclip.calibrators import load_temperature
    from domainclip.explain.batch import ExplainSettings, explain_manifest
    from domainclip.runs import load_model

    run = tmp_path_factory.mktemp("card") / "run"
    shutil.copytree(tiny_run, run)
    metrics = json.loads(next(run.glob("eval/*/metrics.json")).read_text())
    model = load_model(run)
    manifest = metrics["data"]["manifest"]
    audit = run_audit(
        model,
        small_spec(max_ece=None),
        manifest,
        out_dir=run / "audit" / "small",
        temperature=load_temperature(run),
    )
    explain_manifest(
        model,
        manifest,
        run / "explain" / "test",
        ExplainSettings(methods=("gradcam",), checks=("text", "localisation")),
        split="test",
        limit=2,
    )
    return run, metrics, audit


def test_full_card_quotes_every_source(full_run):
    run, metrics, audit = full_run
    path = write_card(run, html=True)
    assert path == run / "MODEL_CARD.md"
    md = path.read_text()
    acc = metrics["classification"]["accuracy"]
    assert f"{acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]" in md
    cal = json.loads((run / "calibration.json").read_text())
    assert f"Temperature T = {cal['temperature']:.4g}" in md
    assert f"{cal['ece_before']:.4f}" in md and f"{cal['ece_after']:.4f}" in md
    assert f"small (small-1): gate {audit.verdict.upper()}" in md
    for check in audit.data["gate"]["failed"]:
        assert check in md
    result = json.loads((run / "result.json").read_text())
    assert f"{result['trainable_params']:,} of {result['total_params']:,}" in md
    assert "gradcam" in md and "text_max_spearman" in md
    assert "Not run yet" not in md
    # training data from the run's manifest: per-class counts per split and the text sources
    assert "| scratch |" in md and "describe_boxes" in md
    assert "two separately pretrained encoders" not in md  # a tiny CLIP, not the default
    assert "Input: letterbox, 64 px (aspect-preserving resize and padding" in md
    assert "Out-of-scope use" in md and "How to reproduce" in md
    assert f"domainclip finetune {run / 'config.yaml'} --out NEW_RUN" in md
    html = path.with_suffix(".html").read_text()
    assert "<h2>Limitations</h2>" in html and "data:image/png;base64," in html


def test_missing_sections_say_which_command_produces_them(tmp_path, manifest_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_config(manifest_path)))
    md = write_card(run).read_text()
    assert "two separately pretrained encoders" in md  # this config's backbone is the default
    assert f"Not run yet: evaluation. Run `domainclip evaluate {run} --fit-temperature`." in md
    assert f"domainclip audit {run} --spec SPEC --gate" in md
    assert f"domainclip explain {run} --manifest {manifest_path} --limit 20 --sanity" in md
    assert "Training summary (result.json) not found" in md
    assert "Input: letterbox, the backbone's native size" in md


def test_card_of_a_run_from_before_fit_policies_says_crop(tmp_path, manifest_path):
    cfg = _config(manifest_path)
    del cfg["data"]["fit"], cfg["data"]["image_size"]
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    md = write_card(run).read_text()
    assert "Input: crop, the backbone's native size (shorter side resized, centre crop" in md


def test_card_cli_and_errors(full_run, tmp_path, capsys):
    run, _, _ = full_run
    out = tmp_path / "cards" / "card.md"
    assert main(["card", str(run), "--out", str(out), "--html"]) == 0
    assert out.is_file() and out.with_suffix(".html").is_file()
    assert f"wrote {out}" in capsys.readouterr().out
    # outside the run, the audit plot is linked rather than embedded
    assert "Shift distributions: `" in out.read_text()
    with pytest.raises(ConfigError, match="not a fine-tuning run"):
        write_card(tmp_path)
    assert main(["card", str(tmp_path)]) == 2


def test_unreadable_inputs_are_left_out_not_fatal(full_run, tmp_path):
    run, _, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    next(copy.glob("eval/*/metrics.json")).write_text("{not json")
    md = write_card(copy).read_text()
    assert "## Evaluation" in md and "## Prompt-framing audit" in md


def test_damaged_or_older_result_files_are_named_in_the_card(full_run, tmp_path):
    run, _, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    metrics_file = next(copy.glob("eval/*/metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "schema": "domainclip.evaluation/0"}))
    audit_file = copy / "audit" / "small" / "audit.json"
    audit = json.loads(audit_file.read_text())
    del audit["gate"]["verdict"]
    audit_file.write_text(json.dumps(audit))
    index_file = copy / "explain" / "test" / "index.json"
    index = json.loads(index_file.read_text())
    index["items"][0]["map"] = 3
    index_file.write_text(json.dumps(index))
    md = write_card(copy).read_text()
    assert f"Left out: {metrics_file}: written by an older domainclip" in md
    assert f"`domainclip evaluate {copy} --fit-temperature`" in md
    assert f"Left out: {audit_file}: 'gate.verdict' is missing" in md
    assert f"`domainclip audit {copy} --spec small --gate`" in md
    assert f"Left out: {index_file}: 'items[0].map' is 3, expected a string" in md
    assert "## Explanations: sanity checks" in md and "## Limitations" in md


def test_card_shows_the_input_geometry_of_the_evaluations(full_run, tmp_path):
    """The tiny run's evaluation (square synthetic images) cuts nothing off; a later evaluation
    on strips under crop cuts their ends off: the card says so in a plain sentence."""
    from domainclip.datasets.geometry_report import geometry_report
    from domainclip.datasets.manifest import ManifestRow, write_manifest
    from domainclip.evaluation.results import EvaluationResult
    from tests.datasets.helpers import save_rgb

    run, metrics, _ = full_run
    md = write_card(run).read_text()
    n = metrics["geometry"]["total"]["n_images"]
    assert f"Input geometry (fit letterbox at 64 px): 0 of {n} images are non-square." in md
    total = metrics["geometry"]["total"]
    assert total["n_cut"] == 0 and "outside the model's input" not in md  # square: nothing cut
    row = f"| total | {total['n_findings']} | 0 | 0 | {total['n_small']} |"
    assert row in md  # small synthetic pits do shrink below 4 px at 64 px
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    save_rgb(tmp_path / "strip.png", (1024, 256))
    boxes = json.dumps(
        [[10, 100, 60, 150, "pit"], [960, 100, 1010, 150, "pit"], [500, 100, 560, 160, "crack"]]
    )
    strips = write_manifest(
        [ManifestRow("strip.png", "t", ["pit"], split="test", meta={"boxes": boxes})],
        tmp_path / "strips.csv",
    )
    source = next(copy.glob("eval/*/metrics.json"))
    later = EvaluationResult.read(source)
    later.name, later.created = "strips_test", "2999-01-01T00:00:00Z"
    later.geometry = geometry_report(strips, 224, "crop", split="test")
    later.write(copy / "eval" / "strips_test" / "metrics.json")
    md = write_card(copy).read_text()
    sentence = (
        "2 of 3 annotated findings are outside the model's input under crop: use --fit letterbox."
    )
    assert "| pit | 2 | 2 | 0 | 0 |" in md and "| crack | 1 | 0 | 0 | 0 |" in md
    limitations = md.split("## Limitations", 1)[1]
    assert sentence in limitations


def test_card_first_screen_says_what_the_audit_could_see(full_run):
    run, _, audit = full_run
    text = write_card(run).read_text()
    head = text[: text.index("## Intended use")] if "## Intended use" in text else text
    assert "## What the framing audit could see" in head
    assert "could detect mean shifts" in head
    cells = audit.data["comparisons"]["alarming"]["per_class"]
    if all(c["status"] == "underpowered" for c in cells.values()):
        assert "Every class cell is underpowered" in head
