"""Headless Chromium (Debian's package, driven by Playwright) finds every stage of the demo dataset in the
asset graph of a running dagster-webserver, and saves a screenshot under tests/output/."""

import shutil

import pytest
import requests
from playwright.sync_api import sync_playwright

from tests.conftest import BIN, REPO
from tests.servers import free_port, server_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DEMO = "debian_docs"
OUTPUT = REPO / "tests" / "output"


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium package is not installed (make install)")
def test_asset_graph_shows_every_stage_of_the_demo_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("DATAMATE_HOME", str(tmp_path / "home"))
    (tmp_path / "dagster_home").mkdir()
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster_home" / "dagster.yaml")
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
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(f"{url}/locations/datamate/asset-groups/{DEMO}", timeout=120_000)
                for stage in stages:
                    page.get_by_text(stage, exact=True).first.wait_for(timeout=60_000)
                OUTPUT.mkdir(exist_ok=True)
                page.screenshot(path=str(OUTPUT / "asset_graph.png"), full_page=True)
            finally:
                browser.close()
    assert (OUTPUT / "asset_graph.png").stat().st_size > 0
