"""The shortcut check finds a model that classifies from context, and clears one that needs the region.

Reference model: `ColourBackbone`, a hand-written deterministic encoder whose image feature is the
image's mean colour offset from mid-grey (plus a tiny constant coordinate), and whose text feature
for "a red/green/blue tile" is the unit vector of that colour. So the predicted class is the colour
channel that deviates most from grey, averaged over the whole image.

Two small synthetic data sets (64 px, 10 rows per class, half with a mask PNG, half with boxes):
* context: the class is the BACKGROUND colour; the annotated "defect" is a dark grey square that
  says nothing about the class. Removing it changes nothing: the check must flag the model.
* region: the background is neutral grey (random brightness, the same on every channel); the class
  is the colour of the square. Removing it leaves only grey: accuracy falls to chance (1/3).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from domainclip.calibrators import TemperatureCalibrator
from domainclip.datasets.manifest import read_manifest
from domainclip.errors import ConfigError, ResultFileError
from domainclip.evaluation.evaluate import EvaluationOptions, run_evaluation
from domainclip.evaluation.results import EvaluationResult
from domainclip.evaluation.shortcut import (
    ShortcutResult,
    ShortcutSettings,
    blur_fill,
    inpaint_fill,
    judge,
    make_versions,
    retained_fraction,
    shortcut_check,
)
from domainclip.evaluation.task import ZeroShotTask
from domainclip.models import Backbone
from domainclip.scoring.prompts import load_prompt_set

COLOURS = ("red", "green", "blue")
PROMPTS = {"version": "colour-1", "templates": ["a {label} tile"]}
SIZE, PATCH, PER_CLASS = 64, 10, 10


def to_tensor(pil: Image.Image) -> torch.Tensor:
    """The test model's preprocessing: resize to 32 px, [0, 1] floats, [3, 32, 32]."""
    arr = np.asarray(pil.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1)


class _Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(50.0)))


