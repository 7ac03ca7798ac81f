"""The OpenAI API door in-process: the upstream mocked with `responses`, the client Flask's
test client. What reaches the upstream, what the client gets, and OpenAI's error shape."""

from __future__ import annotations

import json

import pytest
import requests
import responses

from gpt_proxy import create_app
from gpt_proxy.doors.openai_api import completion_from_chunks
from gpt_proxy.pipeline.relay import read_deltas

from .conftest import TEST_KEY, make_config
from .fake_upstream import chunk_json, openai_stream, sse_bytes

URL = "http://upstream.test/v1/chat/completions"
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def make_api(**overrides):
    return create_app(make_config(openai_base_url="http://upstream.test/v1",
                                  **overrides)).test_client()


@pytest.fixture()
def api(mocked):
    return make_api()


def sse(body: bytes, status: int = 200) -> dict:
    return dict(body=body, status=status, content_type="text/event-stream")


def data_lines(raw: str) -> list[str]:
    """The `data:` values of a well-formed stream (asserting each event is one data line)."""
    values = []
    for block in raw.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert len(lines) == 1 and lines[0].startswith("data: "), block
            values.append(lines[0][6:])
    return values


def sent(mocked, call: int = 0) -> dict:
    return json.loads(mocked.calls[call].request.body)


def assert_openai_error(response, status: int, code: str | None = None, param=...) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not ...:
        assert error["param"] == param
    return error


# --- what reaches the upstream ----------------------------------------------------------------

def test_every_field_reaches_the_upstream_unchanged(api, mocked):
    mocked.post(URL, json={"choices": []})
    body = {"model": "m-1", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:,x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "top_p": 0.5,
        "seed": 7, "stop": ["\n\n"], "n": 2, "logprobs": True, "user": "u-1",
        "a_field_not_invented_yet": {"x": [1, 2]}, "temperature": 0.3}
    assert api.post(CHAT, json=body).status_code == 200
    upstream_body = sent(mocked)
    assert upstream_body == {**body, "stream": False}


def test_a_role_model_sends_the_role_and_the_default_model(api, mocked):
    mocked.post(URL, **sse(openai_stream(["ok"])))
    response = api.post(CHAT, json={"model": "role:cli", "messages": USER, "stream": True})
    assert response.status_code == 200
    upstream_body = sent(mocked)
    assert upstream_body["model"] == "fake-model"
    roles = [m["role"] for m in upstream_body["messages"]]
    assert roles[0] == "system" and roles[-1] == "user" and len(roles) > 2
    assert upstream_body["messages"][-1] == USER[0]


def test_a_stream_asks_the_upstream_for_usage_keeping_the_clients_stream_options(api, mocked):
    mocked.post(URL, **sse(openai_stream(["ok"])))
    api.post(CHAT, json={"model": "m", "messages": USER, "stream": True,
                         "stream_options": {"include_obfuscation": False}})
    assert sent(mocked)["stream_options"] == {"include_obfuscation": False, "include_usage": True}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_the_token_ceiling_applies_to_both_token_fields(mocked, field):
    api = make_api(max_tokens_ceiling=100)
    mocked.post(URL, json={"choices": []})
    error = assert_openai_error(api.post(CHAT, json={"messages": USER, field: 101}), 400,
                                param=field)
    assert "100" in error["message"] and not mocked.calls
    assert api.post(CHAT, json={"messages": USER, field: 100}).status_code == 200
    assert sent(mocked)[field] == 100 and len(sent(mocked)) == 4


def test_the_ceiling_is_sent_as_max_tokens_when_a_request_names_none(mocked):
    mocked.post(URL, json={"choices": []})
    make_api(max_tokens_ceiling=64).post(CHAT, json={"messages": USER})
    assert sent(mocked)["max_tokens"] == 64


