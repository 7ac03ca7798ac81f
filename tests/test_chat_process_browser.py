"""The chat-process frontends' reading loop in Debian's Chromium, deployed as the README says:
nginx serves the frontend's files at / and passes /api/ to the service under gunicorn. A test
page (tests/chat_process_page/) stands in for the built `dist/`: an XMLHttpRequest whose
progress events parse the last line received, as chatgpt-web and GPT Terminal do, and which
shows an error envelope's message. With accounts (AUTH=users) the frontend sends a user's API
key as `Authorization: Bearer`, as chatgpt-web sends its "secret key".

Waiting is Playwright's (`wait_for_function`) or a threading Event, never a sleep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from .browser_helpers import WAIT_MS, missing
from .conftest import ROOT, sent_messages
from .fake_upstream import Scenario, chunk_json, json_scenario, sse_bytes
from .processes import Nginx, nginx_binary
from .test_integration import TEXT, TOKENS

pytestmark = pytest.mark.browser

PAGE = Path(__file__).resolve().parent / "chat_process_page"
# The README's recipe: a `server` block serving the built frontend and proxying /api/.
SERVER = """    server {{
        listen 127.0.0.1:{port};
        root {dir}/dist;
        location / {{
            try_files $uri $uri/ /index.html;
        }}
        location /api/ {{
            proxy_pass http://127.0.0.1:%d;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
        }}
    }}"""


@pytest.fixture(scope="module")
def site(gunicorn_server):
    """nginx on a free port: the test page at /, the service at /api/."""
    if not nginx_binary():
        missing("nginx is not installed (apt-get install nginx)")
    nginx = Nginx(SERVER % gunicorn_server.port, files=PAGE)
    try:
        yield f"http://127.0.0.1:{nginx.port}"
    finally:
        nginx.stop()


def open_page(chromium, url: str):
    """The test page in a fresh context; fails the test on an uncaught page error."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_selector("html[data-ready='true']")
        yield page
        assert errors == []
    finally:
        context.close()


@pytest.fixture()
def page(chromium, site, live):
    yield from open_page(chromium, site)


@pytest.fixture(scope="module")
def users_site(users_server):
    """The same deployment in front of the service with accounts (AUTH=users)."""
    if not nginx_binary():
        missing("nginx is not installed (apt-get install nginx)")
    nginx = Nginx(SERVER % users_server.port, files=PAGE)
    try:
        yield f"http://127.0.0.1:{nginx.port}"
    finally:
        nginx.stop()


@pytest.fixture()
def users_page(chromium, users_site, users_server, upstream):
    yield from open_page(chromium, users_site)


def cut_in_characters(tokens, pause: float = 0.15) -> Scenario:
    """One chunk per token, each written in three pieces cut inside its UTF-8 characters (a
    CJK character, an emoji), `pause` seconds between tokens so the page sees them grow."""
    parts: list = [sse_bytes(chunk_json("", role="assistant"))]
    for token in tokens:
        data = sse_bytes(chunk_json(token))
        encoded = json.dumps(token, ensure_ascii=False)[1:-1].encode("utf-8")  # as in the JSON
        start = data.index(encoded)
        cuts = sorted({start + 1, start + max(2, len(encoded) // 2)})
        pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        parts.append(pause)
        for piece in filter(None, pieces):  # an empty piece would end a chunked body
            parts += [piece, 0.01]
    parts += [sse_bytes(chunk_json(finish="stop")), sse_bytes("[DONE]")]
    return Scenario(parts=parts)


def test_the_reading_loop_shows_the_reply_growing_to_exactly_the_upstream_text(page, upstream):
    upstream.push(cut_in_characters(TOKENS), cut_in_characters(["好的", "。"]))
    result = page.evaluate("chat({prompt: 'hello', options: {}})")
    assert result["outcome"] == "load" and result["status"] == 200
    assert result["envelope"] is None  # never read as a one-value envelope (an error)
    shown = result["shown"]
    assert shown[-1] == TEXT
    assert len([text for text in shown if text and text != TEXT]) >= 2, shown  # several steps
    assert all(TEXT.startswith(text) for text in shown), shown
    assert [len(text) for text in shown] == sorted(len(text) for text in shown)
    last = result["last"]
    assert last["detail"]["choices"][0]["finish_reason"] == "stop"
    follow = page.evaluate("(id) => chat({prompt: 'and then?', options: {parentMessageId: id}})",
                           last["id"])
    assert follow["shown"][-1] == "好的。"
    assert sent_messages(upstream) == [{"role": "user", "content": "hello"},
                                       {"role": "assistant", "content": TEXT},
                                       {"role": "user", "content": "and then?"}]


def test_stop_closes_the_upstream_within_a_second_and_a_follow_up_sees_the_cut_reply(
        page, upstream, live):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("", role="assistant")),
                                  sse_bytes(chunk_json("Once upon")),
                                  sse_bytes(chunk_json(" a time"))], hold_open=True),
                  cut_in_characters(["…and so on."]))
    page.evaluate("startChat({prompt: 'a long story', "
                  "headers: {'X-Request-Id': 'browser-stop-1'}})")
    page.wait_for_function("() => window.current.last?.text === 'Once upon a time'")
    record = upstream.wait_for_request()
    page.evaluate("window.current.xhr.abort()")
    # The upstream never ends by itself: only the abort closes it (the 1 s promise is timed
    # without a browser, in test_chat_process_live.py).
    assert record.disconnected.wait(WAIT_MS / 1000), "the upstream was never closed"
    reply_id = page.evaluate("window.current.last.id")
    live.wait_for_log("id=browser-stop-1 ", timeout=WAIT_MS / 1000)  # the cut reply is stored
    follow = page.evaluate("(id) => chat({prompt: 'go on', options: {parentMessageId: id}})",
                           reply_id)
    assert follow["shown"][-1] == "…and so on."
    assert sent_messages(upstream) == [{"role": "user", "content": "a long story"},
                                       {"role": "assistant", "content": "Once upon a time"},
                                       {"role": "user", "content": "go on"}]


