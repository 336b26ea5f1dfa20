"""`domainclip` command line.

Each subpackage owns its subcommands in its own `cli.py` with a `register(subparsers)` function;
this module only wires them together and turns `DomainClipError` into a clean message + exit code.
The list below is fixed at import time (no global registry that plugins mutate).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from domainclip import __version__
from domainclip.errors import DomainClipError

# Modules that provide `register(subparsers)`. Imported lazily so `domainclip --help` stays fast.
_COMMAND_MODULES = (
    "domainclip.datasets.cli",
    "domainclip.models.cli",
    "domainclip.explain.cli",
    "domainclip.dashboard.cli",
    "domainclip.evaluation.cli",
    "domainclip.audit.cli",
    "domainclip.finetune.cli",
    "domainclip.deploy.cli",
    "domainclip.retrieval.cli",
    "domainclip.demo",
)
# `domainclip predict --onnx DIR` must run where torch is not installed (the `domainclip[runtime]`
# extra); registering the other commands imports torch, so that one parser holds only its command.
_TORCH_FREE = {"predict": "domainclip.deploy.cli"}


def _torch_free_module(argv: list[str] | None) -> str | None:
    """The one command module to register when `argv` is `predict --onnx ...`, else None."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if not a.startswith("-")]
    if words and words[0] in _TORCH_FREE and any(a == "--onnx" or a.startswith("--onnx=") for a in argv):
        return _TORCH_FREE[words[0]]
    return None


def build_parser(modules: tuple[str, ...] = _COMMAND_MODULES) -> argparse.ArgumentParser:
    """Build the top-level parser with the subcommands of `modules` (default: every one)."""
    parser = argparse.ArgumentParser(
        prog="domainclip",
        description="Adapt, evaluate, explain and audit CLIP-style models for medical and industrial imaging.",
    )
    parser.add_argument("--version", action="version", version=f"domainclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the process exit code (also used by tests)."""
    only = _torch_free_module(argv)
    parser = build_parser((only,) if only else _COMMAND_MODULES)
    args = parser.parse_args(argv)
    # Third-party libraries (open_clip logs through the root logger) stay at WARNING; our own
    # messages (skips, fallbacks, what was written) at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("domainclip").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except DomainClipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        message = environment_error(exc)
        if message is None:
            raise  # a bug, not the machine: keep the traceback for the report
        print(f"error: {message}", file=sys.stderr)
        return 2
    return int(rc or 0)


# OS errors that describe the machine, not a bug: any write may meet them (a full disk fails the
# first write that needs a block, wherever it is), so they are explained once, here.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space (or choose another output "
    "folder) and run the command again",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "permission denied; check the owner and mode of the file or folder",
}


def environment_error(exc: OSError) -> str | None:
    """One line for an OSError caused by the machine (disk full, quota, read-only, permissions),
    naming the file; None for any other OSError."""
    advice = _ENVIRONMENT_ERRNOS.get(exc.errno or -1)
    if advice is None:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{advice} ({exc.strerror or exc})"


if __name__ == "__main__":
    sys.exit(main())
