"""Fixture ``chromium_page``: load a page in real headless Chromium and read its state.

A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (stdlib only).
Why a pipe: no port to pick, no websocket package, and the browser dies with the test.
It lives in conftest.py so it works under any pytest import mode.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """The first Chromium-family binary on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class PageLoad:
    """Result of loading one page: console/log/exception events and an evaluated value."""

    def __init__(self, events: list[dict], value: object) -> None:
        self.events = events
        self.value = value

    def errors(self) -> list[str]:
        """Console calls, uncaught exceptions and error/warning log entries, as text."""
        out = []
        for ev in self.events:
            method, params = ev["method"], ev.get("params", {})
            if method == "Runtime.consoleAPICalled":
                args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
                out.append(f"console.{params.get('type')}: {args}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") in ("error", "warning"):
                    out.append(
                        f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}"
                    )
        return out


def _onto_3_and_4(read_fd: int, write_fd: int) -> None:
    """In the child: put the pipe ends on fds 3 and 4 (copies first, so they cannot clash)."""
    hi_r = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 10)
    hi_w = fcntl.fcntl(write_fd, fcntl.F_DUPFD, 10)
    os.dup2(hi_r, 3)
    os.dup2(hi_w, 4)


class _Pipe:
    def __init__(self, binary: str, user_data_dir: str) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4.
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # fds 3/4 are set up in the child below; others are non-inheritable
            preexec_fn=lambda: _onto_3_and_4(to_chrome_r, from_chrome_w),
        )  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe in time")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (it exited)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params=None, session=None, deadline: float = 0.0) -> dict:
        want = self.send(method, params, session)
        while True:
            msg = self._read(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, deadline: float) -> dict:
        for ev in self.events:
            if ev["method"] == method:
                return ev
        while True:
            msg = self._read(deadline)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            os.close(self._w)
            os.close(self._r)


def load_page(binary: str, url: str, expression: str, timeout: float = 60.0, *,
              width: int | None = None, height: int = 900,
              screenshot: Path | None = None) -> PageLoad:
    """Open ``url`` in headless Chromium, wait for load, evaluate ``expression`` (JSON value).
    ``width``: the viewport width in CSS px; ``screenshot``: write a full-page PNG there."""
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="chromium-") as udd:
        pipe = _Pipe(binary, udd)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)
            sid = pipe.call(
                "Target.attachToTarget",
                {"targetId": target["targetId"], "flatten": True},
                deadline=deadline,
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=sid, deadline=deadline)
            if width is not None:
                metrics = {"width": width, "height": height, "deviceScaleFactor": 1,
                           "mobile": False}
                pipe.call("Emulation.setDeviceMetricsOverride", metrics, session=sid,
                          deadline=deadline)
            pipe.call("Page.navigate", {"url": url}, session=sid, deadline=deadline)
            pipe.wait_event("Page.loadEventFired", deadline)
            res = pipe.call(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True, "awaitPromise": True},
                session=sid,
                deadline=deadline,
            )
            if screenshot is not None:
                shot = pipe.call("Page.captureScreenshot",
                                 {"format": "png", "captureBeyondViewport": True},
                                 session=sid, deadline=deadline)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            events = [e for e in pipe.events if e.get("sessionId") == sid]
            return PageLoad(events, res.get("result", {}).get("value"))
        finally:
            pipe.close()


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()


@pytest.fixture
def chromium_page() -> Callable[[Path, str], PageLoad]:
    """``load(path, js_expression) -> PageLoad``; skips when no Chromium binary is on PATH."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    return lambda path, expression, **kw: load_page(binary, file_url(path), expression, **kw)