def test_an_error_before_the_first_byte_is_the_envelope_the_frontends_show(page, upstream):
    upstream.push(json_scenario(429, {"error": {"message": "slow down"}},
                                {"Retry-After": "9"}))
    result = page.evaluate("chat({prompt: 'hi'})")
    assert result["status"] == 200 and result["shown"] == []
    assert result["envelope"]["status"] == "Fail"
    assert "rate limiting" in result["envelope"]["message"]
    assert "retry in 9 s" in result["envelope"]["message"]
    bad = page.evaluate("chat({prompt: '', options: {parentMessageId: 42}})")
    assert bad["envelope"]["status"] == "Fail" and "'prompt'" in bad["envelope"]["message"]


# --- with accounts (AUTH=users): a user's API key ---------------------------------------------

def user_key(url: str, name: str) -> tuple[str, int, requests.Session]:
    """Register `name`, sign in and make an API key, as the web terminal does (its routes);
    the key, its id, and the signed-in session (to revoke it)."""
    session = requests.Session()
    for route in ("register", "login"):
        answer = session.post(f"{url}/api/user/{route}", timeout=5,
                              json={"username": name, "password": "correct horse battery"})
        assert answer.json()["code"] == 0, answer.text
    made = session.post(f"{url}/api/keys", json={"name": "chatgpt-web"}, timeout=5)
    assert made.status_code == 201, made.text
    return made.json()["key"], made.json()["id"], session


def test_with_accounts_the_reply_streams_with_a_users_key_and_without_one_is_unauthorized(
        users_page, users_server, upstream):
    key, key_id, session = user_key(users_server.url, "reader")
    bearer = {"Authorization": f"Bearer {key}"}
    upstream.push(cut_in_characters(TOKENS))
    result = users_page.evaluate("(headers) => chat({prompt: 'hello', headers})", bearer)
    assert result["status"] == 200 and result["envelope"] is None
    assert result["shown"][-1] == TEXT
    assert len([text for text in result["shown"] if text and text != TEXT]) >= 2  # it grew
    assert users_page.locator("#error").text_content() == ""

    for headers in ({}, {"Authorization": "Bearer sk-gpx-not-a-real-key"}):
        result = users_page.evaluate("(headers) => chat({prompt: 'hi', headers})", headers)
        assert result["status"] == 200 and result["shown"] == []
        assert result["envelope"]["status"] == "Unauthorized"
        assert users_page.locator("#error").text_content() == (
            f"Unauthorized: {result['envelope']['message']}")
        assert "key" in result["envelope"]["message"]

    revoked = session.delete(f"{users_server.url}/api/keys/{key_id}", timeout=5)
    assert revoked.status_code == 200, revoked.text
    # One worker: the one that revoked the key forgets it at once (others within a second).
    result = users_page.evaluate("(headers) => chat({prompt: 'again', headers})", bearer)
    assert result["envelope"]["status"] == "Unauthorized", result
    expected = "Unauthorized: the API key is not valid (unknown, revoked or expired)"
    assert users_page.locator("#error").text_content() == expected
    assert len(upstream.records) == 1  # only the reply with the valid key reached it


def test_over_budget_the_reading_loop_shows_which_budget_and_when_it_resets(
        users_page, users_server, upstream):
    from gpt_proxy.budgets import Budgets
    from gpt_proxy.db import open_database

    key, key_id, _ = user_key(users_server.url, "spender")
    database = open_database(f"sqlite:///{users_server.log_path.parent}/gpt_proxy.db", ROOT)
    try:
        Budgets(database).set_budget("key", key_id, "tokens", "day", 10)
    finally:
        database.close()
    result = users_page.evaluate("(headers) => chat({prompt: 'hello', headers})",
                                 {"Authorization": f"Bearer {key}"})
    assert result["status"] == 200 and result["shown"] == []
    assert result["envelope"]["status"] == "Fail"
    shown = users_page.locator("#error").text_content()
    assert shown.startswith("Fail: this key's daily tokens budget (10 tokens) has no room")
    assert "resets at" in shown and upstream.records == []
