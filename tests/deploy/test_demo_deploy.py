"""The demo's last stage: export the run to ONNX and predict a few test images with the export."""

from __future__ import annotations

import csv
import json

from domainclip.demo import _deploy, _Paths


def test_demo_deploy_stage_exports_and_predicts(lora_run, deploy_data, tmp_path, capsys):
    paths = _Paths(out=tmp_path, data_dir=deploy_data.parent, run_dir=lora_run, prompts=tmp_path,
                   manifest=deploy_data)
    timings: dict[str, float] = {}
    res = _deploy(paths, "fail", timings, n_images=3)
    rows = list(csv.DictReader(res["predictions"].open()))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    prov = json.loads((tmp_path / "predictions.csv.provenance.json").read_text())
    assert prov["allow_ungated"] is True and prov["backend"].startswith("onnxruntime")
    assert (res["export_dir"] / "manifest.json").is_file() and len(timings) == 2
    printed = capsys.readouterr().out
    assert str(res["predictions"]) in printed and str(res["export_dir"]) in printed
    assert "scored with --allow-ungated" in printed
    for r in rows:  # each scored image is shown with its calibrated confidence and referral
        assert f"{r['image']}: {r['predicted']} (calibrated p {float(r['confidence']):.3f})" in printed
