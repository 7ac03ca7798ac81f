"""Resumable replies in-process, against both reply stores (the worker's memory and a real
redis-server): the id first and every event numbered, resuming after any event with nothing
lost or twice, a client leaving mid-reply without stopping it, ownership, every bad input,
cancelling, a Redis that dies mid-reply, replies that did not ask paying nothing, the memory
bound of 1,000 replies of 1,000 tokens, and expiry.

The live behaviour (two instances behind nginx, the grace period, cancelling across
instances) is in test_replies_live.py; the web terminal in test_replies_browser.py."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
import tracemalloc

import pytest
import redis

from gpt_proxy import create_app
from gpt_proxy.base.sse import encode_text
from gpt_proxy.storage import replies
from gpt_proxy.storage.replies import MemoryReplyStore, RedisReplyStore

from .conftest import ANN, BOB, FakeClock, make_config, new_key, sign_up, sse_blocks, until
from .fake_upstream import Scenario, chunk_json, sse_bytes, stream_scenario
from .test_integration import TEXT, TOKENS

SSE = {"Accept": "text/event-stream"}
RESUMABLE = {**SSE, "X-Resumable": "1"}


def events_of(body: bytes) -> list[tuple[str | None, str, dict]]:
    """(id, event name, JSON data) of each event of an SSE body, in order; comments skipped."""
    return [(event_id, name, json.loads(data))
            for event_id, name, data, _ in sse_blocks(body.decode("utf-8")) if data is not None]


def text_of(events) -> str:
    return "".join(data["content"] for _, name, data in events
                   if name == "message" and "content" in data)


def ids_of(events) -> list[int]:
    return [int(event_id) for event_id, _, _ in events]


def gated(tokens, at: int) -> tuple[Scenario, threading.Event]:
    """One chunk per token; the upstream waits at the gate after `at` tokens."""
    gate = threading.Event()
    parts: list = [sse_bytes(chunk_json("", role="assistant"))]
    for i, token in enumerate(tokens):
        if i == at:
            parts.append(gate)
        parts.append(sse_bytes(chunk_json(token)))
    parts += [sse_bytes(chunk_json(finish="stop")),
              sse_bytes(chunk_json(choices=False, usage={
                  "prompt_tokens": 5, "completion_tokens": len(tokens),
                  "total_tokens": 5 + len(tokens)})),
              sse_bytes("[DONE]")]
    return Scenario(parts=parts), gate


LONG = [f"word{i} " for i in range(40)] + TOKENS  # enough events to leave in the middle
LONG_TEXT = "".join(LONG)


@pytest.fixture(params=["memory", "redis"])
def store_url(request):
    """Each test once with the worker's memory and once with a real redis-server."""
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue("redis_url")


@pytest.fixture()
def made(upstream):
    """`made(**config)`: an app against the fake upstream; every store closed at the end."""
    apps = []

    def make(**overrides):
        app = create_app(make_config(openai_base_url=upstream.url, **overrides))
        apps.append(app)
        return app
    yield make
    for app in apps:
        app.extensions["gpt_proxy"].replies.close()


def ask(client, headers: dict | None = None) -> str:
    """A resumable reply, read to its end; its id."""
    response = client.post("/api/gpt/get", json={"message": "hi"},
                           headers={**RESUMABLE, **(headers or {})})
    assert response.status_code == 200 and response.data.endswith(b"\n\n"), response.data
    return response.headers["X-Reply-Id"]


def read_until(response, count: int) -> bytes:
    """The body of a streamed in-process response until it holds `count` content events."""
    body = b""
    for piece in response.response:
        body += piece
        if body.count(b'{"content"') >= count:
            return body
    raise AssertionError(f"the reply ended with fewer than {count} content events: {body!r}")


# --- the reply and its log -------------------------------------------------------------------

