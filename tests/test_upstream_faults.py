"""The upstream misbehaving at a low level, on purpose, and what each client gets: the
hand-written chunked decoder fed broken framing, a whole-JSON answer that stalls, breaks, is
too large or is not UTF-8, TLS that fails, 408 and 504, a failover abandoned by its client,
and an exception no route expected.

Each fault comes from a real local server (the fake upstream writing bytes exactly as given,
or a raw socket server) and goes through every door and framing where the code path
differs; each test fails when the guard it covers is removed. The app runs in-process with
short timeouts, except where gunicorn's gevent worker is the point (a client leaving).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass

import pytest

from gpt_proxy import create_app
from gpt_proxy.base.config import UpstreamSpec, load_config
from gpt_proxy.base.errors import ClientLeft
from gpt_proxy.upstream.failover import Upstreams

from .conftest import TEST_DATABASE, TEST_KEY, access_line, make_config, serve, sse_events
from .fake_upstream import FakeUpstream, Scenario, chunk_json, json_scenario, sse_bytes

USER = [{"role": "user", "content": "hi"}]
# door: (path, body, Accept). The framings whose code paths differ: ours as text, SSE and one
# JSON value; OpenAI's stream and whole completion; chat-process's lines.
DOORS = {
    "gpt text": ("/api/gpt/get", {"message": "hi"}, "*/*"),
    "gpt sse": ("/api/gpt/get", {"message": "hi"}, "text/event-stream"),
    "gpt json": ("/api/gpt/get", {"message": "hi"}, "application/json"),
    "openai stream": ("/v1/chat/completions",
                      {"model": "fake-model", "messages": USER, "stream": True}, "*/*"),
    "openai whole": ("/v1/chat/completions", {"model": "fake-model", "messages": USER}, "*/*"),
    "chat-process": ("/api/chat-process", {"prompt": "hi"}, "*/*"),
}
WHOLE = ("gpt json", "openai whole")  # the reply is one value: an error is its HTTP status
READ_TIMEOUT = 0.5


@dataclass
class Reply:
    """What a client of one door got, whatever its framing."""

    status: int  # the HTTP status
    text: str  # the reply's text relayed (before an error, if one came)
    code: str | None = None  # the error's code (None: no error, or chat-process's envelope)
    message: str | None = None  # the error's message (None: no error)


def read_reply(door: str, response) -> Reply:
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and TEST_KEY not in body, body[-500:]
    if door == "chat-process":
        if response.mimetype == "application/json":  # an error before the first byte
            envelope = response.get_json()
            assert envelope["status"] == "Fail" and envelope["data"] is None
            return Reply(response.status_code, "", None, envelope["message"])
        lines = [json.loads(line) for line in body.split("\n")]
        if "error" in lines[-1]:
            error = lines[-1]["error"]
            return Reply(200, lines[-2]["text"], error["code"], error["message"])
        return Reply(200, lines[-1]["text"])
    if response.status_code != 200:
        assert response.mimetype == "application/json"
        error = response.get_json()["error"]
        if door.startswith("openai"):
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == ("api_error" if response.status_code >= 500
                                     else error["type"])
        return Reply(response.status_code, "", error["code"], error["message"])
    if door == "gpt text":
        text, mark, message = body.partition("[error] ")
        return Reply(200, text.removesuffix("\n") if mark else text, None,
                     message.rstrip("\n") if mark else None)
    if door == "gpt sse":
        events = sse_events(body)
        text = "".join(data.get("content", "") for name, data in events if name == "message")
        name, data = events[-1]
        if name == "error":
            return Reply(200, text, data["error"]["code"], data["error"]["message"])
        return Reply(200, text)
    if door == "gpt json":
        return Reply(200, response.get_json()["content"])
    if door == "openai stream":
        values = [json.loads(block[6:]) for block in body.split("\n\n")
                  if block.startswith("data: ") and block != "data: [DONE]"]
        text = "".join(choice["delta"].get("content") or "" for value in values
                       for choice in value.get("choices", ()))
        if "error" in values[-1]:
            error = values[-1]["error"]
            return Reply(200, text, error["code"], error["message"])
        return Reply(200, text)
    completion = response.get_json()
    return Reply(200, completion["choices"][0]["message"]["content"])


@pytest.fixture()
def ask(upstream, tmp_path):
    """`ask(door, base_url=None, **config)`: one request through `door` of an app in-process
    (against the session's fake upstream unless `base_url` names another), read whole."""
    def ask_(door: str, base_url: str | None = None, **config) -> Reply:
        settings = dict(openai_base_url=base_url or upstream.url,
                        upstream_read_timeout=READ_TIMEOUT, upstream_connect_timeout=1.0,
                        max_stream_seconds=10.0, max_event_bytes=65536, connect_retries=0,
                        conversation_store=f"sqlite:///{tmp_path}/conversations.db")
        settings.update(config)
        client = create_app(make_config(**settings)).test_client()
        path, body, accept = DOORS[door]
        return read_reply(door, client.post(path, json=body, headers={"Accept": accept}))
    return ask_


def assert_error(reply: Reply, door: str, status: int, code: str, *words: str,
                 text: str = "") -> None:
    """The error a client of `door` must get: as the status before the first byte (or for a
    whole reply), else after `text` relayed intact. chat-process's envelope carries only the
    message (its lines the code too); the text framing's `[error]` line only the message."""
    assert reply.message is not None, reply
    for word in words:
        assert word in reply.message, reply
    if door == "chat-process" and reply.code is None:  # an envelope: before the first byte
        assert reply.status == 200
    elif door in WHOLE or reply.status != 200:
        assert (reply.status, reply.code) == (status, code), reply
    else:
        assert (reply.status, reply.text) == (200, text), reply
        assert reply.code == (None if door == "gpt text" else code), reply


ALL_DOORS = pytest.mark.parametrize("door", list(DOORS))


# --- chunked transfer coding, undone by hand (upstream._dechunked) ---------------------------

HELLO = sse_bytes(chunk_json("Hello", role="assistant"))
MORE = sse_bytes(chunk_json(" more"))
END = sse_bytes(chunk_json(finish="stop")) + sse_bytes("[DONE]")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked_by_hand(*parts, hold_open: bool = False) -> Scenario:
    """A chunked body whose framing the test writes itself, byte for byte."""
    return Scenario(headers={"Content-Type": "text/event-stream",
                             "Transfer-Encoding": "chunked"},
                    parts=list(parts), chunked=False, hold_open=hold_open)


@ALL_DOORS
def test_a_connection_closed_mid_chunk_ends_the_reply_with_an_error(ask, upstream, door):
    """The chunk promises 4096 bytes; the event inside it arrives, then the connection
    closes. The event is relayed; the end is an error, never a wait for bytes that cannot
    come (a closed connection reads as empty, again and again)."""
    upstream.push(chunked_by_hand(chunk(HELLO) + b"1000\r\n" + MORE))
    reply = ask(door, upstream_read_timeout=30)  # a wait would be long: the error is not one
    assert_error(reply, door, 502, "upstream_error", "connection to the upstream was lost",
                 text="Hello more")


@ALL_DOORS
def test_a_chunk_without_its_crlf_is_a_broken_body(ask, upstream, door):
    """Without the check, the two bytes in the CRLF's place would be skipped and the rest
    read on as if nothing were wrong."""
    upstream.push(chunked_by_hand(b"%x\r\n%sXX" % (len(HELLO), HELLO) + chunk(MORE) + chunk(END)
                                  + b"0\r\n\r\n"))
    assert_error(ask(door), door, 502, "upstream_error", "broken chunked body", text="Hello")


@ALL_DOORS
def test_a_negative_chunk_size_is_a_broken_body(ask, upstream, door):
    """int() reads '-2' as hex -2: without the check the next line would be taken for the
    chunk size and the reply would go on."""
    upstream.push(chunked_by_hand(chunk(HELLO) + b"-2\r\n" + chunk(MORE) + chunk(END)
                                  + b"0\r\n\r\n"))
    assert_error(ask(door), door, 502, "upstream_error", "broken chunked body", text="Hello")


@ALL_DOORS
def test_a_chunk_size_over_64_bits_is_a_broken_body(ask, upstream, door):
    """A size no 64-bit length can hold (as curl and Go refuse it): without the check the
    events after it would be read as its data, and the reply would end as if whole."""
    upstream.push(chunked_by_hand(chunk(HELLO) + b"1" + b"0" * 16 + b"\r\n" + MORE + END))
    assert_error(ask(door), door, 502, "upstream_error", "broken chunked body", text="Hello")


@ALL_DOORS
@pytest.mark.parametrize("split", ["in one read", "across reads"])
def test_a_chunk_size_line_over_4096_bytes_is_a_broken_body(ask, upstream, door, split):
    """However the network cuts it: a line that holds its end in the same read, or one that
    never ends (without the check the decoder would keep it all and wait for more)."""
    extension = b";" + b"x" * 5000
    if split == "in one read":
        upstream.push(chunked_by_hand(chunk(HELLO) + b"%x%s\r\n%s\r\n" % (
            len(MORE), extension, MORE) + chunk(END) + b"0\r\n\r\n"))
    else:
        upstream.push(chunked_by_hand(chunk(HELLO), b"5", extension, hold_open=True))
    reply = ask(door, upstream_read_timeout=30)
    assert_error(reply, door, 502, "upstream_error", "chunk header too long", text="Hello")


def test_a_huge_chunk_size_is_never_allocated(ask, upstream):
    """A chunk that claims 4 EiB: its bytes are relayed as they come, in bounded memory, and
    the connection closing short of it is an error."""
    upstream.push(chunked_by_hand(chunk(HELLO) + b"4000000000000000\r\n" + MORE))
    tracemalloc.start()
    try:
        reply = ask("gpt sse", upstream_read_timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(reply, "gpt sse", 502, "upstream_error", "connection to the upstream was lost",
                 text="Hello more")
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB"


# --- a whole JSON answer (read before the first byte: UpstreamStream.read_early) -------------

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
              "model": "fake-model", "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant",
                                                              "content": "Hello"}}]}


