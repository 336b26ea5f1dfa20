"""Reliability cases for numerics and training: bad optimiser settings, collapse, non-finite loss,
truncated texts, skipped images, resume mismatches, empty splits; fault tests (SIGKILL during
training and at three points of a checkpoint write: the previous checkpoint always loads and
--resume completes); no outbound network from finetune + evaluate.

Own helpers (harness.py is shared and not edited): `_assets` builds a tiny backbone and the
synthetic data set once per module; `_finetune_argv` writes a tiny config and returns the argv.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.reliability.harness import (
    Case,
    Outcome,
    assert_outcome,
    run_case,
    run_cli,
    run_subprocess,
)
from tests.reliability.netguard import no_outbound

A: dict[str, Path] = {}  # "backbone", "manifest": filled by the module fixture below


@pytest.fixture(scope="module", autouse=True)
def _assets(tmp_path_factory):
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    root = tmp_path_factory.mktemp("assets")
    A["backbone"] = save_backbone(tiny_open_clip_backbone("vit"), root / "tiny_vit")
    A["manifest"] = generate_synthetic(
        root / "syn", n=48, size=64, seed=0, val_frac=0.2, test_frac=0.1
    ).manifest_path
    yield
    A.clear()


def _config(tmp: Path, manifest: Path | None = None, **sections) -> Path:
    cfg = {
        "backbone": {"spec": str(A["backbone"])},
        "data": {"manifest": str(manifest or A["manifest"])},
        "train": {"batch_size": 8, "max_steps": 4, "progress": False},
        "optim": {"warmup_steps": 1, "lr": 5e-3},
        "eval": {"prompts": "configs/prompts/synthetic.yaml"},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _finetune_argv(tmp: Path, *sets: str, manifest: Path | None = None, out: str = "run") -> list:
    argv: list = ["finetune", _config(tmp, manifest), "--out", tmp / out]
    for s in sets:
        argv += ["--set", s]
    return argv


def _result(tmp: Path, out: str = "run") -> dict:
    return json.loads((tmp / out / "result.json").read_text(encoding="utf-8"))


def _events(tmp: Path, kind: str, out: str = "run") -> list[dict]:
    lines = (tmp / out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, filter(None, lines)) if e["event"] == kind]


def _rewritten(tmp: Path, edit) -> Path:
    """A copy of the synthetic manifest (absolute image paths) with `edit(rows)` applied."""
    from domainclip.datasets.manifest import read_manifest, write_manifest

    man = read_manifest(A["manifest"])
    rows = list(man.rows)
    for r in rows:
        r.image = str(man.image_path(r))
    rows = edit(rows) or rows
    return write_manifest(rows, tmp / "m.csv")


# ------------------------------------------------------------------ data edits used by cases
LONG = " ".join(["a long report sentence about a scratched metal surface with findings"] * 12)


def _long_texts(rows):
    """Every third train row and the first val row get a 130-token text."""
    train = [r for r in rows if r.split == "train"]
    for r in train[::3]:
        r.text = f"{LONG} {r.row}"
    next(r for r in rows if r.split == "val").text = LONG
    return rows


def _broken_images(tmp: Path, every: int) -> tuple[Path, int]:
    """Copy of the data with every `every`-th train image replaced by garbage; (manifest, n broken)."""
    import shutil

    from domainclip.datasets.manifest import read_manifest

    dst = tmp / "broken"
    shutil.copytree(A["manifest"].parent, dst)
    man = read_manifest(dst / "manifest.csv")
    train = [r for r in man.rows if r.split == "train"]
    for r in train[::every]:
        man.image_path(r).write_bytes(b"not an image at all")
    return dst / "manifest.csv", len(train[::every])


# ------------------------------------------------------------------ checks
def _collapse_recorded(tmp: Path, out: Outcome) -> None:
    res = _result(tmp)
    kinds = [w["kind"] for w in res["warnings"]]
    assert kinds and set(kinds) == {"collapse"}, res["warnings"]
    assert all({"kind", "step", "message"} <= set(w) for w in res["warnings"])
    assert res["best_step"] == 0  # the collapsed steps were not saved as best; step 0 was
    vals = {e["step"]: e for e in _events(tmp, "val")}
    collapsed = [s for s, e in vals.items() if e["collapsed"]]
    assert collapsed == [w["step"] for w in res["warnings"]] and 0 not in collapsed
    assert len(_events(tmp, "warning")) == len(collapsed)
    from domainclip.finetune import checkpoint as ckpt

    assert ckpt.read_meta(ckpt.checkpoint_dir(tmp / "run", "best"))["step"] == 0
    from domainclip.audit import write_card

    md = write_card(tmp / "run").read_text(encoding="utf-8")
    assert f"Training warning (collapse, {len(collapsed)}x): step 4: the model collapsed" in md


def _truncation_counted(tmp: Path, out: Outcome) -> None:
    from domainclip.datasets.manifest import read_manifest
    from domainclip.datasets.validate import validate_manifest
    from domainclip.models import load_tokenizer

    res = _result(tmp)
    man = read_manifest(tmp / "m.csv")
    report = validate_manifest(tmp / "m.csv", load_tokenizer(str(A["backbone"])), check_images=False)
    flagged = set(report.warnings["text_truncated"])  # the same rule as `data validate`
    expected = {s: sum(r.row in flagged for r in man.rows if r.split == s) for s in ("train", "val")}
    assert expected["train"] == 11 and expected["val"] == 1
    assert res["truncated_texts"] == expected
    assert [w["kind"] for w in res["warnings"]] == ["text_truncated", "text_truncated"]
    assert f"train {expected['train']}, val {expected['val']}" in out.out


def _skips_agree(cached: bool):
    def check(tmp: Path, out: Outcome) -> None:
        res = _result(tmp)
        broken = int((tmp / "n_broken").read_text())
        by_split = res["info"]["unreadable_images"]
        assert by_split == {"train": broken, "val": 0}
        assert res["skipped_images"] == broken == sum(by_split.values())
        assert res["skipped_draws"] >= broken if cached else res["skipped_draws"] > 0
        m = re.search(r"skipped: (\d+) unreadable images \(train (\d+), val (\d+); drawn into batches (\d+) times\)", out.out)
        assert m, out.out
        assert [int(g) for g in m.groups()] == [broken, broken, 0, res["skipped_draws"]]
        last_train = _events(tmp, "train")[-1]
        assert "skipped_images" not in last_train and last_train["skipped_draws"] <= res["skipped_draws"]

    return check


def _broken_argv(cached: bool):
    def build(tmp: Path) -> list:
        manifest, n = _broken_images(tmp, every=4)
        (tmp / "n_broken").write_text(str(n))
        sets = ["train.max_steps=8", "eval.at_start=false"]
        if not cached:  # image tower trained: images decoded every step, failures seen by the trainer
            sets += ["method.image_tower=lora", "train.cache_features=never", "train.batch_size=4"]
        return _finetune_argv(tmp, *sets, manifest=manifest)

    return build


def _first_run_then(*sets: str, resume: bool = True):
    """Build: finish a 2-step run into tmp/run, then return the argv of a second command on it."""

    def build(tmp: Path) -> list:
        from domainclip.cli import main

        assert main([str(a) for a in _finetune_argv(tmp, "train.max_steps=2")]) == 0
        return _finetune_argv(tmp, "train.max_steps=2", *sets) + (["--resume"] if resume else [])

    return build


CASES = [
    Case("lr_above_range", lambda t: _finetune_argv(t, "optim.lr=7"), r"optim\.lr = 7\.0 is out of range"),
    Case("lr_zero", lambda t: _finetune_argv(t, "optim.lr=0"), r"optim\.lr = 0(\.0)? is out of range"),
    Case("lr_negative", lambda t: _finetune_argv(t, "optim.lr=-1e-3"), r"optim\.lr = -0\.001 is out of range"),
    Case("lr_not_a_number", lambda t: _finetune_argv(t, "optim.lr=fast"), r"optim\.lr.*(number|float)"),
    Case("lr_nan", lambda t: _finetune_argv(t, "optim.lr=nan"), r"optim\.lr"),
    Case("warmup_negative", lambda t: _finetune_argv(t, "optim.warmup_steps=-5"), r"optim\.warmup_steps = -5 is out of range"),
    Case("grad_clip_negative", lambda t: _finetune_argv(t, "optim.grad_clip=-1"), r"optim\.grad_clip = -1(\.0)? is out of range"),
    Case("batch_size_one", lambda t: _finetune_argv(t, "train.batch_size=1"), r"train\.batch_size = 1 is out of range"),
    Case(
        "accumulate_beyond_epoch",
        lambda t: _finetune_argv(t, "optim.accumulate=64"),
        r"optim\.accumulate=64 exceeds the \d+ batches of one epoch",
    ),
    Case(
        "collapse_lr_1_no_warmup_no_clip",
        lambda t: _finetune_argv(
            t, "optim.lr=1.0", "optim.warmup_steps=0", "optim.grad_clip=0", "train.max_steps=8",
            "eval.every_steps=4", "eval.metric=loss",
        ),
        r"best \(step 0\).*warning \[collapse\]: step 4: the model collapsed to uniform predictions.*"
        r"not saved as best.*optim\.lr=1",
        code=0,
        check=_collapse_recorded,
    ),
    Case(
        "long_texts_truncated_are_counted",
        lambda t: _finetune_argv(t, "train.max_steps=2", manifest=_rewritten(t, _long_texts)),
        r"truncated texts \(longer than the text context\): train 11, val 1.*"
        r"warning \[text_truncated\]: 11 of \d+ train texts are longer than the text tower's 77 tokens",
        code=0,
        check=_truncation_counted,
    ),
    Case("skipped_images_cached_agree", _broken_argv(cached=True), r"skipped: \d+ unreadable images", code=0,
         check=_skips_agree(cached=True)),
    Case("skipped_images_decoded_agree", _broken_argv(cached=False), r"skipped: \d+ unreadable images", code=0,
         check=_skips_agree(cached=False)),
    Case(
        "resume_with_other_lr",
        _first_run_then("optim.lr=1e-3"),
        r"config differs.*optim\.lr: 0\.005 -> 0\.001.*Resume with the original config",
    ),
    Case("same_out_without_resume", _first_run_then(resume=False), r"already holds a run.*--resume"),
    Case(
        "resume_of_a_non_run",
        lambda t: [*_finetune_argv(t), "--resume"],
        r"--resume: .* is not a run directory",
    ),
    Case(
        "empty_train_split",
        lambda t: _finetune_argv(t, manifest=_rewritten(t, lambda rows: [r for r in rows if r.split != "train"])),
        r"the train split 'train' is empty \(rows per split: .*\)",
    ),
    Case(
        "empty_val_split",
        lambda t: _finetune_argv(t, manifest=_rewritten(t, lambda rows: [r for r in rows if r.split != "val"])),
        r"the val split 'val' is empty",
    ),
    Case(
        "val_split_named_but_absent",
        lambda t: _finetune_argv(t, "data.val_split=holdout"),
        r"(val split 'holdout' is empty|holdout)",
    ),
    Case(
        "metric_not_available",
        lambda t: _finetune_argv(t, "eval.metric=zero_shot_acc", "eval.prompts=", manifest=_rewritten(
            t, lambda rows: [dataclasses.replace(r, label=()) for r in rows])),
        r"eval\.metric=zero_shot_acc is not available",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_training_case(case, tmp_path, capsys):
    run_case(case, tmp_path, capsys)


def test_non_finite_loss_names_the_step_and_the_settings(tmp_path, capsys, monkeypatch):
    """A NaN loss at step 3: exit 2, the step, the lr to try and where the good weights are."""
    import domainclip.finetune.trainer as trainer_mod
    from domainclip.finetune import checkpoint as ckpt

    real, calls = trainer_mod.multi_positive_loss, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        return real(*args) * (math.nan if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(trainer_mod, "multi_positive_loss", poisoned)
    case = Case(
        "non_finite_loss",
        lambda t: _finetune_argv(t, "eval.at_start=false", "train.max_steps=6"),
        r"the loss became nan at step 3 \(learning rate .*\)\. Training stopped; the last good "
        r"weights \(after step 2\) are in .*checkpoints/last\. Lower the learning rate, e\.g\. "
        r"--set optim\.lr=0\.0005",
        code=2,
    )
    run_case(case, tmp_path, capsys)
    assert ckpt.read_meta(ckpt.checkpoint_dir(tmp_path / "run", "last"))["step"] == 2


def test_old_training_state_with_skipped_images_resumes(tmp_path, capsys):
    """A state.pt written before `skipped_draws` (key `skipped_images`) still resumes."""
    import torch

    from domainclip.finetune import checkpoint as ckpt

    argv = _finetune_argv(tmp_path, "train.max_steps=2", "eval.at_start=false")
    assert run_cli(argv, capsys).code == 0
    last = ckpt.checkpoint_dir(tmp_path / "run", "last")
    state = ckpt.load_state(last)
    loop = state["loop"]
    loop["skipped_images"] = loop.pop("skipped_draws")
    for k in ("unreadable_train", "unreadable_val", "warnings"):
        loop.pop(k)
    torch.save(state, last / ckpt.STATE_FILE)
    (tmp_path / "run" / "result.json").unlink()
    more = _finetune_argv(tmp_path, "train.max_steps=2", "eval.at_start=false")
    out = run_cli([*more, "--resume"], capsys)
    assert out.code == 0 and "Traceback" not in out.text
    assert _result(tmp_path)["steps"] == 2


# ------------------------------------------------------------------ no outbound network
def test_finetune_and_evaluate_make_no_outbound_connection(tmp_path, capsys, monkeypatch):
    import socket

    attempts = no_outbound(monkeypatch)
    with pytest.raises(OSError):  # the guard works: a public name and address are refused
        socket.create_connection(("example.org", 80), timeout=1)
    with pytest.raises(OSError):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("8.8.8.8", 53))  # what "find my external IP" does
        finally:
            s.close()
    assert len(attempts) == 2
    attempts.clear()
    train = run_cli(_finetune_argv(tmp_path, "train.max_steps=2"), capsys)
    assert train.code == 0, train.text[-2000:]
    ev = run_cli(["evaluate", tmp_path / "run", "--split", "test", "--n-boot", "20"], capsys)
    assert ev.code == 0, ev.text[-2000:]
    assert attempts == [], f"outbound connection attempts: {attempts}"


# ------------------------------------------------------------------ faults: SIGKILL
def _env() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _last_step(run: Path) -> int:
    from domainclip.finetune import checkpoint as ckpt

    try:
        return int(ckpt.read_meta(ckpt.checkpoint_dir(run, "last"))["step"])
    except Exception:  # noqa: BLE001 - not written yet, or being swapped in right now
        return -1


def _assert_loads(run: Path, step: int) -> None:
    """The `last` checkpoint is complete, is the one of `step`, and its weights and state load."""
    from domainclip.finetune import checkpoint as ckpt
    from domainclip.runs import load_model

    last = ckpt.checkpoint_dir(run, "last")
    assert ckpt.read_meta(last)["step"] == step
    assert int(ckpt.load_state(last)["loop"]["step"]) == step
    load_model(run, checkpoint="last")


def _resume_completes(tmp: Path, steps: int) -> None:
    argv = [*_finetune_argv(tmp, f"train.max_steps={steps}", "train.checkpoint_every=1",
                            "eval.at_start=false"), "--resume"]
    out = run_subprocess(argv, tmp, timeout=300, env=_env())
    assert_outcome(Case("resume", lambda t: argv, r"best \(step \d+\)", code=0), tmp, out)
    assert _result(tmp)["steps"] == steps


@pytest.mark.slow
def test_sigkill_during_training_then_resume(tmp_path):
    argv = _finetune_argv(tmp_path, "train.max_steps=40", "train.checkpoint_every=1", "eval.at_start=false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "domainclip", *map(str, argv)],
        env={**os.environ, **_env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while _last_step(tmp_path / "run") < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step = _last_step(tmp_path / "run")
    assert step >= 3
    _assert_loads(tmp_path / "run", step)
    _resume_completes(tmp_path, 40)


# A child process that kills itself (SIGKILL) at an exact point of its N-th checkpoint write.
_KILLER = r"""
import os, signal, sys
import torch
from domainclip.finetune import checkpoint as ckpt

