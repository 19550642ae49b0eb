"""The report in a real browser: headless Chromium loads it without console errors, every image
loads, nothing is fetched from the network; a screenshot is kept as a test artefact.

How the browser is driven
-------------------------
Chromium is started with ``--remote-debugging-pipe``: it reads DevTools-protocol commands
(JSON, each terminated by a NUL byte) from its file descriptor 3 and writes replies and events
to its descriptor 4.  :class:`Chromium` below is a minimal client of that protocol (stdlib only,
no websocket library, no open port).  Console errors are collected from three event streams,
which together cover what the DevTools console shows as errors:

* ``Runtime.consoleAPICalled`` of type ``error``/``assert`` (``console.error`` in page code),
* ``Runtime.exceptionThrown`` (uncaught exceptions),
* ``Log.entryAdded`` of level ``error`` (the browser's own messages: failed resource loads,
  blocked content, invalid markup it reports).

Images are checked in the page itself (``complete`` and ``naturalWidth > 0`` for every
``<img>``), and every request the page makes is recorded (``Network.requestWillBeSent``): only
``file:`` and ``data:`` URLs are allowed.

Chromium: ``$QSMBENCH_CHROMIUM``, else ``chromium``/``chromium-browser``/``google-chrome`` on
PATH.  The test installs nothing; without a browser it is skipped with a message (CI installs
Debian's ``chromium``, see ``.ci/run``).  Screenshots go to pytest's tmp dir and, when
``QSMBENCH_ARTEFACTS`` is set, are copied there.  ``QSMBENCH_REPORT_HTML`` names an existing
report (e.g. the one of CI's end-to-end run) to check as well.

Run by hand: ``python tests/test_report_browser.py REPORT.html SCREENSHOT.png``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe")
#: Seconds to wait for one reply or event before giving up (a hung browser, not a timing test).
PATIENCE_S = 120.0
VIEWPORT = (1280, 1000)
#: Chromium cannot capture taller pages in one piece.
MAX_SCREENSHOT_HEIGHT = 16000


def find_chromium() -> str | None:
    explicit = os.environ.get("QSMBENCH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (see the module docstring)."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="qsmbench-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds():  # the child reads commands on fd 3 and writes on fd 4
            # via fds >= 10 first, in case the pipe ends themselves are 3 or 4
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            preexec_fn=fds, pass_fds=(3, 4))  # close_fds runs after preexec_fn and keeps 3, 4
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no message from Chromium within {PATIENCE_S:g} s")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe (exit {self.proc.poll()}): {self.log()[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PATIENCE_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + PATIENCE_S
        while True:
            message = self._read_message(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)

    def drain(self, seconds: float = 0.5) -> None:
        """Collect the events that arrive within ``seconds`` (late console messages)."""
        end = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read_message(end))
            except BrowserError:
                return

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    # ------------------------------------------------------------------ high level
    def open(self, url: str) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next((t for t in targets if t["type"] == "page"), None)
        target = page["targetId"] if page else self.send("Target.createTarget", {"url": "about:blank"},
                                                          session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                         "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise BrowserError(f"cannot open {url}: {reply['errorText']}")
        self.wait_for("Page.loadEventFired")
        self.drain()

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        errors = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                       for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        return errors

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            height = min(int(size["height"]) + 1, MAX_SCREENSHOT_HEIGHT)
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", session=False)
                except (BrowserError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


IMAGES_JS = """Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 60),
  complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, alt: i.alt}))"""


def check_page(executable: str, html: Path, screenshot: Path) -> dict:
    """Open ``html``; return what the browser saw: errors, images, requests, screenshots."""
    with Chromium(executable) as browser:
        browser.open(html.resolve().as_uri())
        images = browser.evaluate(IMAGES_JS)
        info = {
            "title": browser.evaluate("document.title"),
            "sections": browser.evaluate("Array.from(document.querySelectorAll('main > section')).map(s => s.id)"),
            "images": images,
            "errors": browser.console_errors(),
            "requests": browser.requests(),
            "width": browser.evaluate("document.documentElement.scrollWidth"),
            "screenshot": browser.screenshot(screenshot),
            "top": browser.screenshot(screenshot.with_name(screenshot.stem + "-top.png"), full_page=False),
        }
    return info


def keep_artefacts(*paths: Path) -> None:
    folder = os.environ.get("QSMBENCH_ARTEFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy2(p, Path(folder) / p.name)


def assert_renders(info: dict) -> None:
    assert info["errors"] == [], "console errors:\n" + "\n".join(info["errors"])
    broken = [i for i in info["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    outside = [u for u in info["requests"] if not u.startswith(("file:", "data:"))]
    assert not outside, f"the report requested {outside}"
    assert info["screenshot"].stat().st_size > 10_000


# --------------------------------------------------------------------------- tests
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (set QSMBENCH_CHROMIUM or install Debian's 'chromium'; "
                             "CI installs it): the browser check of the report is skipped")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The report of a small synthetic run: real volumes and montages plus a perturbation grid."""
    from test_report import render_case

    root = tmp_path_factory.mktemp("browser")
    return render_case(root)


@needs_chromium
def test_report_renders_in_chromium(rendered, tmp_path):
    info = check_page(CHROMIUM, rendered["out"], tmp_path / "report-screenshot.png")
    keep_artefacts(info["screenshot"], info["top"])
    assert_renders(info)
    page = rendered["out"].read_text(encoding="utf-8")
    assert len(info["images"]) == page.count("<img ") >= 5
    assert info["title"] and info["sections"][:2] == ["overview", "results"]
    # nothing wider than the window (tables scroll inside their own box)
    assert info["width"] <= 1280


@needs_chromium
def test_broken_image_and_script_error_are_caught(tmp_path):
    """The checker itself: a missing image and a console error are reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body>"
                    "<img src='missing.png' alt='x'><script>console.error('boom')</script></body></html>")
    info = check_page(CHROMIUM, page, tmp_path / "bad.png")
    assert any("boom" in e for e in info["errors"])
    assert any("missing.png" in e for e in info["errors"])  # the failed load, from the Log domain
    assert [i["width"] for i in info["images"]] == [0]


@needs_chromium
@pytest.mark.skipif(not os.environ.get("QSMBENCH_REPORT_HTML"), reason="QSMBENCH_REPORT_HTML not set")
def test_existing_report_renders_in_chromium(tmp_path):
    html = Path(os.environ["QSMBENCH_REPORT_HTML"])
    info = check_page(CHROMIUM, html, tmp_path / "run-report-screenshot.png")
    keep_artefacts(info["screenshot"], info["top"])
    assert_renders(info)


if __name__ == "__main__":
    if len(sys.argv) != 3 or CHROMIUM is None:
        sys.exit("usage: python tests/test_report_browser.py REPORT.html SCREENSHOT.png (needs Chromium)")
    result = check_page(CHROMIUM, Path(sys.argv[1]), Path(sys.argv[2]))
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in result.items()}
    shown["requests"] = [u[:60] for u in result["requests"]]
    shown["images"] = [f"{i['width']}x{i['height']} {i['alt'][:70]}" for i in result["images"]]
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    assert_renders(result)
    print("ok: no console error, every image loaded, nothing fetched from the network")
