"""The marketer's report in a real browser: headless Chromium opens a report built from hand-made
data, and the page must show every image, fit a 1280 px window, log no error and say the same
headline numbers as the summary JSON.

Chromium is Debian's `chromium` package (`make setup` runs scripts/ensure_chromium.sh, which
installs it as root). It is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in a NUL byte, to the browser on fd 3 and back on fd 4), so the test needs
no driver, no websocket library and no browser download.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipelines.reports.touchpoint_report import build_report, data_value, headline_text
from tests.reports.test_touchpoint_report import EXPECTED_HEADLINE, report_inputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 1280

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: `make setup` installs Debian's chromium as root "
    "(scripts/ensure_chromium.sh)",
)


class DevTools:
    """A minimal Chrome DevTools Protocol client for one headless Chromium over a pipe."""

    def __init__(self, binary: str, profile: Path, timeout: float = 30.0):
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child: the pipe ends Chromium expects
            a, b = os.dup(to_browser), os.dup(from_browser)  # neither can be overwritten below
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)  # dup2 onto itself would keep close-on-exec
            os.set_inheritable(4, True)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        args += ["--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(
            args,
            close_fds=False,
            preexec_fn=on_fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self.timeout, self.events, self._next, self._buffer = timeout, [], 0, b""

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and wait for its answer; events that arrive meanwhile are kept."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, after: int = 0) -> dict:
        """The first event `method` among the events from number `after` on, waiting for it."""
        while not any(e.get("method") == method for e in self.events[after:]):
            self.events.append(self._read())
        return next(e for e in self.events[after:] if e.get("method") == method)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer within {self.timeout:g} s")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)


# What the page looks like in the browser, once every <details> is open.
INSPECT = """(async () => {
  if (document.readyState !== 'complete') {
    await new Promise(done => addEventListener('load', done, {once: true}));
  }
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const clip = el => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (getComputedStyle(p).overflowX !== 'visible') return p;
    }
    return null;
  };
  const width = document.documentElement.clientWidth;  // the window less its scrollbar
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const box = clip(el);  // inside a scrolling container, only what it shows counts
    const right = box ? Math.min(r.right, box.getBoundingClientRect().right) : r.right;
    if (right > width + 0.5) {
      wide.push(`${el.tagName}.${el.className} right=${Math.round(r.right)}`);
    }
  }
  return {
    href: location.href,
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: width,
    wide: wide,
    images: await Promise.all([...document.images].map(i => i.decode().then(
      () => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt}),  // decoded whole
      () => ({ok: false, alt: i.alt})))),
    numbers: [...document.querySelectorAll('[data-key]')].map(e => ({
      source: e.dataset.source, key: e.dataset.key, value: e.dataset.value, text: e.innerText})),
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
  };
})()"""


def open_in_chromium(page: Path, profile: Path, screenshot: Path) -> tuple[dict, list[dict]]:
    """Open `page` in headless Chromium 1280 px wide, save a full-page screenshot, and return
    what the page shows (`INSPECT`) and the DevTools events it raised."""
    browser = DevTools(CHROMIUM, profile)
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=WIDTH,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        before = len(browser.events)
        browser.call("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired", after=before)
        found = browser.call(
            "Runtime.evaluate", session, expression=INSPECT, returnByValue=True, awaitPromise=True
        )["result"]["value"]
        shot = browser.call(
            "Page.captureScreenshot", session, format="png", captureBeyondViewport=True
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return found, list(browser.events)
    finally:
        browser.close()


def errors_in(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and error log entries among DevTools events."""
    found = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            found.append(p["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            found.append(p["entry"].get("text", ""))
    return found


def requests_in(events: list[dict]) -> list[str]:
    return [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]


def test_the_report_reads_well_in_a_real_browser(tmp_path):
    inputs = report_inputs()
    page, pngs = build_report(**inputs)
    report = tmp_path / "report.html"
    report.write_text(page)
    # what the numbers are held to: the JSON files, as the stages write them
    summary = json.loads(json.dumps(inputs["summary"], default=str))
    measured = json.loads(json.dumps(inputs["measured"]["headline"], default=str))

    found, events = open_in_chromium(report, tmp_path / "profile", tmp_path / "screenshot.png")

    assert found["href"] == report.as_uri()

    assert len(found["images"]) == len(pngs) >= 5
    broken = [i["alt"][:60] for i in found["images"] if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    # nothing wider than the window less its scrollbar: no sideways scrolling
    assert WIDTH - 20 <= found["clientWidth"] <= WIDTH
    assert not found["wide"], f"elements past the window's edge: {found['wide'][:10]}"
    assert found["scrollWidth"] <= found["clientWidth"], f"{found['scrollWidth']} px wide"
    shot = (tmp_path / "screenshot.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and int.from_bytes(shot[16:20], "big") <= WIDTH
    assert not errors_in(events), errors_in(events)
    outside = [u for u in requests_in(events) if not u.startswith(("file:", "data:"))]
    assert not outside, f"the page fetched {outside}"

    sources = {"feed": summary, "measured": measured}
    shown = {(n["source"], n["key"]): n for n in found["numbers"]}
    assert set(EXPECTED_HEADLINE) <= set(shown)
    for (source, key), n in shown.items():
        value = sources[source][key]
        assert n["value"] == data_value(value), (source, key)
        assert n["text"] == headline_text(key, value), (source, key)
    for where, text in EXPECTED_HEADLINE.items():
        assert shown[where]["text"] == text, where
    assert "I want to go" in found["text"] and "Local listing" in found["text"]