def json_answer(*parts, length: int | None = None) -> Scenario:
    headers = {"Content-Type": "application/json"}
    if length is not None:
        headers["Content-Length"] = str(length)
    return Scenario(headers=headers, parts=list(parts), chunked=False)


WHOLE_JSON_FAULTS = {  # name: (scenario, status, code, words)
    "stalls": (json_answer(b'{"id": "chatcmpl-1", "choi', 30.0), 504, "upstream_timeout",
               "no data within the read timeout"),
    "breaks": (json_answer(b'{"id": "chatcmpl-1", "choi', length=4000), 502, "upstream_error",
               "could not be read"),
}


@ALL_DOORS
@pytest.mark.parametrize("fault", list(WHOLE_JSON_FAULTS))
def test_a_whole_json_answer_that_stalls_or_breaks_is_an_error_before_the_first_byte(
        ask, upstream, door, fault):
    scenario, status, code, words = WHOLE_JSON_FAULTS[fault]
    upstream.push(scenario)
    reply = ask(door)
    assert reply.text == "" and (reply.status != 200 or door == "chat-process"), reply
    assert_error(reply, door, status, code, words)
    record = upstream.wait_for_request()
    assert record.completed.is_set() or record.disconnected.wait(10)  # nothing left open


@pytest.mark.parametrize("fault", list(WHOLE_JSON_FAULTS))
def test_a_whole_json_answer_that_stalls_or_breaks_fails_over(fault, trio):
    a, b = trio[:2]
    a.push(WHOLE_JSON_FAULTS[fault][0])
    client = two_upstreams(a.url, b.url)
    response = client.post("/api/gpt/get", json={"message": "hi"})
    assert response.get_data(as_text=True) == "Hello, world!"
    assert (len(a.records), len(b.records)) == (1, 1)


