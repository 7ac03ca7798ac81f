"""Request validation and content negotiation: every wrong input is a 400 naming the field."""

from __future__ import annotations

import pytest

from gpt_proxy import create_app
from gpt_proxy.base.config import ConfigError, load_config
from gpt_proxy.doors.api import choose_framing

from .conftest import TEST_DATABASE, make_config


@pytest.fixture()
def demo_client():
    return create_app(load_config({}, openai_api_key="", database_url=TEST_DATABASE)).test_client()


@pytest.mark.parametrize("body,field", [
    ({}, "message"),
    ({"message": ""}, "message"),
    ({"message": "   "}, "message"),
    ({"message": 5}, "message"),
    ({"message": []}, "message"),
    ({"message": [{"role": "user"}]}, "message[0].content"),
    ({"message": [{"role": "robot", "content": "x"}]}, "message[0].role"),
    ({"message": ["hi"]}, "message[0]"),
    ({"message": [{"role": "user", "content": "x", "name": "n"}]}, "message[0].name"),
    ({"message": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "message[1].role"),
    ({"messages": "hi"}, "messages"),
    ({"message": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),
    ({"message": "hi", "role": "../etc"}, "role"),
    ({"message": "hi", "role": "Bad Name"}, "role"),
    ({"message": "hi", "role": 3}, "role"),
    ({"message": "hi", "temperature": 3}, "temperature"),
    ({"message": "hi", "temperature": "1"}, "temperature"),
    ({"message": "hi", "temperature": True}, "temperature"),
    ({"message": "hi", "model": ""}, "model"),
    ({"message": "hi", "model": 1}, "model"),
    ({"message": "hi", "stream": "yes"}, "stream"),
    ({"message": "hi", "system": ["x"]}, "system"),
    ({"message": "hi", "max_tokens": 0}, "max_tokens"),
    ({"message": "hi", "prompt": "x"}, "prompt"),
])
def test_each_wrong_field_is_a_400_naming_it(demo_client, body, field):
    response = demo_client.post("/api/gpt/get", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["field"] == field and error["code"] in ("bad_request",) and error["message"]


@pytest.mark.parametrize("data", [b"", b"not json", b"[1,2]", b'"hi"', b"\xff\xfe", b"{"])
def test_a_body_that_is_not_a_json_object_is_a_400(demo_client, data):
    response = demo_client.post("/api/gpt/get", data=data, content_type="application/json")
    assert response.status_code == 400 and "error" in response.get_json()


def test_json_body_is_accepted_whatever_the_content_type(demo_client):
    response = demo_client.post("/api/gpt/get", data=b'{"message": "hi"}',
                                content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200 and "demo" in response.get_data(as_text=True)


def test_body_over_the_limit_is_a_413(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, max_body_bytes=2048)).test_client()
    response = client.post("/api/gpt/get", json={"message": "x" * 5000})
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"


def test_too_many_messages_is_a_413(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, max_messages=3)).test_client()
    history = [{"role": "user", "content": "x"}] * 4
    assert client.post("/api/gpt/get", json={"message": history}).status_code == 413


def test_model_outside_the_allow_list_is_refused(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, openai_model="a",
                                    allowed_models=("a", "b"))).test_client()
    response = client.post("/api/gpt/get", json={"message": "hi", "model": "c"})
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "model"


def test_max_tokens_over_the_ceiling_is_refused_and_missing_gets_the_ceiling(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, max_tokens_ceiling=100)).test_client()
    assert client.post("/api/gpt/get", json={"message": "hi", "max_tokens": 101}).status_code == 400
    client.post("/api/gpt/get", json={"message": "hi"})
    assert upstream.wait_for_request().json["max_tokens"] == 100


def test_unknown_role_is_a_404_listing_the_known_ones(demo_client):
    response = demo_client.post("/api/gpt/get", json={"message": "hi", "role": "nosuchrole"})
    assert response.status_code == 404
    assert "cli" in response.get_json()["error"]["message"]


def test_unknown_route_and_wrong_method_are_json(demo_client):
    response = demo_client.get("/api/nothing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    response = demo_client.get("/api/gpt/get")
    assert response.status_code == 405 and "error" in response.get_json()


def test_history_array_is_sent_upstream_in_order(client, upstream):
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
               {"role": "user", "content": "q2"}]
    assert client.post("/api/gpt/get", json={"messages": history}).status_code == 200
    assert upstream.wait_for_request().json["messages"] == history


