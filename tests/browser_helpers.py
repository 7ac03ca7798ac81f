"""Helpers for the browser tests: launching Debian's Chromium, a handle on the terminal page,
and upstream replies paced token by token so a test can watch them grow. The fixtures that use
them are in `browser_fixtures.py`."""

from __future__ import annotations

import os

from .fake_upstream import Scenario, chunk_json, sse_bytes
from .skip_report import missing  # noqa: F401 - the browser tests import it from here

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# How long any one expectation may take before the test fails: many times what it needs,
# since up to eight people's tests share two cores here (a passing test never waits it out).
WAIT_MS = 30_000


def paced_stream(tokens, *, pause: float = 0.2, first_delay: float = 0.0, reasoning=(),
                 hold_open: bool = False, complete: bool = True) -> Scenario:
    """An OpenAI-style stream that writes one event per token with `pause` seconds between
    them, so each token reaches the page on its own. `hold_open`: then it never ends (until
    the client leaves); `complete=False`: it ends without a finish reason, usage or [DONE]."""
    parts: list = []
    if first_delay:
        parts.append(first_delay)
    parts.append(sse_bytes(chunk_json("", role="assistant")))
    for text in reasoning:
        parts += [sse_bytes(chunk_json(reasoning=text)), pause]
    for i, token in enumerate(tokens):
        if i:
            parts.append(pause)
        parts.append(sse_bytes(chunk_json(token)))
    if complete and not hold_open:
        parts.append(sse_bytes(chunk_json(finish="stop")))
        parts.append(sse_bytes(chunk_json(choices=False, usage={
            "prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)})))
        parts.append(sse_bytes("[DONE]"))
    return Scenario(parts=parts, hold_open=hold_open)


class TerminalPage:
    """The web terminal in one browser page, with what it logged."""

    def __init__(self, page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.chat_bodies: list[dict] = []  # what the page POSTed to /api/gpt/get
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))
        page.on("request", self._on_request)
        page.set_default_timeout(WAIT_MS)

    def _on_request(self, request) -> None:
        self.requests.append(request.url)
        if request.method == "POST" and request.url.endswith("/api/gpt/get"):
            self.chat_bodies.append(request.post_data_json)

    def _on_console(self, message) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def open(self) -> TerminalPage:
        self.page.goto(self.base_url + "/")
        self.page.wait_for_selector("html[data-ready='true']")
        return self

    @property
    def input(self):
        return self.page.locator("#input")

    @property
    def output(self):
        return self.page.locator("#output")

    def type_command(self, line: str) -> None:
        """Type a line into the prompt and press Enter, as a person would."""
        self.input.click()
        self.input.fill(line)
        self.input.press("Enter")

    @property
    def prompt_role(self):
        """What the prompt shows before its sign: the role, or the question being asked."""
        return self.page.locator("#prompt-role")

    @property
    def hint(self):
        return self.page.locator("#hint")

    def make_role(self, keyword: str, definition: str, *, name: str = "A role",
                  description: str = "made by a test") -> None:
        """Make an own role through the prompts, as a person would: gpt diy, then the
        definition at the question it asks, then wait for it to be kept."""
        made = self.page.locator("#output .ok", has_text=f"made your role {keyword}:")
        count = made.count()
        self.type_command(f"gpt diy -k {keyword} -n '{name}' -d '{description}'")
        self.page.locator("#prompt-role", has_text=f"{keyword} definition").wait_for()
        self.input.fill(definition)
        self.input.press("Enter")
        made.nth(count).wait_for()

    @property
    def secret(self):
        """The masked field a password is typed into (shown only while one is asked for)."""
        return self.page.locator("#secret")

    def answer_secret(self, text: str) -> None:
        """Type `text` into the masked field the terminal shows for a password, and Enter."""
        self.secret.wait_for(state="visible")
        self.secret.fill(text)
        self.secret.press("Enter")

    def sign_up(self, name: str, password: str) -> None:
        """Register through the prompts (the password asked for twice, masked); signed in."""
        self.type_command(f"user register -u {name}")
        self.answer_secret(password)
        self.page.locator("#prompt-role", has_text="new password again").wait_for()
        self.answer_secret(password)
        self.page.locator("#prompt-user", has_text=name).wait_for()

    def log_in(self, name: str, password: str) -> None:
        """Sign in through the prompts (the password typed into the masked field)."""
        self.type_command(f"user login -u {name}")
        self.answer_secret(password)
        self.page.locator("#prompt-user", has_text=name).wait_for()

    def last(self, selector: str):
        return self.page.locator(f"#output {selector}").last

    def wait_idle(self) -> None:
        """Wait until no reply is running (the terminal drops its `busy` mark)."""
        self.page.wait_for_function("() => !document.body.classList.contains('busy')")

    def chat(self, line: str) -> str:
        """Run a chat command to its end; return the reply's text as shown."""
        count = self.page.locator("#output .reply").count()
        self.type_command(line)
        self.page.wait_for_function(
            "(n) => document.querySelectorAll('#output .reply').length > n", arg=count)
        self.wait_idle()
        return self.last(".reply .answer").inner_text().strip()

    def errors_except(self, *allowed: str) -> list[str]:
        """Console errors, leaving out those containing any of `allowed` (e.g. an expected 404)."""
        return [e for e in self.console_errors if not any(a in e for a in allowed)]


def expect():
    """Playwright's `expect`, waiting up to WAIT_MS."""
    from playwright.sync_api import expect as playwright_expect
    playwright_expect.set_options(timeout=WAIT_MS)
    return playwright_expect