def test_a_resumable_reply_names_itself_first_and_numbers_every_event(made, upstream,
                                                                      store_url):
    upstream.push(stream_scenario(TOKENS, size=5))
    response = made(reply_store=store_url).test_client().post(
        "/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE)
    assert response.status_code == 200
    events = events_of(response.data)
    reply_id = response.headers["X-Reply-Id"]
    assert replies.REPLY_ID.fullmatch(reply_id)  # 32 URL-safe characters: 192 bits
    assert events[0] == ("0", "reply", {"reply_id": reply_id, "grace_seconds": 30.0,
                                        "heartbeat_seconds": 15.0})
    assert ids_of(events) == list(range(len(events)))  # every event, in order, from 0
    assert text_of(events) == TEXT
    assert events[-1][1] == "done"


def test_an_ordinary_reply_has_no_ids_and_never_touches_the_reply_store(made, upstream):
    """Replies that did not ask pay nothing: with the store replaced by a tripwire that
    fails on any use, every door's ordinary streams and whole replies still work."""
    class Tripwire:
        def __getattr__(self, name):
            raise AssertionError(f"an ordinary reply used the reply store ({name})")

    app = made()
    state = app.extensions["gpt_proxy"]
    store, state.replies = state.replies, Tripwire()
    client = app.test_client()
    try:
        for accept, text in (("text/event-stream", lambda r: text_of(events_of(r.data))),
                             ("text/plain", lambda r: r.data.decode()),
                             ("application/json", lambda r: r.json["content"])):
            upstream.push(stream_scenario(TOKENS))
            response = client.post("/api/gpt/get", json={"message": "hi"},
                                   headers={"Accept": accept})
            assert response.status_code == 200, response.data
            assert "X-Reply-Id" not in response.headers and b"id: " not in response.data
            assert text(response) == TEXT
        upstream.push(stream_scenario(TOKENS))
        response = client.post("/v1/chat/completions", json={
            "model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200 and response.data.endswith(b"data: [DONE]\n\n")
    finally:
        state.replies = store


def test_an_ordinary_reply_sends_redis_no_command(made, upstream, own_redis):
    """The same, measured at a redis-server of its own: its command count is unmoved."""
    server = own_redis
    app = made(reply_store=server.url)
    watch = redis.Redis.from_url(server.url)
    before = watch.info("commandstats")
    upstream.push(stream_scenario(TOKENS))
    response = app.test_client().post("/api/gpt/get", json={"message": "hi"}, headers=SSE)
    assert text_of(events_of(response.data)) == TEXT
    after = watch.info("commandstats")
    assert {name: stat["calls"] for name, stat in after.items() if name != "cmdstat_info"} \
        == {name: stat["calls"] for name, stat in before.items() if name != "cmdstat_info"}
    upstream.push(stream_scenario(TOKENS))  # and a resumable one does use it
    app.test_client().post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE)
    until(lambda: "cmdstat_eval" in watch.info("commandstats"), "the reply is written")


def test_resuming_after_any_event_gives_exactly_the_rest(made, upstream, store_url):
    """The upstream writes everything at once, so the Redis writer keeps several events in
    one entry: a resume from inside an entry gets only what follows, never a byte twice."""
    upstream.push(Scenario(parts=[b"".join(sse_bytes(chunk_json(t)) for t in LONG)
                                  + sse_bytes(chunk_json(finish="stop")) + sse_bytes("[DONE]")]))
    client = made(reply_store=store_url).test_client()
    whole = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE)
    events = events_of(whole.data)
    reply_id, last = whole.headers["X-Reply-Id"], int(events[-1][0])
    assert text_of(events) == LONG_TEXT and last == len(LONG) + 1
    for after in range(last + 1):
        by = ({"headers": {"Last-Event-ID": str(after)}} if after % 2 else
              {"query_string": {"after": after}})
        response = client.get(f"/api/replies/{reply_id}", **by)
        assert response.status_code == 200, response.data
        assert response.headers["Content-Type"].startswith("text/event-stream")
        rest = events_of(response.data)
        assert rest == events[after + 1:], after
    assert len(upstream.records) == 1


def test_a_reply_resumed_the_moment_it_ended_is_found_before_its_end_reaches_redis(
        made, upstream, redis_url, monkeypatch):
    """The Redis writer flushes every 50 ms; a client coming back on this worker before the
    reply's end (or even its owner) reached Redis still finds it, and gets the rest once the
    writer has written it."""
    gate = threading.Event()
    real = RedisReplyStore._round_trip

    def held_back(self, *args, **kwargs):
        gate.wait(10)  # nothing reaches Redis until the test says so
        return real(self, *args, **kwargs)
    monkeypatch.setattr(RedisReplyStore, "_round_trip", held_back)
    upstream.push(stream_scenario(TOKENS))
    client = made(reply_store=redis_url).test_client()
    try:
        whole = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE)
        events = events_of(whole.data)
        last = int(events[-1][0])
        resumed = client.get(f"/api/replies/{whole.headers['X-Reply-Id']}",
                             query_string={"after": last - 2}, buffered=False)
        assert resumed.status_code == 200, resumed.get_data()
        cancel = client.delete(f"/api/replies/{whole.headers['X-Reply-Id']}")
        assert cancel.status_code == 200 and cancel.get_json()["state"] == "ended"
    finally:
        gate.set()
    assert events_of(resumed.get_data()) == events[last - 1:]


