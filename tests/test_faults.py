"""Faults from the upstream: each gives the client a clear error, in every framing, in bounded
memory, ended by the limit meant for it (its error says which), and the service keeps serving
everyone else.

In-process (Flask's test client against the real fake upstream) with small timeouts, then the
same faults all at once against one real gunicorn worker. Nothing here times the machine: a
test asserts which error ended a reply, the order of events, or a count.
"""

from __future__ import annotations

import random
import socket
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from gpt_proxy import create_app

from .conftest import TEST_KEY, free_port, make_config, serve, sse_events, until
from .fake_upstream import Scenario, chunk_json, openai_stream, sse_bytes

CHAT = "/api/gpt/get"
SSE, JSON, TEXT = "text/event-stream", "application/json", "*/*"
READ_TIMEOUT, MAX_STREAM = 0.3, 0.6


def fault_client(base_url, **overrides):
    settings = dict(upstream_read_timeout=READ_TIMEOUT, upstream_connect_timeout=1.0,
                    max_stream_seconds=MAX_STREAM, max_event_bytes=65536)
    settings.update(overrides)
    return create_app(make_config(openai_base_url=base_url, **settings)).test_client()


def ask(client, accept):
    response = client.post(CHAT, json={"message": "hi"}, headers={"Accept": accept})
    return response, response.get_data(as_text=True)


def client_error(response, text, accept) -> tuple[int, str, str]:
    """(HTTP status, error code or '', message) as this framing carries it."""
    assert "Traceback" not in text and TEST_KEY not in text
    if response.status_code != 200:
        assert response.mimetype == "application/json"
        error = response.get_json()["error"]
        return response.status_code, error["code"], error["message"]
    if accept == SSE:
        name, data = sse_events(text)[-1]
        assert name == "error", text[-300:]
        return 200, data["error"]["code"], data["error"]["message"]
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("[error] "), text[-300:]
    return 200, "", last[8:]


def assert_still_serving(client):
    response, text = ask(client, TEXT)
    assert response.status_code == 200 and text == "Hello, world!"


# --- before the first byte ------------------------------------------------------------------

@pytest.fixture()
def silent_server():
    """Accepts TCP connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture()
def hangup_server():
    """Accepts each connection, reads the request, and closes without a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                except OSError:
                    pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    thread.join(2)
    sock.close()


@pytest.mark.parametrize("accept", [SSE, JSON, TEXT])
def test_connection_refused_is_503(upstream, accept):
    response, text = ask(fault_client(f"http://127.0.0.1:{free_port()}/v1"), accept)
    assert client_error(response, text, accept)[:2] == (503, "upstream_unavailable")


@pytest.mark.parametrize("accept", [SSE, JSON, TEXT])
def test_timeout_before_the_headers_is_504(silent_server, accept):
    response, text = ask(fault_client(silent_server), accept)
    status, code, message = client_error(response, text, accept)
    assert (status, code) == (504, "upstream_timeout") and "before it answered" in message


def test_connection_closed_without_an_answer_is_a_clean_error(hangup_server):
    response, text = ask(fault_client(hangup_server), SSE)
    status, code, _ = client_error(response, text, SSE)
    assert (status, code) in ((502, "upstream_error"), (503, "upstream_unavailable"))


# --- during the stream ----------------------------------------------------------------------

HELLO = sse_bytes(chunk_json("Hello", role="assistant"))
BIG = b"x" * 65536  # one object, sent many times: the fake upstream holds no copies
rng = random.Random(7)
GARBAGE = bytes(rng.randrange(256) for _ in range(4096))

