"""Fixtures for the audit tests: a tiny synthetic data set, tiny random backbones, small specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainclip.datasets.importers.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[2]

# Framings of the test spec differ from the reference only by a marker phrase that
# PlantedBiasBackbone removes before embedding, so without a planted delta they are *exactly*
# the reference and any shift the audit reports is the planted one.
SEVERE = "SEVERE "
POSSIBLY = "POSSIBLY "


def small_spec(**thresholds) -> dict:
    """A spec over the synthetic classes with a planted-bias framing and a null framing."""
    th = {"max_abs_mean_shift": 0.02, "max_flip_rate": 0.05, "max_ece": None, "alpha": 0.05}
    th.update(thresholds)
    return {
        "name": "small",
        "version": "small-1",
        "findings": {
            "scratch": "scratches",
            "pit": "pits",
            "crack": "cracks",
            "patch": "patches",
            "clean": {"name": "no defects", "framed": False, "text": "a clean metal surface"},
        },
        "reference": "neutral",
        "framings": {
            "neutral": "a metal surface with {finding}",
            "alarming": f"a metal surface with {SEVERE}{{finding}}",
            "hedged": f"a metal surface with {POSSIBLY}{{defect}}",
            "negated": {"template": "a metal surface without {finding}", "expect": "lower"},
        },
        "subgroups": ["texture"],
        "thresholds": th,
        "statistics": {"n_bootstrap": 600, "seed": 0, "min_cell_images": 8},
    }


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """80 synthetic 64-px images of the five classes (every split), with manifest.csv."""
    out = tmp_path_factory.mktemp("audit_synthetic")
    generate_synthetic(out, n=80, size=64, seed=3)
    return out


@pytest.fixture(scope="session")
def manifest_path(synthetic_dir: Path) -> Path:
    return synthetic_dir / "manifest.csv"


@pytest.fixture(scope="session")
def tiny_backbone():
    from domainclip.models.testing import tiny_open_clip_backbone

    return tiny_open_clip_backbone("vit", image_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, manifest_path) -> Path:
    """A real fine-tuning run (tiny CNN CLIP, LoRA, 4 steps) with a fitted temperature.

    Made by `domainclip.finetune.finetune` and `domainclip.evaluation.evaluate`, so its files
    (config.yaml, result.json, checkpoints, calibration.json, eval/) are the real thing.
    """
    from domainclip.evaluation.evaluate import evaluate
    from domainclip.finetune import finetune, load_config
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    root = tmp_path_factory.mktemp("tiny_run")
    backbone = save_backbone(tiny_open_clip_backbone("cnn", image_size=64, seed=2), root / "bb")
    cfg = load_config(
        None,
        [
            f"backbone.spec={backbone}",
            f"data.manifest={manifest_path}",
            f"eval.prompts={REPO / 'domainclip' / 'configs' / 'prompts' / 'synthetic.yaml'}",
            "method.name=lora",
            "train.max_steps=4",
            "train.batch_size=8",
            "eval.every_steps=2",
            "optim.warmup_steps=1",
            "train.progress=false",
        ],
    )
    run = root / "run"
    finetune(cfg, run)
    evaluate(run, fit_temperature=True, n_boot=50)
    return run
