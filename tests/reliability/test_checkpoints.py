"""Reliability: damaged, tampered, missing and contended run folders and checkpoints.

One tiny LoRA run (2 steps on the tiny ViT, both checkpoints) is built once; every case damages
a copy of it and runs the command a user would (`evaluate`, `finetune --resume`, `explain`,
`export`). A damaged file is named with its checkpoint and the way out (the other checkpoint,
restore, re-train), and the other checkpoint still loads. A tampered state.pt is never unpickled.
Two processes on one --out: the second refuses. A full disk (a 14 MB tmpfs, root only) leaves the
previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.finetune.conftest import syn_manifest, tiny_config, tiny_vit  # noqa: F401
from tests.reliability.harness import Case, Outcome, run_case, run_subprocess


@pytest.fixture(scope="module")
def inputs(tiny_vit: Path, syn_manifest: Path) -> tuple[Path, Path]:  # noqa: F811
    """The session's tiny ViT backbone directory and synthetic manifest."""
    return tiny_vit, syn_manifest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_vit: Path, syn_manifest: Path) -> Path:  # noqa: F811
    from domainclip.finetune import finetune

    cfg = tiny_config(tiny_vit, syn_manifest, "train.max_steps=2")
    return finetune(cfg, tmp_path_factory.mktemp("rel-ckpt") / "run").run_dir


def _copy(run: Path, tmp: Path) -> Path:
    dst = tmp / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _adapter_config(run: Path, name: str = "best") -> Path:
    (cfg,) = sorted((run / "checkpoints" / name).rglob("adapter_config.json"))
    return cfg


def _other_still_loads(name: str):
    def check(tmp: Path, out: Outcome) -> None:
        from domainclip.runs import Run

        Run(tmp / "run").load(name)  # the undamaged checkpoint is still usable

    return check


