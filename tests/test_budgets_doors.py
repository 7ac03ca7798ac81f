"""Budgets as each door shows them (in-process, a real fake upstream and a real SQLite file):
refusals in each door's shape, what a reply is charged (whole, cut short, failed, failed
over), images and embeddings, the header, the usage routes and the metrics."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from gpt_proxy import create_app
from gpt_proxy.base.config import UpstreamSpec
from gpt_proxy.base.metrics import Metrics
from gpt_proxy.base.prices import Price

from .conftest import ANN, TEST_KEY, FakeClock, make_config, new_key
from .fake_upstream import (
    FakeUpstream,
    Scenario,
    chunk_json,
    embeddings_answer,
    image_answer,
    json_scenario,
    sse_bytes,
    stream_scenario,
)

USER = [{"role": "user", "content": "hi"}]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def make(upstream, tmp_path):
    def make_(**overrides):
        settings = dict(openai_base_url=upstream.url, auth="users",
                        database_url=f"sqlite:///{tmp_path}/gpt_proxy.db",
                        conversation_store=f"sqlite:///{tmp_path}/c.db",
                        prices={"fake-model": Price(Decimal(1), Decimal(2)),
                                "dall-e-2": Price(images={"256x256": Decimal("0.016")}),
                                "fake-embed": Price(Decimal("0.02"))},
                        allowed_models=("fake-model", "dall-e-2", "fake-embed"))
        settings.update(overrides)
        app = create_app(make_config(**settings))
        return app, app.extensions["gpt_proxy"]
    return make_


def ledger(state) -> list:
    state.budgets.flush()  # the rows of requests no budget applied to wait for their batch
    with state.budgets.db.read() as conn:
        return conn.execute(sa.text("SELECT * FROM ledger ORDER BY id")).all()


def counters(state) -> tuple[int, int]:
    with state.budgets.db.read() as conn:
        row = conn.execute(sa.text("SELECT COALESCE(SUM(spent), 0), "
                                   "COALESCE(SUM(reserved), 0) FROM budget_counters")).one()
    return tuple(row)


def keyed(make, unit="tokens", period="day", limit=10**9, **overrides):
    """An app, its state, a user key, and a budget on that key."""
    app, state = make(**overrides)
    key = new_key(app, *ANN)
    key_id = state.accounts.list_keys()[0].id
    from gpt_proxy.money.budgets import parse_limit
    state.budgets.set_budget("key", key_id, unit, period, parse_limit(unit, limit))
    return app.test_client(), state, key


# --- refusals, door by door -----------------------------------------------------------------------

def test_each_door_refuses_an_empty_budget_in_its_own_shape(make, upstream):
    client, state, key = keyed(make, limit=10)
    v1 = client.post("/v1/chat/completions", headers=bearer(key),
                     json={"model": "fake-model", "messages": USER})
    assert v1.status_code == 429 and v1.get_json()["error"]["code"] == "insufficient_quota"
    assert v1.get_json()["error"]["type"] == "insufficient_quota"
    assert "this key's daily tokens budget (10 tokens)" in v1.get_json()["error"]["message"]
    assert int(v1.headers["Retry-After"]) >= 1
    gpt = client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"})
    assert gpt.status_code == 429 and gpt.get_json()["error"]["code"] == "budget_exceeded"
    assert "resets at" in gpt.get_json()["error"]["message"]
    chat = client.post("/api/chat-process", headers=bearer(key), json={"prompt": "hi"})
    assert chat.status_code == 200 and chat.get_json()["status"] == "Fail"
    assert "budget" in chat.get_json()["message"]
    image = client.post("/api/gpt/getImage", headers=bearer(key), json={"prompt": "a cat"})
    assert image.status_code == 200 and image.get_json()["code"] == 40000
    assert "budget" in image.get_json()["message"]
    assert upstream.records == [] and ledger(state) == [] and counters(state) == (0, 0)


def test_the_frontend_doors_say_when_a_budget_resets_once(make, upstream):
    """chatgpt-web and the GPT Terminal page show only the message: a budget's own "it resets
    at ... (in 19 h 48 min)" is enough, without "(retry in 71330 s)" after it."""
    client, _, key = keyed(make, limit=10)
    chat = client.post("/api/chat-process", headers=bearer(key), json={"prompt": "hi"})
    image = client.post("/api/gpt/getImage", headers=bearer(key), json={"prompt": "a cat"})
    for response, message in ((chat, chat.get_json()["message"]),
                              (image, image.get_json()["message"])):
        # "(in 19 h 48 min)"; in the last two minutes of the day, "(in 20 s)"
        assert "resets at" in message
        assert re.search(r"\(in \d+ (s|min|h \d+ min)\)", message), message
        assert "retry in" not in message
        assert int(response.headers["Retry-After"]) >= 1  # still there for a program
    assert upstream.records == []


