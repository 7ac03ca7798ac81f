"""The real service under gunicorn against a real local fake upstream, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from .conftest import sse_events
from .fake_upstream import Scenario, chunk_json, sse_bytes, stream_scenario

# CJK, emoji (4-byte), combining marks and a ZWJ sequence: cut across writes below.
TOKENS = ["你好", "，世界", "！ ", "🙂👍🏽", " e\u0301", " 👩‍👩‍👧", "\n", "end."]
TEXT = "".join(TOKENS)


def post(live, headers=None, stream=True, **body):
    body.setdefault("message", "hello")
    return requests.post(f"{live.url}/api/gpt/get", json=body, headers=headers or {},
                         stream=stream, timeout=20)


@pytest.mark.parametrize("size", [1, 3, 7, 64])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_text_framing_reassembles_exactly_the_upstream_text(live, upstream, size, newline):
    upstream.push(stream_scenario(TOKENS, size=size, newline=newline))
    response = post(live)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode("utf-8") == TEXT


def test_sse_framing_reassembles_exactly_the_upstream_text(live, upstream):
    upstream.push(stream_scenario(TOKENS, size=5, reasoning=["think…"]))
    response = post(live, {"Accept": "text/event-stream"})
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in response.headers
    events = sse_events(response.content.decode("utf-8"))
    assert "".join(d.get("content", "") for n, d in events if n == "message") == TEXT
    assert [d["reasoning"] for n, d in events if "reasoning" in d] == ["think…"]
    assert events[-1][0] == "done" and events[-1][1]["usage"]["completion_tokens"] == len(TOKENS)


def test_json_framing_reassembles_exactly_the_upstream_text(live, upstream):
    upstream.push(stream_scenario(TOKENS, size=2))
    response = post(live, {"Accept": "application/json"})
    assert response.status_code == 200 and response.json()["content"] == TEXT


def test_close_delimited_upstream_body_is_relayed(live, upstream):
    upstream.push(stream_scenario(TOKENS, size=4, chunked=False))
    assert post(live).content.decode() == TEXT


def test_tokens_arrive_one_by_one_not_buffered(live, upstream):
    """Each token is written as it comes: the client has the first while the upstream holds
    back the second (until the test lets it go on), then it gets the second."""
    go_on = threading.Event()
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("first")), go_on,
                                  sse_bytes(chunk_json("second")),
                                  sse_bytes(chunk_json(finish="stop")), sse_bytes("[DONE]")]))
    response = post(live)
    try:
        chunks = response.iter_content(chunk_size=None)  # each read bounded by the timeout
        received = b""
        while b"first" not in received:
            received += next(chunks)
        assert received == b"first"  # the second has not been sent yet
        go_on.set()
        received += b"".join(chunks)
    finally:
        go_on.set()
        response.close()
    assert received == b"firstsecond"


def test_heartbeat_comments_while_upstream_is_silent_before_first_token(live, upstream):
    upstream.push(stream_scenario(["late"], first_delay=2.5))
    response = post(live, {"Accept": "text/event-stream"})
    raw = response.content.decode()
    assert ": ping" in raw.split('"content"')[0]
    assert "".join(d.get("content", "") for n, d in sse_events(raw) if n == "message") == "late"


def raw_request(live, body: dict, accept: str = "*/*") -> socket.socket:
    """A client we can cut off at any moment: a plain socket."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    sock.sendall(b"POST /api/gpt/get HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Accept: " + accept.encode() + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def read_body_until(sock: socket.socket, marker: bytes, limit: int = 100) -> bytes:
    """Read a response until `marker` shows up in its body (bounded in reads)."""
    got = b""
    for _ in range(limit):
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep and marker in body:
            return body
        data = sock.recv(4096)
        if not data:
            break
        got += data
    return got.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("accept", ["*/*", "text/event-stream"])
def test_client_leaving_mid_stream_closes_the_upstream_within_a_second(live, upstream, accept):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("one")), sse_bytes(chunk_json("two"))],
                           hold_open=True))
    sock = raw_request(live, {"message": "hi"}, accept)
    record = upstream.wait_for_request()
    assert b"two" in read_body_until(sock, b"two")
    closed_at = time.monotonic()
    sock.close()
    assert record.seconds_to_close(closed_at) < 1.0