@pytest.mark.parametrize("accept,stream,framing", [
    ("", True, "text/plain"),
    ("*/*", True, "text/plain"),
    ("text/event-stream", True, "text/event-stream"),
    ("text/event-stream", False, "application/json"),
    ("application/json", True, "application/json"),
    ("application/json, text/plain, */*", True, "application/json"),
    ("text/plain;q=0.9, text/event-stream;q=0.5", True, "text/plain"),
    ("text/event-stream;q=0", True, "text/plain"),
    ("TEXT/EVENT-STREAM", True, "text/event-stream"),
    ("image/png", True, "text/plain"),
])
def test_framing_follows_the_accept_header(accept, stream, framing):
    assert choose_framing(accept, stream) == framing


def test_healthz_in_demo_mode_says_demo(demo_client):
    body = demo_client.get("/healthz").get_json()
    assert body["upstream"] == "demo" and body["demo"] is True


def test_demo_reply_says_it_is_a_demo_in_every_framing(demo_client):
    text = demo_client.post("/api/gpt/get", json={"message": "hi"}).get_data(as_text=True)
    assert "[demo]" in text
    body = demo_client.post("/api/gpt/get", json={"message": "hi", "stream": False}).get_json()
    assert "[demo]" in body["content"] and body["model"] == "demo"
    sse = demo_client.post("/api/gpt/get", json={"message": "hi"},
                           headers={"Accept": "text/event-stream"}).get_data(as_text=True)
    assert "demo" in sse and "event: done" in sse


@pytest.mark.parametrize("name,value", [
    ("OPENAI_BASE_URL", "ftp://x"), ("HEARTBEAT_SECONDS", "-1"), ("MAX_BODY_BYTES", "lots"),
    ("RATE_LIMIT", "fast"), ("RATE_LIMIT_STORAGE", "mysql://x"), ("LOG_CONTENT", "maybe"),
])
def test_bad_configuration_fails_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


def test_configuration_defaults_are_safe():
    config = load_config({})
    assert config.demo and config.proxy_token == "" and config.cors_origins == ()
    assert "sk-" not in repr(load_config({"OPENAI_API_KEY": "sk-secret"}))


@pytest.mark.parametrize("body,field", [
    (b'{"message": "bad \\ud800 surrogate"}', "message"),
    (b'{"message": [{"role": "user", "content": "\\udfff"}]}', "message[0].content"),
    (b'{"message": "hi", "system": "\\ud83d"}', "system"),
    (b'{"message": "hi", "model": "m\\ud800"}', "model"),
])
def test_lone_surrogates_are_a_400_not_a_crash(demo_client, body, field):
    response = demo_client.post("/api/gpt/get", data=body, content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"]["field"] == field


def test_deeply_nested_json_is_a_400_not_a_crash(demo_client):
    response = demo_client.post("/api/gpt/get", data=b"[" * 100_000 + b"]" * 100_000,
                                content_type="application/json")
    assert response.status_code in (400, 413) and "error" in response.get_json()


def test_page_and_modules_are_revalidated_and_vendored_files_cached(demo_client):
    page = demo_client.get("/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-cache"
    assert "text/html" in page.headers["Content-Type"]
    module = demo_client.get("/static/js/main.js")
    assert module.headers["Cache-Control"] == "no-cache"
    assert module.headers["Content-Type"].startswith("text/javascript")
    again = demo_client.get("/static/js/main.js", headers={"If-None-Match": module.headers["ETag"]})
    assert again.status_code == 304
    vendor = demo_client.get("/static/vendor/marked/marked.esm.js")
    assert vendor.status_code == 200 and "max-age=86400" in vendor.headers["Cache-Control"]


def test_system_text_over_its_limit_is_a_413_naming_the_limit(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, max_system_chars=10)).test_client()
    response = client.post("/api/gpt/get", json={"message": "hi", "system": "s" * 11})
    error = response.get_json()["error"]
    assert response.status_code == 413 and error["field"] == "system"
    assert "10" in error["message"] and error["code"] == "system_too_long"
    assert upstream.records == []


def test_limits_route_tells_the_client_what_the_server_accepts(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, max_system_chars=500,
                                    max_history_chars=300, max_messages=7)).test_client()
    limits = client.get("/api/limits").get_json()
    assert limits == {"max_system_chars": 299, "max_history_chars": 300, "max_messages": 7,
                      "max_body_bytes": 1_000_000, "max_role_file_bytes": 256 * 1024}
