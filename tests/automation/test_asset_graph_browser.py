"""Headless Chromium (Debian's package, driven by Playwright) finds every stage of the demo dataset in the
asset graph of a running dagster-webserver, and saves a screenshot under tests/output/."""

import shutil
import time

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

from tests.conftest import BIN, REPO
from tests.servers import free_port, server_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DEMO = "debian_docs"
OUTPUT = REPO / "tests" / "output"
MAX_ZOOM_OUTS = 8


# True when the middle of the element is inside the window and not covered (e.g. by the toolbar over the graph).
ON_TOP = """el => {
    const r = el.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;
    if (r.width === 0 || x < 0 || y < 0 || x > window.innerWidth || y > window.innerHeight) return false;
    const top = document.elementFromPoint(x, y);
    return top !== null && (top === el || el.contains(top));
}"""


def missing(page, stages: list[str]) -> list[str]:
    """The stages without a node label shown in the browser window (so the screenshot shows them all)."""

    def shown(stage: str) -> bool:
        labels = page.get_by_text(stage, exact=True)
        return any(labels.nth(i).evaluate(ON_TOP) for i in range(labels.count()))

    return [s for s in stages if not shown(s)]


def dismiss_community_dialog(page) -> None:
    """A fresh instance greets the first visit with a newsletter dialog over the graph."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except PlaywrightTimeoutError:
        return
    skip.click()
    skip.wait_for(state="detached", timeout=10_000)


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium package is not installed (make install)")
def test_asset_graph_shows_every_stage_of_the_demo_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path / "home"))
    (tmp_path / "dagster_home").mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", tmp_path / "dagster_home" / "dagster.yaml")
    port = free_port()
    with server_process([str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1",
                         "-p", str(port)], port, tmp_path / "webserver.log", timeout=180, cwd=REPO):
        url = f"http://127.0.0.1:{port}"
        # The stages that exist come from the webserver itself, so stages landing later are checked too.
        nodes = requests.post(f"{url}/graphql", json={"query": "{ assetNodes { assetKey { path } } }"},
                              timeout=120).json()["data"]["assetNodes"]
        stages = sorted(n["assetKey"]["path"][1] for n in nodes if n["assetKey"]["path"][0] == DEMO)
        assert "collected" in stages
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1920, "height": 1400})
                page.goto(f"{url}/locations/datamate/asset-groups/{DEMO}", timeout=120_000)
                # The graph is drawn once its zoom control is: nodes outside the viewport are not (collected may
                # be one of them, depending on the layout), hence the zooming out below.
                page.locator("button:has([aria-label=zoom_out])").wait_for(timeout=120_000)
                dismiss_community_dialog(page)
                # The graph draws only the nodes inside the viewport: zoom out (bounded) until every stage shows.
                for _ in range(MAX_ZOOM_OUTS):
                    if not missing(page, stages):
                        break
                    page.locator("button:has([aria-label=zoom_out])").click()
                    page.wait_for_timeout(500)
                deadline = time.monotonic() + 30  # bounded wait for the last nodes to render
                while missing(page, stages) and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                assert not missing(page, stages), f"not shown in the asset graph of {DEMO}: {missing(page, stages)}"
                OUTPUT.mkdir(exist_ok=True)
                page.screenshot(path=str(OUTPUT / "asset_graph.png"), full_page=True)
            finally:
                browser.close()
    assert (OUTPUT / "asset_graph.png").stat().st_size > 0
