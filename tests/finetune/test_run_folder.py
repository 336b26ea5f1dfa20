"""The run folder is guarded: inputs checked before anything is created, one writer at a time,
no group leakage by default (issue 13 cases)."""

from __future__ import annotations

import csv

import pytest

from domainclip.errors import BackboneError, ConfigError, DataError
from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune import finetune
from domainclip.finetune.errors import CheckpointError

from .conftest import tiny_config


def _leaky_copy(manifest, tmp_path):
    """The synthetic manifest with one training row's group also placed in the test split."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    train = next(r for r in rows if r["split"] == "train")
    test = next(r for r in rows if r["split"] == "test")
    test["group"] = train["group"] = "patient-4711"
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / manifest.name
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for f in manifest.parent.iterdir():  # the images, next to the copied manifest
        if f.name != manifest.name and not (tmp_path / f.name).exists():
            (tmp_path / f.name).symlink_to(f)
    return out


def test_group_leakage_is_refused_unless_allowed(tiny_vit, syn_manifest, tmp_path):
    leaky = _leaky_copy(syn_manifest, tmp_path / "data")
    with pytest.raises(DataError, match="'patient-4711' is in test.*and train.*allow_group_leakage"):
        finetune(tiny_config(tiny_vit, leaky, "train.max_steps=1"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    res = finetune(
        tiny_config(tiny_vit, leaky, "train.max_steps=1", "data.allow_group_leakage=true"),
        tmp_path / "run2",
    )
    assert res.steps == 1


def test_inputs_are_checked_before_anything_is_created(tiny_vit, syn_manifest, tmp_path):
    with pytest.raises(DataError, match="not found"):
        finetune(tiny_config(tiny_vit, tmp_path / "missing.csv"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises((BackboneError, ConfigError), match="no_such_backbone"):
        finetune(tiny_config(tmp_path / "no_such_backbone", syn_manifest), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()  # the same --out stays usable
    assert finetune(tiny_config(tiny_vit, syn_manifest, "train.max_steps=1"), tmp_path / "run").steps == 1


def test_a_second_writer_of_the_same_folder_is_refused(tiny_vit, syn_manifest, tmp_path):
    run = tmp_path / "run"
    busy = pytest.raises(CheckpointError, match="being written by another domainclip process")
    with ckpt.run_lock(run), busy:  # another process is writing this folder
        finetune(tiny_config(tiny_vit, syn_manifest, "train.max_steps=1"), run)
    assert finetune(tiny_config(tiny_vit, syn_manifest, "train.max_steps=1"), run).steps == 1
