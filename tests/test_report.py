"""Snakemake's HTML report of a real run of config/test.yaml, opened in headless Chromium (issue 7).

The report is a single-page app: a figure is only shown after navigating Results -> category ->
(subcategory) -> result. The test walks every result of every category the way a user clicks
through it, checks each figure decoded in the browser (``naturalWidth > 0``) and is the PNG the
workflow wrote, checks each caption was rendered for its lib/cap, and keeps a screenshot of every
viewer as a test artifact (folder: env ``RTPREP_TEST_ARTIFACTS``, default ``test-artifacts/``
under pytest's temporary directory).

Chromium is Debian's ``chromium`` (or ``RTPREP_CHROMIUM``), driven by Playwright from PyPI through
``executable_path``: Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.workflow_util import snakemake

pytestmark = pytest.mark.slow

#: Figures the test config (libs 208 and 209, cap 5; model quality per split: random and time)
#: puts in each report category.
EXPECTED = {"Chemistry classes": 1, "Coverage": 2, "Model quality": 4, "Partial pooling": 2,
            "Row accounting": 2}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Root in a container has no usable sandbox or GPU; the rest keeps Chromium off the network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# The report app's layout: a sidebar <nav> holding the breadcrumbs (an inner <nav>) and the menu,
# and the main pane beside it where a result's viewer shows the figure.
SIDEBAR = "#app > div > nav"
CRUMBS = f"{SIDEBAR} > div > nav ol"
MENU = f"{SIDEBAR} > div > div.p-3"
MAIN = "#app > div > div.grow"

# The info panel is a <ul> of header <li>s (class "uppercase") each followed by its value <li>.
INFO_JS = """el => {
    const out = {};
    let key = null;
    for (const li of el.querySelectorAll(':scope > ul > li')) {
        if (li.classList.contains('uppercase')) key = li.textContent.trim();
        else if (key !== null) out[key] = li.textContent.trim();
    }
    return out;
}"""
# Resolves once the image is decoded; false when it cannot be (broken or empty data).
DECODE_JS = "el => el.decode().then(() => true, () => false)"


@dataclass(frozen=True)
class Shown:
    """One result as the report shows it."""

    category: str
    subcategory: str | None
    path: str  # the result's file, as the breadcrumbs name it
    caption: str
    decoded: bool
    natural_width: int
    natural_height: int
    png: bytes  # the image bytes the viewer displays (from its data: URI)
    screenshot: Path


def find_chromium() -> str | None:
    """``RTPREP_CHROMIUM``, else the first Chromium/Chrome on PATH."""
    env = os.environ.get("RTPREP_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def slug(*parts: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(p for p in parts if p)).strip("_")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found: install Debian's `chromium` (apt-get install chromium) "
                    "or set RTPREP_CHROMIUM to a Chromium/Chrome binary "
                    f"(RTPREP_CHROMIUM={os.environ.get('RTPREP_CHROMIUM', '')!r})")
    return path


@pytest.fixture(scope="module")
def sync_api() -> ModuleType:
    return pytest.importorskip("playwright.sync_api",
                               reason="playwright (pyproject's `test` extra) is not installed")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    env = os.environ.get("RTPREP_TEST_ARTIFACTS")
    folder = Path(env) if env else tmp_path_factory.getbasetemp() / "test-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    # Shown even though pytest captures output (its default): CI logs then name the folder.
    message = f"report screenshots: {folder.resolve()}"
    plugins = request.config.pluginmanager
    reporter, capman = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(f"\n{message}")
    else:
        print(message)
    return folder


@pytest.fixture(scope="module")
def report_run(chromium: str, sync_api: ModuleType, test_config_run: Path) -> Path:
    """A finished run of config/test.yaml and its ``snakemake --report report.html`` (after the
    cheap skips: no browser, no driver)."""
    wd = test_config_run
    snakemake(wd, "--report", "report.html")
    assert (wd / "report.html").is_file()
    return wd


@pytest.fixture(scope="module")
def walked(report_run: Path, chromium: str, sync_api: ModuleType,
           artifacts: Path) -> tuple[list[Shown], list[str]]:
    """Every result of every category, opened in headless Chromium; and every URL requested."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30_000)
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url[:100]))
            page.goto((report_run / "report.html").as_uri())
            page.locator(MENU).get_by_text("Workflow", exact=True).wait_for()
            page.screenshot(path=artifacts / "report_home.png")
            shown = list(walk_report(page, sync_api, artifacts))
        finally:
            browser.close()
    return shown, requests


