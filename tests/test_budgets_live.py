"""Budgets under real gunicorn: the overshoot test (10 x N requests at once against room for
N, over two instances sharing PostgreSQL, and over one instance's workers sharing SQLite),
the openai SDK's view of an empty budget, and a ledger that survives a graceful stop."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import openai
import pytest
import requests
import sqlalchemy as sa

from .conftest import TEST_KEY, Gunicorn
from .fake_upstream import FakeUpstream, Scenario, chunk_json, sse_bytes

ADMIN = "budget-admin-token-0123456789"
BODY = {"model": "fake-model", "stream": True, "max_tokens": 100,
        "messages": [{"role": "user", "content": "How much is left?"}]}
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def reply(gate: threading.Event | None = None) -> Scenario:
    """A streamed reply that waits for `gate` after its first chunk, then ends with usage."""
    parts = [sse_bytes(chunk_json("Plenty", role="assistant"))]
    if gate is not None:
        parts.append(gate)
    parts += [sse_bytes(chunk_json(finish="stop")), sse_bytes(chunk_json(choices=False,
                                                                          usage=USAGE)),
              b"data: [DONE]\n\n"]
    return Scenario(parts=parts)


@pytest.fixture(scope="module")
def gated():
    """A fake upstream of this module's own (its default reply is set per test)."""
    server = FakeUpstream().start()
    yield server
    server.stop()


def start(upstream, folder, database: str, workers: int, **env) -> Gunicorn:
    folder.mkdir(parents=True, exist_ok=True)
    return Gunicorn({"OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": upstream.url,
                     "OPENAI_MODEL": "fake-model", "WEB_CONCURRENCY": str(workers),
                     "AUTH": "users", "PROXY_TOKEN": ADMIN, "DATABASE_URL": database,
                     "CONVERSATION_STORE": f"sqlite:///{folder}/c.db", **env},
                    folder / "gunicorn.log")


def admin(url: str, method: str, path: str, **body) -> dict:
    answer = requests.request(method, url + path, json=body or None, timeout=10,
                              headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def new_key(url: str, name: str) -> dict:
    admin(url, "POST", "/api/admin/users", username=name, password="a long password")
    return admin(url, "POST", "/api/admin/keys", user=name, name="k")


def worst_case(url: str, upstream) -> int:
    """One request's worst case, read off X-Budget-Remaining under a roomy budget."""
    key = new_key(url, "probe")
    admin(url, "POST", "/api/admin/budgets", scope="key", subject=key["id"], unit="tokens",
          period="total", limit=10**9)
    upstream.default = reply()
    answer = requests.post(f"{url}/v1/chat/completions", json=BODY, timeout=10,
                           headers={"Authorization": f"Bearer {key['key']}"})
    assert answer.status_code == 200
    left = int(answer.headers["X-Budget-Remaining"].split("=")[1])
    return 10**9 - left


def storm(urls: list[str], key: str, count: int, gate: threading.Event) -> tuple[list, list]:
    """`count` requests at once, spread over `urls`: each thread waits at a barrier, sends,
    and notes its status as soon as the headers are in (the admitted ones are then held by
    the upstream at `gate`). Returns (statuses, responses)."""
    barrier = threading.Barrier(count)
    statuses: list = [None] * count
    responses: list = [None] * count
    known = threading.Semaphore(0)

    def one(i: int) -> None:
        try:
            barrier.wait(30)
            answer = requests.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=BODY,
                                   stream=True, timeout=60,
                                   headers={"Authorization": f"Bearer {key}"})
            statuses[i], responses[i] = answer.status_code, answer
        except Exception as exc:  # noqa: BLE001 - shown by the assertion on statuses
            statuses[i] = repr(exc)
        finally:
            known.release()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for _ in range(count):
        assert known.acquire(timeout=60), "a request never got its answer's headers"
    return statuses, responses


