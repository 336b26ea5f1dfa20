"""Batch mode over a manifest (index JSON for the dashboard) and the `domainclip explain` CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from domainclip.cli import main
from domainclip.datasets import read_manifest
from domainclip.explain import ExplainError, ExplainSettings, explain_manifest
from domainclip.explain.inputs import prepare_image, region_from_meta
from domainclip.models import save_backbone
from tests.explain.conftest import OTHER, PROMPT


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_vit, tiny_cnn):
    root = tmp_path_factory.mktemp("saved")
    return {
        "vit": save_backbone(tiny_vit, root / "vit"),
        "cnn": save_backbone(tiny_cnn, root / "cnn"),
    }


def _strict_json(path):
    def refuse(value):
        raise ValueError(f"non-standard JSON constant {value}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_manifest_batch_writes_index_maps_and_localisation(tiny_vit, synthetic_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    man = read_manifest(data / "manifest.csv")
    broken = man.image_path(man.rows[-1])
    broken.write_bytes(b"\x89PNG truncated")
    settings = ExplainSettings(
        methods=("gradcam", "rollout"),
        checks=("localisation", "randomisation", "text", "deletion"),
        options={"gradcam": {}},
    )
    index_path = explain_manifest(
        tiny_vit, data / "manifest.csv", tmp_path / "out", settings, split=None, show_paths=True
    )
    index = _strict_json(index_path)
    assert index["format"] == "domainclip.explain.index/1" and index["complete"] is True
    assert index["methods"] == ["gradcam", "rollout"]
    assert [s["row"] for s in index["skipped"]] == [man.rows[-1].row]
    assert broken.name in index["skipped"][0]["reason"]
    items = index["items"]
    assert len(items) == 2 * (len(man.rows) - 1)
    for item in items:
        assert (tmp_path / "out" / item["map"]).is_file()
        smap = np.load(tmp_path / "out" / item["map"])
        assert smap.shape == (64, 64) and smap.dtype == np.float32
        with Image.open(tmp_path / "out" / item["overlay"]) as im:
            assert im.format == "PNG" and im.width > 64
        row = next(r for r in man.rows if r.row == item["row"])
        assert item["prompt"] == row.text and item["label"] == row.label
        assert item["image"] == str(man.image_path(row))
        sanity = item["sanity"]
        assert -1 <= sanity["randomisation_spearman"] <= 1
        assert set(sanity["text_spearman"]) and sanity["text_max_spearman"] <= 1
        assert np.isfinite(sanity["deletion_auc"]) and np.isfinite(sanity["random_insertion_auc"])
        if row.label == ["clean"]:
            assert item["localisation"] is None  # nothing to find on a clean surface
            continue
        loc = item["localisation"]
        mask, kind = region_from_meta(row.meta, man.root, (64, 64))
        assert kind == "mask" and item["region"] == "mask"
        # 64x64 images at a 64 px input: the map's pixels are the original pixels
        assert loc["area"] == pytest.approx(mask.mean())
        assert 0 <= loc["pointing"] <= 1 and 0 <= loc["energy"] <= 1
        want = np.clip(smap, 0, None)
        assert loc["energy"] == pytest.approx(want[mask].sum() / want.sum(), rel=1e-5)
    rollout = [i for i in items if i["method"] == "rollout"]
    assert all(i["sanity"]["text_max_spearman"] == 1.0 for i in rollout)  # text-blind, flagged
    summary = index["summary"]["gradcam"]
    n_loc = sum(1 for i in items if i["method"] == "gradcam" and i["localisation"])
    assert summary["localisation"]["n"] == n_loc > 0
    assert summary["sanity"]["randomisation_spearman"] == pytest.approx(
        np.mean([i["sanity"]["randomisation_spearman"] for i in items if i["method"] == "gradcam"])
    )


def test_batch_refuses_cnn_only_methods_and_empty_splits(tiny_cnn, synthetic_dir, tmp_path):
    man = synthetic_dir / "manifest.csv"
    with pytest.raises(ExplainError, match="gradcam, ig, occlusion"):
        explain_manifest(tiny_cnn, man, tmp_path, ExplainSettings(methods=("rollout",)))
    with pytest.raises(ExplainError, match="--split"):
        explain_manifest(tiny_cnn, man, tmp_path, ExplainSettings(), split="val")


def test_cli_single_image_all_methods_tokens_and_mask(saved, synthetic_dir, tmp_path, capsys):
    man = read_manifest(synthetic_dir / "manifest.csv")
    row = next(r for r in man.rows if r.label != ["clean"])
    out = tmp_path / "out"
    rc = main(
        [
            "explain", str(saved["vit"]), "--image", str(man.image_path(row)),
            "--text", row.text, "--method", "all", "--steps", "4", "--token-attribution",
            "--check-localisation", "--mask", str(synthetic_dir / row.meta["mask"]),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    index = _strict_json(out / "index.json")
    assert [i["method"] for i in index["items"]] == [
        "gradcam",
        "ig",
        "occlusion",
        "rollout",
        "chefer",
    ]
    assert all(i["localisation"] is not None for i in index["items"])
    tok = index["tokens"][0]
    assert tok["words"] == row.text.split()
    assert (out / tok["html"]).is_file()
    printed = capsys.readouterr().out
    assert "pointing" in printed and "index:" in printed


def test_cli_contrast_and_probability(saved, defect_image, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "explain", str(saved["cnn"]), "--image", str(defect_image), "--text", PROMPT,
            "--text-b", OTHER, "--score", "probability", "--against", "a crack",
            "--method", "ig", "--steps", "8", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    index = _strict_json(out / "index.json")
    sal, con = index["items"]
    assert sal["kind"] == "saliency" and con["kind"] == "contrast" and con["prompt_b"] == OTHER
    # A and B compete in one softmax with the --against prompt: their probabilities sum below 1.
    assert 0 < sal["score"] < 1 and 0 < con["score_b"] < 1
    assert sal["score"] + con["score_b"] < 1
    a, diff = np.load(out / sal["map"]), np.load(out / con["map"])
    assert diff.shape == a.shape and not np.allclose(diff, a)
    assert np.isfinite(diff).all() and np.abs(diff).max() > 0


def test_cli_manifest_mode(saved, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        ["explain", str(saved["cnn"]), "--manifest", str(synthetic_dir / "manifest.csv"),
         "--split", "test", "--limit", "2", "--check-localisation", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    index = _strict_json(out / "index.json")
    assert index["split"] == "test" and len(index["items"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "{img}", "--text", "x", "--method", "rollout"], "gradcam, ig, occlusion"),
        (["--image", "{img}", "--text", "  "], "empty"),
        (["--image", "{bad}", "--text", "a pit"], "bad.jpg"),
        (["--image", "{img}"], "--text"),
        (["--image", "{img}", "--manifest", "m.csv", "--text", "x"], "exactly one"),
        (["--image", "{img}", "--text", "x", "--score", "probability"], "two prompts"),
        (["--image", "{img}", "--text", "x", "--check-localisation"], "--mask PNG or --boxes"),
        (["--image", "{img}", "--text", "x", "--boxes", "[[1, 2"], "--boxes must be JSON"),
        (["--image", "{img}", "--text", "x", "--mask", "{small}"], "mask is 8x8"),
    ],
)
def test_cli_errors_are_clear(saved, defect_image, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a not really")
    small = tmp_path / "small.png"
    Image.new("L", (8, 8), 255).save(small)
    args = [a.format(img=defect_image, bad=bad, small=small) for a in args]
    rc = main(["explain", str(saved["cnn"]), *args, "--out", str(tmp_path / "o")])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_prepare_image_keeps_what_the_model_sees(tiny_vit, defect_image):
    inp = prepare_image(tiny_vit, defect_image)
    assert inp.pixels.shape == (1, 3, 64, 64)
    assert inp.view.shape == (64, 64, 3) and inp.view.dtype == np.uint8
    with Image.open(defect_image) as im:
        assert inp.original_size == im.size
        # 64 px synthetic image at 64 px input: the view is the image itself (up to rounding).
        diff = np.abs(inp.view.astype(int) - np.asarray(im.convert("RGB")).astype(int))
    assert diff.max() <= 1


def test_interrupted_batch_keeps_finished_rows(tiny_vit, synthetic_dir, tmp_path, monkeypatch):
    import domainclip.explain.batch as batch

    real, calls = batch._explain_row, []

    def stop_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "_explain_row", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        explain_manifest(
            tiny_vit, synthetic_dir / "manifest.csv", tmp_path, ExplainSettings(), split=None
        )
    index = _strict_json(tmp_path / "index.json")
    assert index["complete"] is False
    assert len(index["items"]) == 2 and all((tmp_path / i["map"]).is_file() for i in index["items"])