where, n = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def due():
    calls["n"] += 1
    return calls["n"] == n

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "half_written_state":  # state.pt cut in half inside the temp dir
    real_save = torch.save
    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if due():
            os.truncate(f, os.path.getsize(f) // 2)
            die()
    torch.save = save
elif where == "temp_complete":  # temp dir complete (meta.json written), not yet swapped in
    real_write = ckpt.atomic_write_text
    def write(path, text, *a, **k):
        real_write(path, text, *a, **k)
        if path.name == ckpt.META_FILE and due():
            die()
    ckpt.atomic_write_text = write
elif where == "between_renames":  # old checkpoint moved aside, new one not yet in place
    real_swap = ckpt._swap_in
    def swap(tmp, final):
        if final.name == "last" and due():
            final.rename(final.with_name(".old-" + final.name))
            die()
        real_swap(tmp, final)
    ckpt._swap_in = swap

from domainclip.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["half_written_state", "temp_complete", "between_renames"])
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, where):
    killer = tmp_path / "killer.py"
    killer.write_text(_KILLER, encoding="utf-8")
    argv = _finetune_argv(tmp_path, "train.max_steps=6", "train.checkpoint_every=1", "eval.at_start=false")
    # the 3rd write of `last` (after step 3) is killed: step 2's checkpoint must be what loads
    proc = subprocess.run(
        [sys.executable, str(killer), where, "3", *map(str, argv)],
        env={**os.environ, **_env()}, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _assert_loads(tmp_path / "run", 2)
    _resume_completes(tmp_path, 6)
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    assert not list((tmp_path / "run" / "checkpoints").glob(".old-*"))
