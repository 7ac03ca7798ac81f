"""Make static/screenshot-diy.png, the README's picture of an own role in use: the real app
under gunicorn, the fake upstream answering, Debian's Chromium through Playwright.

    .venv/bin/python -m tests.screenshot_diy [output.png]

Not a test (pytest does not collect it); it uses the tests' fakes so the picture needs no key
and no network.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from .browser_helpers import CHROMIUM, CHROMIUM_ARGS, TerminalPage
from .conftest import ROOT, serve
from .fake_upstream import FakeUpstream, Scenario, chunk_json, sse_bytes

DEFINITION = ("You are a poet who answers every message with one haiku (5-7-5 syllables),\n"
              "in the user's language, and nothing else.")
HAIKU = ["Black water breathing\n", "the lighthouse counts out its beams\n", "one gull, then the stars"]


def reply(tokens: list[str], model: str) -> Scenario:
    """A short streamed reply that names `model`, as a real upstream would."""
    chunks = [chunk_json("", role="assistant", model=model)]
    chunks += [chunk_json(token, model=model) for token in tokens]
    chunks.append(chunk_json(finish="stop", model=model))
    chunks.append(chunk_json(choices=False, model=model, usage={
        "prompt_tokens": 40, "completion_tokens": 17, "total_tokens": 57}))
    return Scenario(parts=[sse_bytes(c) for c in chunks] + [sse_bytes("[DONE]")])


def main(out: Path) -> None:
    upstream = FakeUpstream().start()
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                serve(upstream, Path(tmp), OPENAI_MODEL="gpt-4o-mini") as server, \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            term = TerminalPage(page, server.url).open()
            term.type_command("clear")
            term.make_role("poet", DEFINITION, name="Haiku poet",
                           description="Answers every message with one haiku")
            term.type_command("gpt role")
            term.type_command("gpt role poet")
            upstream.push(reply(HAIKU, "gpt-4o-mini"))
            term.chat("gpt chat the sea at night")
            term.input.fill("gpt diy --export ")  # the hint line, as it is typed
            term.hint.locator(".hint-about").filter(has_text="--export").wait_for()
            page.screenshot(path=str(out))
            browser.close()
    finally:
        upstream.stop()

if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "static" / "screenshot-diy.png")
