"""Explaining tiled inputs: maps stitched into original pixels, localisation there, tolerant pointing."""

from __future__ import annotations

import numpy as np
import pytest

from domainclip.datasets.tiling import TileSettings
from domainclip.datasets.transforms import eval_transform
from domainclip.explain.batch import ExplainSettings, explain_manifest
from domainclip.explain.index import ExplainIndex
from domainclip.explain.localisation import localise


def test_tolerant_pointing_beside_the_strict_one():
    mask = np.zeros((100, 100), bool)
    mask[40:50, 40:50] = True
    smap = np.zeros((100, 100))
    smap[45, 58] = 1.0  # 9 px right of the region
    loc = localise(smap, mask)
    assert loc.pointing == 0.0 and loc.pointing_tolerant == 1.0 and loc.tolerance_px == 15.0
    assert loc.pointing_tolerant_baseline > loc.pointing_baseline == pytest.approx(0.01)
    assert localise(smap, mask, pointing_tolerance=5).pointing_tolerant == 0.0


def test_tiled_maps_are_in_original_pixels(tmp_path):
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from domainclip.models.testing import tiny_open_clip_backbone

    bb = tiny_open_clip_backbone("cnn")
    man = generate_synthetic(
        tmp_path / "syn", n=10, seed=0, width=160, height=64, defect_size="6-10", val_frac=0.0, test_frac=0.5
    ).manifest_path
    tf = eval_transform(bb, "tile", tile=TileSettings(overlap=0.25))
    out = explain_manifest(
        bb, man, tmp_path / "ex", ExplainSettings(checks=("localisation",)), split="test", limit=3, preprocess=tf
    )
    index = ExplainIndex.read(out / "index.json" if out.is_dir() else out)
    assert index.input["fit"] == "tile" and index.items
    for item in index.items:
        smap = np.load(tmp_path / "ex" / item.map)
        assert smap.shape == (64, 160)  # the original image, not the 64 px input
        assert item.params["tiles"] == 3
    located = [i for i in index.items if i.localisation is not None]
    assert located and all(i.localisation.pointing_tolerant is not None for i in located)
    summary = index.summary["gradcam"].localisation
    assert summary["n"] == len(located) and "pointing_tolerant_gain" in summary
