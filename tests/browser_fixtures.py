"""The browser fixtures, as a pytest plugin: each browser test module names it in
`pytest_plugins`, so all of them share one Chromium for the session (a fixture defined in each
module would launch one per module)."""

from __future__ import annotations

import os

import pytest

from .browser_helpers import CHROMIUM, CHROMIUM_ARGS, TerminalPage, missing


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the whole session; each test gets a fresh context."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def open_terminal(chromium, live):
    """Open the terminal in a fresh context (empty localStorage) at a given viewport, served
    by the session's gunicorn unless `url` names another server."""
    contexts = []

    def open_(width: int = 1000, height: int = 640, setup=None, url: str | None = None
              ) -> TerminalPage:
        context = chromium.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        term = TerminalPage(context.new_page(), url or live.url)
        if setup is not None:
            setup(term.page)
        return term.open()

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture()
def term(open_terminal):
    return open_terminal()
