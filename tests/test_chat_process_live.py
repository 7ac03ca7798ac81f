"""Conversation memory under the real gunicorn: a conversation started in one worker goes on
in the other (one SQLite file), after a restart, and across two instances sharing a real
redis-server; a stopped reply closes the upstream within a second and is remembered as cut."""

from __future__ import annotations

import contextlib
import json
import time

import psutil
import pytest
import redis
import requests

from .conftest import Gunicorn, sent_messages, serve
from .fake_upstream import Scenario, chunk_json, sse_bytes, stream_scenario
from .test_integration import TEXT, TOKENS
from .test_operations import workers

CHAT = "/api/chat-process"


@pytest.fixture()
def servers(fake_upstream, tmp_path):
    """`servers(store, **env)`: a gunicorn of its own (1 s heartbeats) with its conversations
    in `store`; every one is stopped at the end."""
    started: list = []
    with contextlib.ExitStack() as stack:
        def start(store: str, **env: str) -> Gunicorn:
            folder = tmp_path / f"gunicorn-{len(started)}"
            folder.mkdir()
            started.append(folder)
            return stack.enter_context(serve(fake_upstream, folder, HEARTBEAT_SECONDS="1",
                                             CONVERSATION_STORE=store, **env))
        yield start


def ask(server, prompt: str, parent: str | None = None) -> list[dict]:
    """One chat-process request on a new connection; its lines, parsed."""
    options = {"parentMessageId": parent} if parent else {}
    response = requests.post(f"{server.url}{CHAT}", json={"prompt": prompt, "options": options},
                             timeout=20)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/octet-stream")
    return [json.loads(line) for line in response.content.decode("utf-8").split("\n")]


@contextlib.contextmanager
def only(worker: psutil.Process, pool: list[psutil.Process]):
    """While inside, `worker` is the only one that runs, so it takes every new connection."""
    others = [p for p in pool if p.pid != worker.pid]
    for other in others:
        other.suspend()
    try:
        yield
    finally:
        for other in others:
            with contextlib.suppress(psutil.NoSuchProcess):
                other.resume()


def test_a_conversation_goes_on_in_the_other_worker(servers, fake_upstream, upstream,
                                                    tmp_path):
    server = servers(f"sqlite:///{tmp_path}/conversations.db", WEB_CONCURRENCY="2")
    first, second = workers(server, 2)
    upstream.push(stream_scenario(TOKENS, size=5), stream_scenario(["Sure."]),
                  stream_scenario(["Bye."]))
    with only(first, [first, second]):
        reply = ask(server, "hello")[-1]
    assert reply["text"] == TEXT
    with only(second, [first, second]):
        follow = ask(server, "again?", reply["id"])[-1]
    with only(first, [first, second]):
        ask(server, "bye", follow["id"])
    assert sent_messages(upstream) == [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": TEXT},
        {"role": "user", "content": "again?"}, {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "bye"}]
    assert (tmp_path / "conversations.db-wal").exists()  # WAL: one writer, readers never wait


def test_a_conversation_survives_a_restart(servers, fake_upstream, upstream, tmp_path):
    store = f"sqlite:///{tmp_path}/conversations.db"
    before = servers(store)
    upstream.push(stream_scenario(["Remembered."]), stream_scenario(["Yes."]))
    reply = ask(before, "remember me")[-1]
    before.stop()
    after = servers(store)
    assert ask(after, "do you?", reply["id"])[-1]["text"] == "Yes."
    assert sent_messages(upstream) == [{"role": "user", "content": "remember me"},
                                       {"role": "assistant", "content": "Remembered."},
                                       {"role": "user", "content": "do you?"}]


def test_two_instances_share_conversations_through_redis(servers, fake_upstream, upstream,
                                                         redis_url):
    one = servers(redis_url)
    two = servers(redis_url)
    upstream.push(stream_scenario(["From one."]), stream_scenario(["From two."]),
                  stream_scenario(["One again."]))
    reply = ask(one, "start on one")[-1]
    follow = ask(two, "go on on two", reply["id"])[-1]
    ask(one, "back to one", follow["parentMessageId"])  # GPT Terminal's kind of id, too
    assert sent_messages(upstream) == [
        {"role": "user", "content": "start on one"}, {"role": "assistant", "content": "From one."},
        {"role": "user", "content": "go on on two"}, {"role": "assistant", "content": "From two."},
        {"role": "user", "content": "back to one"}]
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = client.ttl(f"gpt_proxy:conversation:msg:{reply['id']}")
        assert 29 * 86400 < ttl <= 30 * 86400  # Redis forgets it after CONVERSATION_TTL_DAYS
    finally:
        client.close()


def test_stop_closes_the_upstream_within_a_second_and_the_cut_reply_is_kept(
        servers, fake_upstream, upstream, tmp_path):
    server = servers(f"sqlite:///{tmp_path}/conversations.db")
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("", role="assistant")),
                                  sse_bytes(chunk_json("The first")),
                                  sse_bytes(chunk_json(" words"))], hold_open=True),
                  stream_scenario(["ok"]))
    response = requests.post(f"{server.url}{CHAT}", json={"prompt": "tell me a long story"},
                             headers={"X-Request-Id": "stopped-reply-1"}, stream=True,
                             timeout=20)
    received = b""
    for data in response.iter_content(None):
        received += data
        if b'"text":"The first words"' in received:
            break
    last = json.loads(received.decode("utf-8").split("\n")[-1])
    record = upstream.wait_for_request()
    stopped_at = time.monotonic()
    response.close()
    assert record.seconds_to_close(stopped_at, wait=5) < 1.0
    line = server.wait_for_log("path=/api/chat-process", "id=stopped-reply-1 ", timeout=10)
    assert "result=client_left" in line
    ask(server, "go on", last["id"])
    assert sent_messages(upstream) == [{"role": "user", "content": "tell me a long story"},
                                       {"role": "assistant", "content": "The first words"},
                                       {"role": "user", "content": "go on"}]


def test_a_store_that_cannot_be_created_is_a_fail_before_the_first_byte(servers, fake_upstream,
                                                                       upstream, tmp_path):
    """Its folder broke after start (at start, the service would refuse: test_startup.py)."""
    server = servers(f"sqlite:///{tmp_path}/not-a-folder/c.db")
    (tmp_path / "not-a-folder").rmdir()  # made by the start-up check, still empty
    (tmp_path / "not-a-folder").write_text("a file where the folder should be")
    response = requests.post(f"{server.url}{CHAT}", json={"prompt": "hi"}, timeout=20)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "Fail"
    assert "conversation store" in body["message"] and "not-a-folder" in body["message"]
    assert upstream.records == []
    assert "status=503" in server.logs() and "Traceback" not in server.logs()