def test_a_client_that_leaves_mid_reply_does_not_stop_it_and_resumes_it(made, upstream,
                                                                        store_url, caplog):
    caplog.set_level(logging.INFO)
    scenario, gate = gated(LONG, 10)
    upstream.push(scenario)
    client = made(reply_store=store_url).test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                           buffered=False)
    first = events_of(read_until(response, 10))
    response.close()  # the client is gone: the reading goes on without it
    record = upstream.wait_for_request()
    assert not record.disconnected.is_set()
    resumed = client.get(f"/api/replies/{response.headers['X-Reply-Id']}",
                         headers={"Last-Event-ID": first[-1][0]}, buffered=False)
    gate.set()  # the upstream goes on only now: the rest reaches the resumed client live
    rest = events_of(resumed.get_data())
    assert ids_of(first + rest) == list(range(len(first + rest)))
    assert text_of(first + rest) == LONG_TEXT
    assert rest[-1][1] == "done"
    assert len(upstream.records) == 1
    until(lambda: any("resumable=detached" in r.getMessage() and "result=ok" in r.getMessage()
                      for r in caplog.records), "the access line says how the reply ended")


def test_a_reply_kept_after_its_end_expires_with_an_injected_clock(made, upstream):
    clock = FakeClock()
    app = made()
    app.extensions["gpt_proxy"].replies = store = MemoryReplyStore(60, clock=clock)
    client = app.test_client()
    upstream.push(stream_scenario(TOKENS))
    reply_id = ask(client)
    clock.now += 59.9
    assert text_of(events_of(client.get(f"/api/replies/{reply_id}").data)) == TEXT
    clock.now += 0.2
    assert client.get(f"/api/replies/{reply_id}").status_code == 404
    assert store._logs == {}  # and forgotten


def test_a_reply_kept_after_its_end_expires_in_redis(made, upstream, redis_url):
    app = made(reply_store=redis_url, resume_keep_seconds=2)
    client = app.test_client()
    upstream.push(stream_scenario(TOKENS))
    reply_id = ask(client)
    keys = redis.Redis.from_url(redis_url)
    # the writer flushes every 50 ms: a flush during the reply writes the log with a running
    # reply's expiry, the one with its end shortens it to RESUME_KEEP_SECONDS
    until(lambda: 0 < keys.pttl(f"gpt_proxy:reply:{reply_id}:log") <= 2000,
          "the ended reply's log is kept RESUME_KEEP_SECONDS")
    until(lambda: client.get(f"/api/replies/{reply_id}").status_code == 404,
          "the reply expires")
    # and every key of it: a GET while the reply was still ending in this worker (its last
    # events being written) takes a follower's lease (`:attached`), which lives its
    # ATTACH_LEASE seconds, a moment longer than the reply
    until(lambda: not list(keys.scan_iter(f"gpt_proxy:reply:{reply_id}*")),
          "every key of the expired reply expires")


