"""A headless Chromium driven over the DevTools protocol (websockets, no browser download): open a page at a
window size, wait for its charts, evaluate JavaScript in it, take a screenshot. For the page layout tests."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from urllib.request import urlopen

from websockets.sync.client import connect

START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One tab: `call` sends a DevTools command and returns its result."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = count(1)

    def call(self, method: str, **params) -> dict:
        sent = next(self.ids)
        self.ws.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, width: int, height: int = 900, mobile: bool = False, settle_s: float = 30.0) -> None:
        """Load `url` at `width` x `height` CSS pixels and wait until every chart container has drawn (or failed)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + settle_s
        drawn = "document.readyState === 'complete' && [...document.querySelectorAll('.chart')].every(c => c.querySelector('svg') || c.textContent.includes('chart failed'))"
        while not self.evaluate(drawn):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: charts not drawn within {settle_s:g} s")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        """The whole page (not just the viewport) as a PNG."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        width = int(self.evaluate("document.documentElement.scrollWidth"))
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def chromium_page(chromium: str):
    """A headless Chromium with one blank tab, closed afterwards."""
    port = _free_port()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # Chromium's helpers may still be writing
        process = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--remote-debugging-port={port}",
                                    f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as answer:
                        targets = [t for t in json.load(answer) if t.get("type") == "page"]
                    if targets:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"Chromium ({chromium}) did not open its DevTools port within {START_TIMEOUT_S} s")
                time.sleep(0.2)
            with connect(targets[0]["webSocketDebuggerUrl"], max_size=None) as ws:
                yield Page(ws)
        finally:
            process.terminate()
            process.wait(timeout=30)


def layout_problems(page: Page, width: int) -> list[str]:
    """Per chart: text labels outside their SVG (cut off) or shortened with an ellipsis, and pairs of labels that overlap (more than a tenth of the
    smaller one's area); and the page wider than the `width` it was opened at (it would scroll sideways). Labels Vega
    hid (opacity 0, its label-overlap reduction) are left out."""
    return page.evaluate(f"({LAYOUT_PROBLEMS_JS})({int(width)})")


LAYOUT_PROBLEMS_JS = r"""
((width) => {
  const visible = (el, svg) => { for (let e = el; e && e !== svg.parentNode; e = e.parentNode) {
      const s = getComputedStyle(e); if (s.opacity === '0' || s.visibility === 'hidden' || s.display === 'none' || e.getAttribute('opacity') === '0') return false; }
    return true; };
  const problems = [];
  for (const chart of document.querySelectorAll('.chart')) {
    const svg = chart.querySelector('svg');
    if (!svg) { problems.push(`${chart.id}: no chart drawn`); continue; }
    const frame = svg.getBoundingClientRect();
    const labels = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim() && visible(t, svg))
      .map(t => ({text: t.textContent.trim(), box: t.getBoundingClientRect()})).filter(l => l.box.width > 0 && l.box.height > 0);
    for (const l of labels) {
      const b = l.box;
      if (b.left < frame.left - 1 || b.right > frame.right + 1 || b.top < frame.top - 1 || b.bottom > frame.bottom + 1) problems.push(`${chart.id}: '${l.text}' cut off`);
      if (l.text.endsWith('\u2026')) problems.push(`${chart.id}: '${l.text}' shortened`);  // Vega's labelLimit ellipsis
    }
    for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) {
      const a = labels[i].box, b = labels[j].box;
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left), h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 0 && h > 0 && w * h > 0.1 * Math.min(a.width * a.height, b.width * b.height)) problems.push(`${chart.id}: '${labels[i].text}' overlaps '${labels[j].text}'`);
    }
  }
  if (document.documentElement.scrollWidth > width + 1) problems.push(`page wider than the window: ${document.documentElement.scrollWidth} > ${width}`);
  return problems;
})
"""
