"""Load pages in headless Chromium over the DevTools Protocol and report what went wrong.

A small, synchronous CDP client (one websocket, one tab), enough for the book's tests:

    with serve(site_dir) as base_url, Chromium() as browser:
        report = browser.check(f"{base_url}/intro.html", screenshot=Path("intro.png"))
        assert not report.problems(), report.problems()

`check` navigates, waits for the load event and for MathJax's first typeset (or, for a page
that renders itself, such as JupyterLab, for a `ready` expression to hold), and collects JS
exceptions, console errors, failed or non-local requests (websockets included), broken images,
untypeset math, raw TeX left in the prose, and a full-page screenshot. Every wait has a
deadline, so a hung browser raises `BrowserError` instead of hanging the test run; the browser
process and its temporary profile are removed however the `with` block ends.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket  # websocket-client

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--mute-audio", "--hide-scrollbars",
    # Fail every non-local host name at once (offline and deterministic, whatever CI's network);
    # such requests are still seen, and reported, as non-local requests.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
VIEWPORT = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
MAX_SCREENSHOT_HEIGHT = 30_000  # px; taller pages are cut there (Skia caps an image side at 32,767 px)


class BrowserError(RuntimeError):
    """The browser did not start, answer or finish a page in time."""


@dataclass
class PageReport:
    """What one page did in the browser. `problems()` lists everything that is wrong."""

    url: str
    requests: list[str] = field(default_factory=list)  # every URL the page asked for (websockets too)
    js_errors: list[str] = field(default_factory=list)  # uncaught exceptions, console/log errors
    failed_requests: list[str] = field(default_factory=list)  # local requests that failed or got >= 400
    remote_requests: list[str] = field(default_factory=list)  # any request to a non-local host
    broken_images: list[str] = field(default_factory=list)  # <img> not complete or naturalWidth 0
    math_elements: int = 0  # Sphinx's .math spans/divs
    untypeset_math: int = 0  # .math elements without an <mjx-container> inside
    mjx_containers: int = 0
    tex_errors: list[str] = field(default_factory=list)  # TeX MathJax could not parse, undefined macros
    raw_tex: list[str] = field(default_factory=list)  # `\(`, `\[` or `$$` left in prose (not code)
    mathjax: str = ""  # "typeset", "no math", "not checked" (a `ready` page), or why MathJax did not finish
    ready: Any = None  # the value of check()'s `ready` expression, when one was given
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        found = [f"JS error: {e}" for e in self.js_errors]
        found += [f"failed request: {r}" for r in self.failed_requests]
        found += [f"request to a non-local host: {r}" for r in self.remote_requests]
        found += [f"image did not load: {src}" for src in self.broken_images]
        if self.mathjax not in ("typeset", "no math", "not checked"):
            found.append(f"MathJax: {self.mathjax}")
        if self.untypeset_math:
            found.append(f"{self.untypeset_math} of {self.math_elements} math elements not typeset by MathJax")
        found += [f"MathJax TeX error: {e}" for e in self.tex_errors]
        found += [f"raw TeX left in the text: ...{s}..." for s in self.raw_tex[:5]]
        if len(self.raw_tex) > 5:
            found.append(f"... and raw TeX in {len(self.raw_tex) - 5} more places")
        return found


# Runs in the page after its load event: waits (up to `ms`) for MathJax's first typeset where the
# page has math. Deferred and async scripts have run by then, so a MathJax that is not there within
# a moment (its script missing or broken) will not come: say so at once instead of waiting `ms`.
WAIT_FOR_MATHJAX = """(async (ms) => {
  const hasMath = document.querySelector('.math, mjx-container') !== null
      || document.querySelector('script[src*="mathjax" i]') !== null;
  if (!hasMath) return 'no math';
  const sleep = t => new Promise(r => setTimeout(r, t));
  for (let i = 0; i < 40 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) await sleep(50);
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    return 'did not load (no MathJax.startup after the load event: is its script served?)';
  }
  const timeout = sleep(ms).then(() => 'did not finish typesetting within ' + ms / 1000 + ' s');
  return await Promise.race([MathJax.startup.promise.then(() => 'typeset'), timeout]);
})(%d)"""

# Runs in the page: polls an expression every 100 ms until it is truthy (returns its value, or
# true for a DOM node) or `ms` have passed (returns null). The expression may await.
WAIT_UNTIL = """(async (ms) => {
  const deadline = Date.now() + ms;
  for (;;) {
    let value = null;
    try { value = await (async () => (%s))(); } catch (e) { value = null; }
    if (value) return value instanceof Node ? true : value;
    if (Date.now() > deadline) return null;
    await new Promise(r => setTimeout(r, 100));
  }
})(%d)"""

# Runs in the page: waits for every image to settle (lazy ones included), then reads the page.
INSPECT = r"""(async () => {
  for (const img of document.images) if (img.loading === 'lazy') img.loading = 'eager';
  await Promise.all([...document.images].map(img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r, {once: true});
    img.addEventListener('error', r, {once: true});
    setTimeout(r, 5000);
  })));
  const prose = document.body.cloneNode(true);
  // .cm-editor: code in a CodeMirror editor (JupyterLab's cells)
  prose.querySelectorAll('pre, code, script, style, textarea, mjx-container, .cm-editor').forEach(e => e.remove());
  const text = prose.textContent;
  const rawTex = [];  // one snippet around each stretch of raw TeX
  let shownUpTo = 0;
  for (const m of text.matchAll(/\\\(|\\\[|\$\$/g)) {
    if (m.index < shownUpTo) continue;
    shownUpTo = m.index + 40;
    rawTex.push(text.slice(Math.max(0, m.index - 30), shownUpTo).replace(/\s+/g, ' '));
  }
  const math = [...document.querySelectorAll('.math')];
  return {
    brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
                                      .map(i => i.currentSrc || i.src || i.outerHTML),
    mathElements: math.length,
    untypesetMath: math.filter(e => !e.querySelector('mjx-container')).length,
    mjxContainers: document.querySelectorAll('mjx-container').length,
    texErrors: [  // TeX MathJax could not parse, and macros it does not know (shown in red)
      ...[...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
      ...[...document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')]
           .filter(e => e.textContent.startsWith('\\')).map(e => 'undefined macro ' + e.textContent),
    ],
    rawTex: rawTex,
  };
})()"""


class Chromium:
    """A headless Chromium with one tab, driven over the DevTools Protocol.

    Args:
        executable: the browser to start (Debian's `chromium` by default).
        timeout: seconds allowed for start-up and for each step of a page (load, MathJax, ...).
    """

    def __init__(self, executable: str = "chromium", timeout: float = 30.0) -> None:
        self.executable = executable
        self.timeout = timeout
        self._process: subprocess.Popen | None = None
        self._profile: str | None = None
        self._ws: websocket.WebSocket | None = None
        self._next_id = 0
        self._events: list[dict] = []  # events read while waiting for something else

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="ntkbook-chromium-")
        with open(Path(self._profile) / "chromium.log", "wb") as log:  # the browser keeps its own copy
            self._process = subprocess.Popen(
                [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                 "--remote-debugging-port=0", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: close() ends renderers too
            )
        port = self._read_port(Path(self._profile) / "DevToolsActivePort")
        target = self._page_target(port)
        self._ws = websocket.create_connection(
            target["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", **VIEWPORT)
        self.call("Network.setCacheDisabled", cacheDisabled=True)  # every page fetches all it needs

    def _read_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited with status {self._process.returncode}:\n{self._log_tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(port_file.read_text().splitlines()[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium wrote no {port_file.name} within {self.timeout:.0f} s:\n{self._log_tail()}")

    def _page_target(self, port: int) -> dict:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/json/list", timeout=self.timeout) as answer:
            pages = [t for t in json.load(answer) if t.get("type") == "page"]
        if pages:
            return pages[0]
        request = urllib.request.Request(f"{base}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            return json.load(answer)

    def _log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError, TypeError):
            return (Path(self._profile) / "chromium.log").read_text(errors="replace")[-chars:]
        return ""

    def close(self) -> None:
        """End the browser (its whole process group) and delete its profile; safe to call twice."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close(timeout=1)
            self._ws = None
        if self._process is not None:
            # Signal the group only while its leader is not yet reaped: then the id is surely ours.
            if self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGTERM)
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self._process.pid, signal.SIGKILL)
                    self._process.wait(timeout=5)
            self._process = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # -- protocol ------------------------------------------------------------------------------
    def _receive(self, deadline: float, waiting_for: str) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"no answer from chromium within {self.timeout:.0f} s ({waiting_for})")
        self._ws.settimeout(remaining)
        try:
            return json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException:
            raise BrowserError(f"no answer from chromium within {self.timeout:.0f} s ({waiting_for})") from None
        except (websocket.WebSocketException, OSError) as error:
            raise BrowserError(f"lost the connection to chromium ({waiting_for}): {error!r}\n{self._log_tail()}") from None

    def call(self, method: str, timeout: float | None = None, **params: Any) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message_id = self._next_id
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def wait_for(self, event: str, timeout: float | None = None) -> dict:
        """Read events until `event` arrives (earlier ones are kept) and return it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, message in enumerate(self._events):
                if message["method"] == event:
                    return self._events.pop(i)
            message = self._receive(deadline, f"waiting for {event}")
            if "method" in message:
                self._events.append(message)

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its JSON value."""
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating in the page threw: {describe_exception(result['exceptionDetails'])}")
        return result["result"].get("value")

    def navigate(self, url: str) -> str:
        """Load `url`, wait for its load event, and return the navigation's loaderId."""
        self._events.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot load {url}: {result['errorText']}")
        try:
            self.wait_for("Page.loadEventFired")
        except BrowserError as error:
            raise BrowserError(f"{url} did not finish loading: {error}") from None
        return result.get("loaderId", "")

    def wait_until(self, expression: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression in the page until it is truthy and return its value.

        Raises `BrowserError` when it is still falsy (or throws) after `timeout` seconds.
        """
        ms = int((timeout or self.timeout) * 1000)
        value = self.evaluate(WAIT_UNTIL % (expression, ms), timeout=ms / 1000 + 5)
        if not value:
            raise BrowserError(f"not true within {ms / 1000:.0f} s in the page: {expression}")
        return value

    # -- one page ------------------------------------------------------------------------------
    def check(self, url: str, screenshot: Path | None = None, ready: str | None = None) -> PageReport:
        """Load `url` and report its errors, requests, images and math; save a screenshot.

        `ready`: for a page that renders itself after its load event (JupyterLab), a JavaScript
        expression to wait for (truthy, within the timeout; its value goes to `report.ready`)
        instead of MathJax, whose typesetting such a page does with its own copy.
        """
        # A blank page first, so that nothing the previous page still does is blamed on this one,
        # and no stored state (theme choice, ...): each page is checked as a first visit.
        self.navigate("about:blank")
        self.call("Storage.clearDataForOrigin", origin=origin(url), storageTypes="all")
        loader = self.navigate(url)
        report = PageReport(url=url)
        if ready is None:
            report.mathjax = self.evaluate(WAIT_FOR_MATHJAX % int(self.timeout * 1000), timeout=self.timeout + 5)
        else:
            report.mathjax = "not checked"
            report.ready = self.wait_until(ready)
        page = self.evaluate(INSPECT, timeout=self.timeout)
        report.broken_images = page["brokenImages"]
        report.math_elements = page["mathElements"]
        report.untypeset_math = page["untypesetMath"]
        report.mjx_containers = page["mjxContainers"]
        report.tex_errors = page["texErrors"]
        report.raw_tex = page["rawTex"]
        if screenshot is not None:
            report.screenshot = self.screenshot(screenshot)
        self.call("Runtime.evaluate", expression="0")  # flush: every event so far is now read
        self._collect(report, loader)
        return report

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page, VIEWPORT wide (cut at MAX_SCREENSHOT_HEIGHT px)."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": VIEWPORT["width"],
                "height": min(max(size["height"], 1), MAX_SCREENSHOT_HEIGHT), "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True,
                         optimizeForSpeed=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _collect(self, report: PageReport, loader: str) -> None:
        requests: dict[str, str] = {}  # requestId -> URL, for this page's requests only
        # Chromium asks for /favicon.ico on its own; a site without one is fine.
        browser_guess = origin(report.url) + "/favicon.ico"
        failed: dict[str, str] = {}  # URL -> its first failure (an HTTP 404 is also an aborted load)
        answered: set[str] = set()  # requestIds the server answered with a status below 400
        for message in self._events:
            method, params = message["method"], message.get("params", {})
            if method == "Network.requestWillBeSent" and params.get("loaderId") == loader:
                url = params["request"]["url"]
                if url == browser_guess:
                    continue
                requests[params["requestId"]] = url
                report.requests.append(url)
                if not is_local(url) and url not in report.remote_requests:
                    report.remote_requests.append(url)
            elif method == "Network.webSocketCreated" and params["requestId"] not in requests:
                # a websocket has no loaderId: every one opened while this page was shown is its own
                requests[params["requestId"]] = params["url"]
                report.requests.append(params["url"])
                if not is_local(params["url"]) and params["url"] not in report.remote_requests:
                    report.remote_requests.append(params["url"])
            elif method == "Network.responseReceived" and params["requestId"] in requests:
                response = params["response"]
                if response["status"] >= 400 and is_local(response["url"]):
                    failed.setdefault(response["url"], f"HTTP {response['status']}")
                else:
                    answered.add(params["requestId"])
            elif method == "Network.loadingFailed" and params["requestId"] in requests:
                url = requests[params["requestId"]]
                if params.get("canceled") and params["requestId"] in answered:
                    continue  # answered, then the page stopped reading a body it did not need
                if is_local(url):  # non-local ones are already reported as such
                    failed.setdefault(url, params.get("errorText", "failed"))
            elif method == "Runtime.exceptionThrown":
                report.js_errors.append(describe_exception(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                report.js_errors.append(f"console.{params['type']}: {text}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                if entry.get("source") != "network":  # failed requests are reported above
                    report.js_errors.append(f"{entry.get('source', 'log')}: {entry['text']} {entry.get('url', '')}".strip())
        report.failed_requests = [f"{url} ({why})" for url, why in failed.items()]
        self._events.clear()


def describe_exception(details: dict) -> str:
    exception = details.get("exception", {})
    text = exception.get("description") or details.get("text", "exception")
    where = f" at {details['url']}:{details.get('lineNumber', 0) + 1}" if details.get("url") else ""
    return text.splitlines()[0] + where


def origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def is_local(url: str) -> bool:
    """True for this machine's URLs and for ones that need no network (data:, blob:, about:)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss", "ftp"):
        return True
    return parts.hostname in LOCAL_HOSTS or (parts.hostname or "").startswith("127.")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per request on stderr
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