def test_the_oldest_turns_are_trimmed_to_the_budget_and_never_leave_a_tool_result_alone(mocked):
    mocked.post(URL, json={"choices": []})
    history = [{"role": "user", "content": "a" * 40},
               {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
               {"role": "tool", "tool_call_id": "c", "content": "b" * 40},
               {"role": "user", "content": [{"type": "text", "text": "c" * 30}]},
               {"role": "tool", "tool_call_id": "d", "content": "d" * 5}]
    make_api(max_history_chars=90).post(CHAT, json={"messages": history})
    assert sent(mocked)["messages"] == history[3:]


def test_a_newest_message_over_the_budget_is_a_413_on_messages(mocked):
    api = make_api(max_history_chars=100)
    response = api.post(CHAT, json={"messages": [{"role": "user", "content": "x" * 101}]})
    assert_openai_error(response, 413, "message_too_long", param="messages")
    assert not mocked.calls


# --- what the client gets -------------------------------------------------------------------

def test_a_stream_is_the_upstreams_chunks_then_done(api, mocked):
    mocked.post(URL, **sse(openai_stream(["你好", "🙂"], newline="\r\n")))
    response = api.post(CHAT, json={"model": "m", "messages": USER, "stream": True})
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    values = data_lines(response.get_data(as_text=True))
    assert values[-1] == "[DONE]"
    chunks = [json.loads(v) for v in values[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"]) == "你好🙂"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert not any(c.get("usage") for c in chunks)  # the client did not ask for it


def test_the_usage_chunk_reaches_a_client_that_asked_for_it(api, mocked):
    mocked.post(URL, **sse(openai_stream(["a"])))
    response = api.post(CHAT, json={"messages": USER, "stream": True,
                                    "stream_options": {"include_usage": True}})
    chunks = [json.loads(v) for v in data_lines(response.get_data(as_text=True))[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 1


def test_every_field_of_every_chunk_is_relayed(api, mocked):
    """Tool-call deltas, two choices, logprobs, provider extras, multi-line data, comments."""
    chunks = [
        {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "system_fingerprint": "fp", "choices": [
             {"index": 0, "delta": {"role": "assistant", "tool_calls": [
                 {"index": 0, "id": "call_1", "type": "function",
                  "function": {"name": "get_weather", "arguments": ""}}]},
              "logprobs": None, "finish_reason": None},
             {"index": 1, "delta": {"role": "assistant", "content": "B",
                                    "reasoning_content": "r"},
              "logprobs": {"content": [{"token": "B", "logprob": -0.1}]},
              "finish_reason": None}], "provider": "extra"},
        {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
            {"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"city\": \"巴黎\"}"}}]},
             "finish_reason": "tool_calls"}]},
    ]
    body = b": comment\n\n"
    body += b"data: " + json.dumps(chunks[0], indent=1).replace("\n", "\ndata: ").encode() + b"\n\n"
    body += sse_bytes(chunks[1]) + sse_bytes("[DONE]")
    mocked.post(URL, **sse(body))
    response = api.post(CHAT, json={"messages": USER, "stream": True, "n": 2})
    values = data_lines(response.get_data(as_text=True))
    assert [json.loads(v) for v in values[:-1]] == chunks and values[-1] == "[DONE]"


def test_a_whole_reply_is_the_upstreams_completion_as_it_sent_it(api, mocked):
    raw = b'{"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": ' \
          b'{"role": "assistant", "content": "\\u4f60\\u597d"}, "finish_reason": "stop"}], ' \
          b'"usage": {"total_tokens": 3}, "x_extra": 1}'
    mocked.post(URL, body=raw, status=200, content_type="application/json")
    response = api.post(CHAT, json={"messages": USER})
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_data() == raw


