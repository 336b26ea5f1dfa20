"""`domainclip` command line.

Each subpackage owns its subcommands in its own `cli.py` with a `register(subparsers)` function;
this module only wires them together and turns `DomainClipError` into a clean message + exit code.
The list below is fixed at import time (no global registry that plugins mutate).
"""

from __future__ import annotations

import argparse
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
    "domainclip.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="domainclip",
        description="Adapt, evaluate, explain and audit CLIP-style models for medical and industrial imaging.",
    )
    parser.add_argument("--version", action="version", version=f"domainclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Returns the process exit code (also used by tests)."""
    parser = build_parser()
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
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
