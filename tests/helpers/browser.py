"""Open local pages in headless Chromium and report what a reader would see go wrong, over the DevTools protocol.

:class:`HeadlessChromium` starts ``chromium --headless --remote-debugging-port=0`` (DevTools on 127.0.0.1 only, the
chosen port read from ``DevToolsActivePort`` in a private profile folder) and stops its process group on exit.
:meth:`HeadlessChromium.inspect` loads one URL in a fresh tab and returns a :class:`PageReport`: console errors and
assertions, uncaught exceptions, error-level log entries (a resource that failed to load is one), and for every
``<img>`` its ``src``, whether it finished loading, and its ``naturalWidth`` (0: not decoded).
The DevTools client is aiohttp's WebSocket (aiohttp comes with s3fs). Chromium is Debian's ``chromium`` package;
``.ci/run`` installs it when it is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser")
STARTUP_S = 60.0
PAGE_S = 30.0
IMAGES_JS = "JSON.stringify(Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth]))"


def find_chromium() -> str | None:
    """The path of the Chromium executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    """What loading one page produced."""

    url: str
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, error-level log entries
    images: list[tuple[str, bool, int]] = field(default_factory=list)  # (src, complete, naturalWidth)
    title: str = ""

    @property
    def broken_images(self) -> list[str]:
        """``src`` of every image that did not load and decode."""
        return [src for src, complete, width in self.images if not complete or width <= 0]


def _error_of(event: dict[str, Any]) -> str | None:
    """The error a DevTools event reports, or None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}".strip()
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        return f"console.{params['type']}: {args}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip()
    return None


class HeadlessChromium:
    """A headless Chromium with DevTools on 127.0.0.1; a context manager."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.profile = Path(tempfile.mkdtemp(prefix="fastgen-chromium-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> HeadlessChromium:
        args = [
            "nice", "-n", "10", self.executable, "--headless", "--disable-gpu", "--no-sandbox",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--mute-audio", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if marker.is_file() and marker.read_text().strip():
                self.port = int(marker.read_text().splitlines()[0])
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        stderr = self._stop()
        raise RuntimeError(f"{self.executable} did not open DevTools within {STARTUP_S:.0f} s; stderr:\n{stderr}")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> str:
        """Stop the browser's process group (it and its helpers only); returns its stderr."""
        stderr = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                _, err = self.proc.communicate()
            stderr = err.decode(errors="replace")[-4000:]
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)
        return stderr

    def inspect(self, url: str) -> PageReport:
        """Load ``url`` in a new tab, wait for its load event, and report (see the module docstring)."""
        return asyncio.run(self._inspect(url))

    async def _inspect(self, url: str) -> PageReport:
        base = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{base}/json/new?about:blank") as resp:
                target = await resp.json(content_type=None)
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    return await _drive(ws, url)
            finally:
                async with http.get(f"{base}/json/close/{target['id']}") as resp:
                    await resp.read()


async def _drive(ws: aiohttp.ClientWebSocketResponse, url: str) -> PageReport:
    """Enable the domains, navigate, wait for the load event, then read the images and the title."""
    ids = itertools.count(1)
    events: list[dict[str, Any]] = []

    async def call(method: str, **params: Any) -> dict[str, Any]:
        i = next(ids)
        await ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await ws.receive_str(timeout=PAGE_S))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})
            events.append(msg)

    for domain in ("Runtime", "Log", "Page"):
        await call(f"{domain}.enable")
    await call("Page.navigate", url=url)
    deadline = time.monotonic() + PAGE_S
    while not any(e.get("method") == "Page.loadEventFired" for e in events):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not fire its load event within {PAGE_S:.0f} s")
        events.append(json.loads(await ws.receive_str(timeout=PAGE_S)))
    images = await call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)
    title = await call("Runtime.evaluate", expression="document.title", returnByValue=True)
    report = PageReport(url=url)
    report.images = [tuple(x) for x in json.loads(images["result"]["value"])]
    report.title = title["result"]["value"]
    report.errors = [e for e in map(_error_of, events) if e]
    return report
