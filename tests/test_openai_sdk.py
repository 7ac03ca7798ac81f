"""The official `openai` SDK as the client, against the real service under gunicorn and a real
fake upstream on 127.0.0.1: what an SDK user sees, and what reaches the upstream."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from .conftest import TEST_KEY, free_port, serve
from .fake_upstream import Scenario, chunk_json, json_scenario, sse_bytes, stream_scenario
from .test_integration import TEXT, TOKENS

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def sdk(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="any", max_retries=0, timeout=20)


def streamed_text(stream, index: int = 0) -> str:
    return "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices
                   if choice.index == index)


@pytest.mark.parametrize("size", [1, 5])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_streamed_reply_reassembles_exactly_the_upstream_text(sdk, upstream, size, newline):
    upstream.push(stream_scenario(TOKENS, size=size, newline=newline))
    stream = sdk.chat.completions.create(model="fake-model", messages=USER, stream=True)
    assert streamed_text(stream) == TEXT


def test_the_usage_chunk_comes_when_asked_for(sdk, upstream):
    upstream.push(stream_scenario(TOKENS, size=3))
    chunks = list(sdk.chat.completions.create(model="fake-model", messages=USER, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == len(TOKENS) and chunks[-1].choices == []


def test_a_whole_reply_is_the_upstreams_completion(sdk, upstream):
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 5,
                  "model": "fake-model", "system_fingerprint": "fp_1",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT},
                               "logprobs": None, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}}
    data = json.dumps(completion, ensure_ascii=False).encode()
    upstream.push(Scenario(headers={"Content-Type": "application/json"},
                           parts=[data[i:i + 5] for i in range(0, len(data), 5)]))
    reply = sdk.chat.completions.create(model="fake-model", messages=USER)
    assert reply.choices[0].message.content == TEXT and reply.system_fingerprint == "fp_1"
    assert reply.usage.total_tokens == 11
    assert upstream.records[0].json["stream"] is False


def test_tool_call_deltas_and_two_choices_are_relayed_intact(sdk, upstream):
    def chunk(choices, **extra):
        return sse_bytes({"id": "c", "object": "chat.completion.chunk", "created": 1,
                          "model": "fake-model", "choices": choices, **extra})
    body = b"".join([
        chunk([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": ""}}]}, "finish_reason": None},
               {"index": 1, "delta": {"role": "assistant", "content": "Deux"},
                "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"city\":"}}]}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": " \"巴黎\"}"}}]}, "finish_reason": None},
               {"index": 1, "delta": {"content": " réponses"}, "finish_reason": "stop"}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
        sse_bytes("[DONE]")])
    upstream.push(Scenario(parts=[body[i:i + 9] for i in range(0, len(body), 9)]))
    stream = sdk.chat.completions.create(
        model="fake-model", messages=USER, stream=True, n=2,
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}])
    arguments, texts, finish = "", "", {}
    for chunk_ in stream:
        for choice in chunk_.choices:
            for call in choice.delta.tool_calls or ():
                arguments += call.function.arguments or ""
            if choice.index == 1:
                texts += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert arguments == "{\"city\": \"巴黎\"}" and texts == "Deux réponses"
    assert finish == {0: "tool_calls", 1: "stop"}
    sent = upstream.records[0].json
    assert sent["n"] == 2 and sent["tools"][0]["function"]["name"] == "weather"


def test_a_role_model_sends_the_role_with_a_real_model_name(sdk, upstream):
    upstream.push(stream_scenario(["SELECT 1;"]))
    reply = sdk.chat.completions.create(model="role:sql", messages=USER, stream=True)
    assert streamed_text(reply) == "SELECT 1;"
    sent = upstream.records[0].json
    assert sent["model"] == "fake-model" and sent["messages"][0]["role"] == "system"
    assert sent["messages"][-1] == USER[0] and len(sent["messages"]) > 2


def test_pass_through_fields_reach_the_upstream(sdk, upstream):
    upstream.push(stream_scenario(["ok"]))
    list(sdk.chat.completions.create(
        model="fake-model", messages=USER, stream=True, top_p=0.5, seed=3, stop=["\n"],
        response_format={"type": "json_object"}, user="u1", logprobs=True,
        extra_body={"a_future_field": {"x": 1}}))
    sent = upstream.records[0].json
    assert (sent["top_p"], sent["seed"], sent["stop"], sent["user"], sent["logprobs"]) == (
        0.5, 3, ["\n"], "u1", True)
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["a_future_field"] == {"x": 1}


def test_models_list_shows_the_model_and_the_roles(sdk):
    ids = [model.id for model in sdk.models.list()]
    assert ids[0] == "fake-model" and "role:cli" in ids and "role:translator" in ids
    assert sdk.models.retrieve("role:ikun").owned_by == "gpt_proxy"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("role:nope")


@pytest.mark.parametrize("status,exception", [
    (401, openai.InternalServerError), (403, openai.InternalServerError),
    (404, openai.InternalServerError), (500, openai.InternalServerError),
    (400, openai.BadRequestError), (429, openai.RateLimitError),
])
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_raise_the_sdks_exception_without_the_key(sdk, upstream, status,
                                                                  exception, stream):
    upstream.push(json_scenario(status, {"error": {
        "message": f"Incorrect API key provided: {TEST_KEY}. sk-proj-abcdef123456"}},
        headers={"Retry-After": "2"}))
    with pytest.raises(exception) as caught:
        sdk.chat.completions.create(model="fake-model", messages=USER, stream=stream)
    assert caught.value.status_code == (status if status in (400, 429) else 502)
    text = str(caught.value) + json.dumps(caught.value.body) + caught.value.response.text
    assert TEST_KEY[:10] not in text and "sk-proj" not in text


def test_client_errors_raise_the_sdks_exception_classes(sdk, live, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="fake-model", messages=[])
    assert caught.value.param == "messages"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="role:nope", messages=USER)
    assert caught.value.code == "model_not_found"
    assert upstream.records == []


def test_an_unreachable_upstream_raises_a_503(upstream, tmp_path):
    with serve(upstream, tmp_path,
               OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1") as service:
        client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        assert caught.value.status_code == 503
        assert TEST_KEY not in service.logs()


def test_a_failure_mid_stream_raises_while_iterating_after_the_text(sdk, upstream):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("你好")), 0.05, b"data: {broken\n\n"]))
    stream = sdk.chat.completions.create(model="fake-model", messages=USER, stream=True)
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
    assert received == "你好" and "malformed" in caught.value.message


def test_closing_the_stream_closes_the_upstream_within_a_second(sdk, upstream):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("one"))], hold_open=True))
    stream = sdk.chat.completions.create(model="fake-model", messages=USER, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content == "one"
    record = upstream.wait_for_request()
    closed_at = time.monotonic()
    stream.close()
    assert record.seconds_to_close(closed_at) < 1.0


def test_the_raw_stream_is_well_formed_sse_with_done_last(live, upstream):
    upstream.push(stream_scenario(TOKENS, size=4, newline="\r\n"), Scenario(
        parts=[sse_bytes(chunk_json("x")), 2.5, sse_bytes(chunk_json(finish="stop")),
               sse_bytes("[DONE]")]))
    response = requests.post(f"{live.url}/v1/chat/completions", timeout=20, json={
        "model": "fake-model", "messages": USER, "stream": True})
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers
    raw = response.content.decode("utf-8")
    assert raw.endswith("data: [DONE]\n\n") and "\r" not in raw
    events = [block for block in raw.split("\n\n") if block]
    data = [block for block in events if not block.startswith(":")]
    assert all(block.startswith("data: ") and "\n" not in block for block in events
               if not block.startswith(":"))
    text = "".join(json.loads(block[6:])["choices"][0]["delta"].get("content") or ""
                   for block in data[:-1] if json.loads(block[6:])["choices"])
    assert text == TEXT
    # a silent upstream gets heartbeat comments (HEARTBEAT_SECONDS is 1 here)
    raw = requests.post(f"{live.url}/v1/chat/completions", timeout=20, json={
        "model": "fake-model", "messages": USER, "stream": True}).text
    assert ": ping\n\n" in raw and raw.endswith("data: [DONE]\n\n")
