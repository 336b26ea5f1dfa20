"""End to end in a real browser: `domainclip dashboard` serving the tiny runs, driven by Debian's
Chromium through Playwright. Visits every page, interacts, checks what is on screen and saves
screenshots (to $DOMAINCLIP_ARTIFACTS, else a tmp folder).

With DOMAINCLIP_UPDATE_DOCS_IMAGES=1 it also writes the README screenshots
docs/images/saliency_explorer.png and docs/images/audit.png.

Chromium is never downloaded: without /usr/bin/chromium (or without Playwright) the test is
skipped, unless DOMAINCLIP_REQUIRE_BROWSER=1 (set by .ci/run when Chromium is installed), in
which case it fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import PROMPTS, REPO, DashRuns

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
TIMEOUT_MS = 120_000  # one page render, generous for 2 busy cores
DOCS_IMAGES = REPO / "docs" / "images"
MAX_DOC_PNG = 300_000

pytestmark = pytest.mark.browser


def _unavailable(reason: str) -> None:
    if os.environ.get("DOMAINCLIP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"DOMAINCLIP_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(dash_runs: DashRuns) -> Iterator[str]:
    """`python -m domainclip dashboard` on a free loopback port; yields its base URL."""
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    port = _free_port()
    log = dash_runs.base / "dashboard_server.log"
    cmd = [sys.executable, "-m", "domainclip", "dashboard", "--runs", str(dash_runs.root)]
    cmd += ["--data-root", str(dash_runs.data)]  # the manifest lies outside the runs directory
    with open(log, "wb") as fh:
        # own session: the CLI starts streamlit as a child; both are stopped together below
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = os.environ.get("DOMAINCLIP_ARTIFACTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _idle(page) -> None:
    """Wait until Streamlit has finished the current script run (its status widget is gone)."""
    page.wait_for_timeout(300)  # let a rerun triggered by the last interaction start
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=TIMEOUT_MS)


def _shot(page, artifacts: Path, name: str, doc: str | None = None) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path))
    if doc and os.environ.get("DOMAINCLIP_UPDATE_DOCS_IMAGES") == "1":
        _save_doc_image(path, DOCS_IMAGES / doc)
    return path


def _save_doc_image(src: Path, dest: Path) -> None:
    """Palette-quantised copy of a screenshot for the README (kept under MAX_DOC_PNG bytes)."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
            dest, optimize=True
        )
    assert dest.stat().st_size < MAX_DOC_PNG, f"{dest} is {dest.stat().st_size} bytes"


def _select(page, label: str, option: str) -> None:
    """Pick `option` (exact text) in the selectbox `label` and wait for the rerun it triggers.

    The selection is checked (and the click retried) so that a lost click shows up here, not
    as a wrong number further on.
    """
    from playwright.sync_api import expect

    box = page.get_by_role("combobox", name=label, exact=True)
    for attempt in range(3):
        box.click()
        page.get_by_role("option", name=option, exact=True).first.click()
        try:
            expect(box).to_have_value(option, timeout=10_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    _idle(page)


def _metric(page, label: str):
    """The value element of the metric labelled `label` (assert on it with `expect`)."""
    box = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label)
    )
    return box.first.locator('[data-testid="stMetricValue"]')


@contextmanager
def _diagnose(page, artifacts: Path, name: str, server_log: Path) -> Iterator[None]:
    """On failure, save a screenshot and the page's text, and add the server log's tail."""
    try:
        yield
    except Exception as exc:
        shot = _shot(page, artifacts, name)
        text = artifacts / f"{name}.txt"
        text.write_text(page.locator("body").inner_text())
        tail = server_log.read_text(errors="replace")[-4000:] if server_log.is_file() else ""
        raise AssertionError(
            f"{exc}\n--- screenshot {shot}, page text {text}\n--- server log tail:\n{tail}"
        ) from exc


