#!/usr/bin/env python3
"""Opens a `cai report` page in headless Chromium over the DevTools protocol.

Checks (each failure is listed, exit status 1):
  * no console errors, no uncaught exceptions, no CSP or other log errors;
  * no network request: every request the page makes is a file: or data: URL;
  * no script from the data ran (`window.__caiPwned` stays undefined) and the
    page has exactly its own two script elements;
  * each --must-show text is displayed literally (in `innerText`, rows open);
  * typing --filter-id into the id filter, and --search into the search box,
    narrows the visible rows to at least one but fewer than all;
  * --stage-filter VALUE selects a stage and narrows the rows likewise.
With --screenshot PATH it also writes a PNG of the top of the page.

Needs the `websocket-client` package. Chromium is started with a fresh
profile and the flags that keep it from contacting anything on its own.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
TIMEOUT = 60.0


class Cdp:
    """A DevTools connection to one page: calls, and the events seen."""

    def __init__(self, url):
        # Chromium refuses DevTools websockets with an Origin header unless
        # started with --remote-allow-origins; send none.
        self.ws = websocket.create_connection(url, timeout=TIMEOUT, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def _recv(self):
        msg = json.loads(self.ws.recv())
        if "id" not in msg:
            self.events.append(msg)
        return msg

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            msg = self._recv()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise TimeoutError(method)

    def wait_for(self, event, since):
        deadline = time.monotonic() + TIMEOUT
        while True:
            if any(e.get("method") == event for e in self.events[since:]):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self._recv()

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluating {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")


def start_chromium(binary, profile):
    log = open(os.path.join(profile, "chromium.log"), "wb")
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1600", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    port_file = pathlib.Path(profile, "DevToolsActivePort")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}; see {log.name}")
        if port_file.exists():
            lines = port_file.read_text().split("\n")
            if lines and lines[0].strip().isdigit():
                return proc, int(lines[0])
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("chromium did not open its DevTools port")


def page_ws(port):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            for target in json.load(r):
                if target.get("type") == "page" and "webSocketDebuggerUrl" in target:
                    return target["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise TimeoutError("no page target")


VISIBLE = "document.querySelectorAll('[data-row]:not([hidden])').length"


def set_field(cdp, field_id, value):
    """Sets a filter field as a user would and returns the visible rows."""
    cdp.eval(
        "(() => { const f = document.getElementById(%s); f.value = %s;"
        " f.dispatchEvent(new Event('input', {bubbles: true}));"
        " f.dispatchEvent(new Event('change', {bubbles: true})); })()"
        % (json.dumps(field_id), json.dumps(value))
    )
    return cdp.eval(VISIBLE)


def check(cdp, args, problems):
    total = cdp.eval("document.querySelectorAll('[data-row]').length")
    shown = cdp.eval(VISIBLE)
    if not total or shown != total:
        problems.append(f"expected every row visible at load, got {shown} of {total}")
    if cdp.eval("document.getElementById('filters').hidden"):
        problems.append("the filter form stayed hidden: the page script did not run")
    if cdp.eval("typeof window.__caiPwned") != "undefined":
        problems.append(f"a script from the data ran: __caiPwned = {cdp.eval('window.__caiPwned')}")
    scripts = cdp.eval("document.scripts.length")
    if scripts != 2:
        problems.append(f"expected the page's 2 script elements, found {scripts}")
    injected = cdp.eval("document.querySelectorAll('#rowlist script, #rowlist img, #rowlist iframe, #rowlist b[data-x]').length")
    if injected:
        problems.append(f"{injected} elements from the data became markup")
    cdp.eval("document.getElementById('f-expand').click()")
    body = cdp.eval("document.body.innerText")
    for text in args.must_show:
        if text not in body:
            problems.append(f"not shown as text: {text!r}")
    narrowed = {}
    for field, value in (("f-id", args.filter_id), ("f-q", args.search), ("f-stage", args.stage_filter)):
        if value is None:
            continue
        n = set_field(cdp, field, value)
        narrowed[field] = n
        if not 0 < n < total:
            problems.append(f"filter {field}={value!r} left {n} of {total} rows")
        set_field(cdp, field, "")
    if cdp.eval(VISIBLE) != total:
        problems.append("clearing the filters did not show every row again")
    return {"rows": total, "narrowed": narrowed}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="the report.html to open")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--must-show", action="append", default=[], metavar="TEXT")
    ap.add_argument("--filter-id", metavar="TEXT")
    ap.add_argument("--search", metavar="TEXT")
    ap.add_argument("--stage-filter", metavar="STAGE")
    ap.add_argument("--screenshot", metavar="PNG")
    ap.add_argument("--screenshot-height", type=int, default=1500)
    ap.add_argument("--open-rows", type=int, default=0, help="rows to open before the screenshot")
    args = ap.parse_args()

    url = pathlib.Path(args.report).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="cai-chromium-")
    proc = None
    problems = []
    try:
        proc, port = start_chromium(args.chromium, profile)
        cdp = Cdp(page_ws(port))
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=args.screenshot_height,
            deviceScaleFactor=1,
            mobile=False,
        )
        mark = len(cdp.events)
        cdp.call("Page.navigate", url=url)
        cdp.wait_for("Page.loadEventFired", mark)
        result = check(cdp, args, problems)
        if args.screenshot:
            cdp.eval("document.getElementById('f-collapse').click()")
            cdp.eval(
                "document.querySelectorAll('[data-row]').forEach((r, i) => { r.firstElementChild.open = i < %d; })"
                % args.open_rows
            )
            shot = cdp.call("Page.captureScreenshot", format="png")
            import base64

            pathlib.Path(args.screenshot).write_bytes(base64.b64decode(shot["data"]))
        # Let late events (a deferred request, a timer error) arrive.
        cdp.eval("new Promise(r => setTimeout(r, 300))")
        requests = []
        for e in cdp.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                problems.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                problems.append(f"uncaught exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                problems.append(f"log error: {p['entry'].get('text')}")
            elif m == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
        remote = [u for u in requests if not (u.startswith("file:") or u.startswith("data:"))]
        if remote:
            problems.append(f"network requests: {remote}")
        result["requests"] = requests
        result["problems"] = problems
        print(json.dumps(result, indent=1))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
