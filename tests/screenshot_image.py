"""Make static/screenshot-image.png, the README's picture of `gpt image`: the real app under
gunicorn with no key, so the built-in demo upstream draws its placeholder images (what
`make run` shows on a fresh machine), in Debian's Chromium through Playwright.

    .venv/bin/python -m tests.screenshot_image [output.png]

Not a test (pytest does not collect it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from .browser_helpers import CHROMIUM, CHROMIUM_ARGS, TerminalPage
from .conftest import ROOT, Gunicorn


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Gunicorn({"WEB_CONCURRENCY": "1"}, Path(tmp) / "gunicorn.log")  # no key: demo
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1000, "height": 720})
                term = TerminalPage(page, server.url).open()
                term.type_command("clear")
                term.type_command("help gpt image")
                term.type_command("gpt image a lighthouse on a cliff at dusk -n 3")
                images = page.locator("#output .image-result img")
                images.nth(2).wait_for()
                term.wait_idle()
                page.wait_for_function("() => [...document.querySelectorAll('.image-result img')]"
                                       ".every((img) => img.complete && img.naturalWidth > 0)")
                term.input.fill("gpt image a fox in the snow -s 512")  # the hint line
                page.screenshot(path=str(out))
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "static" / "screenshot-image.png")
