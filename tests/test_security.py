"""Safe to expose: the token, cross-origin rules, rate limits (in memory and shared through a
real redis-server), the client IP behind trusted proxies, security headers, JSON errors, the
access log, and the API key never showing in a reply, a header or a log line."""

from __future__ import annotations

import io
import json
import logging
import re
from html.parser import HTMLParser

import pytest
import redis
import requests

from gpt_proxy import create_app
from gpt_proxy.base.config import ConfigError, load_config

from .conftest import ROOT, TEST_KEY, access_lines, free_port, make_config
from .fake_upstream import Scenario, chunk_json, json_scenario, sse_bytes

TOKEN = "proxy-token-0123456789-abcdef"
CHAT = "/api/gpt/get"
EVIL = "https://evil.example"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def make_client(upstream, **overrides):
    return create_app(make_config(openai_base_url=upstream.url, **overrides)).test_client()


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(response, status, code=None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["message"] and error["status"] == status
    if code is not None:
        assert error["code"] == code
    return error


# --- the token ------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}", TOKEN, f"Bearer {TOKEN.upper()}", "Bearer \u00e9\u00e9",
])
@pytest.mark.parametrize("method,path", [("POST", CHAT), ("GET", "/api/roles")])
def test_api_routes_need_the_token(upstream, header, method, path):
    client = make_client(upstream, proxy_token=TOKEN)
    headers = {} if header is None else {"Authorization": header}
    response = client.open(path, method=method, json={"message": "hi"}, headers=headers)
    assert_json_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert upstream.records == []


def test_the_right_token_passes_and_the_scheme_is_case_insensitive(upstream):
    client = make_client(upstream, proxy_token=TOKEN)
    assert client.get("/api/roles", headers=auth()).status_code == 200
    response = client.post(CHAT, json={"message": "hi"},
                           headers={"Authorization": f"bearer  {TOKEN}"})
    assert response.status_code == 200 and response.get_data(as_text=True) == "Hello, world!"


def test_healthz_and_the_page_need_no_token(upstream):
    client = make_client(upstream, proxy_token=TOKEN)
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/static/js/api.js").status_code == 200


def test_the_token_is_compared_in_constant_time(upstream, compare_digest_calls):
    calls = compare_digest_calls
    client = make_client(upstream, proxy_token=TOKEN)
    assert client.get("/api/roles", headers=auth("nope")).status_code == 401
    assert client.get("/api/roles", headers=auth()).status_code == 200
    assert calls == [(bytes, bytes)] * 2


def test_a_token_with_spaces_is_a_configuration_error():
    with pytest.raises(ConfigError, match="PROXY_TOKEN"):
        load_config({"PROXY_TOKEN": "two words"})


# --- cross-origin ---------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_cross_site_browser_request_is_refused_by_default(upstream, content_type):
    client = make_client(upstream)
    response = client.post(CHAT, data=b'{"message": "hi"}', content_type=content_type,
                           headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert_json_error(response, 403, "forbidden_origin")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert upstream.records == []


def test_same_origin_page_and_non_browser_clients_pass(upstream):
    client = make_client(upstream)
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, {}):
        response = client.post(CHAT, json={"message": "hi"}, headers=headers)
        assert response.status_code == 200
        assert "Access-Control-Allow-Origin" not in response.headers


