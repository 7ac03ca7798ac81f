"""How the web terminal keeps up with typing: headless Chromium types a 200-character `gpt chat`
line into the page served by gunicorn, and this prints, per run and as medians over the runs,
the time from each key reaching the page to its character being in the input with every input
handler run, and the time to work out one hint line.

    .venv/bin/python -m bench.typing [--runs 5]

The figures are printed, not asserted: the browser test only checks what typing does (every
character lands, the hint is right, nothing is asked of the network, the hint line is
rewritten only when it changes). Needs Debian's chromium (CHROMIUM_PATH) and Playwright.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.service import Service
from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

LINE = ("gpt chat -r ikun " + " ".join(["tell me about layups"] * 10))[:200]

LISTEN = """() => {
    window.__keys = [];
    let start = 0;
    window.addEventListener('keydown', () => { start = performance.now(); }, true);
    document.addEventListener('input', () => { window.__keys.push(performance.now() - start); });
}"""

HINT = """async (line) => {
    const { usageHint } = await import('/static/js/hint.js');
    const start = performance.now();
    for (let i = 1; i <= line.length; i++) usageHint(line.slice(0, i));
    return (performance.now() - start) / line.length;
}"""


def one_run(browser, url: str) -> dict:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("html[data-ready='true']")
        page.evaluate(LISTEN)
        page.locator("#input").focus()
        page.keyboard.type(LINE)
        if page.locator("#input").input_value() != LINE:
            raise RuntimeError("the typed line did not land whole")
        keys = page.evaluate("() => window.__keys")
        return {"median": statistics.median(keys), "max": max(keys),
                "hint": page.evaluate(HINT, LINE)}
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        # The page never reaches the upstream here: it only loads, learns the roles and types.
        service = Service("http://127.0.0.1:9", Path(tmp) / "service.log", metrics=False)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=CHROMIUM_ARGS)
                try:
                    runs = [one_run(browser, f"http://127.0.0.1:{service.port}/")
                            for _ in range(max(1, args.runs))]
                finally:
                    browser.close()
        finally:
            service.stop()
    print(f"typing a {len(LINE)}-character line in headless Chromium, {len(runs)} runs")
    print("run  key->input median  key->input max  one hint")
    for i, run in enumerate(runs, 1):
        print(f"{i:>3}  {run['median']:>14.2f} ms  {run['max']:>11.2f} ms  "
              f"{run['hint']:.3f} ms")
    print(f"median of runs: {statistics.median(r['median'] for r in runs):.2f} ms per key, "
          f"worst key {statistics.median(r['max'] for r in runs):.2f} ms, "
          f"one hint {statistics.median(r['hint'] for r in runs):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