def test_an_rpm_budget_is_openais_rate_limit(make, upstream):
    client, _, key = keyed(make, unit="requests", period="minute", limit=1)
    upstream.push(stream_scenario(["ok"]))
    body = {"model": "fake-model", "messages": USER}
    assert client.post("/v1/chat/completions", headers=bearer(key), json=body).status_code == 200
    refused = client.post("/v1/chat/completions", headers=bearer(key), json=body)
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")


def test_a_money_budget_refuses_a_model_without_a_price(make, upstream):
    client, _, key = keyed(make, unit="usd", period="month", limit="5",
                           allowed_models=("fake-model", "free-model"))
    response = client.post("/v1/chat/completions", headers=bearer(key),
                           json={"model": "free-model", "messages": USER})
    assert response.status_code == 403 and "has no price" in response.get_json()["error"][
        "message"]


# --- what a reply is charged --------------------------------------------------------------------------

def test_a_whole_reply_pays_its_usage_and_says_what_is_left(make, upstream):
    client, state, key = keyed(make)
    upstream.push(stream_scenario(["Hello", " there"]))  # usage: 5 prompt, 2 completion
    response = client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"})
    assert response.get_data(as_text=True) == "Hello there"
    left = int(response.headers["X-Budget-Remaining"].split("=")[1])
    sent = upstream.wait_for_request().json
    assert sent["max_tokens"] == 4096  # a bound was set: the request named none
    worst = len(json.dumps(sent, ensure_ascii=False).encode()) + 4096
    assert left == 10**9 - worst
    row = ledger(state)[0]
    assert (row.prompt_tokens, row.completion_tokens, row.outcome, row.door, row.state) == (
        5, 2, "ok", "gpt", "settled")
    assert row.cost == 5 * 1000 + 2 * 2000 and counters(state) == (7, 0)


def test_a_client_that_leaves_pays_the_prompt_bound_and_the_chunks_relayed(make, upstream):
    client, state, key = keyed(make)
    upstream.push(stream_scenario(["one", " two", " three"], hold_open=True, usage=False,
                                  finish=None, done=False))
    response = client.post("/v1/chat/completions", headers=bearer(key), buffered=False,
                           json={"model": "fake-model", "messages": USER, "stream": True,
                                 "max_tokens": 50})
    body = b""
    for piece in response.response:
        body += piece
        if b'"content": " three"' in body:  # the third token relayed
            break
    response.close()
    sent = upstream.wait_for_request().json
    bound = len(json.dumps(sent, ensure_ascii=False).encode())
    row = ledger(state)[0]
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == ("client_left", bound, 3)
    assert counters(state) == (bound + 3, 0)


def test_a_failure_before_the_first_byte_is_free(make, upstream):
    client, state, key = keyed(make)
    upstream.push(json_scenario(500, {"error": {"message": "down"}}))
    response = client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"})
    assert response.status_code == 502
    assert counters(state) == (0, 0)
    assert [(r.outcome, r.prompt_tokens, r.cost) for r in ledger(state)] == [("failed", 0, 0)]