def test_a_whole_reply_from_an_upstream_that_streamed_anyway_is_assembled(api, mocked):
    body = b"".join([
        sse_bytes(chunk_json("", role="assistant", system_fingerprint="fp")),
        sse_bytes(chunk_json("Hel")), sse_bytes(chunk_json("lo")),
        sse_bytes({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                   "model": "fake-model", "choices": [{"index": 0, "delta": {"tool_calls": [
                       {"index": 0, "id": "t", "type": "function",
                        "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
        sse_bytes({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]}),
        sse_bytes(chunk_json(choices=False, usage={"total_tokens": 9})), sse_bytes("[DONE]")])
    mocked.post(URL, **sse(body))
    completion = api.post(CHAT, json={"messages": USER}).get_json()
    assert completion["object"] == "chat.completion" and completion["id"] == "chatcmpl-fake"
    assert completion["system_fingerprint"] == "fp" and completion["usage"] == {"total_tokens": 9}
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Hello"
    assert choice["message"]["tool_calls"] == [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]


def test_a_stream_from_an_upstream_that_sent_one_completion_is_one_chunk_then_done(api, mocked):
    mocked.post(URL, json={"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "whole"},
         "finish_reason": "stop"}]})
    values = data_lines(api.post(CHAT, json={"messages": USER, "stream": True}).get_data(True))
    chunk = json.loads(values[0])
    assert chunk["object"] == "chat.completion.chunk" and values[1:] == ["[DONE]"]
    assert chunk["choices"][0]["delta"]["content"] == "whole"


def test_a_failure_mid_stream_is_one_error_event_after_the_text(api, mocked):
    mocked.post(URL, **sse(sse_bytes(chunk_json("part")) + b"data: {broken\n\n"))
    values = data_lines(api.post(CHAT, json={"messages": USER, "stream": True}).get_data(True))
    assert json.loads(values[0])["choices"][0]["delta"]["content"] == "part"
    error = json.loads(values[-1])["error"]
    assert set(error) == {"message", "type", "code"} and "malformed" in error["message"]
    assert error["type"] == "api_error" and "[DONE]" not in values


def test_models_lists_the_allowed_models_and_one_per_role(mocked):
    api = make_api(allowed_models=("fake-model", "other"))
    listing = api.get("/v1/models").get_json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert ids[:2] == ["fake-model", "other"]
    assert {"role:cli", "role:ikun", "role:sql", "role:translator"} <= set(ids)
    assert "role:default" not in ids
    cli = api.get("/v1/models/role:cli").get_json()
    assert cli["object"] == "model" and cli["owned_by"] == "gpt_proxy" and cli["description"]
    assert isinstance(cli["created"], int)
    assert_openai_error(api.get("/v1/models/nope"), 404, "model_not_found")


def test_a_model_id_with_slashes_is_found(mocked):
    api = make_api(openai_model="meta-llama/Llama-3-8b")
    assert api.get("/v1/models/meta-llama/Llama-3-8b").get_json()["id"] == "meta-llama/Llama-3-8b"


# --- errors before the first byte -----------------------------------------------------------

@pytest.mark.parametrize("body,status,param", [
    ({"messages": []}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({}, 400, "messages"),
    ({"messages": ["hi"]}, 400, "messages[0]"),
    ({"messages": [{"content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": USER, "model": ""}, 400, "model"),
    ({"messages": USER, "model": 4}, 400, "model"),
    ({"messages": USER, "stream": "yes"}, 400, "stream"),
    ({"messages": USER, "stream_options": "x"}, 400, "stream_options"),
    ({"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": True}, 400, "max_completion_tokens"),
    ({"messages": USER, "model": "role:nope"}, 404, "model"),
    ({"messages": USER, "model": "role:../etc"}, 404, "model"),
    ({"messages": USER, "model": "role:default"}, 404, "model"),
    ({"messages": USER * 201}, 413, "messages"),
])
def test_each_bad_request_is_an_openai_error_naming_the_param(api, mocked, body, status, param):
    assert_openai_error(api.post(CHAT, json=body), status, param=param)
    assert not mocked.calls


@pytest.mark.parametrize("data", [b"", b"not json", b"[1]", b"\xff", b'{"messages": "\\ud800"}'])
def test_a_body_that_is_not_a_json_object_is_an_openai_400(api, data):
    assert_openai_error(api.post(CHAT, data=data), 400)


def test_a_lone_surrogate_deep_in_the_body_is_a_400_naming_where(api, mocked):
    data = b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}'
    assert_openai_error(api.post(CHAT, data=data), 400, param="messages[0].content[0].text")
    assert not mocked.calls


def test_a_model_outside_the_allow_list_is_a_404(mocked):
    api = make_api(allowed_models=("fake-model",))
    error = assert_openai_error(api.post(CHAT, json={"model": "gpt-5", "messages": USER}), 404,
                                "model_not_found", param="model")
    assert "/v1/models" in error["message"]


@pytest.mark.parametrize("status,expected,code", [
    (401, 502, "upstream_auth"), (404, 502, "upstream_model_not_found"),
    (500, 502, "upstream_error"), (400, 400, "upstream_bad_request"), (429, 429, None),
])
def test_upstream_failures_are_openai_errors_without_the_key(api, mocked, status, expected, code):
    mocked.post(URL, json={"error": {"message": f"Incorrect API key provided: {TEST_KEY}"}},
                status=status, headers={"Retry-After": "3"})
    response = api.post(CHAT, json={"messages": USER, "stream": True})
    error = assert_openai_error(response, expected, code)
    assert TEST_KEY[:12] not in response.get_data(as_text=True)
    if expected == 429:
        assert response.headers["Retry-After"] == "3" and error["type"] == "rate_limit_error"


def test_unreachable_and_timed_out_upstreams_are_503_and_504(api, mocked):
    mocked.post(URL, body=requests.exceptions.ConnectionError("refused"))
    assert_openai_error(api.post(CHAT, json={"messages": USER}), 503, "upstream_unavailable")
    mocked.replace(responses.POST, URL, body=requests.exceptions.ReadTimeout("slow"))
    assert_openai_error(api.post(CHAT, json={"messages": USER}), 504, "upstream_timeout")


def test_the_proxy_token_is_the_api_key_and_errors_are_openai_shaped(mocked):
    api = make_api(proxy_token="proxy-token-0123456789")
    assert_openai_error(api.get("/v1/models"), 401, "invalid_api_key")
    assert_openai_error(api.post(CHAT, json={"messages": USER},
                                 headers={"Authorization": "Bearer wrong"}), 401)
    assert api.get("/v1/models", headers={"Authorization": "Bearer proxy-token-0123456789"}
                   ).status_code == 200


def test_rate_limits_cover_the_openai_routes_with_retry_after(mocked):
    api = make_api(rate_limit="1/minute")
    mocked.post(URL, json={"choices": []})
    assert api.post(CHAT, json={"messages": USER}).status_code == 200
    response = api.post(CHAT, json={"messages": USER})
    error = assert_openai_error(response, 429, "rate_limited")
    assert error["type"] == "rate_limit_error" and int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/completions", 405), ("GET", "/v1/chat/completions", 405),
    ("DELETE", "/v1/models", 405), ("GET", "/v1/embeddings", 405),
    ("POST", "/v1/audio/speech", 404), ("GET", "/v1/responses/resp_1", 404),
])
def test_unknown_routes_and_methods_under_v1_are_openai_errors(api, method, path, status):
    error = assert_openai_error(api.open(path, method=method), status)
    if status == 404:  # the message lists what is served
        for served in ("/v1/models", "/v1/chat/completions", "/v1/responses", "/v1/embeddings",
                       "/v1/images/generations", "/v1/completions"):
            assert served in error["message"]


@pytest.mark.parametrize("method,path", [
    ("POST", "/chat/completions"), ("GET", "/models"), ("GET", "/models/role:cli"),
    ("POST", "/embeddings"), ("POST", "/completions"),
])
def test_a_client_given_the_base_url_without_v1_is_told_the_one_to_use(mocked, method, path):
    api = make_api(proxy_token="t0ken-0123456789-abcdefgh")  # told before the token is checked
    error = assert_openai_error(api.open(path, method=method, json={"messages": USER}), 404)
    assert error["message"] == (f"{path} is not served here: the OpenAI API is under /v1, so "
                                "the base URL to give a client is http://localhost/v1")
    assert len(mocked.calls) == 0


@pytest.mark.parametrize("stream", [True, False])
def test_an_error_in_a_200_answer_is_an_openai_error_with_its_status(mocked, stream):
    mocked.post(URL, json={"error": {"message": f"quota used up for {TEST_KEY}",
                                     "type": "insufficient_quota", "code": 429}})
    response = make_api().post(CHAT, json={"messages": USER, "stream": stream})
    error = assert_openai_error(response, 429, "upstream_rate_limited")
    assert "quota used up" in error["message"] and TEST_KEY not in error["message"]
    # before the first byte: the SDKs raise RateLimitError, not a broken stream
    assert error["type"] == "rate_limit_error" and "in an HTTP 200 answer" in error["message"]


def test_a_body_over_the_limit_is_an_openai_413(mocked):
    api = make_api(max_body_bytes=2048)
    error = assert_openai_error(
        api.post(CHAT, json={"messages": [{"role": "user", "content": "x" * 5000}]}), 413)
    assert "MAX_BODY_BYTES" in error["message"]  # what the operator raises for inline images


def test_the_access_line_names_the_protocol(api, mocked, caplog):
    mocked.post(URL, **sse(openai_stream(["ok"])))
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        api.post(CHAT, json={"model": "role:sql", "messages": USER, "stream": True}).get_data()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gpt_proxy.access"]
    assert "protocol=openai" in line and "role=sql" in line and "result=ok" in line
    assert "prompt_tokens=5" in line


# --- the pieces -----------------------------------------------------------------------------

def test_assembling_merges_choices_by_index_and_extends_logprobs():
    class Stream:
        is_json = False

        def chunks(self):
            yield sse_bytes({"id": "a", "created": 2, "model": "m", "choices": [
                {"index": 1, "delta": {"content": "B"}, "logprobs": {"content": [{"t": 1}]}},
                {"index": 0, "delta": {"role": "assistant", "content": "A"}}]})
            yield sse_bytes({"id": "a", "choices": [
                {"index": 1, "delta": {"content": "b"}, "logprobs": {"content": [{"t": 2}]},
                 "finish_reason": "length"},
                {"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]})
            yield sse_bytes("[DONE]")

    chunks = [d for batch in read_deltas(Stream(), 1 << 20, raw=True) if batch for d in batch
              if d.kind == "chunk"]
    completion = completion_from_chunks(chunks)
    assert [c["index"] for c in completion["choices"]] == [0, 1]
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Aa"}
    assert completion["choices"][1]["message"]["content"] == "Bb"
    assert completion["choices"][1]["logprobs"] == {"content": [{"t": 1}, {"t": 2}]}
    assert completion["choices"][1]["finish_reason"] == "length"
    assert completion["created"] == 2 and completion["model"] == "m"
