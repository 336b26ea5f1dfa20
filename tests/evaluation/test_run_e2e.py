"""A real (tiny) LoRA run: evaluate with a fitted temperature and the forgetting monitor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domainclip.cli import main
from domainclip.evaluation.evaluate import evaluate
from domainclip.models import save_backbone
from domainclip.models.testing import tiny_open_clip_backbone

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


def _finetune(run: Path, backbone: Path, manifest: Path, method: str) -> Path:
    from domainclip.finetune import finetune, load_config

    cfg = load_config(
        None,
        [
            f"backbone.spec={backbone}",
            f"data.manifest={manifest}",
            f"eval.prompts={PROMPTS}",
            f"method.name={method}",
            "train.max_steps=4",
            "train.batch_size=4",
            "eval.every_steps=2",
            "optim.warmup_steps=1",
            "train.progress=false",
        ],
    )
    finetune(cfg, run)
    return run


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return save_backbone(
        tiny_open_clip_backbone("cnn", seed=2), tmp_path_factory.mktemp("bb") / "backbone"
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, synthetic_manifest, backbone) -> tuple[Path, Path]:
    run = _finetune(tmp_path_factory.mktemp("run") / "lora", backbone, synthetic_manifest, "lora")
    return run, backbone


def test_run_evaluation_temperature_and_forgetting_curve(
    lora_run, synthetic_manifest, reference_manifest, capsys
):
    run, backbone = lora_run
    rc = main(
        [
            "evaluate",
            str(run),
            "--fit-temperature",
            "--reference",
            str(reference_manifest),
            "--reference-prompts",
            str(PROMPTS),
            "--alphas",
            "0,0.5,1",
            "--n-boot",
            "50",
            "--name",
            "syn",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert "forgetting" in capsys.readouterr().out
    out = run / "eval" / "syn"
    m = json.loads((out / "metrics.json").read_text())
    # Defaults came from the run: its manifest and prompt set.
    assert (
        m["data"]["manifest"] == str(synthetic_manifest)
        and m["prompts"]["version"] == "synthetic-1"
    )
    assert m["model"]["run"] == str(run)
    t = json.loads((run / "calibration.json").read_text())["temperature"]
    assert m["temperature"]["value"] == t
    curve = json.loads((out / "forgetting.json").read_text())
    assert curve == m["forgetting"] and curve["alphas"] == [0.0, 0.5, 1.0]
    assert (out / "forgetting.png").is_file()
    assert curve["interpolated_tensors"] > 0
    # alpha = 1 is the run itself, alpha = 0 its base backbone evaluated on its own.
    assert curve["target"][-1]["value"] == pytest.approx(m["classification"]["accuracy"]["value"])
    base_eval = evaluate(str(backbone), synthetic_manifest, "test", PROMPTS, write=False, n_boot=0)
    assert curve["target"][0]["value"] == pytest.approx(
        base_eval["classification"]["accuracy"]["value"]
    )
    ref_base = evaluate(str(backbone), reference_manifest, "test", PROMPTS, write=False, n_boot=0)
    assert curve["reference"][0]["value"] == pytest.approx(
        ref_base["classification"]["accuracy"]["value"]
    )
    # A later evaluation applies the stored temperature.
    again = evaluate(run, split="val", n_boot=0, write=False)
    assert (
        again["temperature"]["source"] == "run calibration.json"
        and again["temperature"]["value"] == t
    )


def test_head_is_scored_in_its_own_class_order(tmp_path, synthetic_manifest, backbone):
    from domainclip.datasets.manifest import read_manifest
    from domainclip.evaluation.embed import embed_split
    from domainclip.runs import load_model
    from domainclip.scoring.prompts import PromptError, load_prompt_set
    from domainclip.scoring.zeroshot import class_embeddings

    run = _finetune(tmp_path / "probe", backbone, synthetic_manifest, "linear_probe")
    r = evaluate(run, split="test", n_boot=0, write=False)
    bb = load_model(run)
    head_classes = list(bb.head.classes)
    ps = load_prompt_set(PROMPTS)
    assert head_classes != ps.class_names  # the prompt set lists another order
    assert r["prompts"]["classes"] == head_classes
    # Independent check: the head's own argmax, mapped through its own class list.
    emb = embed_split(bb, read_manifest(synthetic_manifest), "test")
    W = class_embeddings(bb, ps.class_texts(head_classes))
    pred = bb.class_logits(emb.image_feats, W).argmax(1)
    truth = [row.label[0] for row in emb.rows]
    expected = sum(head_classes[int(p)] == t for p, t in zip(pred, truth, strict=True)) / len(truth)
    assert r["classification"]["accuracy"]["value"] == pytest.approx(expected)
    with pytest.raises(PromptError, match="classifier head scores"):
        evaluate(run, split="test", classes=["scratch", "pit"], n_boot=0, write=False)
