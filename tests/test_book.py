"""The book builds with zero warnings, and its pages show their math and figures offline."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

import browser  # tests/browser.py

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


def toc_pages() -> list[str]:
    """Every file in _toc.yml, in reading order (parts, chapters and their sections)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def files(entries: list[dict]) -> list[str]:
        found = []
        for entry in entries:
            found += [entry["file"]] if "file" in entry else []
            found += files(entry.get("chapters", []) + entry.get("sections", []))
        return found

    return [toc["root"]] + files(toc.get("parts", []) + toc.get("chapters", []))


class Assets(HTMLParser):
    """The scripts and images a page asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and attributes.get("src"):
            self.scripts.append(attributes["src"])
        if tag == "img" and attributes.get("src"):
            self.images.append(attributes["src"])


def url_path(src: str) -> str:
    """A relative URL without its ?query or #fragment, as a path in the site."""
    return urllib.parse.unquote(urllib.parse.urlsplit(src).path)


def assets(page: Path) -> Assets:
    parser = Assets()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site() -> Path:
    """Build the book once, as `make book` does: -W turns every warning into a failure. --all re-reads
    every page (notebook outputs still come from the execution cache): an incremental build would not
    re-emit the warnings of pages it skips, e.g. autodoc warnings after a docstring changed."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", "--all", "-W", "-n", "--keep-going", str(ROOT)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return HTML


def test_every_toc_page_is_built(site):
    for name in toc_pages():
        assert (site / f"{name}.html").is_file(), name


def test_mathjax_is_served_locally(site):
    for name in toc_pages():
        page = site / f"{name}.html"
        scripts = assets(page).scripts
        assert not [s for s in scripts if s.startswith(("http:", "https:", "//"))], f"{name}: remote script"
        # Sphinx appends ?v=<hash> when the file already exists at write time (an incremental build).
        mathjax = [s for s in scripts if url_path(s).endswith("mathjax/tex-chtml.js")]
        if name.startswith("chapters/"):
            assert mathjax, f"{name}: no MathJax script"
        for src in mathjax:
            assert (page.parent / url_path(src)).resolve().is_file(), f"{name}: {src} missing from the site"


def test_every_image_exists_and_chapters_have_figures(site):
    for name in toc_pages():
        page = site / f"{name}.html"
        images = [src for src in assets(page).images if not src.startswith("data:")]
        for src in images:
            path = (page.parent / url_path(src)).resolve()
            assert path.is_file() and path.stat().st_size > 0, f"{name}: broken image {src}"
        if name.startswith("chapters/"):
            assert images, f"{name}: no figure"


# -- in a real browser ----------------------------------------------------------------------------
# tests/browser.py drives headless Chromium over the DevTools Protocol: every page of the toc is
# served from 127.0.0.1, loaded, and checked for JS errors, failed or non-local requests, images that
# did not load, math MathJax did not typeset and raw TeX; a screenshot of each is kept for people.

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
SCREENSHOTS = ROOT / "_build" / "screenshots"


def has_math(name: str) -> bool:
    """The pages whose text is mostly mathematics: MathJax must have typeset something there."""
    return name.startswith("chapters/") or name == "notation"


def screenshot_path(name: str) -> Path:
    return SCREENSHOTS / f"{name.replace('/', '_')}.png"


@pytest.fixture(scope="module")
def browser_reports(site) -> dict[str, browser.PageReport | str]:
    """Every toc page, loaded once in one headless Chromium: its report, or why it could not load."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # no screenshots of pages that left the toc
    reports: dict[str, browser.PageReport | str] = {}
    pending = toc_pages()
    with browser.serve(site) as base:
        while pending:  # a page that hangs or crashes the browser gets a fresh one for the rest
            with browser.Chromium(CHROMIUM) as chromium:
                while pending:
                    name = pending.pop(0)
                    try:
                        reports[name] = chromium.check(f"{base}/{name}.html", screenshot=screenshot_path(name))
                    except browser.BrowserError as error:
                        reports[name] = str(error)
                        break
    return reports


@needs_chromium
@pytest.mark.parametrize("name", toc_pages())
def test_page_works_in_a_real_browser(browser_reports, name):
    report = browser_reports[name]
    if isinstance(report, str):
        pytest.fail(f"{name}: {report}", pytrace=False)
    problems = report.problems()
    if has_math(name) and report.mjx_containers == 0:
        problems.append(f"MathJax typeset nothing (no <mjx-container>; MathJax: {report.mathjax})")
    shot = report.screenshot
    if shot is None or not shot.is_file() or shot.stat().st_size == 0:
        problems.append(f"no screenshot written to {screenshot_path(name)}")
    if problems:  # the message says it all; a traceback would only repeat every page's report
        pytest.fail(f"{name} in Chromium (screenshot: {screenshot_path(name)}):\n  " + "\n  ".join(problems),
                    pytrace=False)


# A tiny site with one of each problem, so the checker itself is tested: it must see them all,
# and see nothing wrong on a clean page.
PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
CLEAN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>clean</title></head>
<body><p>Nothing wrong: <img src="dot.png" width="10"> and code may show TeX: <code>\\(x\\)</code></p></body></html>"""
BROKEN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title>
<script>window.MathJax = {};</script><script defer src="mathjax/tex-chtml.js"></script></head><body>
<p>Math: <span class="math notranslate nohighlight">\\(x^2\\)</span> and prose with $$y$$.</p>
<img src="missing.png"> <img src="https://example.com/x.png">
<script>console.error("console says no");</script>
<script>throw new Error("boom");</script>
</body></html>"""


@needs_chromium
def test_browser_checker_sees_every_problem(tmp_path):
    (tmp_path / "dot.png").write_bytes(PNG_1x1)
    (tmp_path / "clean.html").write_text(CLEAN_PAGE)
    (tmp_path / "broken.html").write_text(BROKEN_PAGE)
    with browser.serve(tmp_path) as base, browser.Chromium(CHROMIUM, timeout=15) as chromium:
        clean = chromium.check(f"{base}/clean.html", screenshot=tmp_path / "clean.png")
        broken = chromium.check(f"{base}/broken.html", screenshot=tmp_path / "broken.png")
    assert clean.problems() == [], clean.problems()
    assert clean.mathjax == "no math" and (tmp_path / "clean.png").stat().st_size > 0

    problems = "\n".join(broken.problems())
    assert any("Error: boom" in e for e in broken.js_errors), problems
    assert any("console says no" in e for e in broken.js_errors), problems
    assert any(r.endswith("/missing.png (HTTP 404)") for r in broken.failed_requests), problems
    assert any(r.endswith("/mathjax/tex-chtml.js (HTTP 404)") for r in broken.failed_requests), problems
    assert broken.remote_requests == ["https://example.com/x.png"], problems
    assert sorted(src.rsplit("/", 1)[-1] for src in broken.broken_images) == ["missing.png", "x.png"], problems
    assert broken.mathjax.startswith("did not load") and broken.untypeset_math == 1, problems
    assert any("$$y$$" in s for s in broken.raw_tex) and any("\\(x^2" in s for s in broken.raw_tex), problems
