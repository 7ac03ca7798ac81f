"""The web terminal resumes a reply by itself, in Debian's Chromium: its connection reset
mid-reply by a proxy the test controls (tests/tcp_proxy.py), the page shows "reconnecting..."
while the server cannot be reached, then the whole reply exactly once, the upstream asked
once; Ctrl+C cancels the reply on the server (DELETE), which closes the upstream rather than
the grace period (ten minutes here) running out.

Waiting is Playwright's or a threading Event, never a sleep; deadlines are generous
(WAIT_MS), never a bound on how fast the machine is: the 1 s promise of a cancel is timed
without a browser, in test_replies.py and test_replies_live.py."""

from __future__ import annotations

import threading

import pytest

from .browser_helpers import WAIT_MS, expect
from .conftest import serve
from .fake_upstream import Scenario, chunk_json, sse_bytes
from .tcp_proxy import CuttingProxy

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.browser_fixtures"]  # the chromium and open_terminal fixtures

TOKENS = [f"word{i} " for i in range(12)] + ["你好，世界！ ", "🙂👍🏽 ", "end."]
TEXT = "".join(TOKENS)


@pytest.fixture()
def behind_proxy(fake_upstream, tmp_path):
    """A gunicorn of its own (one worker, replies kept in its memory: memory://, a grace
    period of ten minutes, so only a cancel stops a reply early), and the proxy the page
    reaches it through."""
    with serve(fake_upstream, tmp_path, HEARTBEAT_SECONDS="1",
               RESUME_GRACE_SECONDS="600") as server:
        proxy = CuttingProxy(server.port)
        try:
            yield server, proxy
        finally:
            proxy.stop()


def paced_with_gate(tokens, at: int) -> tuple[Scenario, threading.Event]:
    """One event per token, 50 ms apart; the upstream waits at the gate after `at` tokens."""
    gate = threading.Event()
    parts: list = [sse_bytes(chunk_json("", role="assistant"))]
    for i, token in enumerate(tokens):
        parts += [gate] if i == at else [0.05] if i else []
        parts.append(sse_bytes(chunk_json(token)))
    parts += [sse_bytes(chunk_json(finish="stop")), sse_bytes(chunk_json(choices=False, usage={
        "prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)})),
              sse_bytes("[DONE]")]
    return Scenario(parts=parts), gate


def requests_seen(term) -> list[tuple[str, str, str | None]]:
    """(method, URL, Last-Event-ID) of every request the page makes from now on."""
    seen: list = []
    term.page.on("request", lambda r: seen.append(
        (r.method, r.url, r.headers.get("last-event-id"))))
    return seen


def test_a_connection_reset_mid_reply_is_resumed_and_the_reply_shown_exactly_once(
        open_terminal, behind_proxy, upstream):
    server, proxy = behind_proxy
    scenario, gate = paced_with_gate(TOKENS, 6)
    upstream.push(scenario)
    term = open_terminal(url=proxy.url)
    seen = requests_seen(term)
    term.type_command("gpt chat tell me a story")
    answer = term.last(".reply .answer")
    expect()(answer).to_have_text("".join(TOKENS[:6]).strip())
    proxy.refusing = True  # the network is down: the page retries meanwhile
    proxy.cut()
    expect()(term.last(".reply .reconnecting")).to_have_text("reconnecting...")
    proxy.refusing = False
    expect()(term.page.locator("#output .reconnecting")).to_have_count(0)  # picked up again
    gate.set()
    term.wait_idle()
    assert answer.inner_text().strip() == TEXT.strip()  # every word, each once
    expect()(term.last(".reply .reply-meta")).to_contain_text("15 tokens")
    assert term.page.locator("#output .error").count() == 0
    assert len(upstream.records) == 1  # the upstream was asked once
    resumed = [(method, last) for method, url, last in seen if "/api/replies/" in url]
    assert resumed and all(entry == ("GET", "6") for entry in resumed), resumed
    # The browser reports the refused attempts as failed loads; nothing else went wrong.
    assert term.errors_except("net::ERR_") == []
    assert "resumable=detached" in server.wait_for_log("path=/api/gpt/get", "result=ok")


def test_a_connection_gone_silent_mid_reply_is_given_up_and_the_reply_resumed(
        open_terminal, behind_proxy, upstream):
    """Nothing arrives, not even the heartbeats the reply event promised (every second
    here): after 2 x heartbeat + 5 s the page gives the connection up and resumes."""
    _, proxy = behind_proxy
    scenario, gate = paced_with_gate(TOKENS, 6)
    upstream.push(scenario)
    term = open_terminal(url=proxy.url)
    seen = requests_seen(term)
    term.type_command("gpt chat tell me a story")
    answer = term.last(".reply .answer")
    expect()(answer).to_have_text("".join(TOKENS[:6]).strip())
    proxy.freeze(b"POST /api/gpt/get")
    gate.set()  # the rest is sent into the frozen connection, and lost there
    # the page gives up after 2 x heartbeat + 5 s = 7 s, then resumes: that, plus WAIT_MS
    with term.page.expect_request(lambda r: "/api/replies/" in r.url, timeout=7_000 + WAIT_MS):
        pass
    term.wait_idle()
    assert answer.inner_text().strip() == TEXT.strip()
    assert len(upstream.records) == 1
    assert [(m, last) for m, url, last in seen if "/api/replies/" in url] == [("GET", "6")]
    assert term.page.locator("#output .error").count() == 0


def test_ctrl_c_cancels_the_reply_on_the_server(open_terminal, behind_proxy, upstream):
    """The grace period is ten minutes here: only the page's DELETE closes the upstream within
    WAIT_MS, and the access line says the reply was cancelled."""
    server, proxy = behind_proxy
    upstream.push(Scenario(parts=[sse_bytes(chunk_json(token)) for token in TOKENS[:3]],
                           hold_open=True))
    term = open_terminal(url=proxy.url)
    seen = requests_seen(term)
    term.type_command("gpt chat tell me a long story")
    expect()(term.last(".reply .answer")).to_have_text("".join(TOKENS[:3]).strip())
    term.input.press("Control+c")
    assert upstream.wait_for_request().disconnected.wait(WAIT_MS / 1000), "never closed"
    expect()(term.last(".reply .note")).to_contain_text("stopped")
    assert [method for method, url, _ in seen if "/api/replies/" in url] == ["DELETE"]
    assert "resumable=cancelled" in server.wait_for_log("path=/api/gpt/get",
                                                        timeout=WAIT_MS / 1000)