MID_STREAM = {  # name: (scenario, error code, words of the message)
    "stall": (Scenario(parts=[HELLO, 30.0]), "upstream_timeout", "timed out"),
    "random bytes": (Scenario(parts=[HELLO, GARBAGE, b"\n\n"], chunked=False), "upstream_error",
                     ""),
    "invalid utf-8": (Scenario(parts=[HELLO, b"data: {\"x\": \"\xff\xfe\xc3\"}\n\n"]),
                      "upstream_error", "UTF-8"),
    "nul and control bytes": (Scenario(parts=[HELLO, b"data: \x00\x01\x02\x1b[31m\n\n"]),
                              "upstream_error", "malformed"),
    "cut mid-event": (Scenario(parts=[HELLO, HELLO[:20]], chunked=False), "upstream_error",
                      "malformed"),
    "closed before the end": (Scenario(parts=[HELLO, HELLO], chunked=False), "upstream_error",
                              "ended early"),
    "broken chunked framing": (Scenario(headers={"Content-Type": "text/event-stream",
                                                 "Transfer-Encoding": "chunked"},
                                        parts=[b"%x\r\n%s\r\n" % (len(HELLO), HELLO),
                                               b"zz\r\nnot a chunk\r\n"], chunked=False),
                               "upstream_error", ""),
    "a line of megabytes": (Scenario(parts=[HELLO, b"data: "] + [BIG] * 256), "upstream_error",
                            "grew past"),
    "an event of megabytes": (Scenario(parts=[HELLO] + [b"data: " + BIG[:8000] + b"\n"] * 2000),
                              "upstream_error", "grew past"),
    "never ends": (Scenario(parts=[HELLO] + [sse_bytes(chunk_json(" more")), 0.02] * 5000),
                   "upstream_timeout", "cut off"),
    "only comments, forever": (Scenario(parts=[HELLO] + [b": ping\n\n", 0.02] * 5000),
                               "upstream_timeout", "cut off"),
}


@pytest.mark.parametrize("accept", [SSE, JSON, TEXT])
@pytest.mark.parametrize("name", list(MID_STREAM))
def test_a_fault_mid_stream_is_a_clear_error_and_the_upstream_is_closed(upstream, name, accept):
    scenario, code, words = MID_STREAM[name]
    upstream.push(scenario)
    client = fault_client(upstream.url)
    response, text = ask(client, accept)
    status, got_code, message = client_error(response, text, accept)
    assert words in message and message
    if accept == JSON:
        assert status in (502, 504) and got_code == code
    else:
        assert status == 200 and got_code in ("", code) and text.count("Hello") >= 1
    record = upstream.wait_for_request()
    until(lambda: record.completed.is_set() or record.disconnected.is_set(),
          "the upstream connection was left open")  # it ended, or we hung up on it
    assert_still_serving(client)


@pytest.mark.parametrize("accept", [SSE, TEXT])
def test_a_web_page_instead_of_a_stream_is_a_502_before_the_first_byte(upstream, accept):
    upstream.push(Scenario(headers={"Content-Type": "text/html; charset=utf-8"},
                           parts=[b"<html><body>Welcome to nginx!</body></html>"]))
    response, text = ask(fault_client(upstream.url), accept)
    status, code, message = client_error(response, text, accept)
    assert (status, code) == (502, "upstream_error") and "OPENAI_BASE_URL" in message


def test_done_then_an_open_connection_does_not_hold_the_reply(upstream):
    """[DONE] ends the reply although the upstream keeps its body open: the reply ends whole
    (waiting for the body's end would end it with the read timeout's error instead), and it
    is we who close the upstream."""
    upstream.push(Scenario(parts=[openai_stream(["Hello", "!"])], hold_open=True))
    response, text = ask(fault_client(upstream.url, upstream_read_timeout=10,
                                      max_stream_seconds=20), TEXT)
    assert response.status_code == 200 and text == "Hello!"
    record = upstream.wait_for_request()
    assert record.disconnected.wait(10) and not record.completed.is_set()


