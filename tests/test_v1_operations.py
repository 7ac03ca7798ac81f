"""The OpenAI door's other operations in-process (embeddings, images, the Responses API, legacy
completions), the upstream mocked with `responses`: what reaches which upstream path, what the
client gets, every bad request answered before the upstream is asked, and the readers alone."""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests
import responses

from gpt_proxy import create_app
from gpt_proxy.base.config import UpstreamSpec
from gpt_proxy.base.sse import SSEDecoder
from gpt_proxy.pipeline.relay import Outcome
from gpt_proxy.upstream.chunks import EventReader
from gpt_proxy.upstream.client import Endpoint, new_session
from gpt_proxy.upstream.demo import DemoUpstream, placeholder_png
from gpt_proxy.upstream.operations import CHAT, EMBEDDINGS, IMAGES, RESPONSES, Usage

from .conftest import TEST_KEY, make_config, sse_blocks
from .fake_upstream import (
    embeddings_answer,
    image_answer,
    openai_stream,
    response_object,
    responses_events,
    responses_stream,
    sse_bytes,
)
from .test_openai_api import assert_openai_error, data_lines

BASE = "http://upstream.test/v1"
PNG = placeholder_png(16, 16, "test")
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def make_api(**overrides):
    return create_app(make_config(openai_base_url=BASE, **overrides)).test_client()


@pytest.fixture()
def api(mocked):
    return make_api()


def sent(mocked, call: int = 0) -> dict:
    return json.loads(mocked.calls[call].request.body)


def events_of(raw: str) -> list[tuple[str, str]]:
    """(event name, data text) of each event of a stream, comments left out."""
    return [(name, data) for _, name, data, _ in sse_blocks(raw) if data is not None]


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpt_proxy.access"]


# --- embeddings -----------------------------------------------------------------------------

def test_embeddings_reach_the_upstreams_path_unchanged_and_come_back_byte_for_byte(api, mocked):
    answer = json.dumps(embeddings_answer([[0.5, -0.25]], encoded=True)).encode()
    mocked.post(f"{BASE}/embeddings", body=answer, content_type="application/json")
    body = {"model": "text-embedding-3-small", "input": ["hello", "world"],
            "encoding_format": "base64", "dimensions": 2, "user": "u-1"}
    response = api.post("/v1/embeddings", json=body)
    assert response.status_code == 200 and response.get_data() == answer
    assert mocked.calls[0].request.url == f"{BASE}/embeddings"
    assert sent(mocked) == body  # nothing added: no stream, no stream_options, no max_tokens
    assert mocked.calls[0].request.headers["Authorization"] == f"Bearer {TEST_KEY}"


def test_the_token_ceiling_is_not_sent_to_an_operation_without_token_fields(mocked):
    mocked.post(f"{BASE}/embeddings", json=embeddings_answer([[1.0]]))
    assert make_api(max_tokens_ceiling=64).post(
        "/v1/embeddings", json={"model": "e", "input": "x"}).status_code == 200
    assert "max_tokens" not in sent(mocked)


@pytest.mark.parametrize("body,status,param", [
    ({"input": "x"}, 400, "model"),
    ({"model": "e"}, 400, "input"),
    ({"model": "e", "input": ""}, 400, "input"),
    ({"model": "e", "input": []}, 400, "input"),
    ({"model": "e", "input": ["a", ""]}, 400, "input[1]"),
    ({"model": "e", "input": [["x"]]}, 400, "input[0]"),
    ({"model": "e", "input": [[1, 2], []]}, 400, "input[1]"),
    ({"model": "e", "input": {"a": 1}}, 400, "input"),
    ({"model": "e", "input": ["a"] * 2049}, 413, "input"),
    ({"model": "e", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "e", "input": "x", "dimensions": 0}, 400, "dimensions"),
    ({"model": "e", "input": "x", "stream": True}, 400, "stream"),
    ({"model": "e", "input": "x", "stream": "no"}, 400, "stream"),
    ({"model": "role:cli", "input": "x"}, 404, "model"),
    ({"model": "", "input": "x"}, 400, "model"),
])
def test_each_bad_embeddings_request_is_refused_before_the_upstream(api, mocked, body, status,
                                                                     param):
    assert_openai_error(api.post("/v1/embeddings", json=body), status, param=param)
    assert not mocked.calls