def overshoot_round(urls: list[str], upstream, database: str, name: str, n: int = 5) -> None:
    worst = worst_case(urls[0], upstream) if name == "round0" else None
    if worst is None:
        worst = overshoot_round.worst
    overshoot_round.worst = worst
    key = new_key(urls[0], name)
    budget = admin(urls[0], "POST", "/api/admin/budgets", scope="key", subject=key["id"],
                   unit="tokens", period="day", limit=n * worst)
    gate = threading.Event()
    upstream.default = reply(gate)
    statuses, responses = storm(urls, key["key"], 10 * n, gate)
    try:
        assert sorted(map(str, statuses)) == ["200"] * n + ["429"] * (9 * n), statuses
        refusal = next(r for r in responses if r is not None and r.status_code == 429).json()
        assert refusal["error"]["code"] == "insufficient_quota"
    finally:
        gate.set()
    for answer in responses:
        if answer is not None and answer.status_code == 200:
            assert answer.text.rstrip().endswith("data: [DONE]")
    engine = sa.create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    try:
        deadline = time.monotonic() + 10
        while True:  # the ledger rows are settled when each reply's relay closes
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT state, prompt_tokens, completion_tokens "
                                            "FROM ledger WHERE key_id = :k"),
                                    {"k": key["id"]}).all()
                spent, reserved = conn.execute(sa.text(
                    "SELECT spent, reserved FROM budget_counters WHERE budget_id = :b"),
                    {"b": budget["id"]}).one()
            if all(row.state == "settled" for row in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling the database for the last settlements
    finally:
        engine.dispose()
    assert len(rows) == n and all(row.state == "settled" for row in rows)
    assert reserved == 0 and spent == n * 12 <= n * worst


@pytest.fixture(scope="module")
def two_instances(gated, postgres, tmp_path_factory):
    database = postgres.new_database()
    folder = tmp_path_factory.mktemp("budgets-pg")
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start(gated, folder / name, database, 2))
        yield servers, database
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("round_", range(3))
def test_no_overshoot_over_two_instances_sharing_postgresql(two_instances, gated, round_):
    servers, database = two_instances
    overshoot_round([s.url for s in servers], gated, database, f"round{round_}")


@pytest.fixture(scope="module")
def one_instance(gated, tmp_path_factory):
    folder = tmp_path_factory.mktemp("budgets-sqlite")
    database = f"sqlite:///{folder}/gpt_proxy.db"
    server = start(gated, folder / "a", database, 3)
    try:
        yield server, database
    finally:
        server.stop()


@pytest.mark.parametrize("round_", range(2))
def test_no_overshoot_over_three_workers_sharing_sqlite(one_instance, gated, round_):
    server, database = one_instance
    overshoot_round([server.url], gated, database, f"round{round_}")


def test_the_openai_sdk_raises_rate_limit_error_with_insufficient_quota(one_instance, gated):
    server, _ = one_instance
    key = new_key(server.url, "sdk")
    admin(server.url, "POST", "/api/admin/budgets", scope="key", subject=key["id"],
          unit="tokens", period="month", limit=10)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fake-model", messages=BODY["messages"])
    assert caught.value.code == "insufficient_quota"
    assert "this key's monthly tokens budget (10 tokens)" in caught.value.message
    assert "resets at" in caught.value.message


def test_the_ledger_survives_a_graceful_stop_with_nothing_lost(gated, tmp_path):
    """Replies in flight when gunicorn is told to stop finish, and every request has its
    settled row."""
    database = f"sqlite:///{tmp_path}/gpt_proxy.db"
    server = start(gated, tmp_path / "a", database, 2)
    gate = threading.Event()
    try:
        key = new_key(server.url, "graceful")
        headers = {"Authorization": f"Bearer {key['key']}"}
        gated.default = reply()
        for _ in range(5):
            assert requests.post(f"{server.url}/v1/chat/completions", json=BODY, timeout=10,
                                 headers=headers).status_code == 200
        gated.default = reply(gate)
        in_flight = [requests.post(f"{server.url}/v1/chat/completions", json=BODY,
                                   stream=True, timeout=30, headers=headers) for _ in range(4)]
        assert all(answer.status_code == 200 for answer in in_flight)
        server.proc.send_signal(signal.SIGTERM)
        gate.set()
        for answer in in_flight:
            assert answer.text.rstrip().endswith("data: [DONE]")
        server.proc.wait(30)
    finally:
        gate.set()
        with contextlib.suppress(Exception):
            server.stop()
    engine = sa.create_engine(database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT state, outcome, prompt_tokens FROM ledger "
                                        "WHERE key_id = :k"), {"k": key["id"]}).all()
    finally:
        engine.dispose()
    assert [(r.state, r.outcome, r.prompt_tokens) for r in rows] == [("settled", "ok", 9)] * 9
    assert json.dumps(USAGE)  # the usage the fake upstream reported is what was charged
