"""`domainclip audit` through the real CLI entry point: exit codes of the gate, errors, outputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

import domainclip.audit.api as audit_api
from domainclip.audit import PlantedBiasBackbone
from domainclip.cli import main
from tests.audit.conftest import POSSIBLY, SEVERE, small_spec


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    # ECE is off here: a random tiny model is not calibrated, and this test is about framings.
    # So is the performance floor: the random tiny model is at chance (the floor has its own tests).
    path = tmp_path / "small.yaml"
    spec = small_spec(max_ece=None, performance_floor=False)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture()
def models(monkeypatch, tiny_backbone):
    """Model names the CLI resolves to a planted-bias and a clean (delta 0) model."""
    table = {
        "planted-model": PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 2.0, POSSIBLY: 0.0}),
        "clean-model": PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 0.0, POSSIBLY: 0.0}),
    }
    real = audit_api.resolve_model

    def fake(model_or_run, *args, **kwargs):
        if str(model_or_run) in table:
            return dataclasses.replace(real(table[str(model_or_run)], *args, **kwargs), label=str(model_or_run))
        return real(model_or_run, *args, **kwargs)

    monkeypatch.setattr(audit_api, "resolve_model", fake)
    return table


def _audit(run: str, spec: Path, manifest: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "audit",
            run,
            "--spec",
            str(spec),
            "--data",
            str(manifest),
            "--split",
            "all",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_gate_exits_1_on_the_planted_bias_model_and_lists_the_checks(
    models, spec_file, manifest_path, tmp_path, capsys
):
    rc = _audit(
        "planted-model",
        spec_file,
        manifest_path,
        tmp_path / "p",
        "--gate",
        "--compare",
        "clean-model",
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "vs base, alarming:" in captured.out and "vs base, hedged:" in captured.out
    assert "verdict: FAIL" in captured.out
    assert "gate: FAILED (" in captured.err and "mean_shift/alarming/class=clean" in captured.err
    data = json.loads((tmp_path / "p" / "audit.json").read_text())
    assert data["gate"]["verdict"] == "fail"
    for check_id in data["gate"]["failed"]:
        assert f"FAILED {check_id}:" in captured.out


def test_gate_exits_0_on_a_clean_model(models, spec_file, manifest_path, tmp_path, capsys):
    rc = _audit("clean-model", spec_file, manifest_path, tmp_path / "c", "--gate")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "verdict: PASS" in out
    assert json.loads((tmp_path / "c" / "audit.json").read_text())["gate"]["failed"] == []


def test_without_gate_a_failing_audit_still_exits_0(models, spec_file, manifest_path, tmp_path):
    assert _audit("planted-model", spec_file, manifest_path, tmp_path / "p") == 0


def test_bad_spec_and_missing_out_are_clear_errors(models, tmp_path, manifest_path, capsys):
    bad = tmp_path / "bad.yaml"
    raw = small_spec()
    raw["framings"]["alarming"] = "a metal surface with a severe defect"
    bad.write_text(yaml.safe_dump(raw))
    assert _audit("clean-model", bad, manifest_path, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "{finding}" in err
    rc = main(["audit", "clean-model", "--spec", str(bad), "--data", str(manifest_path)])
    assert rc == 2 and "pass --out DIR" in capsys.readouterr().err


def test_a_saved_backbone_directory_is_audited_through_the_real_loader(
    tiny_backbone, spec_file, manifest_path, tmp_path, capsys
):
    from domainclip.models import save_backbone

    saved = save_backbone(tiny_backbone, tmp_path / "tiny")
    rc = _audit(str(saved), spec_file, manifest_path, tmp_path / "real")
    assert rc == 0
    data = json.loads((tmp_path / "real" / "audit.json").read_text())
    assert data["model"]["backbone_spec"] == str(saved)
    # No planted bias, but the texts really differ here ("SEVERE", "POSSIBLY" are embedded):
    # a random model's scores move, and the audit measures it.
    assert data["comparisons"]["alarming"]["overall"]["wilcoxon"]["n_nonzero"] > 0


def test_a_run_directory_uses_its_manifest_temperature_and_output_folder(
    tiny_run, spec_file, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rc = main(["audit", str(run), "--spec", str(spec_file)])
    assert rc == 0
    data = json.loads((run / "audit" / "small" / "audit.json").read_text())
    fitted = json.loads((run / "calibration.json").read_text())["temperature"]
    assert data["model"]["temperature"] == pytest.approx(fitted)
    assert data["model"]["temperature_source"] == str(run.resolve() / "calibration.json")
    assert data["model"]["run"] == str(run.resolve())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert data["data"]["manifest"] == str(Path(config["data"]["manifest"]).resolve())
    assert data["data"]["split"] == "test"
    # probabilities are softmax(logits / T) with the run's T
    scores = (run / "audit" / "small" / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + data["data"]["n_images"] * 4
    assert f"wrote {run.resolve() / 'audit' / 'small'}" in capsys.readouterr().out


def test_a_multi_label_calibrator_is_not_applied_to_the_audit_softmax(tiny_run, spec_file, tmp_path):
    """A temperature fitted on multi-label binary logits is on another scale than the audit's
    softmax over findings: the audit scores at T = 1 and names the reason."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "calibration.json").read_text())
    record.update(temperature=148.4, mode="multi_label")
    (run / "calibration.json").write_text(json.dumps(record))
    assert main(["audit", str(run), "--spec", str(spec_file)]) == 0
    data = json.loads((run / "audit" / "small" / "audit.json").read_text())
    assert data["model"]["temperature"] == 1.0
    assert "multi-label" in data["model"]["temperature_source"]
    record["mode"] = "single_label"  # the same temperature for a softmax is applied
    (run / "calibration.json").write_text(json.dumps(record))
    assert main(["audit", str(run), "--spec", str(spec_file)]) == 0
    data = json.loads((run / "audit" / "small" / "audit.json").read_text())
    assert data["model"]["temperature"] == pytest.approx(148.4)


