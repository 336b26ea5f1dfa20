"""Fixtures for the retrieval tests: a tiny real run (LoRA, 2 steps, tiny CNN CLIP) on 24
synthetic images, and an index of its train split built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from domainclip.datasets.importers.synthetic import generate_synthetic

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "domainclip" / "configs" / "prompts" / "synthetic.yaml"


@pytest.fixture(scope="session")
def retrieval_data(tmp_path_factory) -> Path:
    """24 synthetic 64-px images (every split) with manifest.csv."""
    out = tmp_path_factory.mktemp("retr_syn")
    return generate_synthetic(out, n=24, size=64, seed=3).manifest_path


def make_tiny_run(root: Path, manifest: Path, *extra: str) -> Path:
    """A real 2-step LoRA run on a tiny random open_clip CNN (letterbox unless `extra` says)."""
    from domainclip.finetune import finetune, load_config
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    backbone = save_backbone(tiny_open_clip_backbone("cnn", image_size=64, seed=2), root / "bb")
    cfg = load_config(None, [
        f"backbone.spec={backbone}", f"data.manifest={manifest}", f"eval.prompts={PROMPTS}",
        "method.name=lora", "train.max_steps=2", "train.batch_size=8", "eval.every_steps=2",
        "optim.warmup_steps=1", "train.progress=false", "data.fit=letterbox", *extra,
    ])
    run = root / "runs" / "run"
    finetune(cfg, run)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, retrieval_data) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("retr_run"), retrieval_data)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_run, retrieval_data) -> Path:
    """An index of the train split (built once; copy it before changing it)."""
    from domainclip.retrieval.index import build_index

    out = tmp_path_factory.mktemp("retr_idx") / "index"
    build_index(tiny_run, retrieval_data, out, split="train")
    return out


@pytest.fixture
def index_copy(tmp_path, built_index) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(built_index, dst)
    return dst
