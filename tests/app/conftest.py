"""Fixtures for the app's browser tests: the app as a real `python -m sam_medft app`
subprocess on loopback, and Debian's Chromium driven by Playwright (never a downloaded
browser; skipped when there is no Chromium, as tests/eval's report check is).

Screenshots go to tests/artifacts/app/ (ignored by git; the path is printed) for a person
to look at."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "app"
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT = 120  # s: torch + transformers + gradio import on a busy 2-core machine


def find_chromium() -> str | None:
    for name in CHROMIUM:
        found = shutil.which(name) if not os.path.isabs(name) else (
            name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: put first on the app's PYTHONPATH: logs every address the app's process connects to
NETWORK_AUDIT = """import sys
def _audit(event, args):
    if event == "socket.connect":
        with open({log!r}, "a") as f:
            f.write(repr(args[1]) + "\\n")
sys.addaudithook(_audit)
"""


class AppServer:
    """`python -m sam_medft app ARGS` on a free loopback port, stopped at the end.
    `connections()`: every address the app's process connected to (an audit hook)."""

    def __init__(self, args: list[str], tmp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / f"app_{self.port}.log"
        self.net_log = tmp / f"app_{self.port}.connections"
        hook = tmp / f"audit_{self.port}"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(NETWORK_AUDIT.format(log=str(self.net_log)))
        path = os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp / "gradio"), "PYTHONPATH": path,
               "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sam_medft", "app", *args, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the app exited ({self.proc.returncode}):\n"
                                     f"{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the app did not answer in {START_TIMEOUT} s:\n"
                                     f"{self.log.read_text()}")
            time.sleep(0.5)

    def connections(self) -> list[str]:
        return self.net_log.read_text().splitlines() if self.net_log.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture
def chromium_path() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium binary (looked for {', '.join(CHROMIUM)})")
    pytest.importorskip("playwright.sync_api")
    return binary


@pytest.fixture
def browser(chromium_path):
    """A Playwright page factory in Debian's Chromium; records every request's URL."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def screenshots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\napp screenshots: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture
def app_server(tmp_path):
    """`start(args) -> AppServer`: the app in a subprocess, stopped after the test."""
    started: list[AppServer] = []

    def start(args: list[str]) -> AppServer:
        started.append(AppServer(args, tmp_path))
        return started[-1]

    yield start
    for app in started:
        app.stop()
