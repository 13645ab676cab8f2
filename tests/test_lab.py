"""`make lab`: JupyterLab serves the chapters from 127.0.0.1, offline, on this environment's kernel.

One lab server for the module, started as `make lab` starts it (`python -m ntkbook.lab`) on a
port that is already taken, so that it must pick another and say which. The browser part
(tests/browser.py, headless Chromium) opens chapter 1 in the lab and checks that it renders with
no JavaScript error and no request leaving the machine; the kernel part runs the chapter's
first cells through the server's kernel API and compares an output with the stored one. The
server, its kernels and the browser are stopped however the tests end.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websocket  # websocket-client

import browser  # tests/browser.py

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "chapters/01_linear_regression.ipynb"
NOTEBOOK = json.loads((ROOT / CHAPTER).read_text(encoding="utf-8"))
CHROMIUM = shutil.which("chromium")
START_TIMEOUT = 90.0  # seconds for the lab to print its URL (it answers in ~3 s when idle)
SCREENSHOT = ROOT / "_build" / "lab" / "01_linear_regression.png"  # for a person to look at
# JupyterLab keeps a copy of each notebook it opens here (git ignores it); the tests remove what
# they made.
CHECKPOINTS = ROOT / "chapters" / ".ipynb_checkpoints"


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@dataclass
class Lab:
    process: subprocess.Popen
    home: Path  # Jupyter's user folders for this server (config, data, runtime)
    lines: list[str] = field(default_factory=list)  # what it printed on stdout, so far
    base: str = ""  # http://127.0.0.1:PORT
    token: str = ""
    returncode: int | None = None  # the launcher's exit status after SIGTERM
    left_behind: list[str] = field(default_factory=list)  # processes still running after the stop

    def get(self, path: str, token: bool = True) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{self.base}{path}", headers={"Authorization": f"token {self.token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=20) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, {}

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{self.base}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.load(answer)


def decoy_kernel(data_dir: Path) -> None:
    """A user's own "python3" kernel spec for some other interpreter: the lab must not use it."""
    spec = data_dir / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "a user's other python3", "language": "python"}))