def test_a_head_of_a_live_reply_answers_its_headers_and_changes_nothing(made, upstream,
                                                                        store_url):
    """`curl -I` on a reply that streams: a GET's status and content type, no body, and the
    reply is not claimed: its client reads on to the end, the upstream stays open, nothing
    is cancelled or taken over. A HEAD that a GET would refuse gets the GET's status."""
    scenario, gate = gated(LONG, 10)
    upstream.push(scenario)
    client = made(reply_store=store_url, heartbeat_seconds=0.2).test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                           buffered=False)
    reply_id = response.headers["X-Reply-Id"]
    body = read_until(response, 10)
    pieces = iter(response.response)
    for headers in ({}, {"Last-Event-ID": "10"}):
        head = client.head(f"/api/replies/{reply_id}", headers=headers)
        assert head.status_code == 200, head.data
        assert head.headers["Content-Type"].startswith("text/event-stream")
        assert head.headers["Cache-Control"] == "no-cache" and head.data == b""
    assert client.head(f"/api/replies/{replies.new_reply_id()}").status_code == 404
    assert client.head(f"/api/replies/{reply_id}",
                       headers={"Last-Event-ID": "x"}).status_code == 400
    # Still attached while the upstream waits: its heartbeats come (a relay looks at its
    # client every 0.25 s; a claimed reply would have ended this response by the second).
    for _ in range(2):
        piece = next(pieces, b"")
        body += piece
        assert piece.startswith(b": ping"), (piece, body[-200:])
    record = upstream.wait_for_request()
    assert not record.disconnected.is_set()
    gate.set()
    body += b"".join(pieces)  # the live client goes on, to the reply's end
    events = events_of(body)
    assert text_of(events) == LONG_TEXT and events[-1][1] == "done", events[-3:]
    assert ids_of(events) == list(range(len(events)))
    assert len(upstream.records) == 1


# --- who may resume, and bad input -----------------------------------------------------------

def test_only_the_owner_resumes_or_cancels_another_users_id_is_unknown(users_app, upstream,
                                                                       store_url):
    app = users_app(reply_store=store_url)
    ann, bob = app.test_client(), app.test_client()
    sign_up(ann, *ANN)
    sign_up(bob, *BOB)
    scenario, gate = gated(LONG, 5)
    upstream.push(scenario)
    response = ann.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                        buffered=False)
    reply_id = response.headers["X-Reply-Id"]
    read_until(response, 5)
    response.close()  # ann's connection drops
    unknown = ann.get(f"/api/replies/{replies.new_reply_id()}")
    assert unknown.status_code == 404
    for method in ("get", "delete"):
        theirs = getattr(bob, method)(f"/api/replies/{reply_id}")
        assert (theirs.status_code, theirs.json) == (404, unknown.json)  # nothing told
    key = new_key(app, *ANN)  # ann again, by her API key: the same owner
    resumed = app.test_client().get(f"/api/replies/{reply_id}", buffered=False,
                                    headers={"Authorization": f"Bearer {key}",
                                             "Last-Event-ID": "5"})
    gate.set()
    assert text_of(events_of(resumed.get_data())) == "".join(LONG[5:])
    assert app.test_client().get(f"/api/replies/{reply_id}").status_code == 401


def test_with_a_proxy_token_resuming_needs_it(made, upstream):
    client = made(auth="token", proxy_token="t" * 24).test_client()
    upstream.push(stream_scenario(TOKENS))
    token = {"Authorization": f"Bearer {'t' * 24}"}
    reply_id = ask(client, token)
    assert client.get(f"/api/replies/{reply_id}").status_code == 401
    assert client.delete(f"/api/replies/{reply_id}").status_code == 401
    assert text_of(events_of(client.get(f"/api/replies/{reply_id}", headers=token).data)) == TEXT


