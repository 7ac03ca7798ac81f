"""Operations under the real gunicorn: a worker killed mid-stream leaves the other worker's
streams whole; a reload (HUP) and a shutdown (TERM) let running streams finish."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from .conftest import serve
from .fake_upstream import Scenario, chunk_json, sse_bytes

TOKENS = [f"t{i} " for i in range(16)]
TEXT = "".join(TOKENS)
PAUSE = 0.1  # between tokens: a stream lasts about 1.6 s


def slow_scenario() -> Scenario:
    parts: list = [sse_bytes(chunk_json("", role="assistant"))]
    for token in TOKENS:
        parts += [sse_bytes(chunk_json(token)), PAUSE]
    parts += [sse_bytes(chunk_json(finish="stop")), b"data: [DONE]\n\n"]
    return Scenario(parts=parts)


@pytest.fixture()
def server(fake_upstream, upstream, tmp_path):
    """A gunicorn of its own (two workers): these tests kill, reload and stop it."""
    with serve(fake_upstream, tmp_path, HEARTBEAT_SECONDS="1", WEB_CONCURRENCY="2",
               GRACEFUL_TIMEOUT="20") as gunicorn:
        workers(gunicorn, 2)
        yield gunicorn


def workers(server, count: int, exclude: frozenset = frozenset()) -> list[psutil.Process]:
    """The master's `count` workers outside `exclude`, once each has booted and serves.

    A worker is known to serve when it answers while every other worker is stopped (SIGSTOP):
    a signal sent to a worker still booting can be lost (gunicorn installs the worker's
    handlers only after the fork), so a test must not reload or stop a half-booted server."""
    deadline = time.monotonic() + 15
    while True:
        found = [p for p in psutil.Process(server.proc.pid).children()
                 if p.pid not in exclude and p.status() != psutil.STATUS_ZOMBIE]
        if len(found) >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn has no {count} workers: {server.logs()[-2000:]}")
        time.sleep(0.05)  # polling for workers to be forked
    everyone = psutil.Process(server.proc.pid).children()
    for worker in found:
        others = [p for p in everyone if p.pid != worker.pid]
        for other in others:
            with contextlib.suppress(psutil.NoSuchProcess):
                other.suspend()
        try:
            requests.get(f"{server.url}/healthz", timeout=15).raise_for_status()
        finally:
            for other in others:
                with contextlib.suppress(psutil.NoSuchProcess):
                    other.resume()
    return found


class Stream:
    """One SSE stream read in a background thread; `first` is set at the first content."""

    def __init__(self, server, pool: list[psutil.Process]) -> None:
        self.pool = pool
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.connect()
        self.local_port = self.conn.sock.getsockname()[1]
        self.server_port = server.port
        self.first = threading.Event()
        self.done = threading.Event()
        self.text, self.error, self.finished = "", None, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn.request("POST", "/api/gpt/get", body=json.dumps({"message": "hi"}),
                              headers={"Content-Type": "application/json",
                                       "Accept": "text/event-stream"})
            response = self.conn.getresponse()
            assert response.status == 200
            event = ""
            while line := response.readline():
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "done":
                        self.finished = True
                    elif "content" in data:
                        self.text += data["content"]
                        self.first.set()
                elif not line:
                    event = ""
        except (OSError, http.client.HTTPException, AssertionError) as exc:
            self.error = exc
        finally:
            self.conn.close()
            self.done.set()

    def worker_pid(self) -> int:
        """The gunicorn worker holding this connection."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for proc in self.pool:
                try:
                    for conn in proc.net_connections("tcp"):
                        if (conn.laddr and conn.raddr and conn.laddr.port == self.server_port
                                and conn.raddr.port == self.local_port):
                            return proc.pid
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.02)  # polling the kernel's connection table
        raise RuntimeError("no worker holds this connection")

    def wait(self, timeout: float = 15) -> Stream:
        assert self.done.wait(timeout), "the stream did not end"
        return self


def open_stream(server, pool) -> Stream:
    stream = Stream(server, pool)
    assert stream.first.wait(10), f"no first token: {stream.error}"
    return stream


def complete(stream: Stream) -> bool:
    return stream.error is None and stream.finished and stream.text == TEXT


def test_a_killed_worker_leaves_the_other_workers_streams_whole(server, upstream):
    pool = workers(server, 2)
    upstream.push(*[slow_scenario() for _ in range(3)])
    victim_stream = open_stream(server, pool)
    victim = victim_stream.worker_pid()
    os.kill(victim, signal.SIGSTOP)  # while it is stopped, only the other worker accepts
    try:
        others = [open_stream(server, pool) for _ in range(2)]
    finally:
        os.kill(victim, signal.SIGCONT)
    assert {s.worker_pid() for s in others} == {next(p.pid for p in pool if p.pid != victim)}
    os.kill(victim, signal.SIGKILL)
    assert not complete(victim_stream.wait())
    for stream in others:
        assert complete(stream.wait()), (stream.error, stream.text)
    workers(server, 2, exclude=frozenset({victim}))  # the master forked a replacement
    response = requests.post(f"{server.url}/api/gpt/get", json={"message": "hi"}, timeout=10)
    assert response.text == "Hello, world!"
    assert upstream.records[0].disconnected.wait(5)  # the killed worker's upstream was freed


def test_a_reload_lets_a_running_stream_finish(server, upstream):
    old = workers(server, 2)
    upstream.push(slow_scenario())
    stream = open_stream(server, old)
    server.proc.send_signal(signal.SIGHUP)
    new = workers(server, 2, exclude=frozenset(p.pid for p in old))
    response = requests.post(f"{server.url}/api/gpt/get", json={"message": "hi"}, timeout=10)
    assert response.text == "Hello, world!"  # new workers serve while the old one finishes
    assert complete(stream.wait()), (stream.error, stream.text)
    assert {p.pid for p in new}.isdisjoint(p.pid for p in old)
    psutil.wait_procs(old, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in old)


def test_a_shutdown_lets_a_running_stream_finish_and_takes_no_new_ones(server, upstream):
    pool = workers(server, 2)
    upstream.push(slow_scenario())
    stream = open_stream(server, pool)
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # the master closes its listening socket at once
        try:
            requests.get(f"{server.url}/healthz", timeout=1)
        except requests.ConnectionError:
            break
        assert time.monotonic() < deadline, "still accepting after TERM"
        time.sleep(0.05)  # polling for the listener to close
    assert complete(stream.wait()), (stream.error, stream.text)  # not cut at GRACEFUL_TIMEOUT
    assert server.proc.wait(30) == 0


def test_the_dockerfile_runs_the_readme_command_as_a_non_root_user_with_a_healthcheck():
    """Docker is not available here to build it; this checks what the image is made of."""
    root = Path(__file__).resolve().parent.parent
    lines = [line.strip() for line in (root / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    # a fully qualified name (podman resolves no short names without an alias list)
    assert lines[0].startswith("FROM docker.io/library/python:") and "slim" in lines[0]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert 'CMD ["python", "healthcheck.py"]' in lines  # which asks /healthz
    assert "/healthz" in (root / "healthcheck.py").read_text()
    assert any("BIND=0.0.0.0:7345" in line for line in lines)
    assert any("pip install" in line and "-r requirements.txt" in line for line in lines)
    assert lines[-1] == 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]'
    assert "gunicorn -c gunicorn.conf.py app:app" in (root / "Makefile").read_text()
    pins = [line for line in (root / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    ignored = (root / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored
