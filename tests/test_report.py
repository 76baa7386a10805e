"""Snakemake's HTML report of a real run of config/test.yaml, opened in headless Chromium.

The report is a single-page app: a figure is only shown after navigating Results -> category ->
(subcategory) -> result. The test walks every result of every category the way a user clicks
through it, checks each figure decoded in the browser (``naturalWidth > 0``) and is the PNG the
workflow wrote, reads each table (an HTML page in the viewer's iframe) back from the browser and
checks its rows and values against the ``metrics.json`` files and ``row_accounting.csv`` they
come from, checks each caption was rendered for its lib/cap, and keeps a screenshot of every
viewer as a test artifact (folder: env ``RTPREP_TEST_ARTIFACTS``, default ``test-artifacts/``
under pytest's temporary directory).

Chromium is Debian's ``chromium`` (or ``RTPREP_CHROMIUM``), driven by Playwright from PyPI through
``executable_path``: Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import hashlib
import json
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

import polars as pl
import pytest

from tests.workflow_util import snakemake

pytestmark = pytest.mark.slow

#: Figures the test config (libs 208 and 209, cap 5, one lib per export; model quality per split:
#: random and time) puts in each report category, and tables (one of each kind per export).
EXPECTED = {"Chemistry classes": 1, "Coverage": 2, "Model quality": 4, "Partial pooling": 2,
            "Row accounting": 2}
EXPECTED_TABLES = {"Model quality": 2, "Row accounting": 2}
#: The models evaluate scores (metrics.json's ``overall``), in its order.
MODELS = ["ridge", "pooled", "group_mean", "class_mean", "global_mean"]
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
# A table page in the viewer's iframe: its column keys and, per row, each cell's column, text and
# full value (data-value).
TABLE_JS = """table => ({
    header: [...table.querySelectorAll('thead th')].map(th => th.dataset.col),
    rows: [...table.querySelectorAll('tbody tr')].map(tr => Object.fromEntries(
        [...tr.querySelectorAll('td')].map(td => [td.dataset.col,
                                                  [td.textContent, td.dataset.value ?? null]]))),
})"""


@dataclass(frozen=True)
class Table:
    """A table as the browser shows it: column keys, and per row, by column, (text, full value)."""

    header: list[str]
    rows: list[dict[str, tuple[str, str | None]]]


@dataclass(frozen=True)
class Shown:
    """One result as the report shows it: a figure (``img``) or a table page (``html``)."""

    category: str
    subcategory: str | None
    path: str  # the result's file, as the breadcrumbs name it
    caption: str
    kind: str  # "img" or "html"
    decoded: bool
    natural_width: int
    natural_height: int
    data: bytes  # the bytes the viewer displays (from its data: URI)
    screenshot: Path
    table: Table | None = None


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
                viewer = page.locator(f"{MAIN} img, {MAIN} iframe")
                expect(viewer).to_have_count(1)
                kind = str(viewer.evaluate("el => el.tagName")).lower()
                src = str(viewer.get_attribute("src"))
                head, _, payload = src.partition(",")
                shot = artifacts / f"report_{slug(category, sub, Path(path).stem)}.png"
                if kind == "img":
                    decoded = bool(viewer.evaluate(DECODE_JS))
                    width, height = viewer.evaluate("el => [el.naturalWidth, el.naturalHeight]")
                    # Embedded, not linked: data:image/png;charset=utf8;filename=...;base64
                    assert head.startswith("data:image/png;") and head.endswith(";base64"), \
                        f"{path}: src {head[:80]!r}"
                    page.screenshot(path=shot)
                    yield Shown(category, sub, path, info.get("Description", ""), "img", decoded,
                                int(width), int(height), base64.b64decode(payload), shot)
                    continue
                assert kind == "iframe", f"{path}: viewer {kind}"
                assert head.startswith("data:text/html;") and head.endswith(";base64"), \
                    f"{path}: src {head[:80]!r}"
                table = page.frame_locator(f"{MAIN} iframe").locator("table")
                expect(table).to_have_count(1)
                got = table.evaluate(TABLE_JS)
                rows = [{c: (str(t), v) for c, (t, v) in r.items()} for r in got["rows"]]
                page.screenshot(path=shot)
                yield Shown(category, sub, path, info.get("Description", ""), "html", True, 0, 0,
                            base64.b64decode(payload), shot, Table(list(got["header"]), rows))


def test_report_shows_every_figure(walked: tuple[list[Shown], list[str]],
                                   report_run: Path) -> None:
    shown, _ = walked
    figures = [s for s in shown if s.kind == "img"]
    assert Counter(s.category for s in figures) == EXPECTED
    for s in figures:
        assert s.decoded, f"{s.path}: the browser could not decode the figure"
        assert s.natural_width > 0 and s.natural_height > 0, f"{s.path}: empty image"
        on_disk = (report_run / s.path).read_bytes()
        # The viewer shows exactly the PNG the rule wrote, at its full size.
        assert hashlib.sha256(s.data).digest() == hashlib.sha256(on_disk).digest(), s.path
        assert (s.natural_width, s.natural_height) == png_size(on_disk), s.path
        assert s.screenshot.stat().st_size > 0
    # Every figure the workflow wrote is in the report, each once.
    written = sorted(str(p.relative_to(report_run))
                     for p in (report_run / "results" / "report").rglob("*.png"))
    assert sorted(s.path for s in figures) == written


def test_report_shows_every_table(walked: tuple[list[Shown], list[str]],
                                  report_run: Path) -> None:
    """Each export's metrics and row-accounting tables, beside its figures, each once, showing
    exactly the page the rule wrote."""
    shown, _ = walked
    tables = [s for s in shown if s.kind == "html"]
    assert Counter(s.category for s in tables) == EXPECTED_TABLES
    written = sorted(str(p.relative_to(report_run))
                     for p in (report_run / "results" / "report").rglob("*.html"))
    assert sorted(s.path for s in tables) == written
    for s in tables:
        assert s.table is not None and s.table.rows, f"{s.path}: no rows shown"
        assert s.data == (report_run / s.path).read_bytes(), s.path
        assert s.subcategory == Path(s.path).parent.name  # the export's hash
        assert s.screenshot.stat().st_size > 0


def _shown_table(shown: list[Shown], category: str, export: str) -> Table:
    found = [s.table for s in shown if s.kind == "html" and s.category == category
             and s.subcategory == export and s.table is not None]
    assert len(found) == 1, f"{category}/{export}: {len(found)} tables"
    return found[0]


def test_report_metrics_table_matches_metrics_json(walked: tuple[list[Shown], list[str]],
                                                   report_run: Path) -> None:
    """One row per model of each lib × cap, in evaluate's order; every number is the
    metrics.json's (the full value kept in the cell), and on the demo the truth ratio."""
    shown, _ = walked
    evals = sorted((report_run / "results" / "rt_prod").glob("*/lib*_cap*/eval/*/metrics.json"))
    assert len(evals) == 4  # 2 libs (one per export) × the splits random and time
    for path in evals:
        export, split = path.parents[3].name, path.parent.name
        lib, cap = re.fullmatch(r"lib(\d+)_cap(\d+)", path.parents[2].name).groups()
        doc = json.loads(path.read_text(encoding="utf-8"))
        table = _shown_table(shown, "Model quality", export)
        assert table.header[:5] == ["split", "lib", "cap", "model", "rows"]
        assert {r["split"][0] for r in table.rows} == {"random", "time"}
        assert "rmse_over_oracle" in table.header  # the demo's truth was scored
        rows = [r for r in table.rows if (r["lib"][0], r["cap"][0], r["split"][0])
                == (lib, cap, split)]
        assert [r["model"][0] for r in rows] == MODELS
        assert len(table.rows) == 2 * len(MODELS)  # one lib × cap per export, two splits
        clean = doc["truth"]["clean"]["models"]
        for r in rows:
            scores = doc["overall"][r["model"][0]]
            for col in ("rows", "scored", "skipped", "rmse", "mae", "coverage95", "width95"):
                text, value = r[col]
                if scores[col] is None:
                    assert text == "n/a", (path, r["model"], col)
                else:
                    assert value is not None and float(value) == scores[col], (path, col)
            ratio = clean[r["model"][0]]["rmse"] / clean[r["model"][0]]["truth_rmse"]
            assert float(r["rmse_over_oracle"][1] or "nan") == pytest.approx(ratio, rel=1e-12)
        pooled = next(r for r in rows if r["model"][0] == "pooled")
        assert pooled["rmse"][0] == f"{doc['overall']['pooled']['rmse']:.4g}"  # as shown


