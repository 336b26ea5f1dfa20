"""Load on the dashboard: concurrent browser sessions on one demo-like run (issue 13, "Load").

    python benchmarks/dashboard_load.py [--sessions 4] [--seconds 120] [--runs DIR --data-root DIR]

Starts `domainclip dashboard` on a run (by default a tiny demo-like one built here: a tiny random
open_clip backbone, 24 synthetic defect images, a 4-step LoRA fine-tune and an evaluation), then
drives N Chromium sessions (Playwright, Debian's /usr/bin/chromium, one browser with N contexts)
for the given time. Each session cycles through the pages (Runs, Data, Saliency explorer with a
different image each time so a new saliency map is computed, Framing audit, Calibration) and
counts, per page visit, an error when the page shows a Streamlit exception box, an error alert,
a connection error, or does not finish rendering within the timeout. The Streamlit server's RSS
(/proc/PID/status VmRSS) is sampled every 0.5 s; the start, peak and final values are printed.

Exit status 1 when any page visit failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = ["Runs", "Data", "Saliency explorer", "Framing audit", "Calibration"]
RENDER_TIMEOUT_MS = 180_000
PROMPTS = Path(__file__).resolve().parents[1] / "domainclip/configs/prompts/synthetic.yaml"


def build_run(base: Path) -> tuple[Path, Path]:
    """A demo-like run under base/runs/demo (data under base/data); returns (runs, data)."""
    from domainclip.datasets.importers.synthetic import generate_synthetic
    from domainclip.evaluation.evaluate import evaluate
    from domainclip.finetune import finetune, load_config
    from domainclip.models import save_backbone
    from domainclip.models.testing import tiny_open_clip_backbone

    backbone = save_backbone(tiny_open_clip_backbone("cnn"), base / "backbone")
    generate_synthetic(base / "data", n=24, size=64, seed=0)
    run = base / "runs" / "demo"
    overrides = [
        f"backbone.spec={backbone}",
        f"data.manifest={base / 'data' / 'manifest.csv'}",
        f"eval.prompts={PROMPTS}",
        "method.name=lora",
        "train.max_steps=4",
        "train.batch_size=4",
        "eval.every_steps=2",
        "optim.warmup_steps=1",
        "train.progress=false",
    ]
    finetune(load_config(None, overrides), run)
    evaluate(run, split="test", fit_temperature=True, n_boot=50)
    return base / "runs", base / "data"


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (0 when it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Stats:
    """What the sessions did."""

    visits: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    maps: int = 0

    def count(self, page: str, error: str | None) -> None:
        self.visits[page] = self.visits.get(page, 0) + 1
        if error:
            self.errors[page] = self.errors.get(page, 0) + 1
            if len(self.messages) < 20:
                self.messages.append(f"{page}: {error}")


async def _idle(page) -> None:
    await page.wait_for_timeout(300)
    await page.locator('[data-testid="stStatusWidget"]').wait_for(
        state="hidden", timeout=RENDER_TIMEOUT_MS
    )


async def _page_error(page) -> str | None:
    """A short description of what went wrong on the page, or None."""
    if await page.locator('[data-testid="stException"]').count():
        return "exception box"
    alerts = page.locator('[data-testid="stAlertContentError"]')
    if await alerts.count():
        return "error alert: " + (await alerts.first.inner_text())[:200]
    if await page.get_by_text("Connection error", exact=False).count():
        return "connection error"
    return None


async def _visit(page, name: str, step: int, stats: Stats) -> None:
    error = None
    try:
        await page.get_by_role("link", name=name, exact=True).click()
        await _idle(page)
        if name == "Saliency explorer":
            box = page.get_by_role("combobox", name="Image", exact=True)
            await box.click()
            for _ in range(step % 7):
                await page.keyboard.press("ArrowDown")
            await page.keyboard.press("Enter")
            await _idle(page)
            await page.get_by_text("prompt A · GradCAM").wait_for(timeout=RENDER_TIMEOUT_MS)
            await _idle(page)
            stats.maps += 1
        error = await _page_error(page)
    except Exception as exc:  # a timeout or a lost element is a failed visit
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    stats.count(name, error)


async def _session(browser, url: str, index: int, deadline: float, stats: Stats) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    try:
        await page.goto(url)
        await page.get_by_role("heading", name="Runs", exact=True).wait_for()
        await _idle(page)
    except Exception as exc:
        stats.count("Runs", f"first load: {type(exc).__name__}")
    step = index
    while time.monotonic() < deadline:
        await _visit(page, PAGES[step % len(PAGES)], step, stats)
        step += 1
    await context.close()


async def drive(url: str, sessions: int, seconds: float) -> Stats:
    """Run `sessions` concurrent browser sessions against `url` for `seconds`."""
    from playwright.async_api import async_playwright

    stats = Stats()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_session(browser, url, i, deadline, stats) for i in range(sessions)))
        await browser.close()
    return stats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(runs: Path, data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "domainclip", "dashboard", "--runs", str(runs)]
    cmd += ["--data-root", str(data), "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    raise SystemExit(f"the dashboard did not start:\n{log.read_text()[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--runs", type=Path, help="runs directory (default: build a demo-like run)")
    ap.add_argument("--data-root", type=Path, help="data root for --runs")
    args = ap.parse_args()
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} not found (apt-get install chromium)")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with tempfile.TemporaryDirectory(prefix="dashload-") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        runs, data = (args.runs, args.data_root) if args.runs else build_run(base)
        print(f"run ready in {time.perf_counter() - t0:.0f} s: {runs}", flush=True)
        proc, url = _start(runs, data or runs, base / "server.log")
        samples: list[int] = [rss_kib(proc.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append(rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stats = asyncio.run(drive(url, args.sessions, args.seconds))
        finally:
            stop.set()
            sampler.join()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        mib = [s / 1024 for s in samples if s]
        total_visits, total_errors = sum(stats.visits.values()), sum(stats.errors.values())
        print(
            f"sessions {args.sessions}, {args.seconds:.0f} s, {total_visits} page visits, "
            f"{stats.maps} saliency maps opened, {total_errors} errors"
        )
        for name in PAGES:
            print(
                f"  {name:<18} visits {stats.visits.get(name, 0):>4}  "
                f"errors {stats.errors.get(name, 0)}"
            )
        for m in stats.messages:
            print(f"  ! {m}")
        print(
            f"server RSS: start {mib[0]:.0f} MiB, peak {max(mib):.0f} MiB, "
            f"end {mib[-1]:.0f} MiB ({len(mib)} samples)"
        )
        return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
