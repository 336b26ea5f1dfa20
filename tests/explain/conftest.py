"""Fixtures for the explanation tests: tiny backbones of every family and a small synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from domainclip.datasets.importers.synthetic import generate_synthetic
from domainclip.explain.inputs import prepare_image
from domainclip.models import Backbone, load_backbone
from domainclip.models.testing import tiny_open_clip_backbone, write_tiny_hf_clip

PROMPT = "three long scratches across a metal surface"
OTHER = "a photo of a dog playing on the grass"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run these tests on one intra-op thread, restored afterwards.

    The models here are tiny; on a shared 2-core machine two OpenMP threads contending with other
    processes made a tiny ViT forward ~20x slower (0.54 s vs 0.024 s measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vit() -> Backbone:
    return tiny_open_clip_backbone("vit")


@pytest.fixture(scope="session")
def tiny_cnn() -> Backbone:
    # 96 px gives ModifiedResNet a 3x3 last stage (64 px would leave a 2x2 grid).
    return tiny_open_clip_backbone("cnn", image_size=96)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Backbone:
    path = write_tiny_hf_clip(tmp_path_factory.mktemp("hf") / "clip")
    return load_backbone(f"hf-clip:{path}")


@pytest.fixture(scope="session")
def tiny(tiny_vit, tiny_cnn, tiny_hf) -> dict[str, Backbone]:
    return {"vit": tiny_vit, "cnn": tiny_cnn, "hf": tiny_hf}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """8 synthetic defect images (64 px) with masks, boxes and a manifest."""
    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(out, n=8, size=64, seed=3, val_frac=0.0, test_frac=0.5)
    return out


@pytest.fixture(scope="session")
def defect_image(synthetic_dir) -> Path:
    """A synthetic image with a drawn defect (the first non-clean row)."""
    from domainclip.datasets import read_manifest

    man = read_manifest(synthetic_dir / "manifest.csv")
    row = next(r for r in man.rows if r.label != ["clean"])
    return man.image_path(row)


def pixels_for(bb: Backbone, image: Path) -> torch.Tensor:
    return prepare_image(bb, image).pixels