def test_report_accounting_table_matches_the_csv(walked: tuple[list[Shown], list[str]],
                                                 report_run: Path) -> None:
    """Each export's rows of results/row_accounting.csv, in order, with the same numbers."""
    shown, _ = walked
    csv = pl.read_csv(report_run / "results" / "row_accounting.csv",
                      schema_overrides={"lib": pl.String})
    exports = {s.subcategory for s in shown if s.category == "Row accounting"}
    assert len(exports) == 2
    total = 0
    for export in sorted(e for e in exports if e):
        table = _shown_table(shown, "Row accounting", export)
        assert table.header == csv.columns
        mine = csv.filter(pl.col("artifact").str.starts_with(f"merged_training_{export}"))
        assert mine.height == len(table.rows) > 0
        assert mine["lib"].is_not_null().all()  # every row names its lib
        for want, got in zip(mine.iter_rows(named=True), table.rows, strict=True):
            # shown without the export's common start (…)
            assert got["artifact"][0] == "…" + want["artifact"].removeprefix(
                f"merged_training_{export}")
            for col in ("rows_in", "dropped", "rows_out"):
                assert got[col][1] is not None and int(got[col][1]) == want[col], (want, col)
            assert got["reason"][0] == (want["reason"] or "n/a")
        total += mine.height
    assert total == csv.height  # every row of the run-wide table is in one export's table


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
