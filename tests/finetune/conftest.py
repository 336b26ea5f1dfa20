"""Fixtures for the fine-tuning tests: tiny saved backbones and a tiny synthetic data set.

Everything is built in seconds on 2 CPU cores: 7M-parameter random open_clip models saved as
backbone directories (so configs and subprocesses can name them by path) and 48 generated 64-px
defect images with their manifest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from domainclip.finetune.config import FinetuneConfig, load_config


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    return save_backbone(tiny_open_clip_backbone("vit"), tmp_path_factory.mktemp("bb") / "tiny_vit")


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory) -> Path:
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    return save_backbone(tiny_open_clip_backbone("cnn"), tmp_path_factory.mktemp("bb") / "tiny_cnn")


@pytest.fixture(scope="session")
def syn_manifest(tmp_path_factory) -> Path:
    from domainclip.datasets.importers.synthetic import generate_synthetic

    out = tmp_path_factory.mktemp("syn")
    return generate_synthetic(out, n=48, size=64, seed=0, val_frac=0.2, test_frac=0.1).manifest_path


def tiny_config(spec: Path, manifest: Path, *overrides: str, **sections) -> FinetuneConfig:
    """A fast config on the tiny backbone; `overrides` are --set strings."""
    base = {
        "backbone": {"spec": str(spec)},
        "data": {"manifest": str(manifest)},
        "train": {"batch_size": 8, "max_steps": 6, "progress": False},
        "optim": {"warmup_steps": 1, "lr": 5e-3},
        "eval": {"prompts": "configs/prompts/synthetic.yaml"},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return load_config(base, list(overrides))