def test_an_embeddings_input_over_the_body_limit_is_a_413_before_the_upstream(mocked):
    api = make_api(max_body_bytes=4096)
    error = assert_openai_error(api.post("/v1/embeddings", json={
        "model": "e", "input": ["word " * 100] * 20}), 413)
    assert "MAX_BODY_BYTES" in error["message"] and not mocked.calls


def test_a_model_outside_the_allow_list_is_a_404_on_every_operation(mocked):
    api = make_api(allowed_models=("fake-model",))
    for path, body in [("/v1/embeddings", {"input": "x"}), ("/v1/responses", {"input": "x"}),
                       ("/v1/completions", {"prompt": "x"}),
                       ("/v1/images/generations", {"prompt": "x"})]:
        error = assert_openai_error(api.post(path, json={**body, "model": "gpt-5"}), 404,
                                    "model_not_found", param="model")
        assert "/v1/models" in error["message"]
    # an image request without a model gets OPENAI_IMAGE_MODEL, which must be allowed too
    assert_openai_error(api.post("/v1/images/generations", json={"prompt": "x"}), 404,
                        "model_not_found")
    assert not mocked.calls


# --- images ---------------------------------------------------------------------------------

def test_an_image_request_gets_the_image_model_and_the_answer_as_the_upstream_sent_it(api,
                                                                                      mocked):
    answer = json.dumps(image_answer([PNG, PNG])).encode()
    mocked.post(f"{BASE}/images/generations", body=answer, content_type="application/json")
    body = {"prompt": "a red fox", "n": 2, "size": "512x512", "response_format": "b64_json",
            "quality": "standard", "style": "vivid"}
    response = api.post("/v1/images/generations", json=body)
    assert response.status_code == 200 and response.get_data() == answer
    assert sent(mocked) == {**body, "model": "dall-e-2"}


def test_an_image_answer_larger_than_max_event_bytes_is_passed_on(mocked):
    big = image_answer([PNG + b"\0" * 1_500_000])  # about 2 MB of base64
    answer = json.dumps(big).encode()
    mocked.post(f"{BASE}/images/generations", body=answer, content_type="application/json")
    response = make_api(max_event_bytes=1024 * 1024).post(
        "/v1/images/generations", json={"prompt": "x", "model": "dall-e-3"})
    assert response.status_code == 200 and response.get_data() == answer


@pytest.mark.parametrize("url", ["javascript:alert(1)", "file:///etc/passwd",
                                 "data:text/html;base64,PGgxPg==", "ftp://x/y.png", " http://x"])
def test_an_image_url_that_is_not_http_or_a_data_image_is_never_passed_on(api, mocked, url,
                                                                           caplog):
    mocked.post(f"{BASE}/images/generations", json=image_answer(urls=["https://ok/1.png", url]))
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        response = api.post("/v1/images/generations", json={"prompt": "x"})
    error = assert_openai_error(response, 502, "upstream_error")
    assert "neither http(s) nor a data: image" in error["message"]
    assert url not in response.get_data(as_text=True)
    assert "result=error:upstream_error" in access_lines(caplog)[-1]


def test_http_and_data_image_urls_are_passed_on(api, mocked):
    urls = ["https://cdn.example/a.png?sig=1", "data:image/png;base64,"
            + base64.b64encode(PNG).decode()]
    mocked.post(f"{BASE}/images/generations", json=image_answer(urls=urls))
    response = api.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert [item["url"] for item in response.get_json()["data"]] == urls


@pytest.mark.parametrize("body,param", [
    ({}, "prompt"), ({"prompt": "  "}, "prompt"), ({"prompt": 5}, "prompt"),
    ({"prompt": "x" * 32001}, "prompt"), ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 11}, "n"), ({"prompt": "x", "n": True}, "n"),
    ({"prompt": "x", "n": 1.5}, "n"), ({"prompt": "x", "size": "big"}, "size"),
    ({"prompt": "x", "size": 512}, "size"), ({"prompt": "x", "response_format": "png"},
                                             "response_format"),
    ({"prompt": "x", "stream": True}, "stream"),
])
def test_each_bad_image_request_is_refused_before_the_upstream(api, mocked, body, param):
    assert_openai_error(api.post("/v1/images/generations", json=body), 400, param=param)
    assert not mocked.calls


