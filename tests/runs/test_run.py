"""The run contract: what is a run, calibration precedence, loading, and the logit-scale clamp."""

from __future__ import annotations

import json
import math

import pytest
import torch

from domainclip.calibrators import CalibrationError, TemperatureCalibrator
from domainclip.errors import ConfigError
from domainclip.finetune import finetune
from domainclip.models import load_backbone, save_backbone
from domainclip.models.testing import tiny_open_clip_backbone
from domainclip.runs import Run, export_merged, is_run, resolve_model
from tests.finetune.conftest import syn_manifest, tiny_config, tiny_vit  # noqa: F401


@pytest.fixture(scope="module")
def wide_clamp_run(tmp_path_factory, tiny_vit, syn_manifest):  # noqa: F811
    """A 2-step LoRA run trained with loss.max_logit_scale = 1000 from a backbone whose
    exp(logit_scale) is 400, so any evaluation clamp at 100 would change its logits."""
    bb = load_backbone(str(tiny_vit))
    with torch.no_grad():
        bb.model.logit_scale.fill_(math.log(400.0))
    base = save_backbone(bb, tmp_path_factory.mktemp("wide") / "bb")
    cfg = tiny_config(
        base, syn_manifest, "train.max_steps=2", "loss.max_logit_scale=1000", "optim.lr=1e-4"
    )
    return finetune(cfg, tmp_path_factory.mktemp("wide") / "run").run_dir


def test_what_is_a_run(tmp_path):
    assert not is_run(tmp_path) and not is_run(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a fine-tuning run directory"):
        Run(tmp_path)
    (tmp_path / "config.yaml").write_text("backbone: {spec: default}\n")
    assert is_run(tmp_path)  # a run before its first checkpoint is still a run ...
    with pytest.raises(ConfigError, match="no checkpoints yet"):
        Run(tmp_path).checkpoint("best")  # ... and asking for weights says why there are none
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert not is_run(loop)  # a symlink loop is not a run, not a traceback


def test_calibration_precedence_given_then_fitted_then_identity(tmp_path):
    (tmp_path / "config.yaml").write_text("backbone: {spec: default}\n")
    run = Run(tmp_path)
    none = run.calibration()
    assert none.is_identity and "--fit-temperature" in none.source
    run.save_calibration(TemperatureCalibrator(0.5, fit={"split": "val", "n": 12}))
    fitted = run.calibration()
    assert fitted.temperature == 0.5 and fitted.fit["split"] == "val"
    assert fitted.source == str(tmp_path.resolve() / "calibration.json")
    given = run.calibration(temperature=2.0)
    assert given.temperature == 2.0 and given.source == "given"
    logits = torch.tensor([[2.0, 0.0]])
    assert torch.allclose(fitted.calibrate(logits), logits / 0.5)
    p = fitted.probabilities(logits, multi_label=False)
    assert p[0, 0] == pytest.approx(1 / (1 + math.exp(-4.0)))


def test_unknown_calibrator_kind_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("backbone: {spec: default}\n")
    (tmp_path / "calibration.json").write_text(json.dumps({"kind": "magic", "temperature": 1}))
    with pytest.raises(CalibrationError, match="unknown calibrator kind 'magic'.*newer domainclip"):
        Run(tmp_path).calibration()


def test_resolve_model_of_a_backbone_object():
    bb = tiny_open_clip_backbone("cnn")
    r = resolve_model(bb, temperature=3.0)
    assert r.backbone is bb and r.run is None and r.temperature == 3.0
    assert r.calibration_origin == "given"
    assert resolve_model(bb).calibrator.is_identity


def test_logit_scale_clamp_travels_with_the_model(wide_clamp_run, tmp_path):
    """Bug: evaluation clamped exp(logit_scale) at 100 while training clamped at
    loss.max_logit_scale, so a run with a larger clamp evaluated differently than it trained."""
    run = Run(wide_clamp_run)
    bb = run.load("last")
    assert bb.max_logit_scale == 1000.0
    assert bb.logit_scale_value() == pytest.approx(400.0, rel=0.01)
    # The clamp also survives the merged export to a plain backbone directory and back.
    again = load_backbone(str(export_merged(wide_clamp_run, tmp_path / "saved", "last")))
    assert again.max_logit_scale == 1000.0
    assert again.logit_scale_value() == pytest.approx(bb.logit_scale_value())


def _copy_run(run_dir, tmp_path):
    import shutil

    return shutil.copytree(run_dir, tmp_path / "copy")


def test_a_damaged_checkpoint_names_the_file_and_the_way_out(wide_clamp_run, tmp_path, capsys):
    from domainclip.cli import main
    from domainclip.finetune.errors import CheckpointError

    run = _copy_run(wide_clamp_run, tmp_path)
    best = Run(run).checkpoint("best")
    heads = best / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="heads.safetensors of checkpoint .* is damaged.*--checkpoint last"):
        Run(run).load("best")
    rc = main(["evaluate", str(run), "--split", "test", "--n-boot", "0"])
    err = capsys.readouterr().err
    assert rc != 0 and "heads.safetensors" in err and "Traceback" not in err
    Run(run).load("last")  # the other checkpoint still loads