@pytest.mark.parametrize("kwargs, status, message", [
    ({"headers": {"Last-Event-ID": "x"}}, 400, "must be the id of the last event"),
    ({"headers": {"Last-Event-ID": "-1"}}, 400, "must be the id of the last event"),
    ({"headers": {"Last-Event-ID": "1.5"}}, 400, "must be the id of the last event"),
    ({"headers": {"Last-Event-ID": ""}}, 400, "must be the id of the last event"),
    ({"headers": {"Last-Event-ID": "9" * 13}}, 400, "must be the id of the last event"),
    ({"query_string": {"after": "two"}}, 400, "must be the id of the last event"),
    ({"headers": {"Last-Event-ID": "2"}, "query_string": {"after": "3"}}, 400, "disagree"),
    ({"query_string": {"from": "3"}}, 400, "unknown query parameter 'from'"),
    ({"headers": {"Last-Event-ID": "10"}}, 400, "past the end of this reply: its last event "
                                                "is 9"),
])
def test_a_bad_last_event_id_is_a_clear_400(made, upstream, store_url, kwargs, status,
                                            message):
    upstream.push(stream_scenario(TOKENS))
    client = made(reply_store=store_url).test_client()
    reply_id = ask(client)
    if store_url != "memory://":  # wait for the end to reach Redis
        until(lambda: client.get(f"/api/replies/{reply_id}", headers={
            "Last-Event-ID": "10"}).status_code == 400, "the reply's end is written")
    response = client.get(f"/api/replies/{reply_id}", **kwargs)
    assert response.status_code == status
    assert message in response.json["error"]["message"]


@pytest.mark.parametrize("reply_id", [
    "x" * 32, "short", "a" * 33, "%F0%9F%99%82" * 3, "..", "gpt_proxy:reply:cancel:1-2"])
def test_an_unknown_or_malformed_reply_id_is_404(made, store_url, reply_id):
    client = made(reply_store=store_url).test_client()
    for method in ("get", "delete"):
        response = getattr(client, method)(f"/api/replies/{reply_id}")
        assert response.status_code == 404, response.data
        assert response.json["error"]["code"] in ("unknown_reply", "not_found")


@pytest.mark.parametrize("headers, body, message", [
    ({**SSE, "X-Resumable": "yes"}, {}, "X-Resumable must be 1"),
    ({"Accept": "text/plain", "X-Resumable": "1"}, {}, "server-sent events"),
    ({"X-Resumable": "1"}, {}, "server-sent events"),
    (RESUMABLE, {"stream": False}, "server-sent events"),
])
def test_asking_wrongly_for_a_resumable_reply_is_a_400_before_the_upstream(
        made, upstream, headers, body, message):
    response = made().test_client().post("/api/gpt/get", json={"message": "hi", **body},
                                         headers=headers)
    assert response.status_code == 400
    assert message in response.json["error"]["message"]
    assert response.json["error"]["field"] == "X-Resumable"
    assert upstream.records == []


def test_x_resumable_0_is_an_ordinary_reply(made, upstream):
    upstream.push(stream_scenario(TOKENS))
    response = made().test_client().post("/api/gpt/get", json={"message": "hi"},
                                         headers={**SSE, "X-Resumable": "0"})
    assert "X-Reply-Id" not in response.headers and b"id: " not in response.data


def test_a_resume_from_before_what_a_bounded_log_keeps_is_410(made, redis_url, store_url,
                                                             monkeypatch):
    """A log keeps MAX_LOG_ENTRIES entries (Redis: approximately, whole nodes of 100 entries):
    300 events in 300 entries (the Redis writer's round trip run after each), bound 10."""
    monkeypatch.setattr(replies, "MAX_LOG_ENTRIES", 10)
    app = made()
    state = app.extensions["gpt_proxy"]
    store = (MemoryReplyStore(60) if store_url == "memory://" else
             RedisReplyStore(redis_url, keep=60, live_seconds=900))
    store._started = lambda: None  # Redis: no writer; its round trips are run here
    state.replies.close()
    state.replies = store
    reply = store.begin("", grace=30, heartbeat=15)
    for n in range(1, 301):
        event = b"id: %d\n%s" % (n, encode_text("content", f"t{n} "))
        store.append(reply, n, [event], event)
        reply.last = n
        if isinstance(store, RedisReplyStore):
            store._round_trip(_take(store), [], [], set())
    reply.end(_Ended())
    if isinstance(store, RedisReplyStore):
        store._round_trip(_take(store), [], [], set())
    client = app.test_client()
    gone = client.get(f"/api/replies/{reply.id}")
    assert gone.status_code == 410
    assert "no longer kept" in gone.json["error"]["message"]
    assert text_of(events_of(client.get(f"/api/replies/{reply.id}?after=296").data)) == (
        "t297 t298 t299 t300 ")


# --- cancelling ------------------------------------------------------------------------------

