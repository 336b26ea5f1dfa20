"""Subprocess tests: a run killed with SIGKILL resumes to the same weights; 2-process DDP (gloo)
follows the same loss curve as one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from domainclip.finetune import checkpoint as ckpt
from domainclip.finetune import finetune
from domainclip.finetune.runlog import read_metrics

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # glibc malloc advice from STACK.md: fewer page faults in a fresh training process.
    env.setdefault("MALLOC_MMAP_MAX_", "0")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "68719476736")
    return env


def _tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    out = {f"heads/{k}": v for k, v in load_file(str(ckpt_dir / "heads.safetensors")).items()}
    for sub in ("image_lora", "text_lora"):
        f = ckpt_dir / sub / "adapter_model.safetensors"
        if f.is_file():
            out.update({f"{sub}/{k}": v for k, v in load_file(str(f)).items()})
    return out


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 2
    worst = max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)
    assert worst <= atol, f"max abs difference {worst}"


def _last_step(run: Path) -> int:
    try:
        return int(ckpt.read_meta(ckpt.checkpoint_dir(run, "last"))["step"])
    except Exception:  # not written yet, or being swapped in right now
        return -1


def test_resume_after_sigkill_equals_uninterrupted(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(
        tiny_vit,
        syn_manifest,
        "method.image_tower=lora",  # images decoded + augmented every step: exercises seeded augmentation
        "train.cache_features=never",
        "data.augment=industrial",
        "train.max_steps=12",
        "train.checkpoint_every=1",
        "train.log_every=1",
        "eval.every_epochs=2",
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "domainclip", "finetune", str(path), "--out", str(killed)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while _last_step(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    stopped_at = _last_step(killed)
    assert 3 <= stopped_at < 12

    resumed = finetune(cfg, killed, resume=True)
    reference = finetune(cfg, tmp_path / "reference")
    assert resumed.steps == reference.steps == 12
    _assert_same_weights(
        ckpt.checkpoint_dir(killed, "last"),
        ckpt.checkpoint_dir(tmp_path / "reference", "last"),
        1e-6,
    )
    losses = {e["step"]: e["loss"] for e in read_metrics(killed) if e["event"] == "train"}
    ref_losses = {
        e["step"]: e["loss"] for e in read_metrics(tmp_path / "reference") if e["event"] == "train"
    }
    assert sorted(losses) == list(range(1, 13))  # no duplicated or missing steps after the resume
    assert losses == pytest.approx(ref_losses, abs=1e-6)


def test_two_process_ddp_matches_one_process(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(
        tiny_vit,
        syn_manifest,
        "train.batch_size=8",  # the global batch: 4 per process with 2 processes
        "train.max_steps=6",
        "train.log_every=1",
        "eval.at_start=false",
        "method.lora.r=4",
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "-m",
        "domainclip",
        "finetune",
        str(path),
        "--out",
        str(ddp),
    ]
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    single = finetune(cfg, tmp_path / "single")

    curve = [(e["step"], e["loss"]) for e in read_metrics(ddp) if e["event"] == "train"]
    ref = [(e["step"], e["loss"]) for e in read_metrics(single.run_dir) if e["event"] == "train"]
    assert [s for s, _ in curve] == [s for s, _ in ref] == list(range(1, 7))
    assert [loss for _, loss in curve] == pytest.approx([loss for _, loss in ref], abs=1e-4)
    assert ref[0][1] != pytest.approx(
        ref[-1][1], abs=1e-3
    )  # the curve moves: it is a real comparison
    _assert_same_weights(
        ckpt.checkpoint_dir(ddp, "last"), ckpt.checkpoint_dir(single.run_dir, "last"), 1e-4
    )
    result = json.loads((ddp / "result.json").read_text())
    assert result["steps"] == 6
