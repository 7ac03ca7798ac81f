"""The chat-process protocol in-process (Flask's test client) against the real fake upstream
on 127.0.0.1 and a real SQLite file: the lines the frontends read, memory chained by ids, the
auth flow, and every error as the envelope those frontends show, never a 5xx."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_proxy import create_app
from gpt_proxy.doors import chat_process
from gpt_proxy.storage.conversations import SQLiteStore, StoreError
from gpt_proxy.upstream.chunks import Delta

from .conftest import TEST_KEY, FakeClock, access_line, free_port, make_config, sent_messages
from .fake_upstream import Scenario, chunk_json, json_scenario, sse_bytes, stream_scenario
from .test_integration import TEXT, TOKENS

CHAT = "/api/chat-process"
TOKEN = "chat-process-token-0123456789"
LINE_KEYS = {"role", "id", "parentMessageId", "text", "delta", "detail"}


@pytest.fixture()
def make(upstream, tmp_path):
    """`make(**config)`: a test client with its own SQLite file; stores closed afterwards."""
    apps = []

    def make_(**overrides):
        overrides.setdefault("conversation_store", f"sqlite:///{tmp_path}/conversations.db")
        overrides.setdefault("openai_base_url", upstream.url)
        app = create_app(make_config(**overrides))
        apps.append(app)
        return app.test_client()

    yield make_
    for app in apps:
        holder = app.extensions.get("gpt_proxy.chat_process.store") or {}
        if holder.get("store") is not None:
            holder["store"].close()


@pytest.fixture()
def client(make):
    return make()


def lines(response) -> list[dict]:
    """Every line of a chat-process body, parsed (each must be one JSON object)."""
    body = response.get_data(as_text=True)
    assert not body.startswith("\n") and not body.endswith("\n")
    return [json.loads(line) for line in body.split("\n")]


def chat(client, prompt="hi", parent=None, headers=None, options_extra=None, **fields):
    options = {"parentMessageId": parent} if parent else {}
    options.update(options_extra or {})
    return client.post(CHAT, json={"prompt": prompt, "options": options, **fields},
                       headers=headers or {})


def assert_fail(response, status="Fail", *words):
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"status", "message", "data"} and body["data"] is None
    assert body["status"] == status and body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    return body["message"]


# --- session, verify, config ----------------------------------------------------------------

@pytest.mark.parametrize("token", ["", TOKEN])
def test_session_says_whether_a_token_is_needed_without_one(make, token):
    response = make(proxy_token=token).post("/api/session")
    assert response.status_code == 200
    assert response.get_json() == {"status": "Success", "message": "",
                                   "data": {"auth": bool(token), "model": "ChatGPTAPI"}}


def test_verify_checks_the_token_in_constant_time(make, caplog, compare_digest_calls):
    calls = compare_digest_calls
    caplog.set_level(logging.INFO)
    client = make(proxy_token=TOKEN)
    good = client.post("/api/verify", json={"token": TOKEN})
    assert good.get_json() == {"status": "Success", "message": "the token is valid",
                               "data": None}
    wrong = client.post("/api/verify", json={"token": TOKEN + "x"})
    assert_fail(wrong, "Fail", "wrong")  # Fail, not Unauthorized: the dialog stays open
    assert "status=401" in access_line(caplog, wrong)
    assert calls == [(bytes, bytes)] * 2
    for body in ({"token": ""}, {"token": 5}, {}, {"token": "  "}):
        assert_fail(client.post("/api/verify", json=body), "Fail", "empty")
    assert make().post("/api/verify", json={"token": "x"}).get_json()["status"] == "Success"


def test_config_needs_the_token_and_tells_no_secret(make, upstream):
    client = make(proxy_token=TOKEN, upstream_read_timeout=30)
    assert_fail(client.post("/api/config"), "Unauthorized")
    response = client.post("/api/config", headers={"Authorization": f"Bearer {TOKEN}"})
    body = response.get_json()
    assert body["status"] == "Success"
    assert body["data"] == {"apiModel": "ChatGPTAPI", "reverseProxy": "-", "timeoutMs": 30000,
                            "socksProxy": "-", "httpsProxy": "-", "usage": "-"}
    text = response.get_data(as_text=True)
    for secret in (TEST_KEY, TOKEN, upstream.url, "127.0.0.1"):
        assert secret not in text


def test_the_auth_flow_session_then_verify_then_chat_with_the_token(make, upstream):
    client = make(proxy_token=TOKEN)
    assert client.post("/api/session").get_json()["data"]["auth"] is True
    assert client.post("/api/verify", json={"token": TOKEN}).get_json()["status"] == "Success"
    response = chat(client, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.mimetype == "application/octet-stream"
    assert lines(response)[-1]["text"] == "Hello, world!"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN,
                                    f"Bearer {TOKEN[:-1]}"])
def test_a_missing_or_wrong_token_is_the_unauthorized_envelope(make, upstream, caplog, header):
    caplog.set_level(logging.INFO)
    client = make(proxy_token=TOKEN)
    response = chat(client, headers={"Authorization": header} if header else {})
    assert_fail(response, "Unauthorized", "token")
    assert "status=401" in access_line(caplog, response)
    assert upstream.records == []


# --- the reply, line by line ----------------------------------------------------------------

def test_a_reply_is_lines_each_holding_the_reply_so_far(client, upstream, caplog):
    caplog.set_level(logging.INFO)
    upstream.push(stream_scenario(TOKENS, size=30, pause=0.02))
    response = chat(client, "hello")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/octet-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    got = lines(response)
    assert len(got) >= 3
    assert all(set(line) == LINE_KEYS and line["role"] == "assistant" for line in got)
    assert len({line["id"] for line in got}) == 1
    assert len({line["parentMessageId"] for line in got}) == 1
    assert got[0]["id"] != got[0]["parentMessageId"]
    texts = [line["text"] for line in got]
    assert texts[0] == "" and texts[-1] == TEXT
    assert all(TEXT.startswith(t) for t in texts)
    assert "".join(line["delta"] for line in got) == TEXT
    assert got[-1]["detail"]["choices"][0]["finish_reason"] == "stop"
    assert all(line["detail"]["choices"] for line in got)
    line = access_line(caplog, response)
    assert "protocol=chat-process" in line and "status=200" in line and "memory=new" in line
    assert f"chars={len(TEXT)}" in line
    assert upstream.records[0].json["messages"] == [{"role": "user", "content": "hello"}]


def test_the_conversation_id_is_echoed_in_every_line_when_given(client, upstream):
    upstream.push(stream_scenario(TOKENS, size=30, pause=0.02), stream_scenario(["ok"]))
    given = lines(chat(client, "hello", options_extra={"conversationId": "conv-7"}))
    assert len(given) >= 3 and all(line["conversationId"] == "conv-7" for line in given)
    assert all("conversationId" not in line for line in lines(chat(client, "hello")))


@pytest.mark.parametrize("ceiling", [0, 64])
def test_max_tokens_ceiling_is_sent_as_max_tokens(make, upstream, ceiling):
    lines(chat(make(max_tokens_ceiling=ceiling)))
    sent = upstream.wait_for_request().json
    assert sent.get("max_tokens") == (ceiling or None)


@pytest.mark.parametrize("scenario", [
    stream_scenario(["Hi"], size=10_000),  # one write: the whole reply in one wake-up
    json_scenario(200, {"id": "c", "object": "chat.completion", "model": "fake-model",
                        "choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": "Hi"},
                                     "finish_reason": "stop"}]}),
], ids=["one-write", "json-completion"])
def test_a_one_word_reply_still_spans_two_lines(client, upstream, scenario):
    upstream.push(scenario)
    got = lines(chat(client))
    assert len(got) == 2 and got[0]["text"] == "" and got[1]["text"] == "Hi"
    assert got[1]["detail"]["choices"][0]["finish_reason"] == "stop"


def test_a_reply_without_any_text_still_spans_two_lines(client, upstream):
    upstream.push(Scenario(parts=[sse_bytes("[DONE]")]))
    got = lines(chat(client))
    assert len(got) == 2 and got[-1]["text"] == ""


def test_a_reply_cut_by_length_says_so_in_the_last_detail(client, upstream):
    upstream.push(stream_scenario(["a", "b"], finish="length"))
    assert lines(chat(client))[-1]["detail"]["choices"][0]["finish_reason"] == "length"


def test_one_wake_up_writes_one_line_with_every_delta_of_it():
    framer = chat_process.LineFramer("r1", "u1", None)
    first = json.loads(framer.opening)
    assert first["text"] == "" and first["id"] == "r1" and first["parentMessageId"] == "u1"
    chunk = chunk_json("你")
    data = framer.batch([Delta("chunk", json.dumps(chunk), chunk=chunk), Delta("content", "你"),
                         Delta("chunk", "{}", chunk=chunk_json("好")), Delta("content", "好"),
                         Delta("chunk", "{}", chunk=chunk_json(choices=False, usage={})),
                         Delta("reasoning", "hmm")])
    assert data.startswith(b"\n") and data.count(b"\n") == 1
    line = json.loads(data)
    assert (line["text"], line["delta"]) == ("你好", "你好")
    assert line["detail"]["choices"][0]["delta"]["content"] == "好"  # the newest with choices
    assert framer.batch([Delta("chunk", "{}", chunk=chunk_json(choices=False, usage={}))]) == b""
    assert json.loads(framer.ping())["text"] == "你好"  # a heartbeat repeats the newest line


def test_heartbeats_repeat_the_newest_line(make, upstream):
    client = make(heartbeat_seconds=0.1)
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("one")), 0.5, sse_bytes(chunk_json(
        " two", finish="stop")), sse_bytes("[DONE]")]))
    got = lines(chat(client))
    texts = [line["text"] for line in got]
    assert texts.count("one") >= 2 and texts[-1] == "one two"
    assert [len(t) for t in texts] == sorted(len(t) for t in texts)


def test_a_failure_mid_reply_keeps_the_text_and_adds_an_error_mark(client, upstream, caplog):
    caplog.set_level(logging.INFO)
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("你好")), 0.05, b"data: {broken\n\n"]))
    response = chat(client)
    got = lines(response)
    assert got[-2]["text"] == "你好"
    assert got[-1]["text"].startswith("你好\n\n[error] ") and "malformed" in got[-1]["text"]
    assert got[-1]["error"]["code"] == "upstream_error"
    assert "result=error:upstream_error" in access_line(caplog, response)
    # the cut-off reply is remembered as the user saw it, without the mark
    upstream.push(stream_scenario(["ok"]))
    chat(client, "go on", parent=got[-1]["id"])
    assert sent_messages(upstream) == [{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "你好"},
                                       {"role": "user", "content": "go on"}]


def test_a_lone_surrogate_from_the_upstream_never_breaks_a_line(client, upstream):
    raw = (b'data: {"choices":[{"index":0,"delta":{"content":"ok \\ud83d"},"x":"\\udc00",'
           b'"finish_reason":"stop"}]}\n\n')
    upstream.push(Scenario(parts=[raw, b"data: [DONE]\n\n"]), stream_scenario(["fine"]))
    response = chat(client)
    data = response.get_data()
    data.decode("utf-8")  # valid UTF-8 throughout
    got = lines(response)
    assert got[-1]["text"] == "ok " and got[-1]["detail"]["choices"][0]["x"] == "\udc00"
    chat(client, "next", parent=got[-1]["id"])
    assert sent_messages(upstream)[1] == {"role": "assistant", "content": "ok "}


# --- memory ---------------------------------------------------------------------------------

def test_a_follow_up_with_the_reply_id_sends_the_earlier_turns(client, upstream, caplog):
    caplog.set_level(logging.INFO)
    upstream.push(stream_scenario(["Paris."]), stream_scenario(["About 2 million."]),
                  stream_scenario(["Yes."]))
    first = lines(chat(client, "capital of France?"))[-1]
    second = lines(chat(client, "population?", parent=first["id"]))[-1]
    assert second["parentMessageId"] != first["id"]  # the new user message sits between
    response = chat(client, "sure?", parent=second["id"])
    assert sent_messages(upstream) == [
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "population?"},
        {"role": "assistant", "content": "About 2 million."},
        {"role": "user", "content": "sure?"}]
    line = access_line(caplog, response)
    assert "memory=continued" in line and "history=4" in line


def test_a_follow_up_with_the_user_message_id_continues_after_its_reply(client, upstream,
                                                                        caplog):
    """Today's GPT Terminal sends the last reply's `parentMessageId` (its own message's id):
    followed literally, the upstream would get two user messages in a row and no answers."""
    caplog.set_level(logging.INFO)
    upstream.push(stream_scenario(["one"]), stream_scenario(["two"]), stream_scenario(["three"]))
    first = lines(chat(client, "first"))[-1]
    second = lines(chat(client, "second", parent=first["parentMessageId"]))[-1]
    response = chat(client, "third", parent=second["parentMessageId"])
    assert sent_messages(upstream) == [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"},
        {"role": "user", "content": "third"}]
    assert "memory=after_reply" in access_line(caplog, response)


@pytest.mark.parametrize("forged", ["nope", "00000000-0000-0000-0000-000000000000",
                                    "' OR '1'='1", "gpt_proxy:conversation:*", "x" * 128,
                                    "../../etc/passwd"])
def test_an_unknown_or_forged_id_starts_a_fresh_conversation(client, upstream, caplog, forged):
    caplog.set_level(logging.INFO)
    upstream.push(stream_scenario(["secret answer"]))
    lines(chat(client, "someone else's secret"))
    response = chat(client, "hello", parent=forged)
    assert lines(response)[-1]["text"] == "Hello, world!"
    assert sent_messages(upstream) == [{"role": "user", "content": "hello"}]
    assert "memory=unknown_parent" in access_line(caplog, response)


def test_an_expired_conversation_starts_fresh(make, upstream, tmp_path):
    clock = FakeClock()
    client = make()
    store = SQLiteStore(tmp_path / "expiring.db", 3600, clock)
    chat_process.use_store(client.application, store)
    try:
        first = lines(chat(client, "remember this"))[-1]
        clock.now += 3599
        chat(client, "still there?", parent=first["id"])
        assert len(sent_messages(upstream)) == 3
        clock.now += 1
        chat(client, "and now?", parent=first["id"])
        assert sent_messages(upstream) == [{"role": "user", "content": "and now?"}]
    finally:
        store.close()


def test_the_history_sent_is_bounded_by_messages_and_characters(make, upstream):
    client = make(max_messages=4, max_history_chars=1000)
    parent = None
    for i in range(4):
        upstream.push(stream_scenario([f"answer {i}"]))
        parent = lines(chat(client, f"question {i}", parent=parent))[-1]["id"]
    upstream.push(stream_scenario(["ok"]))
    chat(client, "last", parent=parent)
    sent = sent_messages(upstream)
    # 3 stored messages fit beside the new one; cut short, the history starts at a question
    assert sent == [{"role": "user", "content": "question 3"},
                    {"role": "assistant", "content": "answer 3"},
                    {"role": "user", "content": "last"}]
    client = make(max_history_chars=100)
    upstream.push(stream_scenario(["b" * 60]))
    parent = lines(chat(client, "a" * 30))[-1]["id"]
    upstream.push(stream_scenario(["ok"]))
    chat(client, "c" * 30, parent=parent)
    assert sent_messages(upstream) == [{"role": "user", "content": "c" * 30}]


def test_system_message_is_the_system_prompt_else_the_configured_role(make, upstream):
    client = make(chat_process_role="sql")
    chat(client, "hi", systemMessage="You are terse.", temperature=0.3, top_p=0.9)
    sent = upstream.records[-1].json
    assert sent["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "hi"}]
    assert (sent["temperature"], sent["top_p"], sent["stream"]) == (0.3, 0.9, True)
    chat(client, "hi")
    sent = upstream.records[-1].json["messages"]
    assert sent[0]["role"] == "system" and "SQL" in sent[0]["content"] and len(sent) > 2
    chat(make(), "hi", systemMessage="")
    assert upstream.records[-1].json["messages"] == [{"role": "user", "content": "hi"}]


def test_a_model_may_be_named_within_the_allow_list(make, upstream):
    client = make(allowed_models=("fake-model", "other-model"))
    chat(client, model="other-model")
    assert upstream.records[-1].json["model"] == "other-model"
    assert_fail(chat(client, model="gpt-5"), "Fail", "not allowed", "fake-model")
    assert len(upstream.records) == 1


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body,words", [
    ({}, ["'prompt' is required"]),
    ({"prompt": ""}, ["'prompt' is required"]),
    ({"prompt": "   "}, ["'prompt' is required"]),
    ({"prompt": 5}, ["'prompt' is required"]),
    ({"prompt": ["hi"]}, ["'prompt' is required"]),
    ({"prompt": "hi", "options": []}, ["'options' must be an object"]),
    ({"prompt": "hi", "options": "x"}, ["'options' must be an object"]),
    ({"prompt": "hi", "options": {"parentMessageId": 5}}, ["options.parentMessageId"]),
    ({"prompt": "hi", "options": {"parentMessageId": {"$gt": ""}}}, ["options.parentMessageId"]),
    ({"prompt": "hi", "options": {"parentMessageId": "x" * 129}}, ["at most 128"]),
    ({"prompt": "hi", "options": {"conversationId": ["x"]}}, ["options.conversationId"]),
    ({"prompt": "hi", "options": {"usingContext": True}}, ["'options.usingContext' is not"]),
    ({"prompt": "hi", "stream": False}, ["'stream' is not a supported field"]),
    ({"prompt": "hi", "temperature": "hot"}, ["'temperature' must be a number from 0 to 2"]),
    ({"prompt": "hi", "temperature": 3}, ["'temperature'"]),
    ({"prompt": "hi", "top_p": 1.5}, ["'top_p' must be a number from 0 to 1"]),
    ({"prompt": "hi", "top_p": True}, ["'top_p'"]),
    ({"prompt": "hi", "systemMessage": 5}, ["'systemMessage' must be a string"]),
    ({"prompt": "hi", "systemMessage": "s" * 101}, ["'systemMessage' is 101", "MAX_SYSTEM_CHARS"]),
    ({"prompt": "x" * 1001}, ["1001 characters", "MAX_HISTORY_CHARS"]),
    ({"prompt": "hi \ud800"}, ["'prompt' holds an invalid character"]),
    ({"prompt": "hi", "model": ""}, ["'model' must be a non-empty string"]),
    ([1, 2], ["JSON object"]),
], ids=lambda value: str(value)[:40])
def test_bad_input_is_a_fail_envelope_naming_the_problem(make, upstream, caplog, body, words):
    caplog.set_level(logging.INFO)
    client = make(max_system_chars=100, max_history_chars=1000)
    response = client.post(CHAT, data=json.dumps(body), content_type="application/json")
    assert_fail(response, "Fail", *words)
    assert re.search(r"status=4\d\d", access_line(caplog, response))
    assert upstream.records == []


@pytest.mark.parametrize("data,words", [
    (b"", ["empty"]), (b"{", ["not valid JSON"]), (b'{"prompt": "\xff"}', ["not UTF-8"]),
    (b'{"prompt": "' + b"x" * 3000 + b'"}', ["3014 bytes", "2048"]),
])
def test_a_body_that_is_not_a_request_is_a_fail_envelope(make, upstream, data, words):
    response = make(max_body_bytes=2048).post(CHAT, data=data)
    assert_fail(response, "Fail", *words)
    assert upstream.records == []


def test_a_wrong_method_or_path_is_shaped_by_its_protocol(client):
    assert_fail(client.get(CHAT), "Fail", "not allowed")
    assert client.get("/api/chat-process/x").status_code == 404  # not ours: the JSON error


@pytest.mark.parametrize("scenario,status,words", [
    (json_scenario(429, {"error": {"message": "slow down"}}, {"Retry-After": "7"}), 429,
     ["rate limiting", "retry in 7 s"]),
    (json_scenario(500, {"error": {"message": "boom"}}), 502, ["upstream failed", "boom"]),
    (json_scenario(401, {"error": {"message": f"bad key {TEST_KEY}"}}), 502, ["OPENAI_API_KEY"]),
    (json_scenario(404, {"error": {"message": "no such model"}}), 502, ["does not know model"]),
    (json_scenario(200, {"error": {"message": "quota used up", "code": 429}}), 429,
     ["rate limiting", "in an HTTP 200 answer", "quota used up"]),
])
def test_upstream_errors_before_the_first_byte_are_fail_envelopes(client, upstream, caplog,
                                                                  scenario, status, words):
    caplog.set_level(logging.INFO)
    upstream.push(scenario)
    response = chat(client)
    message = assert_fail(response, "Fail", *words)
    assert TEST_KEY[8:] not in message and TEST_KEY[8:] not in caplog.text
    assert f"status={status}" in access_line(caplog, response)


def test_an_unreachable_upstream_is_a_fail_envelope(make, caplog):
    caplog.set_level(logging.INFO)
    response = chat(make(openai_base_url=f"http://127.0.0.1:{free_port()}/v1"))
    assert_fail(response, "Fail", "unreachable")
    assert "status=503" in access_line(caplog, response)


def test_the_rate_limit_is_a_fail_envelope_with_the_wait(make, upstream, caplog):
    caplog.set_level(logging.INFO)
    client = make(rate_limit="2/minute", proxy_token=TOKEN)
    assert client.post("/api/session").get_json()["status"] == "Success"  # open, but limited
    assert client.post("/api/session").get_json()["status"] == "Success"
    assert_fail(client.post("/api/session"), "Fail", "too many requests")
    for guess in ("guess-1", "guess-2"):
        assert_fail(client.post("/api/verify", json={"token": guess}), "Fail", "wrong")
    response = client.post("/api/verify", json={"token": TOKEN})  # guessing is limited too
    message = assert_fail(response, "Fail", "too many requests")
    assert re.search(r"retry in \d+ s", message) and message.count("retry in") == 1
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "status=429" in access_line(caplog, response)


def test_a_broken_store_is_a_fail_before_the_first_byte(make, upstream, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "broken.db").write_bytes(b"not a database at all " * 200)
    client = make(conversation_store=f"sqlite:///{tmp_path}/broken.db")
    response = chat(client)
    assert_fail(response, "Fail", "conversation store", "broken.db", "not a database")
    assert "status=503" in access_line(caplog, response)
    assert upstream.records == []  # nothing spent on a reply that would be forgotten
    (tmp_path / "broken.db").unlink()  # repaired: the next request opens it again
    assert lines(chat(client))[-1]["text"] == "Hello, world!"


def test_an_unreachable_redis_store_is_a_fail_before_the_first_byte(make, upstream):
    client = make(conversation_store=f"redis://127.0.0.1:{free_port()}/0")
    assert_fail(chat(client), "Fail", "conversation store", "Redis", "try again later")
    assert upstream.records == []


def test_a_redis_store_failing_during_the_history_walk_is_a_fail_before_the_first_byte(
        make, upstream, redis_without_scripts, caplog):
    caplog.set_level(logging.INFO)
    client = make(conversation_store=redis_without_scripts)
    first = lines(chat(client, "hello"))[-1]  # stored: single keys work
    response = chat(client, "go on", parent=first["id"])  # the walk is a script: refused
    assert_fail(response, "Fail", "conversation store", "cannot be read", "try again later")
    assert "status=503" in access_line(caplog, response)
    assert len(upstream.records) == 1  # nothing spent on the follow-up


def test_a_broken_redis_entry_in_the_history_is_a_fail_before_the_first_byte(
        make, upstream, redis_url, caplog):
    import redis

    caplog.set_level(logging.INFO)
    client = make(conversation_store=redis_url)
    first = lines(chat(client, "hello"))[-1]
    keys = redis.Redis.from_url(redis_url)
    try:
        keys.set(f"gpt_proxy:conversation:msg:{first['parentMessageId']}", "{broken", ex=60)
    finally:
        keys.close()
    response = chat(client, "go on", parent=first["id"])
    assert_fail(response, "Fail", "conversation store", "holds a broken entry")
    assert "status=503" in access_line(caplog, response)
    assert len(upstream.records) == 1


def test_a_reply_that_cannot_be_stored_says_so_in_its_last_line(client, upstream, monkeypatch):
    lines(chat(client))  # opens the store
    store = client.application.extensions["gpt_proxy.chat_process.store"]["store"]
    real = store.add

    def add(id, parent_id, role, text, owner=""):
        if role == "assistant":
            raise StoreError("the conversation store (test) cannot be written: disk full")
        return real(id, parent_id, role, text, owner)
    monkeypatch.setattr(store, "add", add)
    got = lines(chat(client))
    assert got[-2]["text"] == "Hello, world!"
    assert got[-1]["text"].startswith("Hello, world!\n\n[error] the reply could not be saved")
    assert "disk full" in got[-1]["text"]


def test_unknown_role_setting_is_a_fail_envelope(make, upstream):
    assert_fail(chat(make(chat_process_role="nosuchrole")), "Fail", "nosuchrole")
    assert upstream.records == []


# --- fuzzing --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10)
bodies = st.dictionaries(
    st.sampled_from(["prompt", "options", "systemMessage", "temperature", "top_p", "model",
                     "token", ""]),
    json_values | st.fixed_dictionaries({}, optional={
        "parentMessageId": json_values, "conversationId": json_values}),
    max_size=5).map(lambda b: json.dumps(b).encode()) | st.binary(max_size=200)


@pytest.fixture(scope="module")
def fuzz_client(fake_upstream, tmp_path_factory):
    """One app for every example (a fresh app per example would be slow)."""
    app = create_app(make_config(
        openai_base_url=fake_upstream.url, max_body_bytes=4096,
        conversation_store=f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/c.db"))
    yield app.test_client()
    holder = app.extensions.get("gpt_proxy.chat_process.store") or {}
    if holder.get("store") is not None:
        holder["store"].close()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, path=st.sampled_from(sorted(chat_process.PATHS)),
       method=st.sampled_from(["POST", "GET", "PUT"]))
def test_any_request_gets_the_envelope_or_a_reply_never_a_5xx(fuzz_client, body, path,
                                                              method):
    response = fuzz_client.open(path, method=method, data=body)
    assert response.status_code == 200
    data = response.get_data(as_text=True)
    assert "Traceback" not in data
    if response.mimetype == "application/json":
        assert response.get_json()["status"] in ("Success", "Fail")
    else:
        assert response.mimetype == "application/octet-stream"
        assert all(json.loads(line)["role"] == "assistant" for line in data.split("\n"))
