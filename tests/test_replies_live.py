"""Resumable replies under the real stack: two gunicorn instances (gevent) sharing a real
redis-server, behind Debian's nginx taking turns between them. A client cut off mid-reply
comes back through nginx, lands on the other instance, and gets exactly the rest while the
upstream is asked once; nobody coming back closes the upstream after the grace period; a
cancel sent to the other instance closes it within a second; a HEAD of a streaming reply
(`curl -I`), to either instance, changes nothing (also with the memory store).

Waiting is on events (the fake upstream's records, the stream's own bytes, a log line),
never a sleep; the one time bounds asserted are the README's promises (the grace period,
and a cancel within 1 s)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import time

import pytest
import requests

from .browser_helpers import missing
from .conftest import serve, sse_blocks
from .fake_upstream import Scenario, chunk_json, sse_bytes
from .processes import Nginx, nginx_binary
from .test_operations import workers
from .test_replies import LONG, LONG_TEXT, RESUMABLE, gated, ids_of, text_of

GRACE = 2.0
NGINX_SERVER = """    upstream pair {{
        server 127.0.0.1:%d;
        server 127.0.0.1:%d;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://pair;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
        }}
    }}"""


@pytest.fixture(scope="module")
def pair(fake_upstream, redis_url, tmp_path_factory):
    """(the two instances, nginx's port): replies in the session's redis-server, a grace
    period of GRACE seconds, heartbeats every half second."""
    if not nginx_binary():
        missing("nginx is not installed (apt-get install nginx)")
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(serve(
            fake_upstream, tmp_path_factory.mktemp(f"instance-{i}"), REPLY_STORE=redis_url,
            RESUME_GRACE_SECONDS=str(GRACE), HEARTBEAT_SECONDS="0.5", TRUSTED_PROXIES="1"))
            for i in range(2)]
        nginx = Nginx(NGINX_SERVER % (servers[0].port, servers[1].port))
        stack.callback(nginx.stop)
        yield servers, nginx.port


class Stream:
    """One streamed request on a TCP connection of its own: its SSE events as they come
    ((id, event name, JSON data); comments skipped), and `cut()`, which resets the
    connection as a network that drops it would."""

    def __init__(self, port: int, method: str, path: str, body: dict | None = None,
                 headers: dict | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={
            "Content-Type": "application/json", **(headers or {})})
        self.response = self.conn.getresponse()
        self.buffer = b""
        self.comments = 0

    def header(self, name: str) -> str:
        return self.response.getheader(name) or ""

    def _parsed(self) -> list:
        events = []
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            for event_id, name, data, comments in sse_blocks(block.decode("utf-8")):
                self.comments += comments
                if data is not None:
                    events.append((event_id, name, json.loads(data)))
        return events

    def read(self) -> tuple[list, bool]:
        """What the next network read brings: its events, and whether the body ended."""
        piece = self.response.read1(65536)
        self.buffer += piece
        return self._parsed(), not piece

    def events(self, count: int) -> list:
        found: list = []
        while len(found) < count:
            more, ended = self.read()
            found += more
            assert not ended, f"the stream ended after {len(found)} events: {found}"
        assert len(found) == count, found  # no more than asked: the upstream waits at a gate
        return found

    def rest(self) -> list:
        found: list = []
        while True:
            more, ended = self.read()
            found += more
            if ended:
                return found

    def cut(self) -> None:
        """A reset, not a goodbye: SO_LINGER 0 makes close() send RST."""
        sock = self.conn.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.conn.close()


def served_by(servers, request_id: str) -> int:
    """Which instance wrote the access line of request `request_id`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [i for i, server in enumerate(servers) if f"id={request_id} " in server.logs()]
        if found:
            return found[0]
        time.sleep(0.05)  # polling the log files for a line; not synchronising a test
    raise AssertionError(f"no instance logged request {request_id}")


def test_a_client_cut_off_mid_reply_resumes_on_the_other_instance(pair, upstream):
    servers, port = pair
    scenario, gate = gated(LONG, 10)
    upstream.push(scenario)
    first = Stream(port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
    assert first.response.status == 200
    before = first.events(11)  # the reply's id, then ten events
    reply_id, asked_id = first.header("X-Reply-Id"), first.header("X-Request-Id")
    assert before[0][1:] == ("reply", {"reply_id": reply_id, "grace_seconds": GRACE,
                                       "heartbeat_seconds": 0.5})
    first.cut()
    record = upstream.wait_for_request()

    second = Stream(port, "GET", f"/api/replies/{reply_id}",
                    headers={"Last-Event-ID": before[-1][0]})
    assert second.response.status == 200
    # Attached past the grace period: the reply goes on, since a client follows it (its
    # heartbeats are what arrives meanwhile).
    attached_until = time.monotonic() + GRACE + 1
    while time.monotonic() < attached_until:
        assert second.read() == ([], False)
    assert second.comments >= 2 and not record.disconnected.is_set()
    gate.set()
    after = second.rest()

    events = before + after
    assert ids_of(events) == list(range(len(events)))  # none lost, none twice
    assert text_of(events) == LONG_TEXT  # byte for byte the upstream's
    assert after[-1][1] == "done"
    assert len(upstream.records) == 1  # asked once
    holder = served_by(servers, asked_id)
    follower = served_by(servers, second.header("X-Request-Id"))
    assert {holder, follower} == {0, 1}  # resumed on the other instance
    assert "resumable=detached" in servers[holder].wait_for_log(f"id={asked_id} ",
                                                                "result=ok")


def _held_reply(upstream, tokens: int = 5) -> Scenario:
    """A reply that sends `tokens` tokens, then holds its connection open."""
    return Scenario(parts=[sse_bytes(chunk_json(f"t{i} ")) for i in range(tokens)],
                    hold_open=True)


def test_nobody_coming_back_closes_the_upstream_after_the_grace_period(pair, upstream):
    servers, _ = pair
    upstream.push(_held_reply(upstream))
    client = Stream(servers[0].port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
    client.events(6)
    cut_at = time.monotonic()
    client.cut()
    closed = upstream.wait_for_request().seconds_to_close(cut_at, wait=GRACE + 10)
    assert GRACE <= closed <= GRACE + 1, closed
    servers[0].wait_for_log(f"id={client.header('X-Request-Id')} ", "result=client_left",
                            "resumable=abandoned")
    kept = requests.get(f"{servers[1].url}/api/replies/{client.header('X-Reply-Id')}",
                        headers={"Last-Event-ID": "5"}, timeout=10)
    assert '"code":"abandoned"' in kept.text  # the log says why it stopped


def test_a_cancel_sent_to_the_other_instance_stops_a_reply_within_a_second(pair, upstream):
    servers, _ = pair
    upstream.push(_held_reply(upstream))
    client = Stream(servers[0].port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
    client.events(6)
    asked = time.monotonic()
    cancel = requests.delete(f"{servers[1].url}/api/replies/{client.header('X-Reply-Id')}",
                             timeout=10)
    assert (cancel.status_code, cancel.json()["state"]) == (202, "cancelling")
    assert upstream.wait_for_request().seconds_to_close(asked) < 1.0
    rest = client.rest()  # still attached: told why it ended
    assert rest[-1][1:] == ("error", {"error": {
        "code": "cancelled", "message": "the reply was cancelled (DELETE /api/replies/<id>)",
        "status": 499}})


def test_a_cancel_stops_a_reply_whose_client_left_within_a_second(pair, upstream):
    servers, _ = pair
    upstream.push(_held_reply(upstream))
    client = Stream(servers[1].port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
    client.events(6)
    client.cut()
    record = upstream.wait_for_request()
    asked = time.monotonic()
    cancel = requests.delete(f"{servers[0].url}/api/replies/{client.header('X-Reply-Id')}",
                             timeout=10)
    assert cancel.status_code == 202
    assert record.seconds_to_close(asked) < 1.0
    servers[1].wait_for_log(f"id={client.header('X-Request-Id')} ", "resumable=cancelled")


def test_a_client_following_a_reply_takes_it_over_from_a_connection_still_open(pair, upstream):
    """A phone that changed networks: its first connection never closed (it is merely not
    read any more). The client that follows the reply drives it from then on: the first
    response ends, and the rest reaches the follower."""
    servers, _ = pair
    scenario, gate = gated(LONG, 10)
    upstream.push(scenario)
    first = Stream(servers[0].port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
    before = first.events(11)
    follower = Stream(servers[1].port, "GET", f"/api/replies/{first.header('X-Reply-Id')}",
                      headers={"Last-Event-ID": before[-1][0]})
    assert follower.response.status == 200
    assert first.rest() == []  # ended by the takeover, with nothing more
    gate.set()
    after = follower.rest()
    assert text_of(before + after) == LONG_TEXT
    assert ids_of(before + after) == list(range(len(before + after)))
    servers[0].wait_for_log(f"id={first.header('X-Request-Id')} ", "result=ok",
                            "resumable=detached")


def test_a_graceful_reload_lets_a_reply_whose_client_left_finish(pair, upstream, fake_upstream,
                                                                 redis_url, tmp_path):
    """HUP: gunicorn's old worker waits for its open connections, and (gunicorn.conf.py's
    worker_exit) for the replies it reads on without their client, whose ends then reach
    Redis: a client resuming on the other instance gets the whole reply."""
    servers, _ = pair
    with serve(fake_upstream, tmp_path, REPLY_STORE=redis_url, HEARTBEAT_SECONDS="0.5") as holder:
        worker = workers(holder, 1)[0]
        scenario, gate = gated(LONG, 10)
        upstream.push(scenario)
        client = Stream(holder.port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
        before = client.events(11)
        client.cut()
        os.kill(holder.proc.pid, signal.SIGHUP)
        holder.wait_for_log(f"Worker exiting (pid: {worker.pid})", timeout=20)
        gate.set()  # the old worker is exiting: it reads the rest, then goes
        follower = Stream(servers[1].port, "GET", f"/api/replies/{client.header('X-Reply-Id')}",
                          headers={"Last-Event-ID": before[-1][0]})
        after = follower.rest()
        assert text_of(before + after) == LONG_TEXT and after[-1][1] == "done", after
        assert worker.wait(20) is not None or not worker.is_running()


def _head(port: int, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    """A HEAD, as `curl -I` sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("HEAD", path, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _head_changes_nothing(servers: list, holder: int, upstream) -> None:
    """A reply streams from `servers[holder]`; HEADs of it to every instance (and of an unknown
    id) answer the GET's headers; the live client stays attached (its heartbeats go on past
    the follower's lease and the grace period) and reads the reply to its end."""
    scenario, gate = gated(LONG, 10)
    upstream.push(scenario)
    first = Stream(servers[holder].port, "POST", "/api/gpt/get", {"message": "hi"}, RESUMABLE)
    before = first.events(11)
    reply_id = first.header("X-Reply-Id")
    for server in servers:
        for headers in ({}, {"Last-Event-ID": "10"}):
            head = _head(server.port, f"/api/replies/{reply_id}", headers)
            assert head.status == 200, (server.url, head.status)
            assert head.getheader("Content-Type").startswith("text/event-stream")
        assert _head(server.port, f"/api/replies/{'x' * 32}").status == 404
    record = upstream.wait_for_request()
    comments = first.comments
    attached_until = time.monotonic() + GRACE + 1  # past the grace period: nothing ends it
    while time.monotonic() < attached_until:
        assert first.read() == ([], False)
    assert first.comments >= comments + 2 and not record.disconnected.is_set()
    gate.set()
    after = first.rest()
    events = before + after
    assert text_of(events) == LONG_TEXT and after[-1][1] == "done", after[-3:]
    assert ids_of(events) == list(range(len(events)))
    assert len(upstream.records) == 1
    line = servers[holder].wait_for_log(f"id={first.header('X-Request-Id')} ", "result=ok")
    assert "resumable=attached" in line, line  # its client stayed: nothing took it over


def test_a_head_of_a_streaming_reply_changes_nothing_on_any_instance(pair, upstream):
    servers, _ = pair
    _head_changes_nothing(servers, 0, upstream)


def test_a_head_of_a_streaming_reply_changes_nothing_with_the_memory_store(fake_upstream,
                                                                          upstream, tmp_path):
    with serve(fake_upstream, tmp_path, RESUME_GRACE_SECONDS=str(GRACE),
               HEARTBEAT_SECONDS="0.5") as server:
        _head_changes_nothing([server], 0, upstream)