@ALL_DOORS
def test_a_whole_json_answer_over_max_event_bytes_is_an_error_in_bounded_memory(
        ask, upstream, door):
    huge = json.dumps(dict(COMPLETION, choices=[{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "x" * 16_000_000}}])).encode()
    upstream.push(json_answer(*(huge[i:i + 65536] for i in range(0, len(huge), 65536))))
    tracemalloc.start()
    try:
        reply = ask(door, max_event_bytes=1_048_576)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_error(reply, door, 502, "upstream_error", "JSON body larger than 1048576 bytes")
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB while a 16 MB body arrived"


@ALL_DOORS
def test_a_whole_json_answer_that_is_not_utf8_is_a_clean_error(ask, upstream, door):
    body = json.dumps(COMPLETION).encode().replace(b'"Hello"', b'"Hel\xff\xfelo"')
    upstream.push(json_answer(body))
    assert_error(ask(door), door, 502, "upstream_error", "not UTF-8")


def test_a_whole_json_answer_is_relayed_through_every_door(ask, upstream):
    """The counterpart of the faults above: the same answer, whole, is the reply."""
    for door in DOORS:
        upstream.push(json_answer(json.dumps(COMPLETION).encode()))
        reply = ask(door)
        assert (reply.status, reply.text, reply.message) == (200, "Hello", None), door


# --- TLS, and statuses that mean a timeout ---------------------------------------------------

