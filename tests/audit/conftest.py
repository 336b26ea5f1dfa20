"""Fixtures for the audit tests: a tiny synthetic data set, tiny random backbones, small specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainclip.datasets.importers.synthetic import generate_synthetic

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
        "statistics": {"n_bootstrap": 400, "seed": 0, "min_cell_images": 8},
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
