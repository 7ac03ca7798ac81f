"""Fuzzing the HTTP surface (Hypothesis, Flask's test client, the offline demo upstream): any
body, header or method gets an answer below 500, never a traceback, and every error is JSON in
the shape of the protocol the path belongs to (ours, or OpenAI's under /v1). A few hundred
examples in all, so the suite stays fast."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_proxy import create_app
from gpt_proxy.base.config import load_config
from gpt_proxy.doors import openai_api
from gpt_proxy.upstream.demo import DemoUpstream

from .conftest import TEST_DATABASE

TOKEN = "fuzz-token-0123456789abcdef"
FIELDS = ["message", "messages", "role", "temperature", "model", "stream", "system",
          "max_tokens", "prompt", ""]
PATHS = ["/api/gpt/get", "/api/roles", "/healthz", "/", "/static/js/api.js", "/api/",
         "/api/gpt/get/", "/static/../gpt_proxy/config.py", "/static/%2e%2e/app.py",
         "/api/gpt/get?x=1", "//api/roles", "/favicon.ico", "/v1/chat/completions",
         "/v1/models", "/v1/models/role:cli", "/v1/models/a/b", "/v1/", "/v1", "/v1/embeddings",
         "/chat/completions", "/models", "/models/x",
         "/api/chat-process", "/api/session", "/api/verify", "/api/config"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND"]
HEADER_NAMES = ["Accept", "Content-Type", "Authorization", "X-Request-Id", "Origin",
                "Sec-Fetch-Site", "X-Forwarded-For", "X-Forwarded-Proto", "Content-Encoding",
                "Accept-Encoding", "Range", "If-None-Match", "Host", "Cookie", "Expect",
                "Access-Control-Request-Method"]
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | json_values,
     "content": st.text(max_size=60) | json_values}), max_size=4)
chat_bodies = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(json_values, messages, st.sampled_from(["cli", "default", "../etc", "sql"]),
              st.floats(-1, 3), st.integers(-5, 10_000_000)),
    max_size=5)
bodies = st.one_of(
    chat_bodies.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=5)


class Errors(logging.Handler):
    """Every ERROR record the app writes: an unexpected exception would show here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors():
    handler = Errors()
    logger = logging.getLogger("gpt_proxy")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def make_client(folder, **overrides):
    config = load_config({}, database_url=TEST_DATABASE, openai_api_key="sk-fuzz-not-used", openai_model="fake-model",
                         conversation_store=f"sqlite:///{folder}/conversations.db",
                         **overrides)
    return create_app(config, upstream=DemoUpstream(delay=0)).test_client()


@pytest.fixture(scope="module")
def open_client(tmp_path_factory):
    return make_client(tmp_path_factory.mktemp("fuzz-open"))


@pytest.fixture(scope="module")
def guarded_client(tmp_path_factory):
    return make_client(tmp_path_factory.mktemp("fuzz-guarded"), proxy_token=TOKEN,
                       cors_origins=("https://ok.example",), allowed_hosts=("localhost",),
                       rate_limit="100000/minute", trusted_proxies=1, max_body_bytes=4096,
                       max_messages=3, max_history_chars=200, max_tokens_ceiling=100,
                       allowed_models=("fake-model",))


def check(response, errors, method="POST", path="/api/gpt/get") -> None:
    body = response.get_data()
    assert response.status_code < 500, body[:500]
    assert b"Traceback" not in body
    if response.status_code >= 400:
        assert response.mimetype == "application/json", (response.status_code, body[:200])
        if method == "HEAD":  # the same headers as GET, and no body
            assert body == b""
            return
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]
        if openai_api.owns(path.split("?")[0]):  # the OpenAI door's paths: its error shape
            assert set(error) == {"message", "type", "param", "code"}
            assert isinstance(error["type"], str) and error["type"]
        else:
            assert error["status"] == response.status_code
    assert errors.records == [], errors.records[0].getMessage()


@FUZZ
@given(body=bodies, accept=st.sampled_from(["", "*/*", "text/event-stream",
                                             "application/json", "text/plain;q=0, x/y"]))
def test_any_body_gets_a_reply_or_a_json_error(open_client, errors, body, accept):
    response = open_client.post("/api/gpt/get", data=body, headers={"Accept": accept})
    check(response, errors)


@FUZZ
@given(body=chat_bodies)
def test_any_chat_fields_within_the_limits_or_a_json_error(guarded_client, errors, body):
    response = guarded_client.post("/api/gpt/get", json=body,
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    check(response, errors)


@FUZZ
@given(method=st.sampled_from(METHODS), path=st.sampled_from(PATHS) | st.text(max_size=30),
       extra=headers, authorised=st.booleans(), body=bodies)
def test_any_method_path_and_headers_get_a_reply_or_a_json_error(
        guarded_client, errors, method, path, extra, authorised, body):
    if authorised:
        extra = {**extra, "Authorization": f"Bearer {TOKEN}"}
    path = "/" + path.lstrip("/") if not path.startswith("/") else path
    response = guarded_client.open(path, method=method, headers=extra, data=body)
    check(response, errors, method, path)


OPENAI_FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens",
                 "max_completion_tokens", "n", "tools", "temperature", ""]
openai_bodies = st.dictionaries(
    st.sampled_from(OPENAI_FIELDS),
    st.one_of(json_values, messages, st.sampled_from(["fake-model", "role:cli", "role:x", "role:"]),
              st.integers(-5, 10_000_000), st.booleans()),
    max_size=5)


@FUZZ
@given(body=openai_bodies | bodies.map(lambda raw: raw), guarded=st.booleans())
def test_any_openai_request_gets_a_reply_or_an_openai_error(open_client, guarded_client, errors,
                                                            body, guarded):
    client = guarded_client if guarded else open_client
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"},
                           **kwargs)
    check(response, errors, path="/v1/chat/completions")


def test_the_fuzzed_clients_do_serve_a_valid_request(open_client, guarded_client, errors):
    """So the fuzzing above reaches the relay, not only the checks in front of it."""
    assert "[demo]" in open_client.post("/api/gpt/get", json={"message": "hi"}).get_data(True)
    response = guarded_client.post("/api/gpt/get", json={"message": "hi"},
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and "[demo]" in response.get_data(as_text=True)
    for client in (open_client, guarded_client):
        response = client.post("/v1/chat/completions", json={"messages": [
            {"role": "user", "content": "hi"}], "model": "role:cli", "stream": True},
            headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200 and "[demo]" in response.get_data(as_text=True)