@pytest.fixture(scope="module")
def trio():
    servers = [FakeUpstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _empty_trio(request):
    if "trio" in request.fixturenames:
        for server in request.getfixturevalue("trio"):
            server.reset()


def two_upstreams(first: str, second: str, **overrides):
    """An app whose upstreams are `first`, then `second` (connections not retried)."""
    config = load_config({}, openai_model="fake-model", connect_retries=0,
                         database_url=TEST_DATABASE,
                         upstream_read_timeout=READ_TIMEOUT, upstream_connect_timeout=1.0,
                         upstreams=(UpstreamSpec("first", first, TEST_KEY, priority=1),
                                    UpstreamSpec("second", second, TEST_KEY, priority=2)),
                         **overrides)
    return create_app(config).test_client()


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to `handle(conn)` (in a thread of
    its own) and closes it afterwards: an upstream that speaks whatever the test writes."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.handle(conn)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in the thread
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def answers_http_to_anything(conn: socket.socket) -> None:
    """What a plain HTTP server does with a TLS ClientHello: a 400, then it hangs up."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.fixture()
def plain_http_server():
    server = RawServer(answers_http_to_anything)
    yield server
    server.close()


@pytest.fixture(scope="module")
def untrusted_tls(self_signed_cert):
    """The fake upstream over HTTPS with a certificate no CA vouches for."""
    cert, key = self_signed_cert
    server = FakeUpstream(tls=(str(cert), str(key))).start()
    yield server
    server.stop()


@pytest.fixture()
def tls_fault(request, plain_http_server, untrusted_tls, monkeypatch):
    """The https:// base URL of a server whose TLS handshake fails, and how it fails."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    if request.param == "untrusted certificate":
        untrusted_tls.reset()
        return f"https://127.0.0.1:{untrusted_tls.port}/v1"
    return f"https://127.0.0.1:{plain_http_server.port}/v1"


TLS_FAULTS = pytest.mark.parametrize("tls_fault", ["untrusted certificate",
                                                   "plain HTTP on an https URL"],
                                     indirect=True)


@TLS_FAULTS
@pytest.mark.parametrize("door", ["gpt sse", "openai stream", "chat-process"])
def test_a_failed_tls_handshake_is_a_503_that_says_so(ask, tls_fault, door):
    reply = ask(door, base_url=tls_fault)
    assert_error(reply, door, 503, "upstream_unavailable", "TLS handshake failed")


@TLS_FAULTS
def test_a_failed_tls_handshake_fails_over(tls_fault, trio):
    b = trio[1]
    client = two_upstreams(tls_fault, b.url)
    response = client.post("/api/gpt/get", json={"message": "hi"})
    assert response.get_data(as_text=True) == "Hello, world!" and len(b.records) == 1


@pytest.mark.parametrize("status", [408, 504])
@pytest.mark.parametrize("door", ["gpt sse", "openai whole", "chat-process"])
def test_an_upstream_408_or_504_is_our_504(ask, upstream, status, door):
    upstream.push(json_scenario(status, {"error": {"message": "took too long"}}))
    reply = ask(door)
    assert_error(reply, door, 504, "upstream_timeout", f"HTTP {status}", "took too long")


@pytest.mark.parametrize("status", [408, 504])
def test_an_upstream_408_or_504_fails_over(trio, status):
    a, b = trio[:2]
    a.push(json_scenario(status, {"error": {"message": "took too long"}}))
    client = two_upstreams(a.url, b.url)
    response = client.post("/api/gpt/get", json={"message": "hi"})
    assert response.get_data(as_text=True) == "Hello, world!"
    assert (len(a.records), len(b.records)) == (1, 1)


# --- /v1 stream: false, the upstream failing mid-body ----------------------------------------

MID_BODY = {  # name: (scenario, status, code, words)
    "stalls": (Scenario(parts=[HELLO, 30.0]), 504, "upstream_timeout", "timed out"),
    "is cut mid-event": (Scenario(parts=[HELLO, MORE[:20]], chunked=False), 502,
                         "upstream_error", "malformed"),
    "closes before its end": (Scenario(parts=[HELLO], chunked=False), 502, "upstream_error",
                              "ended early"),
    "sends an error chunk": (Scenario(parts=[HELLO, sse_bytes({"error": {
        "message": "the model crashed", "type": "server_error"}})]), 502, "upstream_error",
        "the model crashed"),
}


@pytest.mark.parametrize("fault", list(MID_BODY))
def test_a_whole_completion_whose_upstream_fails_mid_body_is_openais_error_shape(
        ask, upstream, fault):
    """The upstream streams although asked for one object, and fails after a token: the
    client of `stream: false` gets no partial completion but the error, with its status."""
    scenario, status, code, words = MID_BODY[fault]
    upstream.push(scenario)
    reply = ask("openai whole")
    assert_error(reply, "openai whole", status, code, words)


# --- a client that leaves while the upstreams are tried in turn -------------------------------

def test_failover_stops_when_the_client_has_left(trio):
    """Checked between attempts too (where no attempt is in flight to interrupt): a client
    gone after the first upstream failed is never given to the next one."""
    a, b = trio[:2]
    a.push(json_scenario(500, {"error": {"message": "down"}}))
    config = load_config({}, openai_model="fake-model", upstreams=(
        UpstreamSpec("a", a.url, TEST_KEY, priority=1),
        UpstreamSpec("b", b.url, TEST_KEY, priority=2)))
    upstreams = Upstreams(config, sleep=lambda seconds: None)
    with pytest.raises(ClientLeft):
        upstreams.open({"model": "fake-model", "messages": USER}, gone=lambda: True)
    assert (len(a.records), b.records) == (1, [])


@pytest.fixture(scope="module")
def failover_server(trio, tmp_path_factory):
    """gunicorn (gevent) over three upstreams tried in turn, each with the full timeouts."""
    folder = tmp_path_factory.mktemp("failover")
    listed = "".join(f'[[upstream]]\nname = "{name}"\nbase_url = "{server.url}"\n'
                     f'key_env = "OPENAI_API_KEY"\npriority = {i}\n\n'
                     for i, (name, server) in enumerate(zip("abc", trio, strict=True), 1))
    (folder / "upstreams.toml").write_text(listed)
    with serve(trio[0], folder, UPSTREAMS_FILE=str(folder / "upstreams.toml"),
               FAILOVER_SECONDS="60", UPSTREAM_READ_TIMEOUT="30", CONNECT_RETRIES="0",
               UPSTREAM_FAILURES="1000",
               CONVERSATION_STORE=f"sqlite:///{folder}/conversations.db") as server:
        yield server


def send(server, door: str, request_id: str) -> socket.socket:
    """A request on a plain socket, so the test can hang up at any moment."""
    path, body, accept = DOORS[door]
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Accept: {accept}\r\nX-Request-Id: {request_id}\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("door", ["gpt sse", "openai whole", "chat-process"])
def test_a_client_leaving_during_failover_stops_the_attempts_within_a_second(
        failover_server, trio, door):
    a, b, c = trio
    a.push(json_scenario(500, {"error": {"message": "down"}}))
    b.push(Scenario(head_delay=30, parts=[sse_bytes(chunk_json("late"))]))
    request_id = uuid.uuid4().hex
    sock = send(failover_server, door, request_id)
    record = b.wait_for_request()  # a failed; b is being tried
    assert len(a.records) == 1 and not record.disconnected.is_set()
    closed_at = time.monotonic()
    sock.close()
    assert record.seconds_to_close(closed_at) < 1.0
    failover_server.wait_for_log(f"id={request_id}", "status=499", "upstream=b tried=2")
    assert c.records == []


# --- an exception no route expected -----------------------------------------------------------

@pytest.mark.parametrize("door", ["gpt sse", "openai whole", "chat-process"])
def test_an_unexpected_exception_is_a_500_naming_the_request_with_no_traceback(
        upstream, tmp_path, monkeypatch, caplog, door):
    from gpt_proxy.pipeline import stages as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("a bug with a secret inside")

    monkeypatch.setattr(pipeline, "payload", broken)
    caplog.set_level(logging.INFO)
    client = create_app(make_config(
        openai_base_url=upstream.url,
        conversation_store=f"sqlite:///{tmp_path}/conversations.db")).test_client()
    path, body, accept = DOORS[door]
    response = client.post(path, json=body, headers={"Accept": accept})
    request_id = response.headers["X-Request-Id"]
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "secret" not in text and "RuntimeError" not in text
    reply = read_reply(door, response)
    if door == "chat-process":
        assert reply.status == 200  # the envelope its frontends show
    else:
        assert (reply.status, reply.code) == (500, "internal_error")
    assert reply.message == f"internal error (request {request_id}); see the server log"
    (logged,) = [r for r in caplog.records if r.name == "gpt_proxy" and r.exc_info]
    assert f"id={request_id}" in logged.getMessage() and logged.exc_info[0] is RuntimeError
    assert "status=500" in access_line(caplog, response)
    assert upstream.records == []