def test_the_access_line_counts_images_at_their_size_and_metrics_count_them(mocked, caplog):
    app = create_app(make_config(openai_base_url=BASE))
    mocked.post(f"{BASE}/images/generations", json=image_answer([PNG, PNG, PNG]))
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        app.test_client().post("/v1/images/generations",
                               json={"prompt": "x", "n": 3, "size": "256x256"})
    line = access_lines(caplog)[-1]
    assert "images=3 size=256x256" in line and "prompt_tokens=10 completion_tokens=20" in line
    exposition = app.extensions["gpt_proxy"].metrics.exposition()[0].decode()
    assert 'gpt_proxy_images_total{model="dall-e-2",size="256x256"} 3.0' in exposition


@pytest.mark.parametrize("status,expected", [(400, 400), (401, 502), (429, 429), (500, 502)])
def test_upstream_failures_of_an_image_request_are_openai_errors_without_the_key(
        api, mocked, status, expected):
    mocked.post(f"{BASE}/images/generations", status=status, headers={"Retry-After": "2"},
                json={"error": {"message": f"bad things, key {TEST_KEY}"}})
    response = api.post("/v1/images/generations", json={"prompt": "x"})
    assert_openai_error(response, expected)
    assert TEST_KEY[:12] not in response.get_data(as_text=True)


def test_unreachable_upstream_for_embeddings_is_a_503(api, mocked):
    mocked.post(f"{BASE}/embeddings", body=requests.exceptions.ConnectionError("refused"))
    assert_openai_error(api.post("/v1/embeddings", json={"model": "e", "input": "x"}), 503)


# --- the Responses API ----------------------------------------------------------------------

def test_a_responses_stream_is_relayed_event_by_event_in_its_own_names_and_order(api, mocked):
    upstream_body = responses_stream(["Hel", "lo, ", "世界 🙂"], newline="\r\n",
                                     reasoning=["think"])
    mocked.post(f"{BASE}/responses", body=upstream_body, content_type="text/event-stream")
    response = api.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["X-Accel-Buffering"] == "no"
    expected = events_of(upstream_body.decode().replace("\r\n", "\n"))
    assert events_of(response.get_data(as_text=True)) == expected  # names, order, data text
    assert "[DONE]" not in response.get_data(as_text=True)
    assert sent(mocked) == {"model": "m", "input": "hi", "stream": True}  # no stream_options


