"""Run directory and crash-safe checkpoints.

    RUN/config.yaml                      resolved config
    RUN/metrics.jsonl                    one JSON object per event
    RUN/tb/                              TensorBoard events
    RUN/checkpoints/{last,best}/         image_lora/ text_lora/ (peft), heads.safetensors,
                                         method.json, state.pt (resume; last only), meta.json
    RUN/result.json                      summary of a finished run

A checkpoint is written into a temporary sibling directory, every file fsynced, then swapped in
with two renames (old -> .old-NAME, tmp -> NAME) and the old one removed. `meta.json` is written
last, so a directory without it is incomplete. A kill at any moment therefore leaves either NAME
or .old-NAME complete, and `checkpoint_dir` finds whichever it is. An error while writing (disk
full) removes only the temporary directory: the previous checkpoint is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from domainclip.finetune.errors import CheckpointError
from domainclip.io import atomic_write_text, fsync_path
from domainclip.runs.layout import CHECKPOINTS_DIR, LOCK_FILE

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def _complete(d: Path) -> bool:
    return (d / META_FILE).is_file()


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    """The complete checkpoint `name` ("last"/"best") of a run, surviving an interrupted swap.

    Raises:
        CheckpointError: no complete checkpoint of that name exists.
    """
    ckpts = Path(run_dir) / CHECKPOINTS_DIR
    for cand in (ckpts / name, ckpts / f".old-{name}"):
        if cand.is_dir() and _complete(cand):
            return cand
    have = sorted(p.name for p in ckpts.iterdir() if _complete(p)) if ckpts.is_dir() else []
    raise CheckpointError(
        f"{run_dir}: no complete checkpoint {name!r}"
        + (f" (available: {', '.join(have)})" if have else " (the run wrote no checkpoint yet)")
    )


def write_checkpoint(
    run_dir: Path,
    name: str,
    save_weights: Callable[[Path], None],
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    """Atomically (re)write checkpoint `name`.

    Args:
        save_weights: writes adapters/heads into the directory it is given.
        meta: JSON-serialisable summary (step, metrics); written last, marks completeness.
        state: resume state for state.pt (optimizer, scheduler, RNG, position), or None.

    Raises:
        CheckpointError: writing failed (e.g. disk full); the previous checkpoint is intact.
    """
    ckpts = Path(run_dir) / CHECKPOINTS_DIR
    ckpts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=ckpts))
    try:
        save_weights(tmp)
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                fsync_path(f)
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=2, default=float))
        for d in sorted({f.parent for f in tmp.rglob("*")} | {tmp}):
            fsync_path(d)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError ("file write failed"), not OSError.
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {name!r} in {ckpts}: {_write_failure(exc, ckpts)}. The "
            "previous checkpoint is intact (it was not touched); free space (or pick another "
            "--out) and resume with --resume."
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, ckpts / name)
    return ckpts / name


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        if old.exists():
            if _complete(final):
                shutil.rmtree(old)
            else:  # an earlier swap was interrupted after moving the good one aside
                shutil.rmtree(final)
        if final.exists():
            final.rename(old)
    tmp.rename(final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while one process writes it.

    Two `domainclip finetune` processes with the same --out would otherwise both pass the
    "folder is empty" check and leave a mixed run (one's config, the other's checkpoints).
    The lock is an advisory flock on RUN/.lock, released when the process ends, even by a kill.

    Raises:
        CheckpointError: another process holds the lock (its pid is named).
    """
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CheckpointError(
            f"{run_dir} is being written by another domainclip process (pid {holder}); wait for "
            "it to finish, or choose another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_failure(exc: BaseException, where: Path) -> str:
    """What went wrong while writing, in words ("the disk is full" where that is the cause)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full"
    try:
        full = shutil.disk_usage(where).free < 1 << 20
    except OSError:
        full = False
    return "the disk is full" if full else str(exc).splitlines()[0]


def load_state(ckpt: Path) -> dict[str, Any]:
    """state.pt of a checkpoint (weights_only: no arbitrary code runs while loading).

    Raises:
        CheckpointError: no state.pt, a damaged one, or one holding anything but tensors and plain
            values (a file not written by domainclip, or tampered with): it is never unpickled.
    """
    import pickle

    path = ckpt / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no {STATE_FILE}: it cannot be resumed from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is not a domainclip training state (or was tampered with): it holds objects "
            "a training state never contains, and it was not loaded. Resume from a checkpoint you "
            "trust, or start the run again without --resume in a new --out folder."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({str(exc).splitlines()[0]}); it cannot be resumed from. Start the "
            "run again in a new --out folder."
        ) from None


def verify_files(ckpt: Path) -> None:
    """Read every safetensors and JSON file of a checkpoint once, so a damaged one is named.

    Raises:
        CheckpointError: naming the damaged file, its checkpoint, and what to do.
    """
    from safetensors.torch import load_file

    for f in sorted(ckpt.rglob("*")):
        try:
            if f.suffix == ".safetensors":
                load_file(str(f))
            elif f.suffix == ".json":
                json.loads(f.read_text(encoding="utf-8"))
        except Exception as exc:  # safetensors raises its own SafetensorError type
            raise CheckpointError(damaged_message(str(f.relative_to(ckpt)), ckpt, exc)) from None


def damaged_message(what: str, ckpt: Path, exc: BaseException) -> str:
    """The message for a checkpoint file (`what`: its name) that cannot be used."""
    other = "last" if ckpt.name == "best" else "best"
    return (
        f"{what} of checkpoint {ckpt} is damaged or does not fit the model "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). Try "
        f"the other checkpoint (--checkpoint {other}), restore the file from a copy, or re-train."
    )


def read_meta(ckpt: Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint (step, metrics)."""
    try:
        return json.loads((ckpt / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(damaged_message(META_FILE, ckpt, exc)) from None


def cleanup_temp(run_dir: Path) -> None:
    """Remove temporary directories left by a killed writer."""
    ckpts = Path(run_dir) / CHECKPOINTS_DIR
    if ckpts.is_dir():
        for d in ckpts.glob(".tmp-*"):
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# RNG state (tensors and plain Python values only, so state.pt loads with weights_only=True)


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(tuple(_tuplify(state["python"])))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), *n[2:]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