def test_a_cancel_stops_a_reply_whose_client_is_still_there(made, upstream, store_url):
    scenario, gate = gated(LONG, 5)
    upstream.push(scenario)
    client = made(reply_store=store_url).test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                           buffered=False)
    body = read_until(response, 5)
    cancel = client.delete(f"/api/replies/{response.headers['X-Reply-Id']}")
    assert (cancel.status_code, cancel.json["state"]) == (202, "cancelling")
    body += b"".join(response.response)  # the reply ends, with an error event saying why
    record = upstream.wait_for_request()
    assert record.disconnected.wait(5), "the upstream was not closed"
    events = events_of(body)
    assert events[-1][1:] == ("error", {"error": {
        "code": "cancelled", "message": "the reply was cancelled (DELETE /api/replies/<id>)",
        "status": 499}})
    assert ids_of(events) == list(range(len(events)))
    again = client.delete(f"/api/replies/{response.headers['X-Reply-Id']}")
    until(lambda: client.delete(f"/api/replies/{response.headers['X-Reply-Id']}").json[
        "state"] == "ended", "the end reaches the store")
    assert again.status_code in (200, 202)
    gate.set()


def test_a_cancel_stops_a_reply_whose_client_left(made, upstream, store_url):
    scenario, gate = gated(LONG, 5)
    upstream.push(scenario)
    client = made(reply_store=store_url).test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                           buffered=False)
    read_until(response, 5)
    response.close()
    record = upstream.wait_for_request()
    assert not record.disconnected.is_set()
    asked = time.monotonic()
    assert client.delete(f"/api/replies/{response.headers['X-Reply-Id']}").status_code == 202
    assert record.seconds_to_close(asked) < 1.0
    rest = events_of(client.get(f"/api/replies/{response.headers['X-Reply-Id']}?after=5").data)
    assert rest[-1][1] == "error" and rest[-1][2]["error"]["code"] == "cancelled"
    gate.set()


# --- Redis down mid-reply ----------------------------------------------------------------------

def test_redis_dying_mid_reply_leaves_the_live_reply_whole_and_resuming_unavailable(
        made, upstream, caplog, own_redis):
    server = own_redis
    app = made(reply_store=server.url)
    metrics = app.extensions["gpt_proxy"].metrics
    failures = b"gpt_proxy_reply_log_failures_total 1.0"
    middle, end = threading.Event(), threading.Event()
    parts: list = [sse_bytes(chunk_json(t)) for t in LONG[:10]] + [middle]
    parts += [sse_bytes(chunk_json(t)) for t in LONG[10:20]] + [end]
    parts += [sse_bytes(chunk_json(t)) for t in LONG[20:]] + [
        sse_bytes(chunk_json(finish="stop")), sse_bytes("[DONE]")]
    upstream.push(Scenario(parts=parts))
    client = app.test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                           buffered=False)
    body = read_until(response, 10)
    reply_id = response.headers["X-Reply-Id"]
    server.stop()
    middle.set()  # ten more events, whose write fails
    body += read_until(response, 10)
    until(lambda: failures in metrics.exposition()[0], "the failed write is counted")
    end.set()
    body += b"".join(response.response)
    events = events_of(body)
    assert text_of(events) == LONG_TEXT  # the live client got every word,
    assert events[-1][1] == "done"  # and its end, no error
    assert ids_of(events) == list(range(len(events)))
    unavailable = client.get(f"/api/replies/{reply_id}")
    assert unavailable.status_code == 503
    assert unavailable.json["error"]["code"] == "reply_store_unavailable"
    assert any("cannot be resumed" in r.getMessage() for r in caplog.records)
    assert b'gpt_proxy_resumable_replies_total{state="unlogged"} 1.0' in metrics.exposition()[0]


