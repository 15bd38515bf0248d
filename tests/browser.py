"""A real tracking server and a real headless Chromium for tests that look at the MLflow UI.

Chromium is driven through its command line only (`--dump-dom`, `--screenshot`), each call a
fresh browser with an empty profile, as a first-time visitor sees the page. The runs table is a
React app that fetches the runs after the page has loaded; `--virtual-time-budget` lets the page
run that long in virtual time (timers and network included) before Chromium dumps it, and
`render` reruns the dump with a growing budget until the caller's condition holds, so the test
neither sleeps blindly nor needs a DevTools client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BUDGETS_MS = (4_000, 8_000, 16_000, 32_000)  # virtual time per attempt, growing
WINDOW = (2400, 1200)  # wide: the runs table only renders the columns inside the window
# headless, as root in a container, and none of Chromium's own traffic to Google (updates, sync,
# autofill, sign-in); every host but 127.0.0.1 fails to resolve at once, so nothing outside the
# test's server is waited for, whether or not this machine has a network
QUIET_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--no-pings", "--disable-client-side-phishing-detection",
               "--disable-features=Translate,OptimizationHints,MediaRouter",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               "--hide-scrollbars", "--mute-audio")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, else None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """End a process started with `start_new_session=True` and everything it spawned (its
    process group: the MLflow server's uvicorn worker, Chromium's renderers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers that outlived the leader
    except ProcessLookupError:
        pass


def wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll the server's /health until it answers, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}:\n"
                               f"{log.read_text()[-5000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not answer in {timeout:.0f} s:\n"
                               f"{log.read_text()[-5000:]}")
        time.sleep(0.5)


@contextmanager
def start_mlflow_server(store_uri: str, folder: Path, timeout: float = 120,
                        artifacts: Path | None = None) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 at a free port over `store_uri`; yields its address.

    Its log is `folder/server.log`; `artifacts` (default `folder/server-artifacts`) is where it
    stores artifacts logged through it (runs logged elsewhere keep their own locations). The
    background job runner is off: nothing here needs it, and it is four more processes."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--backend-store-uri", store_uri,
               "--artifacts-destination", str(artifacts or folder / "server-artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        try:
            uri = f"http://127.0.0.1:{port}"
            wait_healthy(uri, server, log_path, timeout)
            yield uri
        finally:
            stop_group(server)


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One headless Chromium call with a throwaway profile; raises if Chromium fails."""
    executable = find_chromium()
    if executable is None:
        raise RuntimeError("no Chromium on PATH")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [executable, *QUIET_FLAGS, f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            stop_group(process, timeout=10)
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited with {process.returncode}: {stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def dump_dom(url: str, budget_ms: int, window: tuple[int, int] = WINDOW,
             shot: Path | None = None) -> str:
    """The page's DOM after `budget_ms` of virtual time, and a PNG of it at `shot` if given
    (the same Chromium call: one page load, one moment)."""
    extra = [f"--screenshot={shot}", "--run-all-compositor-stages-before-draw"] if shot else []
    dom = chromium(f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
                   *extra, "--dump-dom", url).stdout
    if shot is not None and not shot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot at {shot}")
    return dom


def render(url: str, ready: Callable[[str], bool], shot: Path | None = None,
           budgets_ms: tuple[int, ...] = BUDGETS_MS,
           window: tuple[int, int] = WINDOW) -> tuple[str, int]:
    """The DOM once `ready(dom)` holds, with the virtual-time budget that got it there, and the
    screenshot of that moment at `shot`; the last attempt's DOM, budget and screenshot if it
    never does, for the caller's assertion to show."""
    dom = ""
    for budget in budgets_ms:
        dom = dump_dom(url, budget, window, shot)
        if ready(dom):
            return dom, budget
    return dom, budgets_ms[-1]
