"""End-to-end training runs on a tiny backbone: every method, loading, export, bad input."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch

from domainclip.errors import DataError
from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune import finetune
from domainclip.finetune.errors import CheckpointError, TrainingDiverged
from domainclip.finetune.metric_names import resolve_metric
from domainclip.finetune.runlog import read_metrics
from domainclip.finetune.validate import ValFeatures, encoder_for, validation_metrics
from domainclip.models import load_backbone
from domainclip.runs import export_merged, load_adaptation, load_model

from .conftest import tiny_config


def _val_metrics_from_loaded(run, cfg):
    """Validation metrics recomputed from a reloaded run (images decoded afresh)."""
    from domainclip.finetune.data import image_batches, load_splits
    from domainclip.runs import Run

    adapt = load_adaptation(run, "best")
    split = load_splits(cfg.data, cfg.train.seed).val
    feats, rows = [], []
    preprocess = Run(run).preprocess(adapt.bb)  # the run's eval transform, as training used
    for batch in image_batches(split, preprocess, [list(range(len(split)))], 0, 0, 0):
        feats.append(adapt.bb.encode_images(batch["image"]))
        rows += batch["rows"]
    from domainclip.scoring.prompts import load_prompt_set

    return validation_metrics(
        adapt,
        split,
        ValFeatures(torch.cat(feats), rows),
        encoder_for(adapt, torch.device("cpu")),
        load_prompt_set(cfg.eval.prompts),
        cfg.loss.positives,
        cfg.train.batch_size,
        cfg.loss.max_logit_scale,
    )


def test_default_recipe_optimises(tiny_vit, syn_manifest, tmp_path):
    """Locked image tower + cache + text LoRA: on the training pairs the loss goes down."""
    cfg = tiny_config(
        tiny_vit,
        syn_manifest,
        "data.val_split=train",
        "train.max_steps=16",
        "eval.every_steps=8",
        "eval.metric=loss",
    )
    res = finetune(cfg, tmp_path / "run")
    assert res.initial_metrics["loss"] > res.best_metrics["loss"] + 0.1
    assert res.best_metrics["t2i_R@1"] >= res.initial_metrics["t2i_R@1"]
    assert 0 < res.trainable_fraction < 0.05 and res.cache_seconds > 0
    events = read_metrics(res.run_dir)
    assert [e["step"] for e in events if e["event"] == "val"] == [0, 8, 16]
    assert any(e["event"] == "train" for e in events)
    assert (res.run_dir / "tb").is_dir() and (res.run_dir / "config.yaml").is_file()
    last = ckpt.checkpoint_dir(res.run_dir, "last")
    assert (last / "text_lora" / "adapter_config.json").is_file()
    assert (last / "text_lora" / "adapter_model.safetensors").is_file()
    assert not (last / "image_lora").exists() and (last / "state.pt").is_file()


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.image_tower=lora", "train.cache_features=never", "data.augment=industrial"],
        ["method.name=full", "optim.lr=1e-4"],
        ["method.name=clip_adapter", "method.clip_adapter.text=true"],
        ["method.name=tip_adapter"],
        ["method.name=tip_adapter", "method.tip_adapter.train_keys=false"],
        ["method.name=linear_probe"],
        ["loss.supervised_weight=1.0", "loss.positives=label"],
    ],
    ids=[
        "lora-both-towers",
        "full",
        "clip-adapter",
        "tip-adapter-f",
        "tip-adapter",
        "linear-probe",
        "supervised-label-positives",
    ],
)
def test_methods_train_and_reload(tiny_vit, syn_manifest, tmp_path, overrides):
    """Every method runs, and load_model(RUN) reproduces the validation metrics of `best`."""
    cfg = tiny_config(tiny_vit, syn_manifest, *overrides)
    res = finetune(cfg, tmp_path / "run")
    again = _val_metrics_from_loaded(res.run_dir, cfg)
    for key in ("zero_shot_acc", "t2i_R@1", "i2t_R@1"):
        key = resolve_metric(res.best_metrics, key)  # head methods log head_acc
        assert again[key] == pytest.approx(res.best_metrics[key], abs=1e-6), key
    assert again["loss"] == pytest.approx(res.best_metrics["loss"], abs=1e-4)
    bb = load_model(res.run_dir)
    assert (bb.head is not None) == (cfg.method.name in ("tip_adapter", "linear_probe"))
    if cfg.method.name == "tip_adapter" and not cfg.method.tip_adapter.train_keys:
        assert res.trainable_params == 0
    else:
        assert res.trainable_params > 0
    # config.yaml and the checkpoint's method.json record the chosen method's settings only
    from domainclip.finetune.config import METHOD_SETTINGS
    from domainclip.io import load_yaml

    saved = load_yaml(res.run_dir / "config.yaml")["method"]
    assert set(saved) & set(METHOD_SETTINGS) == ({cfg.method.name} - {"full"})
    best = ckpt.checkpoint_dir(res.run_dir, "best")
    meta = json.loads((best / "method.json").read_text())
    assert meta.get("settings") == saved.get(cfg.method.name)


def test_export_merged_equals_unmerged_and_loads_in_open_clip(tiny_vit, syn_manifest, tmp_path):
    import open_clip

    cfg = tiny_config(
        tiny_vit, syn_manifest, "method.image_tower=lora", "train.max_steps=3", "optim.lr=2e-2"
    )
    res = finetune(cfg, tmp_path / "run")
    bb = load_model(res.run_dir, checkpoint="last")
    out = export_merged(res.run_dir, tmp_path / "merged", checkpoint="last")
    merged = load_backbone(str(out))
    plain = open_clip.create_model(
        f"local-dir:{out}", pretrained_image=False, pretrained_text=False
    ).eval()
    x = torch.randn(3, 3, bb.image_size, bb.image_size)
    ids = bb.tokenizer(["a scratch on a metal surface", "two pits", "a clean metal surface"])
    base = load_backbone(str(tiny_vit))
    with torch.no_grad():
        ref_i, ref_t = bb.model.encode_image(x), bb.model.encode_text(ids)
        for m in (merged.model, plain):
            assert torch.allclose(m.encode_image(x), ref_i, atol=1e-5)
            assert torch.allclose(m.encode_text(ids), ref_t, atol=1e-5)
        assert not torch.allclose(base.model.encode_text(ids), ref_t, atol=1e-3)  # it did train


def test_export_refuses_head_methods(tiny_vit, syn_manifest, tmp_path):
    from domainclip.errors import ConfigError

    res = finetune(
        tiny_config(tiny_vit, syn_manifest, "method.name=linear_probe"), tmp_path / "run"
    )
    with pytest.raises(ConfigError, match="load_model"):
        export_merged(res.run_dir, tmp_path / "out")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_vit, syn_manifest, tmp_path, monkeypatch
):
    import domainclip.finetune.trainer as trainer_mod

    real = trainer_mod.multi_positive_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 4 else loss  # the 4th training step

    monkeypatch.setattr(trainer_mod, "multi_positive_loss", poisoned)
    cfg = tiny_config(tiny_vit, syn_manifest, "eval.at_start=false", "train.max_steps=10")
    with pytest.raises(TrainingDiverged) as e:
        finetune(cfg, tmp_path / "run")
    msg = str(e.value)
    assert "at step 4" in msg and "optim.lr=" in msg and "after step 3" in msg
    last = ckpt.checkpoint_dir(tmp_path / "run", "last")
    assert ckpt.read_meta(last)["step"] == 3
    bb = load_model(tmp_path / "run", checkpoint="last")
    assert torch.isfinite(bb.model.text_projection).all()


def test_empty_val_split_is_a_clear_error(tiny_vit, syn_manifest, tmp_path):
    with pytest.raises(DataError, match=r"val split 'test'.*is empty|split 'test'.*empty") as e:
        finetune(
            tiny_config(
                tiny_vit, _without_split(syn_manifest, "test", tmp_path), "data.val_split=test"
            ),
            tmp_path / "r",
        )
    assert "rows per split" in str(e.value)


def _without_split(manifest, split, tmp_path):
    from domainclip.datasets.manifest import read_manifest, write_manifest

    man = read_manifest(manifest)
    rows = [r for r in man.rows if r.split != split]
    for r in rows:
        r.image = str(man.image_path(r))
    out = tmp_path / "m.csv"
    write_manifest(rows, out)
    return out


def _with_broken_images(manifest, tmp_path, every: int):
    """Copy of the data set where every `every`-th training image is garbage bytes."""
    src = manifest.parent
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    from domainclip.datasets.manifest import read_manifest

    man = read_manifest(dst / "manifest.csv")
    train = [r for r in man.rows if r.split == "train"]
    broken = set()
    for i, r in enumerate(train):
        if i % every == 0:
            man.image_path(r).write_bytes(b"not an image at all")
            broken.add(i)
    return dst / "manifest.csv", broken


def test_batches_whose_images_all_fail_are_skipped_and_counted(tiny_vit, syn_manifest, tmp_path):
    from domainclip.finetune.data import GlobalBatches

    manifest, broken = _with_broken_images(syn_manifest, tmp_path, every=2)
    cfg = tiny_config(
        tiny_vit,
        manifest,
        "method.image_tower=lora",
        "train.cache_features=never",
        "train.batch_size=2",
        "train.max_steps=12",
        "eval.at_start=false",
    )
    res = finetune(cfg, tmp_path / "run")
    sampler = GlobalBatches(_n_train(manifest), 2, cfg.train.seed)
    per_epoch = len(sampler)
    expected = 0
    for step in range(12):
        epoch, b = divmod(step, per_epoch)
        rows = sampler.epoch(epoch)[b]
        expected += (
            sum(r in broken for r in rows) >= 1 and len(rows) - sum(r in broken for r in rows) < 2
        )
    assert expected > 0
    assert res.skipped_batches == expected


def _n_train(manifest):
    from domainclip.datasets.manifest import read_manifest

    return sum(r.split == "train" for r in read_manifest(manifest).rows)


def test_unreadable_images_are_left_out_of_the_cache(tiny_vit, syn_manifest, tmp_path):
    manifest, broken = _with_broken_images(syn_manifest, tmp_path, every=5)
    res = finetune(tiny_config(tiny_vit, manifest, "train.max_steps=3"), tmp_path / "run")
    assert res.info["unreadable_images"] == {"train": len(broken), "val": 0}
    assert res.skipped_images > 0  # broken rows drawn into batches are dropped from them, counted
    assert res.steps == 3


def test_resume_with_a_different_config_is_refused(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(tiny_vit, syn_manifest, "train.max_steps=2")
    finetune(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match="already holds a run"):
        finetune(cfg, tmp_path / "run")
    other = tiny_config(
        tiny_vit, syn_manifest, "train.max_steps=4", "optim.lr=1e-3", "train.progress=true"
    )
    with pytest.raises(CheckpointError) as e:
        finetune(other, tmp_path / "run", resume=True)
    msg = str(e.value)
    assert "optim.lr: 0.005 -> 0.001" in msg and "train.max_steps: 2 -> 4" in msg
    assert "train.progress" not in msg


def test_disk_full_during_a_run_keeps_the_previous_checkpoint(
    tiny_vit, syn_manifest, tmp_path, monkeypatch
):
    cfg = tiny_config(
        tiny_vit,
        syn_manifest,
        "train.max_steps=4",
        "train.checkpoint_every=1",
        "eval.at_start=false",
    )
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third state.pt: adapters and heads are already in the temp dir
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="disk is full"):
        finetune(cfg, tmp_path / "run")
    last = ckpt.checkpoint_dir(tmp_path / "run", "last")
    assert ckpt.read_meta(last)["step"] == 2
    assert int(ckpt.load_state(last)["loop"]["step"]) == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    load_model(tmp_path / "run", checkpoint="last")


def test_feature_cache_dir_is_reused(tiny_vit, syn_manifest, tmp_path):
    cache = tmp_path / "fc"
    cfg = tiny_config(
        tiny_vit, syn_manifest, f"train.feature_cache_dir={cache}", "train.max_steps=2"
    )
    a = finetune(cfg, tmp_path / "a")
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 2  # train and val
    stamp = [f.stat().st_mtime_ns for f in files]
    b = finetune(cfg, tmp_path / "b")
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*.safetensors"))] == stamp
    assert a.best_metrics["loss"] == pytest.approx(b.best_metrics["loss"], abs=1e-6)
    # an edited image invalidates the key
    from domainclip.finetune.data import cache_key, load_splits

    split = load_splits(cfg.data, 0).train
    k1 = cache_key(split, "fp", "t")
    img = split.manifest.image_path(split.dataset().rows[split.positions[0]])
    img.touch()
    import os

    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert cache_key(split, "fp", "t") != k1


def test_result_json_and_cli_output(tiny_vit, syn_manifest, tmp_path, capsys):
    import yaml

    from domainclip.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(tiny_config(tiny_vit, syn_manifest, "train.max_steps=2").to_dict())
    )
    assert main(["finetune", str(cfg), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters" in out and "best (step" in out
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["method"] == "lora" and result["steps"] == 2
    assert main(["finetune", str(cfg), "--set", "optim.lr=7", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "optim.lr = 7.0 is out of range" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "e")]) == 2
    assert "--merge" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--merge", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "open_clip_config.json").is_file()


def test_early_stopping_on_a_flat_metric(tiny_vit, syn_manifest, tmp_path):
    """lr ~ 0: the metric never improves, so patience=1 stops at the first epoch's evaluation."""
    cfg = tiny_config(
        tiny_vit, syn_manifest, "optim.lr=1e-12", "eval.patience=1", "train.max_steps=20"
    )
    res = finetune(cfg, tmp_path / "run")
    per_epoch = _n_train(syn_manifest) // cfg.train.batch_size
    assert res.stopped_early and res.steps == per_epoch < 20
    assert res.best_step == 0


def test_gradient_accumulation_steps_per_epoch(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(
        tiny_vit,
        syn_manifest,
        "optim.accumulate=2",
        "train.batch_size=4",
        "train.epochs=1",
        "train.max_steps=0",
    )
    res = finetune(cfg, tmp_path / "run")
    assert res.steps == (_n_train(syn_manifest) // 4) // 2
    vals = [e["step"] for e in read_metrics(res.run_dir) if e["event"] == "val"]
    assert vals == [0, res.steps]