def test_failover_charges_once_with_the_upstream_that_answered(make, tmp_path):
    first, second = FakeUpstream().start(), FakeUpstream().start()
    try:
        first.push(json_scenario(503, {"error": {"message": "busy"}}))
        second.push(stream_scenario(["fine"]))
        client, state, key = keyed(make, upstreams=(
            UpstreamSpec("first", first.url, TEST_KEY, priority=1),
            UpstreamSpec("second", second.url, TEST_KEY, priority=2)))
        response = client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"})
        assert response.get_data(as_text=True) == "fine"
        rows = ledger(state)
        assert [(r.upstream, r.outcome, r.prompt_tokens, r.completion_tokens)
                for r in rows] == [("second", "ok", 5, 1)]
        assert counters(state) == (6, 0)
    finally:
        first.stop()
        second.stop()


def test_without_a_budget_a_client_that_leaves_is_still_recorded_at_the_prompt_bound(make,
                                                                                      upstream):
    """No budget asked for the bound before the upstream was: it is worked out at the end."""
    app, state = make()
    key = new_key(app, *ANN)
    client = app.test_client()
    upstream.push(stream_scenario(["one", " two"], hold_open=True, usage=False, finish=None,
                                  done=False))
    response = client.post("/v1/chat/completions", headers=bearer(key), buffered=False,
                           json={"model": "fake-model", "messages": USER, "stream": True})
    body = b""
    for piece in response.response:
        body += piece
        if b'"content": " two"' in body:
            break
    response.close()
    bound = len(json.dumps(upstream.wait_for_request().json, ensure_ascii=False).encode())
    row = ledger(state)[0]
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == ("client_left", bound, 2)
    assert counters(state) == (0, 0)  # nothing reserved, nothing to settle


def test_a_mid_stream_failure_pays_what_was_relayed(make, upstream):
    client, state, key = keyed(make)
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("partial")), b"data: {broken\n\n"]))
    response = client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"})
    assert "[error]" in response.get_data(as_text=True)
    row = ledger(state)[0]
    assert row.outcome == "error:upstream_error" and row.completion_tokens == 1


# --- images and embeddings -------------------------------------------------------------------------

def test_images_are_reserved_and_paid_per_image_by_size(make, upstream):
    client, state, key = keyed(make, unit="usd", period="month", limit="0.04")
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    upstream.push(json_scenario(200, image_answer([png, png])))
    response = client.post("/v1/images/generations", headers=bearer(key), json={
        "model": "dall-e-2", "prompt": "a cat", "n": 2, "size": "256x256",
        "response_format": "b64_json"})
    assert response.status_code == 200 and len(response.get_json()["data"]) == 2
    row = ledger(state)[0]
    assert row.images == 2 and row.cost >= 32_000_000
    refused = client.post("/v1/images/generations", headers=bearer(key), json={
        "model": "dall-e-2", "prompt": "a cat", "n": 1, "size": "256x256"})
    assert refused.status_code == 429  # $0.032 spent of $0.04: no room for one more $0.016


def test_embeddings_pay_their_input_tokens(make, upstream):
    client, state, key = keyed(make)
    upstream.push(json_scenario(200, embeddings_answer([[0.1, 0.2]])))
    response = client.post("/v1/embeddings", headers=bearer(key),
                           json={"model": "fake-embed", "input": "hello"})
    assert response.status_code == 200
    row = ledger(state)[0]
    assert (row.prompt_tokens, row.completion_tokens, row.cost) == (4, 0, 80)


# --- what people see ------------------------------------------------------------------------------

