"""Crash-safe checkpoint writes: temp dir + fsync + rename, disk full, interrupted swaps."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune.errors import CheckpointError


def _writer(value: float, fail_after_first_file: bool = False):
    def save(d):
        (d / "heads.bin").write_bytes(json.dumps({"v": value}).encode())
        if fail_after_first_file:
            raise OSError(errno.ENOSPC, "No space left on device")
        (d / "sub").mkdir()
        (d / "sub" / "adapter.bin").write_bytes(b"x" * 100)

    return save


def _value(path):
    return json.loads((path / "heads.bin").read_text())["v"]


def test_write_and_find(tmp_path):
    out = ckpt.write_checkpoint(
        tmp_path, "last", _writer(1.0), {"step": 1}, {"step": torch.tensor(1)}
    )
    assert ckpt.checkpoint_dir(tmp_path, "last") == out
    assert ckpt.read_meta(out)["step"] == 1
    assert int(ckpt.load_state(out)["step"]) == 1
    ckpt.write_checkpoint(tmp_path, "last", _writer(2.0), {"step": 2})
    assert _value(ckpt.checkpoint_dir(tmp_path, "last")) == 2.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last"]


def test_disk_full_mid_save_keeps_previous(tmp_path):
    ckpt.write_checkpoint(tmp_path, "last", _writer(1.0), {"step": 1})
    with pytest.raises(CheckpointError, match="disk is full.*previous checkpoint is intact"):
        ckpt.write_checkpoint(
            tmp_path, "last", _writer(2.0, fail_after_first_file=True), {"step": 2}
        )
    good = ckpt.checkpoint_dir(tmp_path, "last")
    assert _value(good) == 1.0 and ckpt.read_meta(good)["step"] == 1
    assert (good / "sub" / "adapter.bin").is_file()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last"]  # temp dir removed


def test_interrupted_swap_is_recovered(tmp_path):
    """A kill between the two renames leaves only .old-NAME: it is found and later replaced."""
    ckpt.write_checkpoint(tmp_path, "last", _writer(1.0), {"step": 1})
    d = tmp_path / "checkpoints"
    (d / "last").rename(d / ".old-last")
    (d / ".tmp-last-dead").mkdir()  # a writer killed before finishing
    (d / ".tmp-last-dead" / "heads.bin").write_text("partial")
    assert _value(ckpt.checkpoint_dir(tmp_path, "last")) == 1.0
    ckpt.cleanup_temp(tmp_path)
    ckpt.write_checkpoint(tmp_path, "last", _writer(3.0), {"step": 3})
    assert _value(ckpt.checkpoint_dir(tmp_path, "last")) == 3.0
    assert sorted(p.name for p in d.iterdir()) == ["last"]


def test_incomplete_checkpoint_is_not_used(tmp_path):
    d = tmp_path / "checkpoints" / "best"
    d.mkdir(parents=True)
    (d / "heads.bin").write_text("no meta.json: the writer died before finishing")
    with pytest.raises(CheckpointError, match="no complete checkpoint 'best'"):
        ckpt.checkpoint_dir(tmp_path, "best")


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    state = ckpt.rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (torch.rand(2), random.random(), np.random.rand())
    ckpt.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_torch_runtime_error_while_writing_keeps_previous(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError ("file write failed"), not OSError."""
    ckpt.write_checkpoint(tmp_path, "last", _writer(1.0), {"step": 1})

    def failing_save(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="file write failed.*previous checkpoint is intact"):
        ckpt.write_checkpoint(tmp_path, "last", _writer(2.0), {"step": 2}, {"step": torch.tensor(2)})
    assert _value(ckpt.checkpoint_dir(tmp_path, "last")) == 1.0


class _NotAState:  # a class a training state never contains (module-level so it pickles)
    pass


def test_a_tampered_or_damaged_state_is_refused_with_a_plain_message(tmp_path):
    out = ckpt.write_checkpoint(tmp_path, "last", _writer(1.0), {"step": 1}, {"step": torch.tensor(1)})
    torch.save({"step": _NotAState()}, out / ckpt.STATE_FILE)
    with pytest.raises(CheckpointError, match="not a domainclip training state.*was not loaded") as e:
        ckpt.load_state(out)
    assert "weights_only" not in str(e.value)
    (out / ckpt.STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="state.pt is damaged"):
        ckpt.load_state(out)


def test_damaged_checkpoint_files_are_named(tmp_path):
    from safetensors.torch import save_file

    out = tmp_path / "checkpoints" / "best"
    out.mkdir(parents=True)
    save_file({"w": torch.ones(64, 64)}, str(out / "heads.safetensors"))
    (out / "text_lora").mkdir()
    (out / "text_lora" / "adapter_config.json").write_text('{"r": 8}')
    ckpt.verify_files(out)  # intact: no error
    data = (out / "heads.safetensors").read_bytes()
    (out / "heads.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"heads.safetensors of checkpoint .*best is damaged.*--checkpoint last"):
        ckpt.verify_files(out)
    save_file({"w": torch.ones(2)}, str(out / "heads.safetensors"))
    (out / "text_lora" / "adapter_config.json").write_text('{"r": 8,')
    with pytest.raises(CheckpointError, match=r"text_lora/adapter_config.json of checkpoint"):
        ckpt.verify_files(out)
