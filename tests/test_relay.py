"""The relay end to end in-process: upstream mocked with `responses`, client = Flask's test client."""

from __future__ import annotations

import json

import pytest
import requests
import responses

from gpt_proxy import create_app

from .conftest import TEST_KEY, make_config, sse_events
from .fake_upstream import chunk_json, openai_stream, sse_bytes

URL = "http://upstream.test/v1/chat/completions"
SSE = {"Accept": "text/event-stream"}


@pytest.fixture()
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture()
def api(mocked):
    return create_app(make_config(openai_base_url="http://upstream.test/v1")).test_client()


def stream_body(body: bytes, status=200, content_type="text/event-stream"):
    return dict(body=body, status=status, content_type=content_type)


def post(api, headers=None, **body):
    body.setdefault("message", "hi")
    return api.post("/api/gpt/get", json=body, headers=headers or {})


def test_text_framing_is_exactly_the_reply_text(api, mocked):
    mocked.post(URL, **stream_body(openai_stream(["你好", "，", "world 🙂"])))
    response = post(api)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.get_data(as_text=True) == "你好，world 🙂"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Connection" not in response.headers and "Transfer-Encoding" not in response.headers


def test_sse_framing_has_content_events_then_done_with_usage(api, mocked):
    mocked.post(URL, **stream_body(openai_stream(["a", "b"], reasoning=["hm"])))
    response = post(api, SSE)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(response.get_data(as_text=True))
    assert events[:3] == [("message", {"reasoning": "hm"}), ("message", {"content": "a"}),
                          ("message", {"content": "b"})]
    name, done = events[-1]
    assert name == "done" and done["finish_reason"] == "stop" and done["model"] == "fake-model"
    assert done["usage"]["completion_tokens"] == 2


def test_json_framing_by_accept_or_stream_false(api, mocked):
    mocked.post(URL, **stream_body(openai_stream(["x", "y"])))
    mocked.post(URL, **stream_body(openai_stream(["x", "y"])))
    for response in (post(api, {"Accept": "application/json"}), post(api, stream=False)):
        assert response.status_code == 200
        body = response.get_json()
        assert body["content"] == "xy" and body["finish_reason"] == "stop"
        assert body["usage"]["total_tokens"] == 7 and body["model"] == "fake-model"


def test_request_sent_upstream_has_stream_usage_and_the_fields(api, mocked):
    mocked.post(URL, **stream_body(openai_stream(["ok"])))
    post(api, temperature=0.5, model="m-1")
    sent = mocked.calls[0].request
    payload = json.loads(sent.body)
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert payload["temperature"] == 0.5 and payload["model"] == "m-1"
    assert payload["messages"][-1] == {"role": "user", "content": "hi"}
    assert sent.headers["Authorization"] == f"Bearer {TEST_KEY}"


@pytest.mark.parametrize("status,expected,code", [
    (401, 502, "upstream_auth"), (403, 502, "upstream_auth"),
    (404, 502, "upstream_model_not_found"), (500, 502, "upstream_error"),
    (503, 502, "upstream_error"), (400, 400, "upstream_bad_request"),
])
def test_upstream_status_maps_to_our_status_with_a_json_error(api, mocked, status, expected, code):
    mocked.post(URL, json={"error": {"message": f"Incorrect API key provided: {TEST_KEY[:8]}***cdef"}},
                status=status)
    response = post(api, SSE)
    assert response.status_code == expected
    error = response.get_json()["error"]
    assert error["code"] == code and error["status"] == expected
    assert TEST_KEY[:8] not in response.get_data(as_text=True)


def test_upstream_404_names_the_model(api, mocked):
    mocked.post(URL, json={"error": {"message": "The model does not exist"}}, status=404)
    response = post(api, model="gpt-nope")
    assert "gpt-nope" in response.get_json()["error"]["message"]


def test_upstream_429_is_429_with_retry_after_passed_on(api, mocked):
    mocked.post(URL, json={"error": {"message": "slow down"}}, status=429,
                headers={"Retry-After": "7"})
    response = post(api)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert "slow down" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("error,status,code", [
    ({"error": {"message": "quota used up", "type": "insufficient_quota", "code": 429}}, 429,
     "upstream_rate_limited"),
    ({"error": {"message": "no such model", "status": 404}}, 502, "upstream_model_not_found"),
    ({"error": {"message": "overloaded", "code": "server_busy"}}, 502, "upstream_error"),
    ({"error": "just a string", "code": 503}, 502, "upstream_error"),
])
@pytest.mark.parametrize("accept", ["text/plain", "text/event-stream", "application/json"])
def test_an_error_in_a_200_answer_is_the_error_its_status_would_be_before_the_first_byte(
        api, mocked, error, status, code, accept):
    """Some relays answer a stream request with 200 and an error object: that is the error
    the status it names would be (none named: a 502), not a reply that starts and fails."""
    mocked.post(URL, json=error, status=200)
    response = post(api, {"Accept": accept})
    assert response.status_code == status and response.mimetype == "application/json"
    body = response.get_json()["error"]
    assert body["code"] == code and "in an HTTP 200 answer" in body["message"]
    message = error["error"] if isinstance(error["error"], str) else error["error"]["message"]
    assert message in body["message"] or code == "upstream_model_not_found"