def test_usage_shows_the_callers_spend_and_budgets(make, upstream):
    client, state, key = keyed(make, limit=10_000)
    upstream.push(stream_scenario(["a", "b"]))
    assert client.post("/api/gpt/get", headers=bearer(key),
                       json={"message": "hi"}).get_data(as_text=True) == "ab"
    usage = client.get("/api/usage", headers=bearer(key)).get_json()
    assert usage["user"] == "ann" and usage["key"] == "test"
    (budget,) = usage["budgets"]
    assert (budget["scope"], budget["unit"], budget["period"], budget["limit"],
            budget["spent"], budget["reserved"], budget["left"]) == (
        "key", "tokens", "day", 10_000, 7, 0, 9993)
    assert budget["resets_at"].endswith("T00:00:00Z")
    (day,) = usage["by_day"]
    assert (day["model"], day["requests"], day["prompt_tokens"], day["cost"]) == (
        "fake-model", 1, 5, "0.000009")
    assert client.get("/api/usage").status_code == 401


def test_the_admin_reads_and_exports_the_ledger(make, upstream):
    admin = {"Authorization": "Bearer admin-token-0123456789ab"}
    client, state, key = keyed(make, proxy_token="admin-token-0123456789ab")
    upstream.push(stream_scenario(["x"]), stream_scenario(["y"]))
    for _ in range(2):
        client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"}).get_data()
    rows = client.get("/api/admin/usage?user=ann", headers=admin).get_json()["data"]
    assert [r["outcome"] for r in rows] == ["ok", "ok"] and rows[0]["cost"] == "0.000007"
    csv = client.get("/api/admin/usage?format=csv&from=2000-01-01", headers=admin)
    lines = csv.get_data(as_text=True).strip().splitlines()
    assert csv.mimetype == "text/csv" and lines[0].startswith("id,request_id,created")
    assert len(lines) == 3
    assert client.get("/api/admin/usage?to=2000-01-01", headers=admin).get_json()["data"] == []
    bad = client.get("/api/admin/usage?from=yesterday", headers=admin)
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "from"
    budgets = client.get("/api/admin/budgets", headers=admin).get_json()["data"]
    assert budgets[0]["spent"] == 12
    assert client.get("/api/admin/budgets", headers=bearer(key)).status_code == 401  # no key


@pytest.mark.parametrize("body,field", [
    ({"scope": "key", "subject": 1, "unit": "gold", "period": "day", "limit": 1}, "unit"),
    ({"scope": "key", "subject": 1, "unit": "tokens", "period": "week", "limit": 1}, "period"),
    ({"scope": "planet", "subject": 1, "unit": "tokens", "period": "day", "limit": 1}, "scope"),
    ({"scope": "user", "subject": "nobody", "unit": "tokens", "period": "day", "limit": 1},
     "user"),
    ({"scope": "key", "subject": 1, "unit": "tokens", "period": "day", "limit": -5}, "limit"),
    ({"scope": "key", "subject": 1, "unit": "usd", "period": "day", "limit": "lots"}, "limit"),
])
def test_bad_budgets_name_the_field(make, body, field):
    app, state = make(proxy_token="admin-token-0123456789ab")
    new_key(app, *ANN)
    response = app.test_client().post("/api/admin/budgets", json=body, headers={
        "Authorization": "Bearer admin-token-0123456789ab"})
    assert response.status_code in (400, 404) and response.get_json()["error"]["field"] == field


def test_metrics_count_refusals_by_kind_and_the_open_reservations(make, upstream):
    app, state = make(auth="open")
    state.budgets.metrics = metrics = Metrics()
    metrics.read_reservations(state.budgets.reservations)
    state.budgets.set_budget("service", 0, "tokens", "total", 10**6)
    client = app.test_client()
    upstream.push(stream_scenario(["ok"]))
    client.post("/api/gpt/get", json={"message": "hi"}).get_data()
    state.budgets.set_budget("service", 0, "tokens", "total", 1)
    state.budgets.clock = FakeClock()  # the cached list of budgets is not reused
    assert client.post("/api/gpt/get", json={"message": "hi"}).status_code == 429
    text = generate_latest(metrics.registry).decode()
    assert 'gpt_proxy_budget_refusals_total{budget="service.tokens.total"} 1.0' in text
    assert "gpt_proxy_budget_reservations_open 0.0" in text
    assert 'gpt_proxy_budget_reserved_drift{unit="tokens"} 0.0' in text