def test_a_reply_whose_log_failed_is_stopped_at_once_when_its_client_leaves(made, upstream,
                                                                            own_redis):
    """Nobody could come back for it: no grace period, the upstream is closed at once."""
    server = own_redis
    app = made(reply_store=server.url)
    metrics = app.extensions["gpt_proxy"].metrics
    gate = threading.Event()
    parts = [sse_bytes(chunk_json(t)) for t in LONG[:5]] + [gate]
    parts += [sse_bytes(chunk_json(t)) for t in LONG[5:10]]
    upstream.push(Scenario(parts=parts, hold_open=True))
    client = app.test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE,
                           buffered=False)
    read_until(response, 5)
    server.stop()
    gate.set()  # five more events: their write fails
    read_until(response, 5)
    until(lambda: b"gpt_proxy_reply_log_failures_total 1.0" in metrics.exposition()[0],
          "the failed write is noticed")
    left = time.monotonic()
    response.close()
    assert upstream.wait_for_request().seconds_to_close(left) < 1.0


def test_redis_down_when_a_reply_starts_leaves_it_whole_and_resuming_unavailable(
        made, upstream, caplog, own_redis):
    server = own_redis
    app = made(reply_store=server.url)
    metrics = app.extensions["gpt_proxy"].metrics
    server.stop()
    upstream.push(stream_scenario(TOKENS))
    client = app.test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=RESUMABLE)
    assert response.status_code == 200
    events = events_of(response.data)
    assert text_of(events) == TEXT and events[-1][1] == "done"
    until(lambda: b"gpt_proxy_reply_log_failures_total 1.0" in metrics.exposition()[0],
          "the failed write is counted")
    assert client.get(f"/api/replies/{response.headers['X-Reply-Id']}").status_code == 503
    assert any("cannot be resumed" in r.getMessage() for r in caplog.records)


def test_a_record_redis_refuses_unlogs_that_reply_only(quiet_redis_store, redis_url):
    """One flush writes many replies: an entry Redis refuses (here its stream already holds
    a later id) leaves a hole in that reply's log, so that reply is unlogged and its log
    dropped; the others in the same flush are written."""
    store = quiet_redis_store("gpt_proxy:refused")
    client = redis.Redis.from_url(redis_url)
    good, spoiled = (store.begin("", grace=30, heartbeat=15) for _ in range(2))
    client.xadd(f"gpt_proxy:refused:{spoiled.id}:log", {"d": "x"}, id="0-1000")
    for reply in (good, spoiled):
        event = b"id: 1\n" + encode_text("content", "hi")
        store.append(reply, 1, [event], event)
        reply.last = 1
    store._round_trip(_take(store), [], [], set())
    assert good.logging and not spoiled.logging
    assert client.xlen(f"gpt_proxy:refused:{good.id}:log") == 1
    forget, store._forget = store._forget, set()
    store._round_trip(_take(store), [], [], forget)  # the spoiled log is dropped
    assert not client.exists(f"gpt_proxy:refused:{spoiled.id}",
                             f"gpt_proxy:refused:{spoiled.id}:log")
    store.close()


# --- memory --------------------------------------------------------------------------------------

# The bounds the README states: per reply, the framed bytes of its events plus REDIS_PER_EVENT
# bytes an event and REDIS_PER_REPLY bytes in Redis (its keys, the stream's nodes); in the
# worker with memory://, the framed bytes plus WORKER_PER_EVENT and WORKER_PER_REPLY.
REDIS_PER_EVENT, REDIS_PER_REPLY = 24, 1536
WORKER_PER_EVENT, WORKER_PER_REPLY = 12, 2048
REPLIES, TOKENS_EACH = 1000, 1000


class _Ended:
    client_left = False
    reply_state = None


def _token_events() -> list[bytes]:
    """1,000 events as the relay frames them for /api/gpt/get (about 37 bytes each)."""
    return [b"id: %d\n%s" % (n, encode_text("content", f"word{n % 97} "))
            for n in range(1, TOKENS_EACH + 1)]


def _redis_usage(client, prefix: str) -> tuple[int, int]:
    """(keys, bytes) of the replies' keys under `prefix` (not the worker's lease), as MEMORY
    USAGE counts them."""
    keys = [key for key in client.scan_iter(f"{prefix}:*", count=1000)
            if not key.startswith(f"{prefix}:worker:".encode())]
    return len(keys), sum(client.memory_usage(key, samples=0) or 0 for key in keys)