def test_multi_line_data_and_unnamed_events_keep_their_exact_text(api, mocked):
    completed = {"type": "response.completed", "response": response_object("A")}
    body = (b'event: response.created\ndata: {"type": "response.created",\ndata:  "x": 1}\n\n'
            b'data: {"type": "response.output_text.delta", "delta": "A"}\n\n'
            b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n")
    mocked.post(f"{BASE}/responses", body=body, content_type="text/event-stream")
    raw = api.post("/v1/responses", json={"input": "hi", "stream": True}).get_data(as_text=True)
    assert 'event: response.created\ndata: {"type": "response.created",\ndata:  "x": 1}\n\n' in raw
    assert '\n\ndata: {"type": "response.output_text.delta", "delta": "A"}\n\n' in raw


def test_the_token_ceiling_applies_to_max_output_tokens(mocked):
    api = make_api(max_tokens_ceiling=100)
    mocked.post(f"{BASE}/responses", json=response_object("ok"))
    assert_openai_error(api.post("/v1/responses", json={"input": "x", "max_output_tokens": 101}),
                        400, param="max_output_tokens")
    assert not mocked.calls
    api.post("/v1/responses", json={"input": "x"})
    assert sent(mocked)["max_output_tokens"] == 100 and "max_tokens" not in sent(mocked)


def test_a_whole_response_is_the_upstreams_object_byte_for_byte(api, mocked, caplog):
    raw = json.dumps(response_object("Hello there")).encode()
    mocked.post(f"{BASE}/responses", body=raw, content_type="application/json")
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        response = api.post("/v1/responses", json={"input": "hi"})
    assert response.get_data() == raw
    line = access_lines(caplog)[-1]
    assert "prompt_tokens=7 completion_tokens=2" in line and "chars=11" in line


def test_a_whole_response_from_an_upstream_that_streamed_anyway_is_its_final_object(api, mocked):
    mocked.post(f"{BASE}/responses", body=responses_stream(["a", "b"]),
                content_type="text/event-stream")
    reply = api.post("/v1/responses", json={"input": "hi"}).get_json()
    assert reply["object"] == "response" and reply["output"][0]["content"][0]["text"] == "ab"


def test_an_upstream_error_event_mid_stream_is_relayed_once_and_recorded(api, mocked, caplog):
    body = responses_stream(["part"], end="")
    error = {"type": "error", "code": "server_error", "message": f"oops {TEST_KEY}",
             "param": None, "sequence_number": 9}
    body += b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    mocked.post(f"{BASE}/responses", body=body, content_type="text/event-stream")
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        raw = api.post("/v1/responses", json={"input": "x", "stream": True}).get_data(True)
    events = events_of(raw)
    assert events[-1] == ("error", json.dumps(error))  # the upstream's own, as it sent it
    assert [name for name, _ in events].count("error") == 1
    assert "result=error:upstream_error" in access_lines(caplog)[-1]


def test_response_failed_is_relayed_and_ends_the_reply_as_an_error(api, mocked, caplog):
    mocked.post(f"{BASE}/responses", body=responses_stream(["a"], end="failed"),
                content_type="text/event-stream")
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        raw = api.post("/v1/responses", json={"input": "x", "stream": True}).get_data(True)
    names = [name for name, _ in events_of(raw)]
    assert names[-1] == "response.failed" and "error" not in names
    assert "result=error:upstream_error" in access_lines(caplog)[-1]


def test_a_stream_cut_short_ends_with_one_error_event_in_the_responses_shape(api, mocked):
    mocked.post(f"{BASE}/responses", body=responses_stream(["so far"], end=""),
                content_type="text/event-stream")
    events = events_of(api.post("/v1/responses", json={"input": "x", "stream": True})
                       .get_data(True))
    name, data = events[-1]
    error = json.loads(data)
    assert name == "error" and error["type"] == "error" and "ended early" in error["message"]
    assert error["sequence_number"] == json.loads(events[-2][1])["sequence_number"] + 1
    assert error["error"]["code"] == error["code"] == "upstream_error"  # the SDKs raise on it
    assert ("response.output_text.delta", json.dumps(
        responses_events(["so far"], end="")[-1][1])) in events


@pytest.mark.parametrize("body,status,param", [
    ({"input": 5}, 400, "input"), ({"input": "x", "instructions": 1}, 400, "instructions"),
    ({"input": "x", "stream": 1}, 400, "stream"), ({"input": "x", "max_output_tokens": 0},
                                                   400, "max_output_tokens"),
    ({"input": "x", "model": "role:sql"}, 404, "model"),
])
def test_each_bad_responses_request_is_refused_before_the_upstream(api, mocked, body, status,
                                                                    param):
    assert_openai_error(api.post("/v1/responses", json=body), status, param=param)
    assert not mocked.calls


def test_a_request_without_a_model_gets_openai_model(api, mocked):
    mocked.post(f"{BASE}/responses", json=response_object("x"))
    api.post("/v1/responses", json={"input": "x"})
    assert sent(mocked)["model"] == "fake-model"


# --- legacy completions ---------------------------------------------------------------------

def legacy_chunk(text=None, finish=None, usage=None) -> dict:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [] if usage else [{"index": 0, "text": text or "", "logprobs": None,
                                          "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return body


def test_legacy_completions_stream_their_chunks_and_report_usage(api, mocked, caplog):
    chunks = [legacy_chunk("Once"), legacy_chunk(" upon"), legacy_chunk(finish="length"),
              legacy_chunk(usage={"prompt_tokens": 2, "completion_tokens": 2})]
    mocked.post(f"{BASE}/completions", body=b"".join(map(sse_bytes, chunks)) + sse_bytes("[DONE]"),
                content_type="text/event-stream")
    with caplog.at_level("INFO", logger="gpt_proxy.access"):
        raw = api.post("/v1/completions", json={"model": "m", "prompt": "x", "stream": True,
                                                "max_tokens": 5}).get_data(True)
    values = data_lines(raw)
    assert [json.loads(v) for v in values[:-1]] == chunks[:3] and values[-1] == "[DONE]"
    assert sent(mocked)["stream_options"] == {"include_usage": True}
    line = access_lines(caplog)[-1]
    assert "chars=9" in line and "prompt_tokens=2 completion_tokens=2" in line


def test_legacy_completions_get_the_ceiling_as_max_tokens_and_answer_whole(mocked):
    raw = json.dumps(legacy_chunk("whole", finish="stop")).encode()
    mocked.post(f"{BASE}/completions", body=raw, content_type="application/json")
    api = make_api(max_tokens_ceiling=50)
    assert api.post("/v1/completions", json={"model": "m", "prompt": ["a", "b"]}).get_data() == raw
    assert sent(mocked)["max_tokens"] == 50
    assert_openai_error(api.post("/v1/completions", json={"model": "m", "prompt": ""}), 400,
                        param="prompt")
    assert_openai_error(api.post("/v1/completions", json={"prompt": "x", "max_tokens": 51}),
                        400, param="max_tokens")


def test_a_whole_legacy_completion_from_a_stream_is_assembled(api, mocked):
    body = b"".join(map(sse_bytes, [legacy_chunk("Hel"), legacy_chunk("lo", finish="stop")]))
    mocked.post(f"{BASE}/completions", body=body + sse_bytes("[DONE]"),
                content_type="text/event-stream")
    completion = api.post("/v1/completions", json={"model": "m", "prompt": "x"}).get_json()
    assert completion["object"] == "text_completion"
    assert completion["choices"] == [{"index": 0, "text": "Hello", "logprobs": None,
                                      "finish_reason": "stop"}]


# --- Azure: each operation's URL ------------------------------------------------------------

def azure_endpoint() -> Endpoint:
    spec = UpstreamSpec("az", "https://res.openai.azure.com", "k", kind="azure",
                        models=("gpt-4o", "dall-e-3"), api_version="2025-04-01-preview",
                        deployments={"gpt-4o": "chat-prod", "dall-e-3": "img"})
    return Endpoint(spec, make_config(), new_session())


@pytest.mark.parametrize("operation,model,url", [
    (CHAT, "gpt-4o", "https://res.openai.azure.com/openai/deployments/chat-prod/chat/completions"),
    (EMBEDDINGS, "te-3", "https://res.openai.azure.com/openai/deployments/te-3/embeddings"),
    (IMAGES, "dall-e-3", "https://res.openai.azure.com/openai/deployments/img/images/generations"),
    (RESPONSES, "gpt-4o", "https://res.openai.azure.com/openai/responses"),
])
def test_azure_urls_follow_each_operations_form(operation, model, url):
    assert azure_endpoint().url_for(model, operation.path) == url + "?api-version=2025-04-01-preview"


def test_azure_responses_name_the_deployment_in_the_body(mocked):
    endpoint = azure_endpoint()
    mocked.post(re.compile(r"https://res\.openai\.azure\.com/openai/responses.*"),
                json=response_object("x"))
    payload = {"model": "gpt-4o", "input": "x"}
    endpoint.open(payload, json.dumps(payload).encode(), (5, 5), RESPONSES.path).close()
    assert sent(mocked)["model"] == "chat-prod"
    assert mocked.calls[0].request.headers["api-key"] == "k"


# --- the readers and the usage --------------------------------------------------------------

def read_events(body: bytes, splits: tuple[int, ...]) -> tuple[list, str]:
    """Decode and read a Responses stream fed in the pieces `splits` cuts it into."""
    decoder, reader = SSEDecoder(), EventReader(raw=True)
    deltas, bounds = [], (0, *splits, len(body))
    for start, end in zip(bounds, bounds[1:], strict=False):
        for event in decoder.feed(body[start:end]):
            deltas.extend(reader.read(event))
    for event in decoder.close():
        deltas.extend(reader.read(event))
    return deltas, "".join(d.text for d in deltas if d.kind == "content")


def test_a_responses_stream_cut_at_every_byte_reads_the_same():
    body = responses_stream(["Grüße, ", "世界", " 🙂!"], newline="\r\n", reasoning=["hm"])
    whole, text = read_events(body, ())
    assert text == "Grüße, 世界 🙂!" and whole[-1].kind == "done"
    assert whole[-1].usage == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    names = [d.event for d in whole if d.kind == "event"]
    assert names == [name for name, _ in responses_events(["Grüße, ", "世界", " 🙂!"],
                                                         reasoning=["hm"])]
    for cut_at in range(1, len(body)):
        assert read_events(body, (cut_at,)) == (whole, text), cut_at
    assert read_events(body, tuple(range(1, len(body)))) == (whole, text)  # every byte apart


def test_usage_is_read_into_one_shape_whatever_the_upstream_called_it():
    chat = Outcome(usage={"prompt_tokens": 3, "completion_tokens": 4})
    responses_ = Outcome(usage={"input_tokens": 5, "output_tokens": 6})
    assert CHAT.usage(chat, {}) == Usage(3, 4) and RESPONSES.usage(responses_, {}) == Usage(5, 6)
    assert EMBEDDINGS.usage(Outcome(usage={"prompt_tokens": 8, "total_tokens": 8}), {}) == Usage(8)
    assert CHAT.asked({"max_tokens": 100}) == Usage(output_tokens=100)
    assert RESPONSES.asked({"max_output_tokens": 7}) == Usage(output_tokens=7)
    assert IMAGES.asked({"n": 3, "size": "512x512"}) == Usage(images=3, image_size="512x512")
    assert IMAGES.asked({}) == Usage(images=1)


# --- the demo upstream ----------------------------------------------------------------------

@pytest.fixture()
def demo():
    return create_app(make_config(openai_api_key=""), upstream=DemoUpstream(delay=0)).test_client()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_the_demo_draws_labelled_placeholder_pngs_of_the_size_asked(demo):
    import zlib
    reply = demo.post("/v1/images/generations", json={"prompt": "a fox", "n": 2,
                                                       "size": "512x512"}).get_json()
    images = [base64.b64decode(item["b64_json"]) for item in reply["data"]]
    assert [png_size(image) for image in images] == [(512, 512), (512, 512)]
    assert images[0] != images[1]  # each its own picture, and the same one every time
    again = demo.post("/v1/images/generations", json={"prompt": "a fox", "n": 2,
                                                       "size": "512x512"}).get_json()
    assert again["data"] == reply["data"]
    start = images[0].index(b"IDAT") + 4
    length = int.from_bytes(images[0][start - 8:start - 4], "big")
    assert len(zlib.decompress(images[0][start:start + length])) == 512 * (512 * 3 + 1)
    url = demo.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert url.get_json()["data"][0]["url"].startswith("data:image/png;base64,iVBOR")


def test_the_demo_embeds_deterministically_as_floats_or_base64(demo):
    floats = demo.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"],
                                               "encoding_format": "float"}).get_json()
    first, second = (item["embedding"] for item in floats["data"])
    assert len(first) == 256 and first != second
    assert abs(sum(x * x for x in first) - 1) < 1e-9
    encoded = demo.post("/v1/embeddings", json={"model": "e", "input": "a", "dimensions": 8,
                                                "encoding_format": "base64"}).get_json()
    vector = base64.b64decode(encoded["data"][0]["embedding"])
    assert len(vector) == 8 * 4
    assert demo.post("/v1/embeddings", json={"model": "e", "input": "a"}).get_json() == \
        demo.post("/v1/embeddings", json={"model": "e", "input": "a"}).get_json()


def test_the_demo_answers_responses_and_legacy_completions_saying_it_is_a_demo(demo):
    raw = demo.post("/v1/responses", json={"input": "hello", "stream": True}).get_data(True)
    events = events_of(raw)
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    text = "".join(json.loads(data)["delta"] for name, data in events
                   if name == "response.output_text.delta")
    assert "[demo]" in text and "hello" in text
    whole = demo.post("/v1/responses", json={"input": "hello"}).get_json()
    assert whole["output"][0]["content"][0]["text"] == text
    legacy = demo.post("/v1/completions", json={"prompt": "hello"}).get_json()
    assert "[demo]" in legacy["choices"][0]["text"]
    values = data_lines(demo.post("/v1/completions", json={"prompt": "hi", "stream": True})
                        .get_data(True))
    assert values[-1] == "[DONE]" and "[demo]" in "".join(
        json.loads(v)["choices"][0]["text"] for v in values[:-1] if json.loads(v)["choices"])


def test_chat_is_unchanged_by_the_operations(api, mocked):
    mocked.post(f"{BASE}/chat/completions", body=openai_stream(["ok"]),
                content_type="text/event-stream")
    api.post("/v1/chat/completions", json={"messages": USER, "stream": True}).get_data()
    assert mocked.calls[0].request.url == f"{BASE}/chat/completions"
    assert set(sent(mocked)) == {"model", "messages", "stream", "stream_options"}
