"""The official `openai` SDK against the service under gunicorn and a real fake upstream, for
the operations beside chat: images, embeddings, the Responses API (streamed and whole), legacy
completions. What an SDK user gets, what reaches the upstream, each error's exception class."""

from __future__ import annotations

import json
import struct
import time

import openai
import pytest
import requests

from gpt_proxy.upstream.demo import placeholder_png

from .conftest import TEST_KEY
from .fake_upstream import (
    Scenario,
    embeddings_answer,
    image_answer,
    json_scenario,
    response_object,
    responses_events,
    responses_scenario,
    responses_stream,
    sse_bytes,
)

PNG = placeholder_png(32, 32, "sdk")
TOKENS = ["Grüße", ", ", "世界", " 🙂", "\n", "done."]
TEXT = "".join(TOKENS)


@pytest.fixture()
def sdk(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="any", max_retries=0, timeout=20)


# --- images ---------------------------------------------------------------------------------

def test_images_generate_gives_base64_images(sdk, upstream):
    upstream.push(json_scenario(200, image_answer([PNG, PNG])))
    result = sdk.images.generate(prompt="a lighthouse", n=2, size="256x256",
                                 response_format="b64_json", model="dall-e-2")
    assert [__import__("base64").b64decode(item.b64_json) for item in result.data] == [PNG, PNG]
    assert result.data[0].revised_prompt == "revised" and result.usage.total_tokens == 30
    record = upstream.wait_for_request()
    assert record.path == "/v1/images/generations"
    assert record.json == {"prompt": "a lighthouse", "n": 2, "size": "256x256",
                           "response_format": "b64_json", "model": "dall-e-2"}


def test_an_image_answer_larger_than_max_event_bytes_arrives_whole(sdk, upstream):
    big = PNG + bytes(range(256)) * 8192  # 2 MiB: its base64 is past MAX_EVENT_BYTES (1 MiB)
    answer = json.dumps(image_answer([big])).encode()
    upstream.push(Scenario(headers={"Content-Type": "application/json"},
                           parts=[answer[i:i + 65536] for i in range(0, len(answer), 65536)]))
    result = sdk.images.generate(prompt="a big one", response_format="b64_json")
    assert __import__("base64").b64decode(result.data[0].b64_json) == big


def test_images_generate_gives_urls(sdk, upstream):
    upstream.push(json_scenario(200, image_answer(urls=["https://img.example/1.png?sig=x"])))
    result = sdk.images.generate(prompt="a fox", response_format="url")
    assert result.data[0].url == "https://img.example/1.png?sig=x"
    assert upstream.records[0].json["model"] == "dall-e-2"  # OPENAI_IMAGE_MODEL


def test_an_image_answer_with_a_url_not_to_show_raises(sdk, upstream):
    upstream.push(json_scenario(200, image_answer(urls=["javascript:alert(1)"])))
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(prompt="x")
    assert caught.value.status_code == 502 and "javascript" not in caught.value.response.text


# --- embeddings -----------------------------------------------------------------------------

def test_embeddings_as_floats(sdk, upstream):
    upstream.push(json_scenario(200, embeddings_answer([[0.5, -0.25, 1.0]])))
    result = sdk.embeddings.create(model="text-embedding-3-small", input="hello",
                                   encoding_format="float")
    assert result.data[0].embedding == [0.5, -0.25, 1.0] and result.usage.prompt_tokens == 4
    assert upstream.records[0].json["encoding_format"] == "float"
    assert upstream.records[0].path == "/v1/embeddings"


def test_embeddings_as_base64_which_the_sdk_asks_for_by_default(sdk, upstream):
    vectors = [[0.5, -0.25], [0.125, 2.0]]
    upstream.push(json_scenario(200, embeddings_answer(vectors, encoded=True)))
    result = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [item.embedding for item in result.data] == vectors  # decoded by the SDK
    sent = upstream.records[0].json
    assert sent["encoding_format"] == "base64" and sent["input"] == ["a", "b"]
    raw = struct.unpack("<2f", __import__("base64").b64decode(
        embeddings_answer(vectors, encoded=True)["data"][0]["embedding"]))
    assert list(raw) == vectors[0]