def test_the_open_reservations_metric_is_what_the_database_holds(make, upstream):
    """Two workers over one database: what one reserved (and, killed, never settled) the
    other's metrics show; a settlement that went wrong cannot hide from it."""
    first_app, first = make()
    _, second = make()  # another worker: the same database
    first.budgets.set_budget("service", 0, "tokens", "total", 10**9)
    from gpt_proxy.money.budgets import Ask
    second.budgets.admit(Ask("fake-model", 10, 10, "test", "killed"), None, None)

    def figures() -> str:
        return first.metrics.exposition()[0].decode()
    assert "gpt_proxy_budget_reservations_open 1.0" in figures()
    upstream.push(stream_scenario(["ok"]))
    first_app.test_client().post("/api/gpt/get", json={"message": "hi"}).get_data()
    assert "gpt_proxy_budget_reservations_open 1.0" in figures()  # the killed worker's
    assert 'gpt_proxy_budget_reserved_drift{unit="tokens"} 0.0' in figures()
    with first.budgets.db.write() as conn:  # a reservation with no request behind it
        conn.execute(sa.text("UPDATE budget_counters SET reserved = reserved + 5"))
    assert 'gpt_proxy_budget_reserved_drift{unit="tokens"} 5.0' in figures()


# --- a database that fails for a moment -------------------------------------------------------

def test_a_database_failure_is_a_503_in_each_doors_shape(make, upstream, monkeypatch):
    """The key lookup meets a database restarting: each door answers 503 (the frontends'
    envelope: its failure, with the wait) and Retry-After, never an internal error."""
    from gpt_proxy.storage.db import DatabaseError

    client, state, key = keyed(make)

    def restarting(*args, **kwargs):
        raise DatabaseError("the database (DATABASE_URL=postgresql://db) cannot be read: "
                            "terminating connection due to administrator command",
                            "unavailable")
    monkeypatch.setattr(state.accounts, "key", restarting)
    v1 = client.post("/v1/chat/completions", headers=bearer(key),
                     json={"model": "fake-model", "messages": USER})
    gpt = client.post("/api/gpt/get", headers=bearer(key), json={"message": "hi"})
    chat = client.post("/api/chat-process", headers=bearer(key), json={"prompt": "hi"})
    image = client.post("/api/gpt/getImage", headers=bearer(key), json={"prompt": "a cat"})
    for response in (v1, gpt):
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.get_json()["error"]["code"] == "database_unavailable"
    assert "try again" in v1.get_json()["error"]["message"]
    assert chat.get_json()["status"] == "Fail" and "try again" in chat.get_json()["message"]
    assert image.get_json()["code"] != 0 and "try again" in image.get_json()["message"]
    for response in (v1, gpt, chat, image):
        assert response.headers["Retry-After"] == "2"
        assert "internal" not in response.get_data(as_text=True)
    assert upstream.records == []


# --- n > 1 ------------------------------------------------------------------------------------

def test_n_choices_reserve_the_worst_case_n_times_and_pay_their_usage(make, upstream):
    client, state, key = keyed(make)
    upstream.push(stream_scenario(["a", "b"]))  # usage: 5 prompt, 2 completion
    body = {"model": "fake-model", "messages": USER, "n": 3, "max_tokens": 40, "stream": True}
    response = client.post("/v1/chat/completions", headers=bearer(key), json=body)
    assert response.status_code == 200
    response.get_data()
    sent = upstream.wait_for_request().json
    assert sent["n"] == 3 and sent["max_tokens"] == 40
    worst = len(json.dumps(sent, ensure_ascii=False).encode()) + 3 * 40
    assert int(response.headers["X-Budget-Remaining"].split("=")[1]) == 10**9 - worst
    row = ledger(state)[0]
    assert (row.prompt_tokens, row.completion_tokens, row.state) == (5, 2, "settled")
    assert counters(state) == (7, 0) and state.budgets.check() == []
