"""`make lab`: JupyterLab on the book's chapters, served on 127.0.0.1 and offline.

    python -m ntkbook.lab [--port 8888]

Starts JupyterLab from this Python environment (so the notebooks run on its kernel, where
``ntklib`` is installed), waits until the server answers, and prints one line with the URL and
its token::

    JupyterLab: http://127.0.0.1:8888/lab/tree/chapters?token=...

When the port is taken, a free one is used instead and a line before the URL says which. The
server runs until Ctrl-C (or SIGTERM), which shuts down its kernels too; the exit status is the
server's. ``make lab`` and ``tests/test_lab.py`` both start the lab through this module.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository (ntkbook is installed editable)
HOST = "127.0.0.1"
DEFAULT_PORT = 8888
START_TIMEOUT = 120.0  # seconds for the server to answer /api/status

# Nothing the lab does reaches the internet. JupyterLab serves its own JavaScript, fonts and
# MathJax; what would phone home is switched off here:
OFFLINE = [
    "--LabApp.news_url=None",  # the news feed (jupyterlab.github.io)
    # the "a new version is out" check (PyPI)
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",  # the extension manager's PyPI search and installs
]
# ... and in the browser, the plugin that would ask for both in a pop-up on every visit
# ("Would you like to get notified about official Jupyter news?") is disabled by
# CONFIG/labconfig/page_config.json, CONFIG being a Jupyter config folder added for the lab.
CONFIG = Path(__file__).resolve().parent / "jupyter"


def command(port: int) -> list[str]:
    """The `jupyter lab` command line: loopback only, repository root, chapters/ opened."""
    return [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.ip={HOST}", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",  # the port chosen here, or fail: the printed URL is right
        f"--ServerApp.root_dir={ROOT}",
        "--ServerApp.default_url=/lab/tree/chapters",
        "--ServerApp.open_browser=False",  # the URL is printed; works the same over ssh
        "--ServerApp.answer_yes=True",  # one Ctrl-C stops the server, without a y/n prompt
        *OFFLINE,
        # Jupyter refuses root unless told; root is usual in containers and CI, and the server
        # listens on loopback only, behind a token.
        *(["--ServerApp.allow_root=True"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
    ]


def environment(token: str) -> dict[str, str]:
    env = dict(os.environ)
    env["JUPYTER_TOKEN"] = token  # in the environment, not on the command line (ps shows that)
    # This environment's kernel spec before any "python3" in the user's own Jupyter folders,
    # so that the chapters run on the interpreter that has ntklib.
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    # The lab's own config folder, added to the user's (~/.jupyter) and the environment's.
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        [str(CONFIG), *filter(None, [os.environ.get("JUPYTER_CONFIG_PATH")])])
    return env


def port_is_free(port: int) -> bool:
    """Whether the server could listen on HOST:port (with SO_REUSEADDR, as tornado binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port() -> int:
    """A port the system has free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def choose_port(wanted: int) -> tuple[int, str | None]:
    """`wanted` if free (0: any free port), else the next free one; and a line saying so."""
    if wanted == 0:
        return free_port(), None
    if port_is_free(wanted):
        return wanted, None
    candidates = [p for p in range(wanted + 1, wanted + 11) if p < 65536]
    port = next((p for p in candidates if port_is_free(p)), None) or free_port()
    return port, f"Port {wanted} is busy: JupyterLab uses port {port} instead."


def wait_until_ready(process: subprocess.Popen, port: int, token: str, timeout: float) -> None:
    """Poll /api/status until the server answers 200; raise if it exits or takes too long."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/api/status", headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {process.returncode} before it answered")
        # refused, reset, or not yet answering
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"JupyterLab did not answer on port {port} within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server then shuts down its kernels), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntkbook.lab", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on {HOST} (default {DEFAULT_PORT}; 0: any free one)")
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be in 0..65535, got {args.port}")

    if importlib.util.find_spec("jupyterlab") is None:
        print(f"error: jupyterlab is not installed for {sys.executable}; `make lab` installs "
              "requirements.txt into .venv first", file=sys.stderr)
        return 1

    port, note = choose_port(args.port)
    if note:
        print(note, flush=True)
    token = secrets.token_hex(24)
    started: list[subprocess.Popen] = []
    # A SIGTERM sent to this process is passed on to the server, which stops its kernels.
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in started if p.poll() is None])
    process = subprocess.Popen(command(port), env=environment(token), cwd=ROOT)
    started.append(process)
    try:
        # Ctrl-C in a terminal reaches the server too, which then stops itself and its kernels:
        # wait for that here (ignored only now, or the server would inherit the ignoring).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            wait_until_ready(process, port, token, START_TIMEOUT)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return process.returncode if process.poll() not in (None, 0) else 1
        print(f"JupyterLab: http://{HOST}:{port}/lab/tree/chapters?token={token}", flush=True)
        print("Ctrl-C stops it and its kernels.", flush=True)
        return process.wait()
    finally:
        stop(process)


if __name__ == "__main__":
    sys.exit(main())