# --- the Responses API ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 5])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_responses_stream_gives_the_exact_text_and_every_event_in_order(sdk, upstream, size,
                                                                          newline):
    upstream.push(responses_scenario(TOKENS, size=size, newline=newline, reasoning=["hm"]))
    stream = sdk.responses.create(model="fake-model", input="hi", stream=True)
    events = list(stream)
    expected = responses_events(TOKENS, reasoning=["hm"])
    assert [e.type for e in events] == [name for name, _ in expected]
    assert [e.sequence_number for e in events] == list(range(len(expected)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    final = events[-1].response
    assert final.output_text == TEXT and final.usage.input_tokens == 7
    assert upstream.records[0].path == "/v1/responses"


def test_a_whole_response_is_the_upstreams_object(sdk, upstream):
    upstream.push(json_scenario(200, response_object(TEXT)))
    response = sdk.responses.create(model="fake-model", input="hi", instructions="be brief")
    assert response.output_text == TEXT and response.usage.total_tokens == 11
    assert upstream.records[0].json == {"model": "fake-model", "input": "hi",
                                        "instructions": "be brief"}


def test_a_failure_mid_response_stream_raises_while_iterating_after_the_text(sdk, upstream):
    upstream.push(responses_scenario(["你好"], end=""))
    stream = sdk.responses.create(model="fake-model", input="hi", stream=True)
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for event in stream:
            if event.type == "response.output_text.delta":
                received += event.delta
    assert received == "你好" and "ended early" in caught.value.message


def test_an_upstream_error_event_reaches_the_sdk_as_the_upstream_sent_it(sdk, upstream):
    error = {"type": "error", "code": "rate_limit_exceeded", "message": "slow down",
             "param": None, "sequence_number": 6}
    upstream.push(Scenario(parts=[responses_stream(["a"], end=""),
                                  b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"]))
    events = list(sdk.responses.create(model="fake-model", input="hi", stream=True))
    assert events[-1].type == "error" and events[-1].code == "rate_limit_exceeded"


def test_closing_a_responses_stream_closes_the_upstream_within_a_second(sdk, upstream):
    upstream.push(responses_scenario(["one"], end="", hold_open=True, size=10_000))
    stream = sdk.responses.create(model="fake-model", input="hi", stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    record = upstream.wait_for_request()
    closed_at = time.monotonic()
    stream.close()
    assert record.seconds_to_close(closed_at) < 1.0


def test_a_silent_responses_stream_gets_heartbeats(live, upstream):
    body = responses_stream(["x"])
    head, tail = body[:300], body[300:]
    upstream.push(Scenario(parts=[head, 2.5, tail]))
    raw = requests.post(f"{live.url}/v1/responses", timeout=20,
                        json={"model": "fake-model", "input": "hi", "stream": True}).text
    assert ": ping\n\n" in raw and raw.rstrip().endswith("}")
    assert raw.count("event: response.completed") == 1


# --- legacy completions ---------------------------------------------------------------------

def test_legacy_completions_stream_through_the_sdk(sdk, upstream):
    chunks = [{"id": "c", "object": "text_completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}]}
              for t in TOKENS]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    body = b"".join(map(sse_bytes, chunks)) + sse_bytes("[DONE]")
    upstream.push(Scenario(parts=[body[i:i + 3] for i in range(0, len(body), 3)]))
    stream = sdk.completions.create(model="fake-model", prompt="say", stream=True, max_tokens=9)
    assert "".join(c.choices[0].text for c in stream if c.choices) == TEXT
    assert upstream.records[0].path == "/v1/completions"


# --- errors ---------------------------------------------------------------------------------

CALLS = {
    "images": lambda sdk: sdk.images.generate(prompt="x"),
    "embeddings": lambda sdk: sdk.embeddings.create(model="e", input="x"),
    "responses": lambda sdk: sdk.responses.create(model="fake-model", input="x"),
    "responses-stream": lambda sdk: list(sdk.responses.create(model="fake-model", input="x",
                                                              stream=True)),
}


@pytest.mark.parametrize("status,exception", [
    (401, openai.InternalServerError), (404, openai.InternalServerError),
    (500, openai.InternalServerError), (400, openai.BadRequestError),
    (429, openai.RateLimitError),
])
@pytest.mark.parametrize("call", list(CALLS))
def test_upstream_errors_raise_the_sdks_exception_without_the_key(sdk, upstream, status,
                                                                  exception, call):
    upstream.push(json_scenario(status, {"error": {
        "message": f"Incorrect API key provided: {TEST_KEY}. sk-proj-abcdef123456"}},
        headers={"Retry-After": "2"}))
    with pytest.raises(exception) as caught:
        CALLS[call](sdk)
    assert caught.value.status_code == (status if status in (400, 429) else 502)
    text = str(caught.value) + json.dumps(caught.value.body) + caught.value.response.text
    assert TEST_KEY[:10] not in text and "sk-proj" not in text


def test_bad_requests_raise_the_sdks_exception_classes_before_the_upstream(sdk, upstream):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(prompt="x", n=11)
    assert caught.value.param == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model="e", input=[""])
    assert caught.value.param == "input[0]"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="role:cli", input="x")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        sdk.images.generate(prompt="")
    assert upstream.records == []