def go(page: Any, expect: Any, *entries: str) -> None:
    """From the home page, click the menu entries in turn (category, then subcategory)."""
    page.locator(CRUMBS).locator("a").first.click()
    page.locator(MENU).get_by_text("Workflow", exact=True).wait_for()
    for entry in entries:
        page.locator(MENU).get_by_text(entry, exact=True).click()
        # The last breadcrumb names where we are: the menu has been re-rendered.
        expect(page.locator(f"{CRUMBS} li.grow")).to_have_text(entry)


def walk_report(page: Any, sync_api: ModuleType, artifacts: Path) -> Iterator[Shown]:
    expect = sync_api.expect
    go(page, expect)
    # textContent, not innerText: the headers are upper-cased by CSS.
    menu = [t.strip() for t in page.locator(f"{MENU} ul > li").all_text_contents()]
    assert "Results" in menu, f"no Results section in the report's menu: {menu}"
    categories = menu[menu.index("Results") + 1:]
    for category in categories:
        go(page, expect, category)
        subcategories: list[str | None] = [None]
        if page.locator(f"{MENU} table").count() == 0:
            subcategories = [t.strip() for t in page.locator(f"{MENU} ul li a").all_text_contents()]
        for sub in subcategories:
            trail = (category,) if sub is None else (category, sub)
            go(page, expect, *trail)
            rows = page.locator(f"{MENU} table tbody tr")
            assert rows.count() > 0, f"{trail}: no results listed"
            for i in range(rows.count()):
                go(page, expect, *trail)
                rows.nth(i).locator("a[iconname=information-circle]").click()
                page.locator(MENU).get_by_text("Description", exact=True).wait_for()
                info = page.locator(MENU).evaluate(INFO_JS)
                # The last breadcrumb names the result's file (labelled results show no Path).
                path = page.locator(f"{CRUMBS} li.grow").text_content().strip()
                # The info panel's eye opens the result's viewer in the main pane.
                page.locator(f"{MENU} a[iconname=eye]").first.click()
                img = page.locator(f"{MAIN} img")
                expect(img).to_have_count(1)
                decoded = bool(img.evaluate(DECODE_JS))
                width, height, src = img.evaluate(
                    "el => [el.naturalWidth, el.naturalHeight, el.getAttribute('src')]")
                head, _, payload = src.partition(",")
                # Embedded, not linked: data:image/png;charset=utf8;filename=...;base64
                assert head.startswith("data:image/png;") and head.endswith(";base64"), \
                    f"{path}: src {head[:80]!r}"
                shot = artifacts / f"report_{slug(category, sub, Path(path).stem)}.png"
                page.screenshot(path=shot)
                yield Shown(category, sub, path, info.get("Description", ""), decoded,
                            int(width), int(height), base64.b64decode(payload), shot)


def test_report_shows_every_figure(walked: tuple[list[Shown], list[str]],
                                   report_run: Path) -> None:
    shown, _ = walked
    assert Counter(s.category for s in shown) == EXPECTED
    for s in shown:
        assert s.decoded, f"{s.path}: the browser could not decode the figure"
        assert s.natural_width > 0 and s.natural_height > 0, f"{s.path}: empty image"
        on_disk = (report_run / s.path).read_bytes()
        # The viewer shows exactly the PNG the rule wrote, at its full size.
        assert hashlib.sha256(s.png).digest() == hashlib.sha256(on_disk).digest(), s.path
        assert (s.natural_width, s.natural_height) == png_size(on_disk), s.path
        assert s.screenshot.stat().st_size > 0
    # Every figure the workflow wrote is in the report, each once.
    written = sorted(str(p.relative_to(report_run))
                     for p in (report_run / "results" / "report").rglob("*.png"))
    assert sorted(s.path for s in shown) == written


def test_report_captions_name_their_result(walked: tuple[list[Shown], list[str]]) -> None:
    shown, _ = walked
    for s in shown:
        assert s.caption, f"{s.path}: no caption"
        assert "{{" not in s.caption and "}}" not in s.caption, f"{s.path}: {s.caption}"
        m = re.search(r"lib(\d+)(?:_cap(\d+))?_", Path(s.path).name)
        if m is None:
            continue  # the chemistry classes span every lib
        assert f"lib {m.group(1)}" in s.caption, f"{s.path}: {s.caption}"
        if m.group(2):
            assert f"cap {m.group(2)}" in s.caption, f"{s.path}: {s.caption}"
        split = re.search(r"_model_quality_(\w+)\.png$", s.path)
        if split:
            assert f"{split.group(1)} split" in s.caption, f"{s.path}: {s.caption}"
        if s.subcategory:
            assert s.subcategory in s.path  # the export hash groups its own figures


def test_report_is_self_contained(walked: tuple[list[Shown], list[str]]) -> None:
    """A user can mail report.html: the browser fetched nothing but the file itself."""
    _, requests = walked
    assert requests, "no request recorded"
    fetched = [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert fetched == []