def processes_mentioning(text: str) -> dict[int, str]:
    """Running processes whose command line contains `text` (Linux /proc; {} elsewhere).

    A kernel's command line names its connection file in the lab's runtime folder: this finds
    the kernels of one lab, which live in process groups of their own.
    """
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            zombie = (entry / "stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
            if text in command and not zombie and int(entry.name) != os.getpid():
                found[int(entry.name)] = command.strip()
    return found


@contextlib.contextmanager
def start_lab(home: Path, port: int) -> Iterator[Lab]:
    """`python -m ntkbook.lab --port PORT`, with Jupyter's user folders under `home`; stopped after."""
    env = dict(os.environ)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"))
    env["JUPYTER_PREFER_ENV_PATH"] = "0"  # a user who prefers their own kernels: not for the lab
    decoy_kernel(home / "data")
    checkpoints_before = set(CHECKPOINTS.iterdir()) if CHECKPOINTS.is_dir() else None
    log = open(home / "lab.log", "wb")  # the server's own log, for failures
    process = subprocess.Popen(
        [sys.executable, "-m", "ntkbook.lab", "--port", str(port)], cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
        start_new_session=True)  # its own process group: the server is in it too
    lab = Lab(process, home)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not lab.base:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the lab printed no URL within {START_TIMEOUT:.0f} s:\n{tail(home)}")
            if line is None:
                pytest.fail(f"the lab exited ({process.wait()}) before printing its URL:\n{tail(home)}")
            lab.lines.append(line)
            found = re.fullmatch(r"JupyterLab: (http://127\.0\.0\.1:\d+)/lab/tree/chapters\?token=(\w+)", line)
            if found:
                lab.base, lab.token = found.groups()
        yield lab
    finally:
        process.terminate()  # SIGTERM: the launcher passes it on; the server stops its kernels
        try:
            lab.returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.returncode = None
        with contextlib.suppress(ProcessLookupError):  # anything left in its group
            os.killpg(process.pid, signal.SIGKILL)
        if lab.returncode is None:
            process.wait(timeout=5)
        log.close()
        reader.join(timeout=5)  # at the end of its output once every process holding it is gone
        if not reader.is_alive():
            process.stdout.close()
        deadline = time.monotonic() + 10  # a kernel told to stop may take a moment to exit
        while (left := processes_mentioning(str(home / "runtime"))) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        lab.left_behind = [f"{pid}: {command}" for pid, command in left.items()]
        if CHECKPOINTS.is_dir():
            for made in set(CHECKPOINTS.iterdir()) - (checkpoints_before or set()):
                made.unlink()
            if checkpoints_before is None and not any(CHECKPOINTS.iterdir()):
                CHECKPOINTS.rmdir()


def tail(home: Path, chars: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return (home / "lab.log").read_text(errors="replace")[-chars:]
    return ""


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A loopback port with a listener on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, busy_port) -> Iterator[Lab]:
    with start_lab(tmp_path_factory.mktemp("lab"), busy_port) as server:
        yield server
    assert server.returncode == 0, f"the lab exited with {server.returncode} on SIGTERM"
    assert not server.left_behind, f"kernels still running after the lab stopped: {server.left_behind}"


# -- the server ------------------------------------------------------------------------------------

def test_a_busy_port_is_replaced_and_named(lab, busy_port):
    port = int(lab.base.rsplit(":", 1)[1])
    assert port != busy_port
    assert f"Port {busy_port} is busy: JupyterLab uses port {port} instead." in lab.lines, lab.lines


def test_server_answers_with_its_token_only(lab):
    status, body = lab.get("/api/status")
    assert status == 200 and "started" in body, (status, body)
    assert lab.get("/api/status", token=False)[0] == 403


def test_this_environments_kernel_is_offered(lab):
    """The venv's python3 spec wins over a user's own python3 (a decoy in JUPYTER_DATA_DIR)."""
    status, specs = lab.get("/api/kernelspecs")
    assert status == 200 and specs["default"] == "python3", specs
    spec = specs["kernelspecs"]["python3"]["spec"]
    assert spec["display_name"] == "Python 3 (ipykernel)", spec
    assert spec["argv"][0] in ("python", "python3", sys.executable), spec  # run by the server's python
    assert NOTEBOOK["metadata"]["kernelspec"]["name"] == "python3"


def page_config(lab: Lab) -> dict:
    """The configuration the server writes into the lab's page (its jupyter-config-data)."""
    request = urllib.request.Request(f"{lab.base}/lab", headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(request, timeout=20) as answer:
        html = answer.read().decode()
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.DOTALL)
    assert found, "no jupyter-config-data in /lab"
    return json.loads(found.group(1))


# The plugin that asks "Would you like to get notified about official Jupyter news?" and then
# fetches news and checks for updates; the page test below checks that no such request is made.
ANNOUNCEMENTS = "@jupyterlab/apputils-extension:announcements"


def test_what_would_phone_home_is_off(lab):
    config = page_config(lab)
    assert config["news"] == {"disabled": True}, config["news"]  # no news feed on the server
    assert ANNOUNCEMENTS in config["disabledExtensions"], config["disabledExtensions"]
    assert config["extensionManager"]["name"] == "read-only", config["extensionManager"]  # no PyPI
    assert config["treeUrl"] == "/lab/tree" and config["serverRoot"] == str(ROOT)


# -- in a real browser -----------------------------------------------------------------------------

# Truthy once the chapter is on screen: every cell in the notebook panel, and the kernel named
# and idle in its toolbar.
READY = """(() => {
  const panel = document.querySelector('.jp-NotebookPanel');
  if (!panel) return null;
  const cells = panel.querySelectorAll('.jp-Notebook .jp-Cell').length;
  const kernel = panel.querySelector('.jp-Toolbar-kernelName');
  const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const ready = cells === %d && kernel && kernel.textContent.trim() === %s
      && status && status.getAttribute('data-status') === 'idle';
  return ready ? {cells: cells, kernel: kernel.textContent.trim()} : null;
})()"""

# What the page shows, read after READY.
SHOWN = """(() => ({
  title: (document.querySelector('.jp-MarkdownOutput h1') || {}).textContent || '',
  typeset: document.querySelectorAll('.jp-MarkdownOutput mjx-container').length,
  images: [...document.querySelectorAll('.jp-OutputArea-output img')].filter(i => i.naturalWidth > 0).length,
  stdout: [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')]
            .map(e => e.textContent),
  popups: [...document.querySelectorAll('.Toastify__toast, .jp-Dialog')].map(e => e.textContent),
}))()"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_chapter_renders_in_the_lab_in_a_real_browser(lab):
    url = f"{lab.base}/lab/tree/{CHAPTER}?token={lab.token}"
    ready = READY % (len(NOTEBOOK["cells"]), json.dumps("Python 3 (ipykernel)"))
    with browser.Chromium(CHROMIUM, timeout=60) as chromium:
        report = chromium.check(url, screenshot=SCREENSHOT, ready=ready)
        shown = chromium.evaluate(SHOWN)
    assert report.problems() == [], f"{url} in Chromium (screenshot: {SCREENSHOT}):\n" + "\n".join(report.problems())

    title = source(NOTEBOOK["cells"][0]).splitlines()[0].lstrip("# ")
    assert shown["title"].rstrip("¶") == title, shown["title"]
    assert shown["typeset"] > 0, "JupyterLab's MathJax typeset nothing"
    images = sum("image/png" in o.get("data", {}) for c in NOTEBOOK["cells"] for o in c.get("outputs", []))
    assert shown["images"] == images, f"{shown['images']} of the {images} stored figures shown"
    first = next(o for c in NOTEBOOK["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert shown["stdout"] and shown["stdout"][0] == "".join(first["text"]), shown["stdout"][:1]
    assert shown["popups"] == [], f"pop-ups on a first visit: {shown['popups']}"
    asked = [r for r in report.requests if re.search(r"/lab/api/(news|update)\b", r)]
    assert not asked, f"the page asked for news or updates: {asked}"
    assert any("/api/kernels/" in r for r in report.requests), "the page opened no kernel websocket"


# The checker's additions for the lab, tested on a tiny page: a websocket to another host is a
# non-local request, and `ready` waits for the page's own rendering, or says it did not come.
WEBSOCKET_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>ws</title></head><body>
<script>
  setTimeout(() => { document.body.dataset.rendered = 'yes'; }, 300);
  try { new WebSocket('ws://example.com/socket'); } catch (e) {}
  new WebSocket('ws://' + location.host + '/local-socket');
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_browser_checker_sees_remote_websockets_and_waits_for_ready(tmp_path):
    (tmp_path / "ws.html").write_text(WEBSOCKET_PAGE)
    with browser.serve(tmp_path) as base, browser.Chromium(CHROMIUM, timeout=15) as chromium:
        report = chromium.check(f"{base}/ws.html", ready="document.body.dataset.rendered")
        with pytest.raises(browser.BrowserError, match="not true within 1 s"):
            chromium.wait_until("document.body.dataset.never", timeout=1)
    assert report.ready == "yes" and report.mathjax == "not checked"
    assert report.remote_requests == ["ws://example.com/socket"], report.problems()


# -- the kernel ------------------------------------------------------------------------------------

def execute(channels: websocket.WebSocket, code: str, timeout: float = 120.0) -> str:
    """Run `code` on the kernel behind `channels`; return its stdout, fail on an error."""
    msg_id = uuid.uuid4().hex
    channels.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    stdout, reply, idle = [], None, False
    deadline = time.monotonic() + timeout
    while reply is None or not idle:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no answer from the kernel within {timeout:.0f} s to:\n{code}")
        channels.settimeout(remaining)
        message = json.loads(channels.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif kind == "error":
            pytest.fail(f"{content['ename']}: {content['evalue']} in:\n{code}")
        elif kind == "execute_reply":
            reply = content
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    assert reply["status"] == "ok", reply
    return "".join(stdout)


@pytest.fixture(scope="module")
def channels(lab) -> Iterator[websocket.WebSocket]:
    """The kernel of the chapter's session (the browser's, when the page opened it first)."""
    session = lab.post("/api/sessions", {"path": CHAPTER, "type": "notebook", "name": "",
                                          "kernel": {"name": "python3"}})
    kernel = session["kernel"]["id"]
    ws = websocket.create_connection(
        f"{lab.base.replace('http', 'ws', 1)}/api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}",
        header=[f"Authorization: token {lab.token}"], timeout=60)
    try:
        yield ws
    finally:
        ws.close()


def test_cell_runs_on_this_environments_kernel(lab, channels):
    """The kernel is this interpreter's environment, runs in chapters/, and imports the
    repository's ntklib without any sys.path edit."""
    out = execute(channels, "import os, sys, ntklib\n"
                            "print(sys.prefix, os.getcwd(), ntklib.__file__, os.getpid(), sep='\\n')")
    prefix, cwd, ntklib_file, pid = out.splitlines()
    # The kernel is found the way the fixture looks for kernels left behind.
    assert int(pid) in processes_mentioning(str(lab.home / "runtime"))
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()
    assert Path(cwd).resolve() == ROOT / "chapters"
    assert Path(ntklib_file).resolve() == ROOT / "ntklib" / "__init__.py"


def test_chapter_cells_give_their_stored_output(lab, channels):
    """The chapter's first code cells, run in the lab's kernel, print what the notebook stores."""
    code = [cell for cell in NOTEBOOK["cells"] if cell["cell_type"] == "code"]
    stored = next(cell for cell in code if any(o.get("name") == "stdout" for o in cell["outputs"]))
    for cell in code[: code.index(stored)]:  # the install cell, the imports, ...
        execute(channels, source(cell))
    expected = "".join(
        "".join(o["text"]) for o in stored["outputs"] if o.get("name") == "stdout")
    assert execute(channels, source(stored)) == expected


# -- the Makefile ----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_rebuilds_a_stale_venv_first():
    """`make -n` (print, do not run) with requirements.txt newer than the venv's stamp."""
    plan = subprocess.run(["make", "-n", "-W", "requirements.txt", "lab"], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=30)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    install = next(i for i, line in enumerate(lines) if "pip install --quiet -r requirements.txt" in line)
    start = next(i for i, line in enumerate(lines) if "-m ntkbook.lab" in line)
    assert install < start, plan.stdout
