"""Fine-tuning with fit: tile (multiple-instance losses on aggregated tile logits), tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domainclip.errors import ConfigError
from domainclip.finetune.losses import multi_positive_loss, positive_mask
from domainclip.finetune.tiles import TiledLoss
from tests.finetune.conftest import tiny_config


@pytest.fixture(scope="module")
def wide_manifest(tmp_path_factory):
    from domainclip.datasets.importers.synthetic import generate_synthetic

    out = tmp_path_factory.mktemp("wide")
    return generate_synthetic(
        out, n=30, seed=0, width=160, height=64, defect_size="6-10", val_frac=0.2, test_frac=0.2
    ).manifest_path


def test_one_tile_per_image_is_the_plain_loss():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    pos = positive_mask(["a", "b", "a", "c"])
    scale = torch.tensor(10.0)
    for rule in ("lse", "max", "mean"):
        tiled = TiledLoss([1, 1, 1, 1], rule)
        assert torch.allclose(tiled.contrastive(img, txt, scale, pos), multi_positive_loss(img, txt, scale, pos))


def test_mil_loss_lets_one_tile_carry_the_finding():
    """Image 0: a tile showing its finding and a background tile that matches no text. Under lse
    the finding tile decides (margin ~ scale - log 2); the mean halves the margin, so the same
    tiles cost more: the background tile would be pushed towards the image's text."""
    txt = torch.eye(3)[:2]  # two texts, e0 and e1
    tiles = torch.eye(3)[[0, 2, 1]]  # image 0: finding (e0) + background (e2); image 1: e1
    pos = torch.eye(2, dtype=torch.bool)
    scale = torch.tensor(5.0)
    lse = TiledLoss([2, 1], "lse").contrastive(tiles, txt, scale, pos)
    mean = TiledLoss([2, 1], "mean").contrastive(tiles, txt, scale, pos)
    assert lse < mean


def test_tiled_run_trains_with_and_without_the_cache(tiny_cnn, wide_manifest, tmp_path):
    from domainclip.evaluation.evaluate import evaluate
    from domainclip.finetune import finetune
    from domainclip.io import load_yaml

    results = {}
    for cache in ("auto", "never"):
        cfg = tiny_config(tiny_cnn, wide_manifest, "data.fit=tile", f"train.cache_features={cache}")
        results[cache] = finetune(cfg, tmp_path / cache)
    # the cached tile features and decoding every step give the same numbers
    assert results["auto"].best_metrics["loss"] == pytest.approx(results["never"].best_metrics["loss"], rel=1e-4)
    saved = load_yaml(tmp_path / "auto" / "config.yaml")
    assert saved["data"]["fit"] == "tile" and saved["data"]["tile"] == {"size": None, "overlap": 0.25, "aggregate": "lse"}
    r = evaluate(str(tmp_path / "auto"), split="test", n_boot=20, shortcut_check=False)
    assert r["input"] == {"fit": "tile", "image_size": 64, "tile": {"size": None, "overlap": 0.25, "aggregate": "lse"}}
    assert r["data"]["n_evaluated"] > 0
    letterbox = evaluate(str(tmp_path / "auto"), split="test", n_boot=20, shortcut_check=False, fit="letterbox", write=False)
    assert letterbox["input"] == {"fit": "letterbox", "image_size": 64}


def test_methods_without_tiles_are_refused(tiny_cnn, wide_manifest, tmp_path):
    from domainclip.finetune import finetune

    cfg = tiny_config(tiny_cnn, wide_manifest, "data.fit=tile", "method.name=linear_probe")
    with pytest.raises(ConfigError, match="linear_probe.*data.fit=tile"):
        finetune(cfg, tmp_path / "lp")


def test_auto_fit_tiles_small_findings_records_why_and_resumes(tiny_cnn, wide_manifest, tmp_path):
    """160x64 strips with 6-10 px defects at a 64 px input: letterboxed they would be 2-4 px, so
    `data.fit: auto` (the default) tiles; the choice and its reason are in the run, and a resumed
    run keeps it (the saved config says tile, the command line still says auto)."""
    import json

    from domainclip.finetune import finetune
    from domainclip.io import load_yaml

    cfg = tiny_config(tiny_cnn, wide_manifest)
    assert cfg.data.fit == "auto"
    finetune(cfg, tmp_path / "run")
    assert load_yaml(tmp_path / "run" / "config.yaml")["data"]["fit"] == "tile"
    info = json.loads((tmp_path / "run" / "result.json").read_text())["info"]
    assert info["fit_choice"].startswith("data.fit auto -> tile: ") and "under 8 px" in info["fit_choice"]
    more = tiny_config(tiny_cnn, wide_manifest, "train.max_steps=8")
    with pytest.raises(Exception, match="max_steps"):  # a real difference is still refused
        finetune(more, tmp_path / "run", resume=True)
    again = finetune(tiny_config(tiny_cnn, wide_manifest), tmp_path / "run", resume=True)
    assert again.steps == 6


def test_auto_fit_falls_back_to_letterbox_for_methods_without_tiles(tiny_cnn, wide_manifest, tmp_path):
    import json

    from domainclip.finetune import finetune
    from domainclip.io import load_yaml

    finetune(tiny_config(tiny_cnn, wide_manifest, "method.name=linear_probe"), tmp_path / "lp")
    assert load_yaml(tmp_path / "lp" / "config.yaml")["data"]["fit"] == "letterbox"
    info = json.loads((tmp_path / "lp" / "result.json").read_text())["info"]
    assert "cannot train on tiles" in info["fit_choice"] and info["fit_choice"].endswith("letterbox")


def test_choose_fit_from_the_annotations(wide_manifest, tmp_path):
    from domainclip.datasets.geometry_report import choose_fit
    from domainclip.datasets.importers.synthetic import generate_synthetic

    fit, why = choose_fit(wide_manifest, 64)
    assert fit == "tile" and "annotated findings" in why
    assert choose_fit(wide_manifest, 448)[0] == "letterbox"  # at 448 px they stay visible
    square = generate_synthetic(tmp_path / "sq", n=30, size=64, seed=0).manifest_path
    fit, why = choose_fit(square, 64)  # small findings, but the images are the input's size
    assert fit == "letterbox" and "would see no more detail" in why
    clean = generate_synthetic(tmp_path / "clean", n=12, size=256, classes=["clean"]).manifest_path
    fit, why = choose_fit(clean, 64)
    assert fit == "letterbox" and "too few to judge" in why