def test_a_line_of_many_megabytes_is_read_in_bounded_memory(upstream):
    upstream.push(Scenario(parts=[HELLO, b"data: "] + [BIG] * 512))  # 32 MB, no line end
    client = fault_client(upstream.url, max_event_bytes=1_048_576)
    tracemalloc.start()
    try:
        response, text = ask(client, SSE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert client_error(response, text, SSE)[1] == "upstream_error"
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB while a 32 MB line arrived"
    assert not upstream.wait_for_request().completed.is_set()


def test_a_slow_fault_does_not_hold_up_other_requests(upstream):
    """While one reply runs on an upstream that never ends (it ends here only when its client
    leaves), other requests are answered."""
    upstream.push(MID_STREAM["never ends"][0])
    client = fault_client(upstream.url, max_stream_seconds=60)
    first_bytes, leave = threading.Event(), threading.Event()

    def stuck() -> str:
        response = client.post(CHAT, json={"message": "hi"}, headers={"Accept": SSE},
                               buffered=False)
        received = b""
        try:
            for data in response.response:
                received += data
                first_bytes.set()
                if leave.is_set():
                    break
        finally:
            response.close()
        return received.decode()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stuck)
        try:
            assert first_bytes.wait(10)
            for _ in range(3):
                assert_still_serving(client)
            record = upstream.records[0]
            assert not running.done() and not record.disconnected.is_set()  # still relaying
        finally:
            leave.set()
        assert "Hello" in running.result(timeout=10)
    assert record.disconnected.wait(10)  # the client left: the upstream was closed


# --- the same faults at once, against one gunicorn worker ------------------------------------

@pytest.fixture(scope="module")
def one_worker(fake_upstream, tmp_path_factory):
    """One worker whose read timeout ends a stalled stream soon, but whose MAX_STREAM_SECONDS
    no test waits for: a reply that never ends runs until its client leaves."""
    with serve(fake_upstream, tmp_path_factory.mktemp("faults"), HEARTBEAT_SECONDS="1",
               UPSTREAM_READ_TIMEOUT="1", MAX_STREAM_SECONDS="120",
               MAX_EVENT_BYTES="1048576") as server:
        yield server


def worker_of(server) -> psutil.Process:
    until(lambda: psutil.Process(server.proc.pid).children(), "no gunicorn worker")
    return psutil.Process(server.proc.pid).children()[0]


def test_faults_at_once_leave_the_worker_serving_others(one_worker, upstream):
    worker = worker_of(one_worker)
    requests.get(f"{one_worker.url}/healthz", timeout=5).raise_for_status()
    rss_before = worker.memory_info().rss
    faults = ["stall", "a line of megabytes", "random bytes", "cut mid-event"]

    def stream():
        return requests.post(f"{one_worker.url}{CHAT}", json={"message": "hi"},
                             headers={"Accept": SSE}, timeout=30).text

    with ThreadPoolExecutor(len(faults)) as pool:
        upstream.push(MID_STREAM["never ends"][0])
        endless = requests.post(f"{one_worker.url}{CHAT}", json={"message": "hi"},
                                headers={"Accept": SSE}, stream=True, timeout=30)
        try:
            chunks, received = endless.iter_content(None), b""  # (a loop left would close it)
            while b"Hello" not in received:
                received += next(chunks)  # each read bounded by the timeout
            running = []
            for count, name in enumerate(faults, start=2):
                upstream.push(MID_STREAM[name][0])
                running.append(pool.submit(stream))
                upstream.wait_for_request(count)  # each fault got its own scenario, in order
            for _ in range(5):
                response = requests.post(f"{one_worker.url}{CHAT}", json={"message": "hi"},
                                         timeout=30)
                assert response.text == "Hello, world!"
            assert not upstream.records[0].disconnected.is_set()  # the endless one still runs
            results = [f.result(timeout=30) for f in running]
        finally:
            endless.close()
    assert upstream.records[0].disconnected.wait(10)
    for name, text in zip(faults, results, strict=True):
        name_, data = sse_events(text)[-1]
        assert name_ == "error" and data["error"]["code"] == MID_STREAM[name][1], name
    assert worker.is_running() and worker_of(one_worker).pid == worker.pid
    assert worker.memory_info().rss - rss_before < 40_000_000
    assert "Traceback" not in one_worker.logs()
