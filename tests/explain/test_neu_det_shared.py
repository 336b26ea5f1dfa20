"""Localisation numbers on real NEU-DET images and boxes (needs ../shared; computation only).

An untrained default model has no reason to point at defects, so this test checks that the
numbers are computed correctly from the real boxes, not that they beat the random baseline;
fine-tuned runs are measured with `domainclip explain RUN --manifest ... --check-localisation`.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from domainclip.datasets import read_manifest
from domainclip.datasets.geometry import plan_fit
from domainclip.datasets.importers.neu_det import import_neu_det
from domainclip.explain import ExplainSettings, explain_manifest
from domainclip.explain.inputs import boxes_to_mask
from domainclip.models import load_backbone

CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


@pytest.mark.shared
def test_localisation_on_neu_det_boxes(neu_det_dir, tmp_path):
    src = tmp_path / "neu"
    for sub in ("IMAGES", "ANNOTATIONS"):
        (src / sub).mkdir(parents=True)
    for cls in CLASSES:  # one image per class keeps the test quick
        shutil.copy(neu_det_dir / "IMAGES" / f"{cls}_7.jpg", src / "IMAGES")
        shutil.copy(neu_det_dir / "ANNOTATIONS" / f"{cls}_7.xml", src / "ANNOTATIONS")
    import_neu_det(src, tmp_path / "data")
    man = read_manifest(tmp_path / "data" / "manifest.csv")
    assert len(man.rows) == len(CLASSES)
    bb = load_backbone("default")
    settings = ExplainSettings(methods=("gradcam",), checks=("localisation",), tolerance=15)
    index_path = explain_manifest(bb, man.path, tmp_path / "out", settings, split=None)
    index = json.loads(index_path.read_text())
    assert not index["skipped"]
    items = index["items"]
    assert len(items) == len(CLASSES)
    for item in items:
        row = next(r for r in man.rows if r.row == item["row"])
        assert item["region"] == "boxes"
        boxes = json.loads(row.meta["boxes"])
        region = boxes_to_mask(boxes, 200, 200)  # localisation is in original pixels
        loc = item["localisation"]
        assert loc["area"] == pytest.approx(region.mean())
        assert loc["area"] <= loc["pointing_baseline"] <= 1
        assert 0 <= loc["pointing"] <= 1
        # the 224 px map back on the 200 px image (the Fit of a square 200 px image: scale 1.12)
        fit = plan_fit(200, 200, 224, "letterbox")
        smap = np.clip(fit.to_original(np.load(tmp_path / "out" / item["map"])), 0, None)
        if smap.sum() > 0:
            assert loc["energy"] == pytest.approx(smap[region].sum() / smap.sum(), rel=1e-5)
    summary = index["summary"]["gradcam"]["localisation"]
    assert summary["n"] == len(CLASSES)
    assert summary["pointing_random"] == pytest.approx(
        np.mean([i["localisation"]["pointing_baseline"] for i in items])
    )
