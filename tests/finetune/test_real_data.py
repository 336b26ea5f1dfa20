"""Real backbone, real data: the default recipe beats the untrained model (slow; CI runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainclip.finetune import finetune, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_config_lifts_zero_shot_accuracy_on_synthetic(tmp_path):
    """configs/demo_synthetic_lora.yaml (what `domainclip demo` runs) on the built-in data set."""
    from domainclip.datasets.importers.synthetic import generate_synthetic

    man = generate_synthetic(tmp_path / "syn", seed=0).manifest_path
    cfg = load_config(
        REPO / "domainclip" / "configs" / "demo_synthetic_lora.yaml",
        [f"data.manifest={man}", "train.progress=false"],
    )
    res = finetune(cfg, tmp_path / "run")
    before, after = res.initial_metrics["zero_shot_acc"], res.best_metrics["zero_shot_acc"]
    assert before < 0.45  # 5 classes; the untrained default's towers are not aligned
    assert after >= 0.85 and after >= before + 0.4


@pytest.mark.shared
@pytest.mark.slow
def test_neu_det_default_recipe_beats_untrained(neu_det_dir, tmp_path):
    """120 training images, 60 validation images of NEU-DET, 40 steps of the default recipe."""
    from domainclip.datasets.importers import run_import

    man = run_import("neu-det", neu_det_dir, tmp_path / "neu").manifest_path
    cfg = load_config(
        REPO / "domainclip" / "configs" / "neu_det_lora.yaml",
        [
            f"data.manifest={man}",
            "data.max_train=120",
            "data.max_val=60",
            "train.max_steps=40",
            "eval.every_steps=20",
            "train.progress=false",
        ],
    )
    res = finetune(cfg, tmp_path / "run")
    assert res.initial_metrics["zero_shot_acc"] < 0.35  # 6 classes, chance 0.17
    assert res.best_metrics["zero_shot_acc"] >= res.initial_metrics["zero_shot_acc"] + 0.4
    assert res.best_metrics["t2i_R@1"] > res.initial_metrics["t2i_R@1"]
