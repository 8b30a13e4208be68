"""Headless Chromium driven over the DevTools protocol with aiohttp's WebSocket client.

No selenium or playwright: :func:`ensure_chromium` installs Debian's ``chromium``
through ``scripts/chromium``; :class:`Browser` starts it with a DevTools port of
its own choosing (read back from ``DevToolsActivePort``) and :class:`Page` sends
protocol commands (``Page.navigate``, ``Runtime.evaluate``,
``Page.captureScreenshot``) to the first tab.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import REPO, Proc, spawn

__all__ = ["Browser", "ChromiumUnavailable", "DevToolsError", "Page", "ensure_chromium"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]


class ChromiumUnavailable(RuntimeError):
    """scripts/chromium could not provide a browser."""


class DevToolsError(RuntimeError):
    """A DevTools command answered with an error, or the page threw."""


def ensure_chromium(timeout: float = 900) -> str:
    """Path of the Chromium binary, installing Debian's package if needed."""
    try:
        done = subprocess.run([str(REPO / "scripts" / "chromium")], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChromiumUnavailable(f"scripts/chromium did not finish: {exc!r}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ChromiumUnavailable(f"scripts/chromium failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return lines[-1]


class Page:
    """One DevTools session on a page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DevToolsError("DevTools connection closed"))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Open ``url`` and wait until its document has loaded."""
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise DevToolsError(f"navigate {url}: {result['errorText']}")
        deadline = time.monotonic() + timeout
        while await self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {timeout}s")
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise DevToolsError(f"{expression[:80]!r} threw: {details.get('exception', {}).get('description')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float, interval: float = 0.1, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; fail with the last value seen."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = await self.evaluate(expression)
            if last:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or expression!r}; last: {last!r}")
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the viewport)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


class Browser:
    """A headless Chromium process with its own profile folder."""

    def __init__(self, binary: str, log_dir: Path, *, width: int = 1280, height: int = 900) -> None:
        self.binary = binary
        self.log_dir = log_dir
        self.size = (width, height)
        self.profile = Path(tempfile.mkdtemp(prefix="imagestream-chromium-"))
        self.proc: Proc | None = None
        self.session: aiohttp.ClientSession | None = None
        self.devtools_url = ""

    async def __aenter__(self) -> Browser:
        args = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank"]
        self.proc = spawn("chromium", args, {}, self.log_dir)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if not self.proc.alive() or time.monotonic() > deadline:
                await self.__aexit__()
                raise RuntimeError(f"chromium did not open its DevTools port:\n{self.proc.log_tail()}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.devtools_url = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.stop(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def page(self) -> Page:
        """A DevTools session on the first tab (Runtime and Page domains enabled)."""
        assert self.session is not None
        deadline = time.monotonic() + 30
        while True:
            async with self.session.get(f"{self.devtools_url}/json/list",
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                targets = await resp.json()
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no page target in {targets!r}")
            await asyncio.sleep(0.1)
        ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        width, height = self.size
        await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        return page
