"""Faults from the upstream: each gives the client a clear error, in every framing, within a
bounded time and memory, and the service keeps serving everyone else.

In-process (Flask's test client against the real fake upstream) with small timeouts, then the
same faults all at once against one real gunicorn worker.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from gpt_proxy import create_app

from .conftest import TEST_KEY, Gunicorn, free_port, make_config, sse_events
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
    started = time.monotonic()
    response = client.post(CHAT, json={"message": "hi"}, headers={"Accept": accept})
    text = response.get_data(as_text=True)
    return response, text, time.monotonic() - started


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
    response, text, elapsed = ask(client, TEXT)
    assert response.status_code == 200 and text == "Hello, world!" and elapsed < 2


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
    response, text, elapsed = ask(fault_client(f"http://127.0.0.1:{free_port()}/v1"), accept)
    assert client_error(response, text, accept)[:2] == (503, "upstream_unavailable")
    assert elapsed < 2


@pytest.mark.parametrize("accept", [SSE, JSON, TEXT])
def test_timeout_before_the_headers_is_504(silent_server, accept):
    response, text, elapsed = ask(fault_client(silent_server), accept)
    assert client_error(response, text, accept)[:2] == (504, "upstream_timeout")
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 2


def test_connection_closed_without_an_answer_is_a_clean_error(hangup_server):
    response, text, _ = ask(fault_client(hangup_server), SSE)
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
    response, text, elapsed = ask(client, accept)
    status, got_code, message = client_error(response, text, accept)
    assert words in message and message
    if accept == JSON:
        assert status in (502, 504) and got_code == code
    else:
        assert status == 200 and got_code in ("", code) and text.count("Hello") >= 1
    assert elapsed < MAX_STREAM + 1.5
    record = upstream.wait_for_request()
    deadline = time.monotonic() + 3  # the upstream's response ended, or we hung up on it
    while not (record.completed.is_set() or record.disconnected.is_set()):
        assert time.monotonic() < deadline, "the upstream connection was left open"
        record.disconnected.wait(0.02)
    assert_still_serving(client)


@pytest.mark.parametrize("accept", [SSE, TEXT])
def test_a_web_page_instead_of_a_stream_is_a_502_before_the_first_byte(upstream, accept):
    upstream.push(Scenario(headers={"Content-Type": "text/html; charset=utf-8"},
                           parts=[b"<html><body>Welcome to nginx!</body></html>"]))
    response, text, _ = ask(fault_client(upstream.url), accept)
    status, code, message = client_error(response, text, accept)
    assert (status, code) == (502, "upstream_error") and "OPENAI_BASE_URL" in message


def test_done_then_an_open_connection_does_not_hold_the_reply(upstream):
    upstream.push(Scenario(parts=[openai_stream(["Hello", "!"])], hold_open=True))
    response, text, elapsed = ask(fault_client(upstream.url, upstream_read_timeout=10,
                                               max_stream_seconds=20), TEXT)
    assert response.status_code == 200 and text == "Hello!" and elapsed < 2


def test_a_line_of_many_megabytes_is_read_in_bounded_memory(upstream):
    upstream.push(Scenario(parts=[HELLO, b"data: "] + [BIG] * 512))  # 32 MB, no line end
    client = fault_client(upstream.url, max_event_bytes=1_048_576)
    tracemalloc.start()
    try:
        response, text, _ = ask(client, SSE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert client_error(response, text, SSE)[1] == "upstream_error"
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB while a 32 MB line arrived"
    assert not upstream.wait_for_request().completed.is_set()


def test_a_slow_fault_does_not_hold_up_other_requests(upstream):
    upstream.push(MID_STREAM["never ends"][0])
    client = fault_client(upstream.url, max_stream_seconds=1.5)
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(ask, client, SSE)
        upstream.wait_for_request()
        for _ in range(3):
            assert_still_serving(client)
        assert not stuck.done()
        response, text, elapsed = stuck.result(timeout=10)
    assert client_error(response, text, SSE)[1] == "upstream_timeout"


# --- the same faults at once, against one gunicorn worker ------------------------------------

@pytest.fixture(scope="module")
def one_worker(fake_upstream, tmp_path_factory):
    server = Gunicorn({"OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": fake_upstream.url,
                       "OPENAI_MODEL": "fake-model", "HEARTBEAT_SECONDS": "1",
                       "UPSTREAM_READ_TIMEOUT": "1", "MAX_STREAM_SECONDS": "2",
                       "MAX_EVENT_BYTES": "1048576", "WEB_CONCURRENCY": "1"},
                      tmp_path_factory.mktemp("faults") / "gunicorn.log")
    yield server
    server.stop()


def worker_of(server) -> psutil.Process:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = psutil.Process(server.proc.pid).children()
        if children:
            return children[0]
        time.sleep(0.05)  # polling for the worker to be forked
    raise RuntimeError("no gunicorn worker")


def test_faults_at_once_leave_the_worker_serving_others(one_worker, upstream):
    worker = worker_of(one_worker)
    requests.get(f"{one_worker.url}/healthz", timeout=5).raise_for_status()
    rss_before = worker.memory_info().rss
    faults = ["stall", "a line of megabytes", "never ends", "random bytes", "cut mid-event"]

    def stream():
        started = time.monotonic()
        response = requests.post(f"{one_worker.url}{CHAT}", json={"message": "hi"},
                                 headers={"Accept": SSE}, timeout=15)
        return response.text, time.monotonic() - started

    with ThreadPoolExecutor(len(faults)) as pool:
        running = []
        for count, name in enumerate(faults, start=1):
            upstream.push(MID_STREAM[name][0])
            running.append(pool.submit(stream))
            upstream.wait_for_request(count)  # each fault got its own scenario, in order
        for _ in range(5):
            started = time.monotonic()
            response = requests.post(f"{one_worker.url}{CHAT}", json={"message": "hi"},
                                     timeout=5)
            assert response.text == "Hello, world!" and time.monotonic() - started < 1
        assert sum(not f.done() for f in running) >= 2  # they were still running meanwhile
        results = [f.result(timeout=15) for f in running]
    for name, (text, elapsed) in zip(faults, results, strict=True):
        name_, data = sse_events(text)[-1]
        assert name_ == "error" and data["error"]["code"] == MID_STREAM[name][1], name
        assert elapsed < 5, name
    assert worker.is_running() and worker_of(one_worker).pid == worker.pid
    assert worker.memory_info().rss - rss_before < 40_000_000
    assert "Traceback" not in one_worker.logs()
