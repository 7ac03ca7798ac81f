"""Resumable replies across instances, where a deployment has them: two gunicorn instances (two
gevent workers each) sharing a real redis-server for the replies and a real PostgreSQL for the
accounts, clients talking to each instance directly (so the test says which one).

- A reply is known on every instance as soon as its client has its id: many replies at once,
  each resumed on the other instance the moment its event 0 arrived, are found every time,
  and each follower gets the whole reply.
- Another user asking another instance for someone's reply gets exactly the 404 of an id
  that never existed: the owner check Redis answers (in one process the worker's own check
  answers first, so only two instances reach it).

Waiting is on the streams' own bytes, never a sleep; nothing here is timed."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gpt_proxy.replies import new_reply_id

from .conftest import serve
from .fake_upstream import Scenario, chunk_json, sse_bytes
from .test_replies import RESUMABLE, ids_of, text_of
from .test_replies_live import Stream, _head

REPLIES = 48  # resumable replies at once, half started on each instance
TOKENS = [f"w{i} " for i in range(150)]
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def instances(fake_upstream, redis_url, postgres, tmp_path_factory):
    """The two instances, sharing the session's redis-server and a PostgreSQL database of
    their own; users register on either."""
    database = postgres.new_database()
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve(
            fake_upstream, tmp_path_factory.mktemp(f"replies-instance-{i}"),
            WEB_CONCURRENCY="2", AUTH="users", REGISTRATION="open",
            LOGIN_LIMIT="1000/minute", DATABASE_URL=database, REPLY_STORE=redis_url,
            HEARTBEAT_SECONDS="1", RESUME_GRACE_SECONDS="5")) for i in range(2)]


def user_key(url: str, name: str) -> str:
    """Register `name` and sign in (on the instance at `url`); a new API key of theirs."""
    session = requests.Session()
    for route in ("register", "login"):
        answer = session.post(f"{url}/api/user/{route}", timeout=10,
                              json={"username": name, "password": PASSWORD})
        assert answer.json()["code"] == 0, answer.text
    made = session.post(f"{url}/api/keys", json={"name": "replies"}, timeout=10)
    assert made.status_code == 201, made.text
    return made.json()["key"]


def paced(tokens, pause: float = 0.005) -> Scenario:
    """A reply of one event per token, `pause` seconds apart (a fast model)."""
    parts: list = [sse_bytes(chunk_json("", role="assistant"))]
    for token in tokens:
        parts += [sse_bytes(chunk_json(token)), pause]
    parts += [sse_bytes(chunk_json(finish="stop")), sse_bytes(chunk_json(choices=False, usage={
        "prompt_tokens": 5, "completion_tokens": len(tokens),
        "total_tokens": 5 + len(tokens)})), sse_bytes("[DONE]")]
    return Scenario(parts=parts)


def test_a_reply_resumed_on_the_other_instance_right_after_event_0_is_found_under_load(
        instances, upstream):
    """48 replies at once; each client, the moment it has event 0, asks the other instance
    for the reply from event 0: every one is found (200, never `unknown_reply`), and each
    follower gets the whole reply, every event once, to its end."""
    key = user_key(instances[0].url, "loaded")
    auth = {"Authorization": f"Bearer {key}"}
    upstream.push(*(paced(TOKENS) for _ in range(REPLIES)))

    def one(i: int) -> tuple[int, str, list]:
        asked, other = instances[i % 2], instances[1 - i % 2]
        first = Stream(asked.port, "POST", "/api/gpt/get", {"message": f"hi {i}"},
                       {**RESUMABLE, **auth})
        try:
            assert first.response.status == 200, first.response.read()
            (opening,) = first.events(1)  # event 0: the client has the id now
            assert opening[:2] == ("0", "reply")
            reply_id = opening[2]["reply_id"]
            follower = Stream(other.port, "GET", f"/api/replies/{reply_id}",
                              headers={**auth, "Last-Event-ID": "0"})
            if follower.response.status != 200:
                return follower.response.status, follower.response.read().decode(), []
            return 200, "", follower.rest()
        finally:
            first.conn.close()

    with ThreadPoolExecutor(REPLIES) as pool:
        results = list(pool.map(one, range(REPLIES)))
    refused = [(status, body) for status, body, _ in results if status != 200]
    assert refused == [], f"{len(refused)} of {REPLIES} resumes refused: {refused[:3]}"
    for _, _, events in results:
        assert ids_of(events) == list(range(1, len(events) + 1))  # every event once, from 1
        assert text_of(events) == "".join(TOKENS) and events[-1][1] == "done", events[-2:]
    assert len(upstream.records) == REPLIES  # each asked once


def test_another_users_reply_asked_of_another_instance_is_an_unknown_id(instances, upstream):
    """Ann's reply runs on instance 0; Bob asks instance 1, which does not hold it, so only
    Redis's owner check stands between them: GET, HEAD and DELETE answer exactly as for an
    id that never existed, and Ann's reply goes on untouched."""
    ann = {"Authorization": f"Bearer {user_key(instances[0].url, 'ann-instances')}"}
    bob = {"Authorization": f"Bearer {user_key(instances[1].url, 'bob-instances')}"}
    upstream.push(Scenario(parts=[sse_bytes(chunk_json(f"t{i} ")) for i in range(5)],
                           hold_open=True))
    reply = Stream(instances[0].port, "POST", "/api/gpt/get", {"message": "hi"},
                   {**RESUMABLE, **ann})
    before = reply.events(6)
    reply_id = reply.header("X-Reply-Id")
    other = instances[1]
    for method in ("GET", "DELETE"):
        theirs = requests.request(method, f"{other.url}/api/replies/{reply_id}", headers=bob,
                                  timeout=10, stream=True)  # a wrong 200 would follow it
        assert theirs.status_code == 404, theirs.close()
        unknown = requests.request(method, f"{other.url}/api/replies/{new_reply_id()}",
                                   headers=bob, timeout=10)
        assert (theirs.status_code, theirs.json()) == (404, unknown.json()), theirs.text
        assert unknown.json()["error"]["code"] == "unknown_reply"
    assert _head(other.port, f"/api/replies/{reply_id}", bob).status == 404
    assert _head(other.port, f"/api/replies/{reply_id}", ann).status == 200  # it is there
    record = upstream.wait_for_request()
    assert not record.disconnected.is_set()  # Bob's DELETE cancelled nothing
    cancel = requests.delete(f"{other.url}/api/replies/{reply_id}", headers=ann, timeout=10)
    assert (cancel.status_code, cancel.json()["state"]) == (202, "cancelling")
    rest = reply.rest()
    assert ids_of(before + rest) == list(range(len(before + rest)))
    assert rest[-1][2]["error"]["code"] == "cancelled"