@pytest.mark.parametrize("accept", ["*/*", "application/json"])
def test_client_leaving_before_the_first_token_closes_the_upstream_within_a_second(live, upstream, accept):
    upstream.push(Scenario(parts=[30.0, sse_bytes(chunk_json("never"))]))
    sock = raw_request(live, {"message": "hi"}, accept)
    record = upstream.wait_for_request()
    closed_at = time.monotonic()
    sock.close()
    assert record.seconds_to_close(closed_at) < 1.0


def test_upstream_error_status_is_a_real_status_over_http(live, upstream):
    upstream.push(Scenario(status=429, headers={"Content-Type": "application/json", "Retry-After": "3"},
                           parts=[b'{"error": {"message": "rate limited"}}']))
    response = post(live)
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    assert response.json()["error"]["code"] == "upstream_rate_limited"


def test_error_mid_stream_ends_text_with_an_error_line(live, upstream):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("part")), b"data: {oops\n\n"]))
    text = post(live).content.decode()
    assert text.startswith("part\n[error] upstream sent a malformed chunk")


def test_many_streams_are_held_open_at_once_by_one_worker(live, upstream):
    """20 streams that never end are all open upstream at the same time (gevent worker, 1 process)."""
    for _ in range(20):
        upstream.push(Scenario(parts=[sse_bytes(chunk_json("x"))], hold_open=True))
    socks = [raw_request(live, {"message": f"m{i}"}) for i in range(20)]
    try:
        upstream.wait_for_request(20, timeout=10)
        assert not any(r.disconnected.is_set() for r in upstream.records)
        for sock in socks:  # every client is receiving its stream
            assert b"x" in read_body_until(sock, b"x")
    finally:
        for sock in socks:
            sock.close()
    assert all(r.disconnected.wait(3) for r in upstream.records)


def test_upstream_connection_is_reused_after_a_complete_reply(live, upstream):
    for _ in range(3):
        assert post(live, stream=False).status_code == 200
    peers = {record.peer for record in upstream.records}
    assert len(upstream.records) == 3 and len(peers) == 1


def test_healthz_says_which_upstream_mode(live):
    assert requests.get(f"{live.url}/healthz", timeout=5).json()["upstream"] == "openai"


def test_bad_configuration_stops_gunicorn_with_the_variable_named(tmp_path):
    import os
    import subprocess
    import sys

    from .conftest import ROOT, free_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(HEARTBEAT_SECONDS="soon", DOTENV_FILE=os.devnull, BIND=f"127.0.0.1:{free_port()}")
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "HEARTBEAT_SECONDS='soon' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def tls_upstream(self_signed_cert):
    """The fake upstream over HTTPS, with a self-signed certificate for 127.0.0.1."""
    from .fake_upstream import FakeUpstream
    cert, key = self_signed_cert
    server = FakeUpstream(tls=(str(cert), str(key))).start()
    yield server, cert
    server.stop()


@pytest.fixture(scope="module")
def tls_live(tls_upstream, tmp_path_factory):
    from .conftest import serve
    server, cert = tls_upstream
    with serve(server, tmp_path_factory.mktemp("tls-gunicorn"), HEARTBEAT_SECONDS="1",
               REQUESTS_CA_BUNDLE=str(cert)) as service:
        yield service


def test_https_upstream_streams_exactly_reuses_its_connection_and_is_cancelled(tls_live, tls_upstream):
    server, _ = tls_upstream
    server.reset()
    server.push(stream_scenario(TOKENS, size=3), stream_scenario(TOKENS, size=5, first_delay=1.5))
    assert post(tls_live).content.decode("utf-8") == TEXT
    events = sse_events(post(tls_live, {"Accept": "text/event-stream"}).content.decode())
    assert "".join(d.get("content", "") for n, d in events if n == "message") == TEXT
    assert len({r.peer for r in server.records}) == 1  # the TLS connection was reused
    server.push(Scenario(parts=[30.0, sse_bytes(chunk_json("never"))]))
    sock = raw_request(tls_live, {"message": "hi"})
    record = server.wait_for_request(3)
    closed_at = time.monotonic()
    sock.close()
    assert record.seconds_to_close(closed_at) < 1.0