def test_a_robust_run_that_fails_is_offered_stronger_settings_not_the_same_remedy(
    tiny_backbone, tiny_run, manifest_path, spec_file, tmp_path
):
    """The remedy for a failed framing check names what the run trained with: a run already
    trained with `robustness` is not told to turn it on."""
    from domainclip.audit.api import run_audit
    from domainclip.audit.report import remedy_lines

    # the run's settings reach audit.json (a copy of the tiny run, robustness switched on)
    robust = tmp_path / "robust"
    shutil.copytree(tiny_run, robust)
    cfg = yaml.safe_load((robust / "config.yaml").read_text())
    cfg["robustness"] = {"enabled": True, "pool": "industrial", "k": 1, "weight": 1.0}
    (robust / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["audit", str(robust), "--spec", str(spec_file)]) == 0
    data = json.loads((robust / "audit" / "small" / "audit.json").read_text())
    assert data["model"]["robustness"] == {"pool": "industrial", "k": 1, "weight": 1.0}
    # a planted bias fails the gate: plain runs are told to turn robustness on ...
    planted = PlantedBiasBackbone.wrap(tiny_backbone, {SEVERE: 2.0, POSSIBLY: 0.0})
    report = run_audit(planted, spec_file, manifest_path, split="test", out_dir=tmp_path / "a").report
    assert report.gate.failed_checks
    plain_lines = " ".join(remedy_lines(report))
    assert "robustness.enabled=true" in plain_lines and "already trained" not in plain_lines
    # ... a robust run is offered stronger settings
    model = dataclasses.replace(report.main.model, robustness=data["model"]["robustness"])
    report = dataclasses.replace(report, main=dataclasses.replace(report.main, model=model))
    lines = " ".join(remedy_lines(report))
    assert "already trained for framing robustness (pool industrial, k 1, weight 1.0)" in lines
    assert "--set robustness.k=2 --set robustness.weight=2" in lines
    assert "robustness.enabled=true" not in lines
