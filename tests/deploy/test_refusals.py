"""What deploy cannot reproduce faithfully is refused with why and what to do: tiled runs (predict
and export) and head methods (export; tests/deploy/test_deploy.py)."""

from __future__ import annotations

import shutil

import yaml

from domainclip.cli import main


def test_tiled_run_is_refused_by_export_and_predict_with_why_and_what_to_do(lora_run, deploy_data, tmp_path, capsys):
    run = tmp_path / "tiled"
    shutil.copytree(lora_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["fit"] = "tile"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "trained on tiles" in err and "aggregates their logits" in err
    assert "domainclip evaluate" in err and "data.fit: letterbox" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert main(["predict", str(run), "--data", str(deploy_data), "--out", str(tmp_path / "p.csv"),
                 "--allow-ungated", "--no-progress"]) == 2
    assert "trained on tiles" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