@dataclasses.dataclass
class ColourBackbone(Backbone):
    """Image feature: mean colour minus grey (+ 1e-3 constant); text: the named colour's axis."""

    def encode_images(self, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        f = (pixels.float() - 0.5).mean(dim=(2, 3))
        return F.normalize(torch.cat([f, torch.full((len(f), 1), 1e-3)], dim=1), dim=1)

    def encode_texts(self, texts, batch_size: int = 128) -> torch.Tensor:
        rows = [
            [float(c in t) for c in COLOURS] + [float(not any(c in t for c in COLOURS))]
            for t in texts
        ]
        return F.normalize(torch.tensor(rows), dim=1)


def colour_backbone() -> ColourBackbone:
    return ColourBackbone(
        model=_Tower(),
        tokenizer=None,
        family="test",
        image_arch="cnn",
        spec="colour-test",
        image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(1.0, 1.0, 1.0),
    )


def _image(kind: str, k: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """One image of class k and the top-left corner of its square."""
    axis = np.eye(3)[k]
    if kind == "context":
        bg, patch = 128.0 + 60.0 * axis, np.full(3, 40.0)
    else:
        b = rng.uniform(-20, 20)
        bg, patch = np.full(3, 128.0 + b), 128.0 + b + 90.0 * axis
    img = bg + rng.normal(0, 4, (SIZE, SIZE, 3))
    x, y = (int(v) for v in rng.integers(4, SIZE - PATCH - 4, 2))
    img[y : y + PATCH, x : x + PATCH] = patch + rng.normal(0, 4, (PATCH, PATCH, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), (x, y)


def make_data(root: Path, kind: str, seed: int = 0) -> Path:
    """30 rows with a region (mask or boxes) + 3 rows the check must skip; all in split test."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(PER_CLASS * 3):
        k = i % 3
        img, (x, y) = _image(kind, k, rng)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        row = {"image": f"images/{i}.png", "text": f"a {COLOURS[k]} tile", "label": COLOURS[k]}
        if i % 2 == 0:
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[y : y + PATCH, x : x + PATCH] = 255
            Image.fromarray(mask).save(root / "masks" / f"{i}.png")
            row["mask"] = f"masks/{i}.png"
        else:  # inclusive corners
            row["boxes"] = json.dumps([[x, y, x + PATCH - 1, y + PATCH - 1, "square"]])
        rows.append(row)
    img, _ = _image(kind, 0, rng)
    for name in ("noregion", "nomask", "broken"):
        Image.fromarray(img).save(root / "images" / f"{name}.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    rows += [
        {"image": "images/noregion.png", "text": "a red tile", "label": "red"},
        {"image": "images/nomask.png", "text": "a red tile", "label": "red", "mask": "masks/x.png"},
        {
            "image": "images/broken.png",
            "text": "a red tile",
            "label": "red",
            "boxes": '[[1,1,5,5,"s"]]',
        },
    ]
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["image", "text", "label", "split", "mask", "boxes"])
        w.writeheader()
        for r in rows:
            w.writerow({"split": "test", **r})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shortcut")
    return {kind: make_data(root / kind, kind) for kind in ("context", "region")}


def _check(manifest: Path, **settings) -> ShortcutResult:
    bb = colour_backbone()
    ps = load_prompt_set(PROMPTS)
    task = ZeroShotTask.build(bb, ps, list(COLOURS))
    settings = ShortcutSettings(**{"n_boot": 200, **settings})
    return shortcut_check(
        bb, read_manifest(manifest), "test", task, TemperatureCalibrator(1.0), to_tensor, settings
    )


def _acc(cell: dict, version: str) -> float:
    return cell[version]["accuracy"]["value"]


@pytest.mark.parametrize("fill", ["blur", "inpaint"])
def test_context_model_is_flagged(data, fill):
    r = _check(data["context"], fill=fill)
    assert r.verdict == "uses_context" and r.flagged
    assert r.n_rows == 33 and r.n_used == 30 and r.n_embedded == 90
    assert r.skipped == {"no region": 1, "region unreadable": 1, "image unreadable": 1}
    assert any("x.png" in n for n in r.notes) and any("broken.png" in n for n in r.notes)
    o = r.overall
    assert _acc(o, "intact") == 1.0 and _acc(o, "removed") == 1.0
    assert o["retained"] == pytest.approx(1.0) and o["uses_context"] is True
    assert o["removed"]["confidence"]["value"] > 0.9 and abs(o["confidence_drop"]["value"]) < 0.05
    assert r.classes_flagged == list(COLOURS)
    assert r.chance == pytest.approx(1 / 3) and 0.05 < r.region_fraction < 0.1  # 18x18 of 64x64
    # The 4-px ring of the dilated region is background, so only_region still shows the class
    # colour; with the exact region only the uninformative square is left: chance.
    assert _acc(o, "only_region") == 1.0
    exact = _check(data["context"], fill=fill, dilation=0).overall
    assert _acc(exact, "only_region") < 0.6 and _acc(exact, "removed") == 1.0
    assert exact["only_region"]["confidence"]["value"] < 0.5


@pytest.mark.parametrize("fill", ["blur", "inpaint"])
def test_region_model_drops_to_chance_and_is_not_flagged(data, fill):
    r = _check(data["region"], fill=fill)
    assert r.verdict == "uses_region" and not r.flagged
    o = r.overall
    assert _acc(o, "intact") == 1.0 and _acc(o, "only_region") == 1.0
    assert _acc(o, "removed") < 0.6  # random among three classes
    assert o["retained"] < 0.5 and o["uses_context"] is False
    assert o["accuracy_drop"]["value"] > 0.4 and o["accuracy_drop"]["ci95"][0] > 0.2
    assert o["removed"]["confidence"]["value"] < 0.6
    assert r.classes_flagged == []
    for c in COLOURS:
        assert r.per_class[c]["n"] == 10 and _acc(r.per_class[c], "intact") == 1.0


def test_rule_threshold_and_undetermined_cases():
    s = ShortcutSettings()
    assert retained_fraction(0.9, 0.7, 0.25) == pytest.approx(0.45 / 0.65)
    # retained 0.69: "uses context" at threshold 0.6, not at the default 0.8
    assert judge(0.9, 0.7, 0.25, 50, 10, ShortcutSettings(threshold=0.6))[0] is True
    flag, retained, reason = judge(0.9, 0.7, 0.25, 50, 10, s)
    assert flag is False and retained == pytest.approx(0.6923, abs=1e-4) and "69%" in reason
    assert judge(0.9, 0.9, 0.25, 50, 10, s)[0] is True  # exactly at 100%: flagged
    # at chance there is nothing to retain; too few rows: undetermined
    assert judge(0.3, 0.3, 0.25, 50, 10, s)[0] is None
    assert judge(1.0, 1.0, 0.25, 9, 10, s)[0] is None
    assert retained_fraction(0.2, 0.5, 0.25) is None


def test_threshold_is_a_parameter_end_to_end(data):
    # Context model: retained 1.0, flagged even at threshold 1; min_rows above n: undetermined.
    assert _check(data["context"], threshold=1.0, n_boot=0).verdict == "uses_context"
    r = _check(data["context"], min_rows=31, n_boot=0)
    assert r.verdict == "undetermined" and "fewer than the 31" in r.reason
    assert r.overall["intact"]["accuracy"]["ci95"] is None  # n_boot 0: no intervals


def _square(colour_in, colour_out, size=40, lo=15, hi=25):
    img = np.empty((size, size, 3), np.float32)
    img[:] = colour_out
    hole = np.zeros((size, size), bool)
    hole[lo:hi, lo:hi] = True
    img[hole] = colour_in
    return img, hole


@pytest.mark.parametrize("fill", [blur_fill, inpaint_fill])
def test_fills_use_only_the_surroundings(fill):
    img, hole = _square((250, 10, 10), (60, 120, 200))
    out = fill(img, hole)
    assert np.abs(out[hole] - np.array([60, 120, 200])).max() <= 3  # nothing of the red inside
    np.testing.assert_array_equal(out[~hole], img[~hole])


def test_blur_fill_large_hole_and_gradient():
    # A hole much larger than the minimum sigma still gets a finite fill from its surroundings.
    img, hole = _square((255, 255, 255), (30, 30, 30), size=300, lo=20, hi=280)
    out = blur_fill(img, hole)
    assert np.isfinite(out).all() and np.abs(out[hole] - 30).max() < 1e-3
    # On a left-to-right ramp the fill stays within the values around the hole
    ramp = np.repeat(np.linspace(0, 255, 100, dtype=np.float32)[None, :, None], 100, 0)
    ramp = np.repeat(ramp, 3, 2)
    hole = np.zeros((100, 100), bool)
    hole[40:60, 40:60] = True
    filled = blur_fill(ramp, hole)[hole]
    assert filled.min() > ramp[0, 30, 0] - 1 and filled.max() < ramp[0, 70, 0] + 1


@pytest.mark.parametrize("outside", ["grey", "mean", "blur"])
def test_only_region_keeps_the_region_and_replaces_the_rest(outside):
    img, hole = _square((250, 10, 10), (60, 120, 200))
    v = make_versions(
        img.astype(np.uint8), hole, ShortcutSettings(outside=outside), (100, 100, 100)
    )
    only = v["only_region"].astype(float)
    np.testing.assert_array_equal(only[hole], img[hole])
    expected = {
        "grey": [100, 100, 100],
        "mean": img.reshape(-1, 3).mean(0),
        "blur": [60, 120, 200],  # the outside's own blur: the red square is not smeared out
    }[outside]
    assert np.abs(only[~hole] - np.rint(expected)).max() <= 1.0
    np.testing.assert_array_equal(v["intact"], img.astype(np.uint8))


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="fill 'smudge'"):
        ShortcutSettings(fill="smudge")
    with pytest.raises(ConfigError, match="threshold must be in"):
        ShortcutSettings(threshold=1.5)


def test_multi_label_task_is_refused(data):
    bb = colour_backbone()
    ps = load_prompt_set(
        {
            "version": 1,
            "mode": "multi_label",
            "templates": {"positive": ["a {label} tile"], "negative": ["no {label} tile"]},
        }
    )
    task = ZeroShotTask.build(bb, ps, list(COLOURS))
    with pytest.raises(ConfigError, match="single-label"):
        shortcut_check(
            bb, read_manifest(data["context"]), "test", task, TemperatureCalibrator(1.0), to_tensor
        )


def test_result_round_trip_and_damaged_file(data):
    r = _check(data["context"], n_boot=50)
    assert ShortcutResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    bad = r.to_dict()
    del bad["overall"]["removed"]
    with pytest.raises(ResultFileError, match=r"shortcut\.overall\.removed"):
        ShortcutResult.from_dict(bad, "metrics.json")
    bad = {**r.to_dict(), "verdict": "maybe"}
    with pytest.raises(ResultFileError, match="verdict"):
        ShortcutResult.from_dict(bad)


@pytest.fixture(scope="module")
def evaluated(data, tmp_path_factory):
    """`run_evaluation` of the colour model on the context data (T = 25, so the calibrator counts)."""
    out = tmp_path_factory.mktemp("eval_context")
    opts = EvaluationOptions(n_boot=100, temperature=25.0, show_paths=True)
    return run_evaluation(colour_backbone(), data["context"], "test", PROMPTS, out, opts), out


def test_evaluate_runs_the_check_by_default_and_stores_it(evaluated):
    result, out = evaluated
    s = result.shortcut
    assert s is not None and s.verdict == "uses_context" and s.settings["n_boot"] == 100
    # Same preprocessing, task and calibrator as the evaluation: the intact confidence is the mean
    # true-class probability of predictions.csv over the rows the check used.
    with open(out / "predictions.csv") as fh:
        preds = {Path(p["image"]).name: p for p in csv.DictReader(fh)}
    used = [f"{i}.png" for i in range(30)]
    mean_p = np.mean([float(preds[n][f"p_{preds[n]['label']}"]) for n in used])
    assert s.overall["intact"]["confidence"]["value"] == pytest.approx(mean_p, abs=1e-5)
    assert mean_p < 0.9  # T = 25 softened the probabilities (T = 1 gives > 0.99)
    read = EvaluationResult.read(out / "metrics.json")
    assert read.shortcut == s
    md = (out / "report.md").read_text()
    assert "## Shortcut check (annotated region removed)" in md and "**uses context**" in md
    assert "| all | 30 | 1.000" in md and "image unreadable 1" in md


def test_old_metrics_without_shortcut_stay_readable(evaluated):
    result, _ = evaluated
    data = result.to_json()
    data.pop("shortcut")
    assert EvaluationResult.from_json(data).shortcut is None
    data["shortcut"] = None
    assert EvaluationResult.from_json(data).shortcut is None


def test_evaluate_without_the_check(data, tmp_path):
    opts = EvaluationOptions(n_boot=0, shortcut_check=False)
    r = run_evaluation(colour_backbone(), data["region"], "test", PROMPTS, tmp_path, opts)
    assert r.shortcut is None and "shortcut" not in r.to_json()
    assert "Shortcut check" not in (tmp_path / "report.md").read_text()
    # Off by default when fewer than min_rows rows have a region
    few = EvaluationOptions(n_boot=0, shortcut=ShortcutSettings(min_rows=40))
    assert (
        run_evaluation(
            colour_backbone(),
            data["region"],
            "test",
            PROMPTS,
            None,
            dataclasses.replace(few, write=False),
        ).shortcut
        is None
    )


def test_card_says_when_the_model_uses_context(evaluated, tmp_path, manifest_for_card):
    import yaml

    from domainclip.audit import write_card
    from domainclip.finetune import load_config

    result, _ = evaluated
    run = tmp_path / "run"
    (run / "eval" / "context_test").mkdir(parents=True)
    cfg = load_config("configs/demo_synthetic_lora.yaml", [f"data.manifest={manifest_for_card}"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    result.write(run / "eval" / "context_test" / "metrics.json")
    md = write_card(run).read_text()
    assert "**Shortcut check: the model uses context.**" in md
    assert "keeps 100% of its above-chance accuracy" in md


@pytest.fixture
def manifest_for_card(data) -> Path:
    return data["context"]


def test_cli_options(synthetic_manifest, tmp_path, capsys):
    from domainclip.cli import main
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    bb = save_backbone(tiny_open_clip_backbone("cnn", seed=5), tmp_path / "tiny")
    prompts = str(Path(__file__).resolve().parents[2] / "domainclip/configs/prompts/synthetic.yaml")
    base = ["evaluate", str(bb), "--data", str(synthetic_manifest), "--prompts", prompts]
    base += ["--n-boot", "20", "--device", "cpu", "--out"]
    options = [
        "--shortcut-fill",
        "inpaint",
        "--shortcut-threshold",
        "0.7",
        "--shortcut-dilation",
        "2",
    ]
    assert main([*base, str(tmp_path / "on"), "--shortcut-check", *options]) == 0
    assert "shortcut check:" in capsys.readouterr().out
    s = json.loads((tmp_path / "on" / "metrics.json").read_text())["shortcut"]
    assert (s["settings"]["fill"], s["settings"]["threshold"], s["settings"]["dilation"]) == (
        "inpaint",
        0.7,
        2,
    )
    # every test row is used or counted; clean rows have an empty mask: "no region"
    assert s["n_used"] + sum(s["skipped"].values()) == s["n_rows"] == 12
    assert s["skipped"].get("no region", 0) >= 1 and s["n_embedded"] == 3 * s["n_used"]
    assert main([*base, str(tmp_path / "off"), "--no-shortcut-check"]) == 0
    assert "shortcut" not in json.loads((tmp_path / "off" / "metrics.json").read_text())