def test_an_adapter_config_naming_missing_modules_is_a_clear_error(wide_clamp_run, tmp_path):
    from domainclip.finetune.errors import CheckpointError

    run = _copy_run(wide_clamp_run, tmp_path)
    configs = sorted(Run(run).checkpoint("last").rglob("adapter_config.json"))
    assert configs, "the LoRA run should have a peft adapter config"
    cfg = json.loads(configs[0].read_text())
    cfg["target_modules"] = ["no_such_module_anywhere"]
    configs[0].write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="adapter files of checkpoint .*last.*--checkpoint best"):
        Run(run).load("last")


# --- input geometry: the run's data.fit / data.image_size, overrides, and older runs ------------


def test_a_run_scores_at_the_input_it_trained_with(wide_clamp_run, tmp_path):
    result = json.loads((wide_clamp_run / "result.json").read_text())
    assert result["info"]["input"] == {"fit": "letterbox", "image_size": 64}  # native, default
    r = resolve_model(wide_clamp_run, checkpoint="last")
    assert r.input == {"fit": "letterbox", "image_size": 64}
    over = resolve_model(wide_clamp_run, checkpoint="last", fit="crop", image_size=96)
    assert over.input == {"fit": "crop", "image_size": 96}
    # a backbone without a run: letterbox at its native size
    assert resolve_model(tiny_open_clip_backbone("cnn")).input == {"fit": "letterbox", "image_size": 64}


def test_a_run_written_before_fit_policies_loads_as_crop(wide_clamp_run, tmp_path):
    import shutil

    import yaml

    old = tmp_path / "old-run"
    shutil.copytree(wide_clamp_run, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["data"]["fit"], cfg["data"]["image_size"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = Run(old)
    assert run.input_settings() == ("crop", None)
    assert run.config().data.fit == "crop" and run.setting("data.fit") == "crop"
    assert resolve_model(old, checkpoint="last").input == {"fit": "crop", "image_size": 64}


def test_a_run_trained_at_another_size_and_fit(tmp_path, tiny_vit, syn_manifest):  # noqa: F811
    """A ViT trained at 1.5x its native size (position embeddings interpolated), with crop:
    the run records it and every reader preprocesses the same way."""
    cfg = tiny_config(tiny_vit, syn_manifest, "train.max_steps=2", "data.fit=crop", "data.image_size=96")
    res = finetune(cfg, tmp_path / "run")
    assert all(math.isfinite(v) for v in res.best_metrics.values())
    assert res.info["input"] == {"fit": "crop", "image_size": 96}
    r = resolve_model(tmp_path / "run", checkpoint="last")
    assert r.input == {"fit": "crop", "image_size": 96}
    from PIL import Image

    pixels = r.preprocess(Image.new("RGB", (150, 100), (90, 30, 200))).unsqueeze(0)
    assert pixels.shape == (1, 3, 96, 96)
    feats = r.backbone.encode_images(pixels)
    assert feats.shape[0] == 1 and torch.isfinite(feats).all()
