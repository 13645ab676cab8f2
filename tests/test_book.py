"""The book builds with zero warnings, and its pages show their math and figures offline."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


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


def assets(page: Path) -> Assets:
    parser = Assets()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site() -> Path:
    """Build the book once, as `make book` does: -W turns every warning into a failure."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", "-W", "-n", "--keep-going", str(ROOT)],
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
        mathjax = [s for s in scripts if s.endswith("mathjax/tex-chtml.js")]
        if name.startswith("chapters/"):
            assert mathjax, f"{name}: no MathJax script"
        for src in mathjax:
            assert (page.parent / src).resolve().is_file(), f"{name}: {src} missing from the site"


def test_every_image_exists_and_chapters_have_figures(site):
    for name in toc_pages():
        page = site / f"{name}.html"
        images = [src for src in assets(page).images if not src.startswith("data:")]
        for src in images:
            path = (page.parent / src).resolve()
            assert path.is_file() and path.stat().st_size > 0, f"{name}: broken image {src}"
        if name.startswith("chapters/"):
            assert images, f"{name}: no figure"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_math_is_typeset_in_a_real_browser(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in toc_pages():
            if not name.startswith("chapters/"):
                continue
            dom = dump_dom(f"http://127.0.0.1:{server.server_port}/{name}.html")
            assert dom.count("<mjx-container") > 0, f"{name}: MathJax typeset nothing"
            assert not re.search(r"\\\(|\$\$", strip_code(dom)), f"{name}: raw TeX left on the page"
    finally:
        server.shutdown()


def dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def strip_code(dom: str) -> str:
    """Code cells may legitimately show TeX source; only prose must be typeset."""
    return re.sub(r"<(pre|code|script|style)\b.*?</\1>", "", dom, flags=re.DOTALL)