def test_a_whole_completion_in_a_200_answer_is_still_the_reply(api, mocked):
    mocked.post(URL, json={"id": "c", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Whole 你好"},
         "finish_reason": "stop"}]})
    assert post(api, {"Accept": "text/plain"}).get_data(as_text=True) == "Whole 你好"


def test_connection_refused_is_503_and_timeout_is_504(api, mocked):
    mocked.post(URL, body=requests.exceptions.ConnectionError("refused"))
    assert post(api).status_code == 503
    mocked.replace(responses.POST, URL, body=requests.exceptions.ReadTimeout("slow"))
    response = post(api)
    assert response.status_code == 504 and response.get_json()["error"]["code"] == "upstream_timeout"
    mocked.replace(responses.POST, URL, body=requests.exceptions.ConnectTimeout("slow"))
    assert post(api).status_code == 504


def test_malformed_chunk_mid_stream_ends_with_an_error_event(api, mocked):
    body = sse_bytes(chunk_json("partial")) + b"data: {broken\n\n"
    mocked.post(URL, **stream_body(body))
    events = sse_events(post(api, SSE).get_data(as_text=True))
    assert events[0] == ("message", {"content": "partial"})
    assert events[-1][0] == "error" and "malformed" in events[-1][1]["error"]["message"]
    assert events[-1][1]["error"]["status"] == 502


def test_error_chunk_mid_stream_in_text_framing_ends_with_an_error_line(api, mocked):
    body = sse_bytes(chunk_json("partial")) + sse_bytes({"error": {"message": "model overloaded"}})
    mocked.post(URL, **stream_body(body))
    text = post(api).get_data(as_text=True)
    assert text == "partial\n[error] upstream error: model overloaded\n"


def test_stream_cut_short_is_an_early_end_error(api, mocked):
    mocked.post(URL, **stream_body(sse_bytes(chunk_json("half"))))
    events = sse_events(post(api, SSE).get_data(as_text=True))
    assert events[-1][0] == "error" and "ended early" in events[-1][1]["error"]["message"]


def test_stream_cut_short_in_json_framing_is_a_502(api, mocked):
    mocked.post(URL, **stream_body(sse_bytes(chunk_json("half"))))
    response = post(api, stream=False)
    assert response.status_code == 502 and "ended early" in response.get_json()["error"]["message"]


def test_finish_reason_without_done_is_a_complete_reply(api, mocked):
    mocked.post(URL, **stream_body(openai_stream(["a"], done=False)))
    events = sse_events(post(api, SSE).get_data(as_text=True))
    assert events[-1][0] == "done"


def test_upstream_answering_json_instead_of_a_stream_is_still_relayed(api, mocked):
    completion = {"model": "m", "choices": [{"index": 0, "message": {"role": "assistant",
                  "content": "whole reply"}, "finish_reason": "stop"}], "usage": {"total_tokens": 4}}
    mocked.post(URL, json=completion, status=200)
    assert post(api).get_data(as_text=True) == "whole reply"


def test_non_utf8_bytes_from_upstream_are_a_clean_error(api, mocked):
    mocked.post(URL, **stream_body(sse_bytes(chunk_json("ok")) + b"data: {\"x\": \"\xff\"}\n\n"))
    events = sse_events(post(api, SSE).get_data(as_text=True))
    assert events[0] == ("message", {"content": "ok"})
    assert events[-1][0] == "error" and "UTF-8" in events[-1][1]["error"]["message"]


def test_crlf_and_comment_lines_from_upstream_are_handled(api, mocked):
    mocked.post(URL, **stream_body(openai_stream(["x", "y", "z"], newline="\r\n")))
    assert post(api).get_data(as_text=True) == "xyz"


def test_a_reader_thread_waits_for_a_slow_client_instead_of_buffering_the_reply():
    """The demo-style reader (a helper thread) may run at most QUEUE_BATCHES ahead."""
    import threading

    from gpt_proxy.pipeline import relay

    produced = threading.Event()
    count = {"n": 0}

    class EndlessStream:
        is_json = False
        closed = False

        def chunks(self):
            while not self.closed:
                count["n"] += 1
                if count["n"] > relay.QUEUE_BATCHES + 10:
                    produced.set()
                yield sse_bytes(chunk_json("x"))

        def drain(self):
            pass

        def close(self):
            self.closed = True

    stream = EndlessStream()
    pump = relay.Pump(stream, 1 << 20)
    try:
        assert not produced.wait(0.5)  # nobody reads: the reader stops at the bound
        assert count["n"] <= relay.QUEUE_BATCHES + 2
    finally:
        pump.close()
        stream.close()
    pump.thread.join(2)
    assert not pump.thread.is_alive()


@pytest.mark.parametrize("reads", [1, 2])
def test_a_body_abandoned_by_the_server_closes_the_upstream_and_says_client_left(reads):
    from gpt_proxy.doors.api import TextFramer
    from gpt_proxy.pipeline.relay import Relay
    from gpt_proxy.upstream.demo import DemoStream

    stream = DemoStream({"messages": [{"role": "user", "content": "hi"}]}, delay=0.05)
    outcomes = []
    relay = Relay(stream, heartbeat=15, max_event_bytes=1 << 20, on_close=outcomes.append)
    body = relay.frames(TextFramer())
    for _ in range(reads):  # 1: only the opening was written, the upstream never read
        next(body)
    body.close()
    assert stream._closed.is_set()
    assert len(outcomes) == 1 and outcomes[0].client_left
