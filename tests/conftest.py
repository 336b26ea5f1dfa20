"""Shared pytest fixtures.

The real data sets live outside the repository (read-only, never copied in): by default in
``<repo>/../shared``, or wherever the environment variable ``DOMAINCLIP_SHARED`` points.
Tests that need them use the fixtures below, which skip cleanly when the data is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder (may not exist; dataset fixtures below skip when it does not)."""
    return Path(os.environ.get("DOMAINCLIP_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _data_dir(shared_dir: Path, name: str) -> Path:
    path = shared_dir / "data" / name
    if not path.is_dir():
        pytest.skip(f"shared data set {name!r} not found at {path} (set DOMAINCLIP_SHARED)")
    return path


@pytest.fixture(scope="session")
def neu_det_dir(shared_dir: Path) -> Path:
    """NEU-DET surface-defect data (IMAGES/, ANNOTATIONS/)."""
    return _data_dir(shared_dir, "neu-det")


@pytest.fixture(scope="session")
def covid_cxr_dir(shared_dir: Path) -> Path:
    """COVID chest X-ray collection (metadata.csv, images/)."""
    return _data_dir(shared_dir, "covid-cxr")


@pytest.fixture(scope="session")
def deeppcb_dir(shared_dir: Path) -> Path:
    """DeepPCB printed-circuit-board test/template pairs (PCBData/groupN/...)."""
    return _data_dir(shared_dir, "deeppcb")
