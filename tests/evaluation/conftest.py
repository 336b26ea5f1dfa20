"""Fixtures for evaluation tests: tiny synthetic manifests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainclip.datasets.importers.synthetic import generate_synthetic


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> Path:
    """40 synthetic 64-px images (8 per class), splits train/val/test."""
    out = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic(out, n=40, size=64, seed=0, val_frac=0.3, test_frac=0.3).manifest_path


@pytest.fixture(scope="session")
def reference_manifest(tmp_path_factory) -> Path:
    """A second synthetic set (other seed): the reference task of the forgetting monitor."""
    out = tmp_path_factory.mktemp("reference")
    return generate_synthetic(
        out, n=20, size=64, seed=7, val_frac=0.25, test_frac=0.5
    ).manifest_path
