"""The web terminal's browser fixtures, as a pytest plugin each terminal test module names in
`pytest_plugins`; they open pages in the session's one Chromium (the `chromium` fixture in
conftest.py)."""

from __future__ import annotations

import pytest

from .browser_helpers import TerminalPage


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