def test_listed_origin_gets_cors_headers_and_a_preflight_without_the_token(upstream):
    origin = "https://chat.example.com"
    client = make_client(upstream, cors_origins=(origin,), proxy_token=TOKEN)
    preflight = client.options(CHAT, headers={
        "Origin": origin, "Sec-Fetch-Site": "cross-site",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    response = client.post(CHAT, json={"message": "hi"},
                           headers={"Origin": origin, "Sec-Fetch-Site": "cross-site", **auth()})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "X-Request-Id" in response.headers["Access-Control-Expose-Headers"]
    other = client.post(CHAT, json={"message": "hi"},
                        headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site", **auth()})
    assert_json_error(other, 403, "forbidden_origin")
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cors_origins_star_lets_every_origin_in_without_credentials(upstream):
    client = make_client(upstream, cors_origins=("*",), proxy_token=TOKEN)
    for origin in (EVIL, "http://localhost:3000"):
        preflight = client.options(CHAT, headers={
            "Origin": origin, "Sec-Fetch-Site": "cross-site",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] in ("*", origin)
        response = client.post(CHAT, json={"message": "hi"},
                               headers={"Origin": origin, "Sec-Fetch-Site": "cross-site",
                                        **auth()})
        assert response.get_data(as_text=True) == "Hello, world!"
        assert response.headers["Access-Control-Allow-Origin"] in ("*", origin)
        assert "Access-Control-Allow-Credentials" not in response.headers
    assert_json_error(client.post(CHAT, json={"message": "hi"}, headers={
        "Origin": EVIL, "Sec-Fetch-Site": "cross-site"}), 401)  # the token still applies


def test_a_same_site_request_from_an_origin_not_listed_is_refused(upstream):
    """Another port or subdomain of the same site is still another origin."""
    listed = "https://chat.example.com"
    client = make_client(upstream, cors_origins=(listed,))
    for origin in ("https://evil.example.com", "https://chat.example.com:8443"):
        response = client.post(CHAT, json={"message": "hi"},
                               headers={"Origin": origin, "Sec-Fetch-Site": "same-site"})
        assert_json_error(response, 403, "forbidden_origin")
    response = client.post(CHAT, json={"message": "hi"},
                           headers={"Origin": listed, "Sec-Fetch-Site": "same-site"})
    assert response.status_code == 200 and len(upstream.records) == 1


@pytest.mark.parametrize("token,warned", [("t0ken-of-15-chr", True),
                                          ("t0ken-of-16-char", False)])
def test_a_proxy_token_shorter_than_16_characters_is_warned_about(upstream, caplog, token,
                                                                  warned):
    caplog.set_level(logging.WARNING, logger="gpt_proxy.security")
    make_client(upstream, proxy_token=token)
    warnings = [r.getMessage() for r in caplog.records if r.name == "gpt_proxy.security"]
    assert warnings == (["PROXY_TOKEN is shorter than 16 characters: easy to guess"]
                        if warned else [])
    assert token not in caplog.text


@pytest.mark.parametrize("value", ["https://x.example/path", "x.example", "https://.*",
                                   "javascript:alert(1)"])
def test_cors_origins_must_be_plain_origins(value):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_config({"CORS_ORIGINS": value})


def test_allowed_hosts_refuses_other_host_headers_but_not_healthz(upstream):
    client = make_client(upstream, allowed_hosts=("chat.example.com", "localhost"))
    assert client.get("/api/roles").status_code == 200  # the test client's Host is localhost
    response = client.get("/api/roles", headers={"Host": "rebound.evil.example"})
    assert_json_error(response, 400, "bad_host")
    assert client.get("/", headers={"Host": "rebound.evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"Host": "10.0.0.7:7345"}).status_code == 200
    assert client.get("/api/roles", headers={"Host": "chat.example.com:443"}).status_code == 200


# --- rate limits ----------------------------------------------------------------------------

def chat_as(client, ip, headers=None):
    return client.post(CHAT, json={"message": "hi"}, headers=headers or {},
                       environ_base={"REMOTE_ADDR": ip})


def test_rate_limit_answers_429_json_with_retry_after(upstream):
    client = make_client(upstream, rate_limit="3/minute")
    assert [chat_as(client, "10.0.0.1").status_code for _ in range(3)] == [200] * 3
    response = chat_as(client, "10.0.0.1")
    error = assert_json_error(response, 429, "rate_limited")
    assert "3 per 1 minute" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert len(upstream.records) == 3
    assert chat_as(client, "10.0.0.2").status_code == 200  # another client has its own budget
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_retry_after_is_whole_seconds_never_longer_than_the_window(monkeypatch):
    """A limit whose window resets just under 60 s from now is 'retry in 60', not 61 (the
    rounding RequestLimit.reset_at does), and one resetting in 0.2 s is 1, never 0."""
    from types import SimpleNamespace

    from limits import parse

    from gpt_proxy.identity import security

    monkeypatch.setattr(security.time, "time", lambda: 1000.0)
    minute = SimpleNamespace(limit=parse("2/minute"))
    for reset_in, expected in ((59.9999, 60), (60.0, 60), (0.2, 1), (0.0, 1), (30.5, 31)):
        window = SimpleNamespace(reset_time=1000.0 + reset_in)
        limiter = SimpleNamespace(current_limit=SimpleNamespace(window=window))
        assert security._retry_after(limiter, SimpleNamespace(limit=minute)) == expected
    # no current limit known (or the storage failing): the whole window
    assert security._retry_after(SimpleNamespace(current_limit=None),
                                 SimpleNamespace(limit=minute)) == 60


def test_forwarded_for_is_ignored_unless_proxies_are_trusted(upstream):
    client = make_client(upstream, rate_limit="2/minute")
    codes = [chat_as(client, "10.0.0.1", {"X-Forwarded-For": f"192.0.2.{i}"}).status_code
             for i in range(3)]
    assert codes == [200, 200, 429]


def test_behind_one_trusted_proxy_the_client_is_the_last_forwarded_address(upstream):
    client = make_client(upstream, rate_limit="2/minute", trusted_proxies=1)
    spoofed = [chat_as(client, "127.0.0.1", {"X-Forwarded-For": f"6.6.6.{i}, 192.0.2.1"})
               for i in range(3)]
    assert [r.status_code for r in spoofed] == [200, 200, 429]
    assert chat_as(client, "127.0.0.1", {"X-Forwarded-For": "192.0.2.2"}).status_code == 200


def test_token_guesses_count_against_the_rate_limit(upstream):
    client = make_client(upstream, rate_limit="3/minute", proxy_token=TOKEN)
    codes = [chat_as(client, "10.0.0.1", auth(f"guess-{i}")).status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]


def test_two_instances_share_their_rate_limits_through_redis(upstream, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    first, second = (make_client(upstream, rate_limit="4/minute", rate_limit_storage=redis_url)
                     for _ in range(2))
    codes = [chat_as(app, "10.1.1.1").status_code for app in (first, second, first, second)]
    assert codes == [200] * 4
    for app in (first, second):
        response = chat_as(app, "10.1.1.1")
        assert_json_error(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
    assert chat_as(second, "10.1.1.2").status_code == 200
    assert redis.Redis.from_url(redis_url).keys("*gpt_proxy*")


def test_redis_down_falls_back_to_limits_in_memory_not_to_errors(upstream):
    client = make_client(upstream, rate_limit="2/minute",
                         rate_limit_storage=f"redis://127.0.0.1:{free_port()}/0")
    codes = [chat_as(client, "10.0.0.9").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- headers, JSON errors -------------------------------------------------------------------

def test_the_page_has_a_strict_csp_and_the_security_headers(upstream):
    client = make_client(upstream)
    for path in ("/", "/api/roles", "/healthz", "/api/nothing"):
        headers = client.get(path).headers
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
        assert "Strict-Transport-Security" not in headers


def test_hsts_only_over_https_from_a_trusted_proxy(upstream):
    secure = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.1"}
    assert "Strict-Transport-Security" not in make_client(upstream).get("/", headers=secure).headers
    client = make_client(upstream, trusted_proxies=1)
    assert client.get("/", headers=secure).headers["Strict-Transport-Security"]


class _PageChecker(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        names = {name.lower() for name, _ in attrs}
        if tag == "script":
            self.in_script = "src" not in names
        if tag == "style":
            self.problems.append("<style> element")
        if "style" in names:
            self.problems.append(f"style attribute on <{tag}>")
        self.problems += [f"{name} handler on <{tag}>" for name in names if name.startswith("on")]
        for name, value in attrs:
            if (value or "").strip().lower().startswith("javascript:"):
                self.problems.append(f"javascript: URL in <{tag} {name}>")

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script and data.strip():
            self.problems.append("inline <script>")


def test_the_page_works_under_the_csp_no_inline_script_or_style():
    for page in (ROOT / "static").glob("*.html"):
        checker = _PageChecker()
        checker.feed(page.read_text(encoding="utf-8"))
        assert checker.problems == [], f"{page.name}: {checker.problems}"


def test_api_errors_are_json_for_every_status(upstream):
    client = make_client(upstream, max_body_bytes=2048)
    assert_json_error(client.get("/api/nothing"), 404, "not_found")
    wrong = client.put(CHAT, json={"message": "hi"})
    assert_json_error(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]
    big = b'{"message": "' + b"x" * 5000 + b'"}'
    assert_json_error(client.post(CHAT, data=big), 413, "payload_too_large")
    chunked = client.post(CHAT, input_stream=io.BytesIO(big),  # as gunicorn passes chunked
                          environ_overrides={"wsgi.input_terminated": True})
    assert_json_error(chunked, 413, "payload_too_large")


@pytest.mark.parametrize("overrides,body,status,code", [
    ({"max_messages": 2}, {"messages": [{"role": "user", "content": "x"}] * 3}, 413,
     "payload_too_large"),
    ({"max_history_chars": 100}, {"message": "x" * 101}, 413, "message_too_long"),
    ({"max_tokens_ceiling": 50}, {"message": "hi", "max_tokens": 51}, 400, "bad_request"),
    ({"allowed_models": ("fake-model",)}, {"message": "hi", "model": "gpt-4o"}, 400,
     "model_not_allowed"),
])
def test_each_limit_gets_its_status_and_a_json_error_and_spends_nothing(
        upstream, overrides, body, status, code):
    response = make_client(upstream, **overrides).post(CHAT, json=body)
    assert_json_error(response, status, code)
    assert upstream.records == []


def test_a_long_history_is_trimmed_to_the_character_budget(upstream):
    client = make_client(upstream, max_history_chars=100)
    history = [{"role": "user", "content": "a" * 60}, {"role": "assistant", "content": "b" * 30},
               {"role": "user", "content": "c" * 50}]
    assert client.post(CHAT, json={"messages": history}).status_code == 200
    sent = upstream.wait_for_request().json["messages"]
    assert sum(len(m["content"]) for m in sent) <= 100 and sent[-1]["content"] == "c" * 50


# --- the access log -------------------------------------------------------------------------

@pytest.mark.parametrize("headers,body", [
    ({}, {"message": "secret words"}),
    ({"Accept": "text/event-stream"}, {"message": "secret words"}),
    ({}, {"message": "secret words", "stream": False}),
])
def test_one_access_line_per_stream_with_id_role_model_status_ttft_and_usage(
        upstream, caplog, headers, body):
    caplog.set_level(logging.INFO)
    response = make_client(upstream).post(CHAT, json=body, headers=headers)
    assert response.status_code == 200
    response.get_data()
    lines = access_lines(caplog, response.headers["X-Request-Id"])
    assert len(lines) == 1, lines
    line = lines[0]
    for part in ("role=default", "model=fake-model", "status=200", "result=ok",
                 "prompt_tokens=5", "completion_tokens=4", "client=127.0.0.1"):
        assert part in line
    assert re.search(r"ttft=\d+ms duration=\d+ms", line)
    assert "secret words" not in caplog.text


def test_one_access_line_for_errors_before_the_first_byte(upstream, caplog):
    caplog.set_level(logging.INFO)
    upstream.push(json_scenario(500, {"error": {"message": "boom"}}))
    client = make_client(upstream, proxy_token=TOKEN)
    for response, status in ((client.post(CHAT, json={"message": "hi"}, headers=auth()), 502),
                             (client.post(CHAT, json={"message": "hi"}), 401),
                             (client.get("/nothing\nforged line"), 404)):
        assert response.status_code == status
        lines = access_lines(caplog, response.headers["X-Request-Id"])
        assert len(lines) == 1 and f"status={status}" in lines[0] and "\n" not in lines[0]


def test_log_content_puts_the_message_in_the_line(upstream, caplog):
    caplog.set_level(logging.INFO)
    response = make_client(upstream, log_content=True).post(CHAT, json={"message": "hi\nthere"})
    response.get_data()
    (line,) = access_lines(caplog, response.headers["X-Request-Id"])
    assert "content=hi\\nthere" in line


# --- the key never leaks --------------------------------------------------------------------

MASKED = TEST_KEY[:8] + "*" * 12 + TEST_KEY[-4:]
ECHO = f"Incorrect API key provided: {TEST_KEY}. You can find your API key at ..."
LEAKS = [
    json_scenario(401, {"error": {"message": ECHO, "code": "invalid_api_key"}}),
    json_scenario(401, {"error": {"message": f"Incorrect API key provided: {MASKED}"}}),
    json_scenario(403, {"error": ECHO}),
    json_scenario(400, {"error": {"message": f"bad request from key {TEST_KEY}"}}),
    json_scenario(404, {"error": {"message": f"no model for {TEST_KEY}"}}),
    json_scenario(429, {"error": {"message": f"slow down {TEST_KEY}"}}, {"Retry-After": "2"}),
    Scenario(status=500, headers={"Content-Type": "text/html"},
             parts=[f"<h1>error</h1><p>Authorization: Bearer {TEST_KEY}</p>".encode()],
             chunked=False),
    Scenario(status=503, headers={"Content-Type": "text/plain", "X-Key": TEST_KEY},
             parts=[f"upstream down; key={TEST_KEY}".encode()], chunked=False),
    Scenario(parts=[sse_bytes(chunk_json("Hi")),
                    sse_bytes({"error": {"message": ECHO, "type": "invalid_request_error"}})]),
    Scenario(parts=[sse_bytes(chunk_json("Hi")), f"event: error\ndata: {ECHO}\n\n".encode()]),
    Scenario(parts=[sse_bytes(chunk_json("Hi")), f"data: not json {TEST_KEY}\n\n".encode()]),
    Scenario(parts=[sse_bytes(chunk_json("Hi")), f"data: [{json.dumps(TEST_KEY)}]\n\n".encode()]),
    json_scenario(200, {"error": {"message": ECHO}}),
]


@pytest.mark.parametrize("scenario", LEAKS)
@pytest.mark.parametrize("accept", ["*/*", "text/event-stream", "application/json"])
def test_the_key_never_reaches_a_reply_a_header_or_a_log_line(upstream, caplog, scenario, accept):
    caplog.set_level(logging.DEBUG)
    upstream.push(scenario)
    client = make_client(upstream, proxy_token=TOKEN)
    response = client.post(CHAT, json={"message": "hi"}, headers={"Accept": accept, **auth()})
    body = response.get_data(as_text=True)
    assert response.status_code >= 400 or "error" in body
    seen = "\n".join([body, str(response.headers), caplog.text] +
                     [str(r.exc_info) for r in caplog.records if r.exc_info])
    for secret in (TEST_KEY, TEST_KEY[8:], TOKEN):
        assert secret not in seen
    assert upstream.wait_for_request().headers["authorization"] == f"Bearer {TEST_KEY}"


def test_the_key_never_reaches_the_gunicorn_log(live, upstream):
    for scenario in LEAKS[:3] + LEAKS[8:10]:
        upstream.push(scenario)
        response = requests.post(f"{live.url}{CHAT}", json={"message": "hi"}, timeout=10)
        assert TEST_KEY[8:] not in response.text + str(response.headers)
    assert TEST_KEY[8:] not in live.logs()


def test_env_example_lists_every_setting_with_its_default():
    """Set, or left as a `# NAME=default` comment (an address whose default differs in the
    Docker image, which a copied .env must not replace); never set and commented both."""
    import re

    from dotenv import dotenv_values

    from gpt_proxy.base.config import PARSERS, Config

    text = (ROOT / ".env.example").read_text()
    values = dotenv_values(ROOT / ".env.example")
    commented = dict(re.findall(r"^# ([A-Z][A-Z0-9_]*)=(\S*)$", text, re.MULTILINE))
    assert {name.upper() for name in PARSERS} <= set(values) | set(commented)
    assert not set(values) & set(commented)
    assert load_config(values) == Config()
    assert load_config({**values, **commented}) == Config()
    assert set(commented) == {"METRICS_BIND", "BIND"}  # the two addresses, nothing else
