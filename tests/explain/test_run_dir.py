"""`domainclip explain RUN`: a real (tiny) LoRA run is loaded with its adapters and temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domainclip.cli import main
from domainclip.datasets import read_manifest

PROMPTS = Path(__file__).resolve().parents[2] / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, synthetic_dir, tiny_vit):
    from domainclip.finetune import finetune, load_config
    from domainclip.models import save_backbone

    base = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in conftest.one_torch_thread (module fixtures run before it)
    backbone = save_backbone(tiny_vit, base / "backbone")
    cfg = load_config(
        None,
        [
            f"backbone.spec={backbone}",
            f"data.manifest={synthetic_dir / 'manifest.csv'}",
            f"eval.prompts={PROMPTS}",
            "data.val_split=test",
            "method.name=lora",
            "train.max_steps=2",
            "train.batch_size=4",
            "eval.every_steps=2",
            "optim.warmup_steps=1",
            "train.progress=false",
        ],
    )
    try:
        finetune(cfg, base / "lora")
    finally:
        torch.set_num_threads(threads)
    (base / "lora" / "calibration.json").write_text(json.dumps({"temperature": 0.5}))
    return base / "lora"


def test_explain_a_run_writes_into_the_run(lora_run, synthetic_dir, capsys):
    from domainclip.runs import resolve_model

    man = read_manifest(synthetic_dir / "manifest.csv")
    row = next(r for r in man.rows if r.label != ["clean"])
    resolved = resolve_model(str(lora_run))
    run = resolved.run_dir
    assert run == lora_run.resolve()
    assert resolved.temperature == 0.5
    rc = main(
        [
            "explain", str(lora_run), "--image", str(man.image_path(row)), "--text", row.text,
            "--method", "gradcam", "--method", "rollout", "--score", "probability",
            "--against", "a clean metal surface with no visible defects",
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    index = json.loads((lora_run / "explain" / "index.json").read_text())
    assert index["run"] == str(lora_run.resolve())
    assert index["temperature"] == 0.5 and index["score"] == "probability"
    assert [i["method"] for i in index["items"]] == ["gradcam", "rollout"]
    for item in index["items"]:
        assert 0 < item["score"] < 1
        assert np.isfinite(np.load(lora_run / "explain" / item["map"])).all()


def test_explain_at_another_input_size_and_fit(lora_run, synthetic_dir, tmp_path, capsys):
    """--fit / --image-size override the run's input; the ViT maps come at that size (the
    position embeddings are interpolated) and the index records the input."""
    man = read_manifest(synthetic_dir / "manifest.csv")
    row = next(r for r in man.rows if r.label != ["clean"])
    out = tmp_path / "big"
    rc = main(
        [
            "explain", str(lora_run), "--image", str(man.image_path(row)), "--text", row.text,
            "--method", "gradcam", "--method", "rollout", "--fit", "crop", "--image-size", "96",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    index = json.loads((out / "index.json").read_text())
    assert index["input"] == {"fit": "crop", "image_size": 96}
    for item in index["items"]:
        smap = np.load(out / item["map"])
        assert smap.shape == (96, 96) and np.isfinite(smap).all()
    from domainclip.runs import resolve_model

    assert resolve_model(str(lora_run)).input["fit"] == "letterbox"  # the run's own (default)
