"""predict and export on real tiny runs: ONNX parity with PyTorch, int8, outputs and provenance,
the torch-free runtime, and what export refuses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domainclip.cli import main
from tests.deploy.conftest import make_run, write_gate

NOTORCH = '''import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
'''


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _probs(rows: list[dict]) -> np.ndarray:
    keys = [k for k in rows[0] if k.startswith("p_")]
    return np.array([[float(r[k]) for k in keys] for r in rows])


@pytest.fixture(scope="module")
def lora_export(lora_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "onnx"
    assert main(["export", str(lora_run), "--format", "onnx", "--quantize", "int8", "--out", str(out)]) == 0
    return out


def test_export_manifest_and_fp32_parity(lora_export, lora_run):
    man = json.loads((lora_export / "manifest.json").read_text())
    fp32 = man["parity"]["fp32"]
    assert fp32["image_cosine_min"] >= 0.9999 and fp32["text_cosine_min"] >= 0.9999
    assert fp32["top1_agreement"] == 1.0 and fp32["n_images"] > 0
    assert man["classes"] == ["scratch", "pit", "crack", "patch", "clean"]
    assert np.asarray(man["class_embeddings"]).shape[0] == 5
    assert man["input"]["fit"] in ("letterbox", "crop", "stretch") and man["input"]["image_size"] == 64
    assert man["calibrator"]["kind"] == "temperature"
    prov = man["provenance"]
    assert prov["gate"]["verdict"] == "pass" and prov["prompt_set"]["version"] == "synthetic-1"
    assert len(prov["weights_sha256"]) == 64 and prov["run"] == str(lora_run.resolve())
    int8 = man["parity"]["int8"]
    assert int8["image_cosine_min"] >= 0.99 and int8["top1_agreement"] >= 0.99
    assert (lora_export / "image.int8.onnx").is_file() and (lora_export / "text.int8.onnx").is_file()


def test_onnx_predictions_match_pytorch(lora_export, lora_run, deploy_data, tmp_path):
    args = ["--data", str(deploy_data), "--split", "test", "--no-progress"]
    assert main(["predict", str(lora_run), *args, "--out", str(tmp_path / "pt.csv")]) == 0
    assert main(["predict", "--onnx", str(lora_export), "--precision", "fp32", *args,
                 "--out", str(tmp_path / "ort.jsonl")]) == 0
    pt, ort = _rows(tmp_path / "pt.csv"), _rows(tmp_path / "ort.jsonl")
    assert [r["image"] for r in pt] == [r["image"] for r in ort] and len(pt) > 0
    assert np.abs(_probs(pt) - _probs(ort)).max() < 1e-4
    assert [r["predicted"] for r in pt] == [r["predicted"] for r in ort]
    prov = json.loads((tmp_path / "ort.jsonl.provenance.json").read_text())
    assert prov["backend"] == "onnxruntime (fp32)" and prov["counts"]["n_scored"] == len(ort)
    assert prov["gate"]["verdict"] == "pass" and prov["allow_ungated"] is False


def test_predict_rows_review_threshold_prompts_and_sets_seam(lora_run, deploy_data, tmp_path):
    """needs_review follows --review-below; prompts add a column; no prediction_set until the
    calibration record has conformal thresholds, then it is there and feeds needs_review."""
    out = tmp_path / "p.csv"
    base = ["predict", str(lora_run), "--data", str(deploy_data), "--split", "test", "--no-progress",
            "--out", str(out), "--prompt", "a scratched metal surface"]
    assert main([*base, "--review-below", "0.0"]) == 0
    rows = _rows(out)
    assert all(r["needs_review"] == "False" for r in rows) and "prediction_set" not in rows[0]
    assert all(-1.0 <= float(r["prompt_0"]) <= 1.0 for r in rows)
    assert np.allclose(_probs(rows).sum(1), 1.0, atol=1e-5)
    assert main([*base, "--review-below", "1.0"]) == 0
    assert all(r["needs_review"] == "True" for r in _rows(out))
    cal = lora_run / "calibration.json"
    saved = cal.read_text()
    try:
        cal.write_text(json.dumps({**json.loads(saved), "conformal": {"threshold": 0.9}}))
        assert main([*base, "--review-below", "0.0"]) == 0
        rows = _rows(out)
        for r in rows:
            members = r["prediction_set"].split("|") if r["prediction_set"] else []
            assert r["needs_review"] == str(len(members) != 1)
    finally:
        cal.write_text(saved)


def test_sets_and_refer_agree_between_pytorch_and_onnx_for_a_bias_calibrator(lora_run, deploy_data, tmp_path):
    """`evaluate --calibrate bias --conformal` writes one record (thresholds + referral rule) that
    predict reads the same way on PyTorch and on ONNX Runtime (bias applied without torch)."""
    import shutil

    from domainclip.evaluation.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    evaluate(run, calibrate="bias", conformal=0.2, conformal_method="aps", refer_error=0.3, n_boot=0,
             baselines=False)
    record = json.loads((run / "calibration.json").read_text())
    assert record["kind"] == "bias" and record["conformal"]["method"] == "aps"
    assert record["selective"]["target_error"] == 0.3 and record["selective"]["split"] == "val"
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    args = ["--data", str(deploy_data), "--split", "test", "--no-progress", "--allow-ungated"]
    assert main(["predict", str(run), *args, "--out", str(tmp_path / "pt.csv")]) == 0
    assert main(["predict", "--onnx", str(out), *args, "--out", str(tmp_path / "ort.csv")]) == 0
    pt, ort = _rows(tmp_path / "pt.csv"), _rows(tmp_path / "ort.csv")
    assert len(pt) == len(ort) > 0 and "prediction_set" in pt[0] and "refer" in pt[0]
    assert np.abs(_probs(pt) - _probs(ort)).max() < 1e-4
    for key in ("predicted", "prediction_set", "refer", "needs_review"):
        assert [r[key] for r in pt] == [r[key] for r in ort], key
    rule = record["selective"]["min_confidence"]
    assert all(r["refer"] == str(float(r["confidence"]) < rule) for r in pt)
    assert all(r["prediction_set"] for r in pt)  # APS at alpha 0.2 never returns an empty set here


def test_predict_onnx_runs_without_torch(lora_export, deploy_data, tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(NOTORCH)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'block'}{os.pathsep}{repo}"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the block works
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "domainclip", "predict", "--onnx", str(lora_export), "--data",
         str(deploy_data), "--split", "test", "--out", str(out), "--no-progress"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out)
    assert rows and all(r["status"] == "ok" for r in rows)
    prov = json.loads((tmp_path / "p.csv.provenance.json").read_text())
    assert prov["backend"] == "onnxruntime (int8)" and prov["counts"]["n_scored"] == len(rows)


@pytest.mark.parametrize(("arch", "method"), [("vit", "clip_adapter"), ("hf", "lora")])
def test_export_parity_open_clip_vit_adapter_and_hf_clip(arch, method, deploy_data, tmp_path):
    run = make_run(tmp_path / arch, deploy_data, arch, method)
    write_gate(run, "pass")
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["parity"]["fp32"]["image_cosine_min"] >= 0.9999
    assert man["parity"]["fp32"]["text_cosine_min"] >= 0.9999
    if arch == "hf":  # a tokenizer.json travels: free-text prompts score on ONNX Runtime too
        args = ["--data", str(deploy_data), "--split", "test", "--no-progress", "--prompt", "a pit"]
        assert main(["predict", str(run), *args, "--out", str(tmp_path / "pt.csv")]) == 0
        assert main(["predict", "--onnx", str(out), *args, "--out", str(tmp_path / "ort.csv")]) == 0
        pt, ort = _rows(tmp_path / "pt.csv"), _rows(tmp_path / "ort.csv")
        assert np.allclose([float(r["prompt_0"]) for r in pt], [float(r["prompt_0"]) for r in ort], atol=1e-4)


def test_export_refuses_a_head_method(deploy_data, tmp_path, capsys):
    run = make_run(tmp_path / "lp", deploy_data, "cnn", "linear_probe", calibrate=False)
    assert main(["export", str(run), "--format", "onnx", "--allow-uncalibrated", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "linear_probe" in err and "not part of the ONNX graphs" in err
    assert not (tmp_path / "o").exists()
