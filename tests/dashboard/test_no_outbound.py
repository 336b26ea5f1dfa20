"""`domainclip dashboard --host 0.0.0.0` opens no outbound connection (issue 13).

Streamlit looks up the machine's addresses on the internet when it prints its banner for a
wildcard address (a UDP connect to 8.8.8.8, an HTTP request to checkip.amazonaws.com). The real
command is started in a subprocess whose interpreter carries an audit hook (a `sitecustomize`
module put first on PYTHONPATH; it survives the CLI's exec into Streamlit) recording every
`socket.connect` / `socket.sendto` / `socket.getaddrinfo` to a host that is not loopback. The page
is loaded once over loopback (in Chromium when it is installed, so that the app script runs) and
nothing may have been recorded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO, DashRuns

HOOK = """
import os, sys

_LOG = os.environ.get("DOMAINCLIP_TEST_NET_LOG")
_LOCAL = {"", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::", None}


def _local(host):
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return host in _LOCAL or (isinstance(host, str) and host.startswith("127."))


def _hook(event, args):
    if not _LOG:
        return
    host = None
    if event in ("socket.connect", "socket.sendto"):
        addr = args[1] if event == "socket.connect" else args[-1]
        if isinstance(addr, tuple) and addr:
            host = addr[0]
        else:
            return  # AF_UNIX and friends
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if not _local(host):
        with open(_LOG, "a") as fh:
            fh.write(f"{os.getpid()} {event} {host!r}\\n")


if _LOG:
    sys.addaudithook(_hook)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _render_in_chromium(url: str) -> bool:
    """Open the page in Chromium and wait for the Runs page; False when no browser is here."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return False
    if not chromium.is_file():
        return False
    from .test_browser import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.get_by_role("heading", name="Runs", exact=True).wait_for()
        page.get_by_text("Training curves").wait_for()
        browser.close()
    return True


@pytest.mark.slow
def test_dashboard_on_all_interfaces_makes_no_outbound_connection(
    dash_runs: DashRuns, tmp_path: Path
) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    net_log = tmp_path / "net.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO)]),
        "DOMAINCLIP_TEST_NET_LOG": str(net_log),
    }
    # the hook really records: a lookup of a public name from the same interpreter setup
    probe = (
        "import socket\ntry:\n    socket.getaddrinfo('example.org', 80)\nexcept OSError:\n    pass"
    )
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=60)
    assert "example.org" in net_log.read_text()
    net_log.unlink()

    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "domainclip", "dashboard", "--runs", str(dash_runs.root)]
    cmd += ["--data-root", str(dash_runs.data), "--host", "0.0.0.0", "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"the dashboard exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no dashboard:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        with urllib.request.urlopen(f"{url}/", timeout=30) as r:
            assert r.status == 200
        rendered = _render_in_chromium(url)
        time.sleep(2)  # anything Streamlit does after the page load
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    recorded = net_log.read_text() if net_log.is_file() else ""
    assert recorded == "", f"outbound lookups/connections (rendered={rendered}):\n{recorded}"
    assert "External URL" not in log.read_text()
