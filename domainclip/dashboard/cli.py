"""`domainclip dashboard [--runs DIR] [--data-root DIR ...] [--show-column NAME ...]
[--host 127.0.0.1] [--port 8501]`: start the Streamlit app."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from domainclip.dashboard import DATA_ROOTS_ENV, RUNS_ENV, SHOW_COLUMNS_ENV, SHOW_PATHS_ENV
from domainclip.errors import ConfigError
from domainclip.privacy import add_show_column_argument, add_show_paths_argument, session_key

logger = logging.getLogger(__name__)

APP_SCRIPT = Path(__file__).resolve().parent / "app.py"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# Uploaded images are decoded in memory; a cap keeps one upload from exhausting RAM.
MAX_UPLOAD_MB = 50


def streamlit_command(host: str, port: int, app: Path = APP_SCRIPT) -> list[str]:
    """The `streamlit run` command line: headless, no usage statistics, bound to `host`, and no
    outbound connection.

    Streamlit looks up the machine's addresses on the internet (a UDP connect to 8.8.8.8 and an
    HTTP request to checkip.amazonaws.com, `streamlit.net_util`) when it prints its welcome
    banner for a wildcard address and when it checks a websocket origin against
    `browser.serverAddress`. Hiding the banner (our CLI prints the URL itself) and naming the
    server address stops the first and answers the same-origin case before any lookup.
    """
    server_address = "localhost" if host in WILDCARD_HOSTS | LOOPBACK_HOSTS else host
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--browser.serverAddress",
        server_address,
        "--logger.hideWelcomeMessage",
        "true",
        # Viewers inspect results; the developer toolbar (deploy, rerun settings) is noise here.
        "--client.toolbarMode",
        "viewer",
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        # The app's code does not change while it runs; polling files would only cost CPU.
        "--server.fileWatcherType",
        "none",
        # An unexpected exception shows a generic message in the page; its details (which may
        # quote a file's content or a path) go to the server log only.
        "--client.showErrorDetails",
        "none",
    ]


def check_runs_dir(runs: str | os.PathLike[str]) -> Path:
    """Resolve `--runs` and require at least one run in it (or it being a run).

    Raises:
        ConfigError: missing directory or no run directory (with config.yaml) found.
    """
    from domainclip.dashboard.access import PathAccessError, RunsAccess

    try:
        access = RunsAccess(runs)
    except PathAccessError as exc:
        raise ConfigError(str(exc)) from exc
    if not access.runs():
        raise ConfigError(
            f"no fine-tuning run (a folder with config.yaml) found in {access.root} or up to two "
            "levels below it; create one with `domainclip finetune CONFIG --out RUN` or "
            "`domainclip demo`"
        )
    return access.root


def check_data_roots(roots: list[str]) -> list[Path]:
    """Resolve every `--data-root` (each must be an existing directory).

    Raises:
        ConfigError: one is missing or not a directory.
    """
    out = []
    for d in roots:
        p = Path(d).expanduser()
        if not p.is_dir():
            raise ConfigError(f"--data-root {d} does not exist or is not a directory")
        out.append(p.resolve())
    return out


def _run(args: argparse.Namespace) -> int:
    runs = check_runs_dir(args.runs)
    roots = check_data_roots(args.data_root or [])
    session_key(runs)  # the pseudonym key: created now (mode 0600), read by the app
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if args.host not in LOOPBACK_HOSTS:
        logger.warning(
            "binding the dashboard to %s: anyone who can reach this address sees the runs' "
            "images, reports and results, without authentication; use 127.0.0.1 (the default) "
            "and an SSH tunnel unless the network is trusted",
            args.host,
        )
    cmd = streamlit_command(args.host, args.port)
    env = {
        **os.environ,
        RUNS_ENV: str(runs),
        DATA_ROOTS_ENV: os.pathsep.join(str(r) for r in roots),
        SHOW_COLUMNS_ENV: json.dumps(args.show_column or []),
        SHOW_PATHS_ENV: "1" if args.show_paths else "",
    }
    shown = "localhost" if args.host in LOOPBACK_HOSTS else args.host
    print(
        f"domainclip dashboard on {runs}: http://{shown}:{args.port}  (Ctrl+C to stop)", flush=True
    )
    if os.name != "posix":
        try:
            return subprocess.call(cmd, env=env)
        except KeyboardInterrupt:
            return 0
    # Become the Streamlit server: signals (Ctrl+C, a supervisor's SIGTERM) reach it directly and
    # no parent process is left behind to orphan it. execve only returns when it is replaced in
    # tests.
    os.execve(cmd[0], cmd, env)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `dashboard` command."""
    p = sub.add_parser(
        "dashboard",
        help="browse runs, data, saliency maps, framing audits and calibration in a browser",
        description=(
            "Start the Streamlit dashboard on a directory of fine-tuning runs (or one run). "
            "It binds to loopback unless --host says otherwise and only reads files inside the "
            "runs directory and the --data-root folders (manifests, images); metadata columns "
            "are shown only when on a short safe list (view, sex, age, site, ...) or named by "
            "--show-column."
        ),
    )
    p.add_argument(
        "--runs",
        default="runs",
        help="directory containing run directories, or a single run directory (default: runs)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; other addresses expose the data, with a warning)",
    )
    p.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    p.add_argument(
        "--data-root",
        action="append",
        metavar="DIR",
        help="folder whose manifests and images the runs may name (repeatable; default: none, "
        "only files inside the runs directory are read)",
    )
    add_show_column_argument(p)
    add_show_paths_argument(p)
    p.set_defaults(func=_run)