def _saliency_steps(page, artifacts: Path, man, bb, explainer) -> None:
    """Pick an image, change prompt A and check its similarity, switch method."""
    from playwright.sync_api import expect

    from domainclip.explain.inputs import prepare_image
    from domainclip.scoring.prompts import load_prompt_set

    page.get_by_role("link", name="Saliency explorer").click()
    page.get_by_text("prompt A · GradCAM").wait_for()
    _idle(page)
    row = man.rows[3]
    _select(page, "Image", f"row {row.row} · {row.label[0]}")  # no file name without --show-paths
    page.get_by_text(f"row {row.row} · {row.label[0]} · {row.split}").wait_for()
    expect(page.get_by_role("combobox", name="Prompt A")).to_have_value(row.text)
    pixels = prepare_image(bb, man.image_path(row)).pixels
    score = explainer.explain(pixels, row.text, "gradcam").score
    expect(_metric(page, "Similarity A")).to_have_text(f"{score:.3f}")
    other_class = next(c for c in ("crack", "pit") if c != row.label[0])
    other = load_prompt_set(PROMPTS).class_texts([other_class])[other_class][0]
    _select(page, "Prompt A", other)
    expected = explainer.explain(pixels, other, "gradcam").score
    # This once stayed at a wrong value in about 1 run in 3: the click started a new script
    # thread while the old one was still attributing tokens on the shared model, and the new
    # map ran through the old thread's hooks (fixed by a lock per model; tests/dashboard/
    # test_saliency.py reproduces it without a browser).
    expect(_metric(page, "Similarity A")).to_have_text(f"{expected:.3f}")
    page.get_by_text("Occlusion", exact=True).click()
    page.get_by_text("prompt A · Occlusion").wait_for()
    _idle(page)
    expect(_metric(page, "Similarity A")).to_have_text(f"{expected:.3f}")
    page.get_by_text("Red words raise the image-text similarity").wait_for()
    words = page.locator(".domainclip-token-attribution span")
    expect(words).to_have_count(len(row.text.split()))
    _shot(page, artifacts, "03_saliency", doc="saliency_explorer.png")


def test_every_page_in_chromium(server: str, dash_runs: DashRuns, artifacts: Path) -> None:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright (pip) is not installed")
    # expect() has its own 5 s default, separate from the page's; a saliency rerun on a busy
    # CI machine can take longer than that (CI failed here once with the metric not yet drawn).
    expect.set_options(timeout=TIMEOUT_MS)
    from domainclip.datasets import read_manifest
    from domainclip.explain.image import ImageExplainer
    from domainclip.runs import load_model

    result = json.loads((dash_runs.lora / "result.json").read_text())
    audit = json.loads((dash_runs.lora / "audit" / "synthetic" / "audit.json").read_text())
    man = read_manifest(dash_runs.manifest)
    bb = load_model(dash_runs.lora)
    explainer = ImageExplainer(bb)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1500})
        page.set_default_timeout(TIMEOUT_MS)

        # Runs
        page.goto(f"{server}/")  # the Runs page is the app's default page
        page.get_by_role("heading", name="Runs", exact=True).wait_for()
        page.get_by_text("Training curves").wait_for()
        _idle(page)
        expect(_metric(page, "Trainable parameters")).to_have_text(
            f"{result['trainable_params']:,}"
        )
        expect(_metric(page, "Method")).to_have_text("lora")
        expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
        _shot(page, artifacts, "01_runs")

        # Data
        page.get_by_role("link", name="Data").click()
        page.get_by_role("heading", name="Data", exact=True).wait_for()
        page.get_by_text("Skipped and flagged rows").wait_for()
        _idle(page)
        expect(_metric(page, "Skipped rows")).to_have_text("1")
        expect(page.locator('[data-testid="stImage"] img')).to_have_count(12)
        assert "Jane Roe" not in page.content()
        _shot(page, artifacts, "02_data")

        # Saliency explorer: pick an image, change prompt A, switch method
        log = dash_runs.base / "dashboard_server.log"
        with _diagnose(page, artifacts, "03_saliency_failure", log):
            _saliency_steps(page, artifacts, man, bb, explainer)

        # Framing audit
        page.get_by_role("link", name="Framing audit").click()
        page.get_by_text("Gate verdict").wait_for()
        page.get_by_text("Flipped decisions, with saliency under both framings").wait_for()
        _idle(page)
        verdict = page.get_by_text("Gate verdict").inner_text()
        assert audit["gate"]["verdict"].upper() in verdict
        expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(2)
        _shot(page, artifacts, "04_audit", doc="audit.png")
        page.get_by_text(
            "Flipped decisions, with saliency under both framings"
        ).scroll_into_view_if_needed()
        _shot(page, artifacts, "05_audit_flips")

        # Calibration
        page.get_by_role("link", name="Calibration").click()
        page.get_by_text("Reliability diagrams", exact=True).wait_for()
        _idle(page)
        temp = json.loads((dash_runs.lora / "calibration.json").read_text())["temperature"]
        expect(_metric(page, "Temperature T")).to_have_text(f"{temp:.4g}")
        expect(page.locator('[data-testid="stVegaLiteChart"]').nth(3)).to_be_visible()
        _shot(page, artifacts, "06_calibration")
        browser.close()
    assert len(list(artifacts.glob("*.png"))) >= 6