class _Evil:
    """Unpickling this would create a file: proof that a tampered state.pt ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- builders: damage a copy of the run, return the argv --------------------------------------


def evaluate(damage, checkpoint: str = "best"):
    def build(tmp: Path, run: Path) -> list[str]:
        r = _copy(run, tmp)
        damage(r)
        return [
            "evaluate",
            r,
            "--split",
            "test",
            "--n-boot",
            "0",
            "--no-shortcut-check",
            "--checkpoint",
            checkpoint,
            "--out",
            tmp / "ev",
        ]

    return build


def resume(damage):
    def build(tmp: Path, run: Path) -> list[str]:
        r = _copy(run, tmp)
        cfg = tmp / "cfg.yaml"
        shutil.copy(r / "config.yaml", cfg)  # the config the run was started with
        damage(r)
        return ["finetune", cfg, "--out", r, "--resume"]

    return build


def _heads(name: str):
    return lambda r: _truncate(r / "checkpoints" / name / "heads.safetensors")


def _adapter_weights(r: Path) -> None:
    (f,) = sorted((r / "checkpoints" / "best").rglob("adapter_model.safetensors"))
    _truncate(f, 300)


def _adapter_config_json(r: Path) -> None:
    _adapter_config(r).write_text('{"r": 8, "target_modules": [')


def _adapter_missing_modules(r: Path) -> None:
    f = _adapter_config(r)
    cfg = json.loads(f.read_text())
    cfg["target_modules"] = ["no_such_module_anywhere"]
    f.write_text(json.dumps(cfg))


def _meta_json(r: Path) -> None:
    (r / "checkpoints" / "best" / "meta.json").write_text("{not json")


def _method_json(r: Path) -> None:
    (r / "checkpoints" / "best" / "method.json").write_text("[]")


def _method_json_head_garbled(r: Path) -> None:
    """A head entry that does not fit the weights (a hand-edited or mixed-up method.json)."""
    f = r / "checkpoints" / "best" / "method.json"
    meta = json.loads(f.read_text())
    meta["head"] = {"kind": "tip_adapter", "classes": ["pit"]}
    f.write_text(json.dumps(meta))


def _heads_deleted(r: Path) -> None:
    (r / "checkpoints" / "best" / "heads.safetensors").unlink()


def _best_deleted(r: Path) -> None:
    shutil.rmtree(r / "checkpoints" / "best")


def _tampered_state(r: Path) -> None:
    marker = r.parent / "pwned"
    with open(r / "checkpoints" / "last" / "state.pt", "wb") as fh:
        pickle.dump({"loop": _Evil(str(marker))}, fh)


def _not_pwned(tmp: Path, out: Outcome) -> None:
    assert not (tmp / "pwned").exists(), "the tampered state.pt was unpickled"


def _zip_state_tampered(r: Path) -> None:
    """A torch zip file whose pickle holds a callable (what `torch.save(evil)` writes)."""
    import torch

    torch.save({"loop": _Evil(str(r.parent / "pwned"))}, r / "checkpoints" / "last" / "state.pt")


def _config_changed(r: Path) -> None:
    """The user's config file was edited since the run started (here: the run's copy, same diff)."""
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    cfg["optim"]["lr"] = 0.5
    (r / "config.yaml").write_text(yaml.safe_dump(cfg))


CASES = [
    Case(
        "heads_truncated",
        evaluate(_heads("best")),
        r"heads\.safetensors of checkpoint .*best is damaged.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "heads_truncated_last",
        evaluate(_heads("last"), "last"),
        r"heads\.safetensors of checkpoint .*last is damaged.*--checkpoint best",
        2,
        _other_still_loads("best"),
    ),
    Case(
        "adapter_weights_truncated",
        evaluate(_adapter_weights),
        r"adapter_model\.safetensors of checkpoint .*best is damaged.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "adapter_config_invalid_json",
        evaluate(_adapter_config_json),
        r"adapter_config\.json of checkpoint .*best is damaged.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "adapter_config_missing_modules",
        evaluate(_adapter_missing_modules),
        r"adapter files of checkpoint .*best.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "meta_json_invalid",
        evaluate(_meta_json),
        r"meta\.json of checkpoint .*best is damaged.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "method_json_wrong_shape",
        evaluate(_method_json),
        r"method\.json of checkpoint .*best is damaged.*expected a JSON object.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "method_json_head_garbled",
        evaluate(_method_json_head_garbled),
        r"method\.json of checkpoint .*best is damaged.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "heads_file_deleted",
        evaluate(_heads_deleted),
        r"heads\.safetensors of checkpoint .*best is damaged.*file is missing.*--checkpoint last",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "checkpoint_deleted",
        evaluate(_best_deleted),
        r"no complete checkpoint 'best' \(available: last\)",
        2,
        _other_still_loads("last"),
    ),
    Case(
        "checkpoint_name_unknown",
        evaluate(lambda r: None, "newest"),
        r"no complete checkpoint 'newest' \(available: best, last\)",
        2,
    ),
    Case(
        "state_tampered_pickle",
        resume(_tampered_state),
        r"state\.pt is not a domainclip training state \(or was tampered with\).*not loaded",
        2,
        _not_pwned,
    ),
    Case(
        "state_tampered_torch_zip",
        resume(_zip_state_tampered),
        r"state\.pt is not a domainclip training state \(or was tampered with\).*not loaded",
        2,
        _not_pwned,
    ),
    Case(
        "state_truncated",
        resume(lambda r: _truncate(r / "checkpoints" / "last" / "state.pt", 500)),
        r"state\.pt is damaged.*cannot be resumed from",
        2,
    ),
    Case(
        "state_missing",
        resume(lambda r: (r / "checkpoints" / "last" / "state.pt").unlink()),
        r"has no state\.pt: it cannot be resumed from",
        2,
    ),
    Case(
        "resume_with_other_config",
        resume(_config_changed),
        r"--resume: the config differs.*optim\.lr",
        2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_checkpoint(case: Case, tiny_run: Path, tmp_path: Path, capsys) -> None:
    c = Case(case.name, lambda tmp: case.build(tmp, tiny_run), case.expect, case.code, case.check)
    run_case(c, tmp_path, capsys)


def _no_config(tmp: Path, run: Path) -> list[str]:
    r = _copy(run, tmp)
    (r / "config.yaml").unlink()
    return ["evaluate", r, "--split", "test", "--n-boot", "0", "--out", tmp / "ev"]


def _config_garbage(tmp: Path, run: Path) -> list[str]:
    r = _copy(run, tmp)
    (r / "config.yaml").write_text("backbone: [unclosed\n")
    return ["evaluate", r, "--split", "test", "--n-boot", "0", "--out", tmp / "ev"]


def _into_existing(tmp: Path, run: Path) -> list[str]:
    r = _copy(run, tmp)
    return ["finetune", r / "config.yaml", "--out", r]


def _resume_empty(tmp: Path, run: Path) -> list[str]:
    shutil.copy(run / "config.yaml", tmp / "cfg.yaml")
    return ["finetune", tmp / "cfg.yaml", "--out", tmp / "nothing", "--resume"]


def _explain_damaged(tmp: Path, run: Path) -> list[str]:
    r = _copy(run, tmp)
    _heads("best")(r)
    img = sorted(
        (
            Path(yaml.safe_load((r / "config.yaml").read_text())["data"]["manifest"]).parent
            / "images"
        ).glob("*.png")
    )[0]
    return [
        "explain",
        r,
        "--image",
        img,
        "--text",
        "a scratch",
        "--checkpoint",
        "best",
        "--out",
        tmp / "ex",
    ]


def _export_damaged(tmp: Path, run: Path) -> list[str]:
    r = _copy(run, tmp)
    _adapter_config_json(r)
    return ["export", r, "--out", tmp / "merged", "--checkpoint", "best", "--merge"]


RUN_DIRS = [
    Case(
        "run_without_config",
        _no_config,
        r"run looks like a fine-tuning run without its config\.yaml.*restore config\.yaml",
    ),
    Case("run_config_not_yaml", _config_garbage, r"config\.yaml.*not valid YAML"),
    Case("finetune_into_existing_run", _into_existing, r"already holds a run.*--resume"),
    Case("resume_without_run", _resume_empty, r"--resume: .*nothing is not a run directory"),
    Case(
        "explain_damaged_checkpoint",
        _explain_damaged,
        r"heads\.safetensors of checkpoint .*best is damaged.*--checkpoint last",
    ),
    Case(
        "export_damaged_checkpoint",
        _export_damaged,
        r"adapter_config\.json of checkpoint .*best is damaged",
    ),
]


@pytest.mark.parametrize("case", RUN_DIRS, ids=[c.name for c in RUN_DIRS])
def test_run_folder(case: Case, tiny_run: Path, tmp_path: Path, capsys) -> None:
    c = Case(case.name, lambda tmp: case.build(tmp, tiny_run), case.expect, case.code, case.check)
    run_case(c, tmp_path, capsys)


# --- two processes on one --out ---------------------------------------------------------------

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_concurrent_out_second_process_refuses(
    inputs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    """Another process holds RUN/.lock (the protocol `finetune` uses while it writes a run):
    a second `finetune --out RUN` refuses, names the pid, and leaves the folder as it was."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config(*inputs, "train.max_steps=1").to_dict()))

        def check(tmp: Path, o: Outcome) -> None:
            assert sorted(p.name for p in out.iterdir()) == [".lock"], (
                "the refused process wrote into the run"
            )

        case = Case(
            "concurrent_out",
            lambda tmp: ["finetune", cfg, "--out", out],
            rf"being written by another domainclip process \(pid {holder.pid}\)",
            2,
            check,
        )
        run_case(case, tmp_path, capsys)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_concurrent_out_two_real_finetunes(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """Two `python -m domainclip finetune` processes into one --out: one finishes, the other refuses
    (whichever starts writing second), and the run is one process's (config, checkpoints, metrics)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(*inputs, "train.max_steps=4").to_dict()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    argv = [
        sys.executable,
        "-m",
        "domainclip",
        "finetune",
        str(cfg),
        "--out",
        str(tmp_path / "run"),
    ]
    procs = [
        subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    ]
    time.sleep(0.5)
    procs.append(
        subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    )
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    text = "".join(o + e for o, e in outs)
    assert "Traceback" not in text, text[-3000:]
    assert codes == [0, 2], text[-3000:]
    assert "being written by another domainclip process" in text or "already holds a run" in text
    from domainclip.runs import Run

    Run(tmp_path / "run").load("last")


# --- disk full --------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 14 MB tmpfs mounted under tmp_path (root only; skipped otherwise, with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("disk-full case needs root to mount a 14 MB tmpfs (mount -t tmpfs -o size=14m)")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=14m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {proc.stderr.strip()}"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


DISK_FULL = {
    # less room than one checkpoint: the checkpoint write fails, and says the old one is intact
    "half_a_checkpoint_free": r"could not write checkpoint .*the disk is full.*previous checkpoint is intact",
    # no room at all: the first write of the run (its lock file) fails, in plain words
    "nothing_free": r"no space left on the device; free some space",
}


@pytest.mark.parametrize("room", list(DISK_FULL))
def test_disk_full_while_writing_a_checkpoint(
    room: str, tiny_run: Path, small_tmpfs: Path, tmp_path: Path, capsys
) -> None:
    """The run (at step 2 of 4) resumes on a full disk: a clear error, and the previous
    checkpoint still loads and is still the one from step 2."""
    run = small_tmpfs / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock", "tb"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["max_steps"] = 4  # as if the run had been stopped half-way
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    step_before = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["step"]
    ckpt_bytes = sum(
        f.stat().st_size for f in (run / "checkpoints" / "last").rglob("*") if f.is_file()
    )
    free = shutil.disk_usage(small_tmpfs).free
    leave = ckpt_bytes // 2 if room == "half_a_checkpoint_free" else 0
    (small_tmpfs / "filler").write_bytes(b"\0" * (free - leave))

    def check(tmp: Path, out: Outcome) -> None:
        from domainclip.runs import Run

        last = Run(run).checkpoint("last")
        assert json.loads((last / "meta.json").read_text())["step"] == step_before
        Run(run).load("last")
        assert not list((run / "checkpoints").glob(".tmp-*")), "a half-written checkpoint was left"

    case = Case(
        f"disk_full/{room}",
        lambda tmp: ["finetune", tmp / "cfg.yaml", "--out", run, "--resume"],
        DISK_FULL[room],
        2,
        check,
    )
    run_case(case, tmp_path, capsys)


@pytest.mark.slow
def test_subprocess_entry_point_shows_no_traceback(tiny_run: Path, tmp_path: Path) -> None:
    """The console entry point (not just `main`): a damaged checkpoint ends with exit 2 and one
    `error:` line, never a traceback."""
    r = _copy(tiny_run, tmp_path)
    _heads("best")(r)
    out = run_subprocess(
        ["evaluate", r, "--split", "test", "--n-boot", "0", "--out", tmp_path / "ev"],
        tmp_path,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.code == 2 and "Traceback" not in out.err and "error: " in out.err, out.err[-2000:]