def _fill(store, events: list[bytes], per_round_trip: int, count: int = REPLIES) -> list:
    """`count` replies of the events through the store's own entry point, the Redis writer's
    round trip run by hand after every `per_round_trip` events of every reply (a relay's
    wake-ups meanwhile: `per_round_trip` events an entry)."""
    live = [store.begin("", grace=30, heartbeat=15) for _ in range(count)]
    for n, event in enumerate(events, start=1):
        one = [event]
        for reply in live:
            store.append(reply, n, one, event)
            reply.last = n
        if n % per_round_trip == 0 and isinstance(store, RedisReplyStore):
            store._round_trip(_take(store), [], [], set())
    return live


def _take(store: RedisReplyStore) -> dict:
    pending, store._pending, store._pending_bytes = store._pending, {}, 0
    return pending


@pytest.fixture()
def quiet_redis_store(redis_url):
    """A Redis store under a prefix of its own, its writer never started (the test runs its
    round trips), RESUME_KEEP_SECONDS 1."""
    def make(prefix: str) -> RedisReplyStore:
        store = RedisReplyStore(redis_url, keep=1, live_seconds=900, prefix=prefix)
        store._started = lambda: None
        return store
    return make


@pytest.mark.parametrize("per_round_trip", [10, 1], ids=["10 events an entry", "worst case"])
def test_1000_replies_of_1000_tokens_stay_within_the_bound_in_redis_and_expire(
        quiet_redis_store, redis_url, per_round_trip):
    """1,000 replies of 1,000 tokens, in entries of 10 events (a relay woken every 20 ms by
    a fast upstream while the writer's round trip takes about as long), and the worst case,
    one event an entry (an upstream slower than the round trip), on 100 replies to keep it
    quick: the same bound per reply; then every key expires RESUME_KEEP_SECONDS after its
    reply ended."""
    prefix = f"gpt_proxy:bound{per_round_trip}"
    store = quiet_redis_store(prefix)
    client = redis.Redis.from_url(redis_url)
    events = _token_events()
    framed = sum(map(len, events))
    count = REPLIES if per_round_trip > 1 else 100
    before = client.info("memory")["used_memory"]
    live = _fill(store, events, per_round_trip, count)
    keys, used = _redis_usage(client, prefix)
    grown = client.info("memory")["used_memory"] - before
    bound = count * (framed + REDIS_PER_EVENT * TOKENS_EACH + REDIS_PER_REPLY)
    assert keys == 2 * count  # the hash and the stream
    assert used <= bound, (used / count, framed)
    assert grown <= bound * 1.1, (grown / count, framed)  # the allocator's own slack
    for reply in live:
        reply.end(_Ended())
    store._round_trip(_take(store), [], [], set())
    until(lambda: _redis_usage(client, prefix)[0] == 0, "every key expires", timeout=20)
    store.close()


def test_1000_replies_of_1000_tokens_stay_within_the_bound_in_the_worker(quiet_redis_store):
    """memory://: the logs themselves, measured by tracemalloc; Redis: nothing once written."""
    events = _token_events()
    framed = sum(map(len, events))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        clock = FakeClock()
        store = MemoryReplyStore(300, clock=clock)
        live = _fill(store, events, TOKENS_EACH)
        for reply in live:
            reply.end(_Ended())
        del live
        held = tracemalloc.get_traced_memory()[0] - before
        clock.now += 301
        store.begin("", grace=30, heartbeat=15)  # any use drops what expired
        gc.collect()
        after_expiry = tracemalloc.get_traced_memory()[0] - before

        redis_store = quiet_redis_store("gpt_proxy:worker-bound")
        live = _fill(redis_store, events[:100], 10, 100)
        for reply in live:
            reply.end(_Ended())
        redis_store._round_trip(_take(redis_store), [], [], set())
        del live
        gc.collect()
        redis_held = tracemalloc.get_traced_memory()[0] - before - after_expiry
    finally:
        tracemalloc.stop()
    assert held <= REPLIES * (framed + WORKER_PER_EVENT * TOKENS_EACH + WORKER_PER_REPLY), (
        held / REPLIES, framed)
    assert after_expiry < 200_000  # the logs are gone once expired
    assert redis_held < 500_000  # the Redis store keeps nothing of a written reply
    assert redis_store._live == {} and redis_store._pending == {}
    redis_store.close()
