"""Before the reply starts, under the real gunicorn (gevent): a client that leaves while the
upstream has not answered yet closes the upstream request; an oversized body gets its 413
read by clients that send the whole body before reading (urllib, a browser's fetch)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid

import psutil
import pytest

from .fake_upstream import Scenario, chunk_json, sse_bytes

USER = [{"role": "user", "content": "hi"}]


def send(live, path: str, body: dict, accept: str = "*/*", request_id: str = "x"
         ) -> socket.socket:
    """A request on a plain socket, so the test can hang up at any moment."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Accept: {accept}\r\nX-Request-Id: {request_id}\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("path,body,accept", [
    ("/api/gpt/get", {"message": "hi"}, "*/*"),
    ("/api/gpt/get", {"message": "hi"}, "text/event-stream"),
    ("/api/gpt/get", {"message": "hi"}, "application/json"),
    ("/v1/chat/completions", {"messages": USER, "stream": True}, "*/*"),
    ("/v1/chat/completions", {"messages": USER}, "application/json"),
])
def test_leaving_while_the_upstream_holds_back_its_headers_closes_it_within_a_second(
        live, upstream, path, body, accept):
    upstream.push(Scenario(head_delay=30, parts=[sse_bytes(chunk_json("never"))]))
    request_id = uuid.uuid4().hex
    sock = send(live, path, body, accept, request_id)
    record = upstream.wait_for_request()
    assert not record.disconnected.wait(0.6)  # it waits, as a queueing upstream makes it
    closed_at = time.monotonic()
    sock.close()
    assert record.seconds_to_close(closed_at) < 1.0
    live.wait_for_log(f"id={request_id}", "status=499", "tried=1")


def worker_rss(live) -> int:
    return sum(p.memory_info().rss for p in psutil.Process(live.proc.pid).children())


@pytest.mark.parametrize("chunked", [False, True])
def test_urllib_reads_the_413_of_a_body_it_sends_whole(live, upstream, chunked):
    data = json.dumps({"message": "x" * 5_000_000}).encode()
    body = (data[i:i + 65536] for i in range(0, len(data), 65536)) if chunked else data
    headers = {"Content-Type": "application/json"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    request = urllib.request.Request(f"{live.url}/api/gpt/get", data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=20)
    assert caught.value.code == 413
    error = json.loads(caught.value.read())["error"]
    assert error["code"] == "payload_too_large" and "1000000" in error["message"]
    assert upstream.records == []


def test_a_413_reads_at_most_a_bounded_drain_and_memory_stays_flat(live):
    before = worker_rss(live)
    for _ in range(3):
        request = urllib.request.Request(f"{live.url}/v1/chat/completions",
                                         data=b"x" * 40_000_000,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        assert json.loads(caught.value.read())["error"]["type"] == "invalid_request_error"
    assert worker_rss(live) - before < 20_000_000  # 120 MB went through; a little stayed


def test_a_browser_fetch_of_a_5_mb_body_gets_the_413_json(chromium, live, upstream):
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(f"{live.url}/healthz")
        result = page.evaluate("""async () => {
            const response = await fetch("/api/gpt/get", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({message: "x".repeat(5000000)})});
            return {status: response.status, body: await response.json()};
        }""")
    finally:
        context.close()
    assert result["status"] == 413
    assert result["body"]["error"]["code"] == "payload_too_large"
    assert upstream.records == []
