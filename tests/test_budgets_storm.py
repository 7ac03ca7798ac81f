"""Money under a deployment's conditions (issue 26): two gunicorn instances of three workers
each sharing one PostgreSQL reached through a 1 ms delay each way (on loopback the
interleavings that matter are rare), many requests of one key with two budgets (requests
per minute, tokens in total) and the service's dollar budget, admitted, settled, cut short
and swept at the same moment; afterwards every counter is what the ledger says and nothing
stays reserved. Then PostgreSQL restarted under requests (503, never 500; the next request
served) and stopped while replies are in flight (their settlements kept by the workers and
written, with the real usage, once it is back)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from gpt_proxy.base.errors import OverBudget
from gpt_proxy.base.prices import default_price
from gpt_proxy.money.budgets import Ask, Budgets
from gpt_proxy.storage.db import open_database

from .conftest import ROOT, until
from .databases import PostgreSQL, postgres_bin, statements_in
from .fake_upstream import FakeUpstream
from .tcp_proxy import CuttingProxy
from .test_budgets_live import BODY, admin, new_key, reply, start

PRICE = "1/2"  # DEFAULT_PRICE: $1 in, $2 out per million tokens


@pytest.fixture(scope="module")
def gated():
    server = FakeUpstream().start()
    yield server
    server.stop()


def engine_of(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def key_row(url: str, key_id: int) -> int:
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT user_id FROM api_keys WHERE id = :k"),
                                {"k": key_id}).scalar_one()
    finally:
        engine.dispose()


def ledger_says(url: str) -> tuple[dict, int]:
    """What each counter should hold by the ledger's own columns (worked out here, not by
    the code under test): {(budget id, window): (spent, reserved)}, and the open rows."""
    engine = engine_of(url)
    expected: dict = {}
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT state, outcome, holds, prompt_tokens, completion_tokens, cost "
                "FROM ledger WHERE holds IS NOT NULL")).all()
    finally:
        engine.dispose()
    for row in rows:
        for budget_id, key, unit, held in json.loads(row.holds):
            spent, reserved = expected.get((budget_id, key), (0, 0))
            if row.state == "open":
                reserved += held
            elif row.outcome == "expired":
                spent += held
            elif unit == "tokens":
                spent += (row.prompt_tokens or 0) + (row.completion_tokens or 0)
            elif unit == "requests":
                spent += 0 if row.outcome == "failed" else 1
            else:
                spent += row.cost or 0
            expected[(budget_id, key)] = (spent, reserved)
    return expected, sum(1 for row in rows if row.state == "open")


def counters_hold(url: str) -> dict:
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            return {(r.budget_id, r.window_key): (r.spent, r.reserved) for r in conn.execute(
                sa.text("SELECT budget_id, window_key, spent, reserved FROM budget_counters"))}
    finally:
        engine.dispose()


def open_rows(url: str) -> int:
    engine = engine_of(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM ledger "
                                        "WHERE state = 'open'")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def far_postgres(postgres):
    """A database of the session's PostgreSQL behind a 1 ms delay each way: (the URL the
    servers use, the direct URL the test reads)."""
    direct = postgres.new_database()
    proxy = CuttingProxy(postgres.port, latency=0.001)
    try:
        yield direct.replace(f":{postgres.port}/", f":{proxy.port}/"), direct
    finally:
        proxy.stop()


# A key under three budgets (its requests per minute, its tokens in all, the service's
# dollars): admission and settlement in transactions. Under one (its tokens): each admission
# one statement, and the settlements a worker gathers one statement a batch.
BUDGET_SETS = {
    "three": (("key", "requests", "minute", 10**6), ("key", "tokens", "total", 10**9),
              ("service", "usd", "total", "1000")),
    "one": (("key", "tokens", "total", 10**9),),
}


@pytest.mark.parametrize("budget_set", sorted(BUDGET_SETS))
def test_a_storm_of_one_key_leaves_every_counter_equal_to_the_ledger(gated, far_postgres,
                                                                      tmp_path, budget_set):
    far, direct = far_postgres
    servers = [start(gated, tmp_path / name, far, 3, DEFAULT_PRICE=PRICE) for name in "ab"]
    try:
        url = servers[0].url
        key = new_key(url, f"storm-{budget_set}")
        for scope, unit, period, limit in BUDGET_SETS[budget_set]:
            subject = {"subject": key["id"]} if scope == "key" else {}
            admin(url, "POST", "/api/admin/budgets", scope=scope, unit=unit, period=period,
                  limit=limit, **subject)
        user_id = key_row(direct, key["id"])
        sweeper_db = open_database(direct, ROOT)
        sweeper = Budgets(sweeper_db, default_price=default_price(PRICE), hold_seconds=-1)
        gate = threading.Event()
        gated.default = reply(gate)
        count = 80  # half read to the end, half hang up after the first chunk
        barrier = threading.Barrier(count)
        results: list = [None] * count
        headers_in = threading.Semaphore(0)

        def one(i: int) -> None:
            try:
                barrier.wait(30)
                answer = requests.post(f"{servers[i % 2].url}/v1/chat/completions", json=BODY,
                                       stream=True, timeout=60,
                                       headers={"Authorization": f"Bearer {key['key']}"})
                status = answer.status_code
                chunks = answer.iter_content(None)
                next(chunks)  # the first chunk is in
                if i % 2:
                    answer.close()  # the client hangs up at once
                    results[i] = (status, "left")
                    headers_in.release()
                    return
                headers_in.release()
                results[i] = (status, b"".join(chunks).decode())
            except Exception as exc:  # noqa: BLE001 - shown by the assertion on results
                results[i] = (repr(exc), "")
                headers_in.release()
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        for _ in range(count):
            assert headers_in.acquire(timeout=60), "a request never got its first chunk"
        # reservations of a worker that died, for the sweep to settle during the storm (made
        # now: each worker swept at its first admission, and sweeps again after a minute)
        for i in range(20):
            sweeper.admit(Ask("fake-model", 50, 100, "test", f"dead{i}"), user_id, key["id"])
        swept = []
        sweeping = threading.Thread(target=lambda: swept.append(sweeper.sweep()), daemon=True)
        gate.set()  # the replies end, the leavers' relays close, and the sweep runs: at once
        sweeping.start()
        for thread in threads:
            thread.join(60)
        sweeping.join(60)
        assert [r[0] for r in results] == [200] * count, results
        assert all(r[1].rstrip().endswith("data: [DONE]") for r in results[0::2])
        assert swept == [20]
        until(lambda: open_rows(direct) == 0, "ledger rows stayed open", timeout=30)
        expected, _ = ledger_says(direct)
        held = counters_hold(direct)
        assert {k: v for k, v in held.items() if k in expected} == expected
        assert all(reserved == 0 for _, reserved in held.values())
        assert sweeper.check() == []
        sweeper_db.close()
    finally:
        gated.default = reply()
        for server in servers:
            server.stop()


@pytest.fixture()
def own_postgres():
    """A PostgreSQL of this test's own: it is stopped and restarted."""
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgreSQL()
    yield server
    server.stop()


@contextmanager
def sent_to_server(driver, path: Path) -> Iterator[list[str]]:
    """The statements the psycopg connection `driver` sends the server within the block, in
    order (read from libpq's own trace of the protocol once the block is over)."""
    sent: list[str] = []
    with open(path, "w") as trace:
        driver.pgconn.trace(trace.fileno())
        try:
            yield sent
        finally:
            driver.pgconn.untrace()
    sent += statements_in(path.read_text())


def test_a_pooled_postgresql_connection_is_looked_at_without_a_query_and_a_dead_one_replaced(
        own_postgres, tmp_path):
    """No round trip before each transaction (pool_pre_ping's SELECT 1 was a fifth of a
    budgeted request's CPU): a live idle connection is lent as it is, and one the server
    ended (a fast restart) is replaced before anything runs on it."""
    url = own_postgres.new_database()
    db = open_database(url, tmp_path)
    try:
        with db.read() as conn:
            first = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            driver = conn.connection.dbapi_connection
        # what the service sends the server on that connection, in libpq's own trace
        with sent_to_server(driver, tmp_path / "trace") as sent:
            with db.read() as conn:  # the same pooled connection, and only the query itself
                assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() == first
        assert sent == ["BEGIN", "SELECT pg_backend_pid()", "ROLLBACK"]  # no ping first
        own_postgres.restart()
        with db.read() as conn:  # the first use after the restart: a fresh connection
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != first
        with db.raw_write() as raw:  # and the money path's own transactions too
            assert raw.execute("SELECT 1", {}) == [(1,)]
    finally:
        db.close()


def test_a_postgresql_restart_under_requests_is_503_never_500(gated, own_postgres, tmp_path):
    database = own_postgres.new_database()
    server = start(gated, tmp_path / "a", database, 2)
    try:
        key = new_key(server.url, "restart")
        admin(server.url, "POST", "/api/admin/budgets", scope="key", subject=key["id"],
              unit="tokens", period="total", limit=10**9)
        gated.default = reply()
        headers = {"Authorization": f"Bearer {key['key']}"}
        body = {**BODY, "stream": False}
        statuses: list = []
        stop = threading.Event()

        def load() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = requests.post(f"{server.url}/v1/chat/completions", json=body,
                                           headers=headers, timeout=30)
                    statuses.append((answer.status_code, answer.headers.get("Retry-After"),
                                     answer.text[:300]))
                except requests.RequestException as exc:
                    statuses.append((repr(exc), None, ""))
        threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
        for thread in threads:
            thread.start()
        until(lambda: len(statuses) >= 12, "no requests were answered before the restart")
        own_postgres.restart()
        after = len(statuses)
        until(lambda: len(statuses) >= after + 24, "too few requests after the restart",
              timeout=30)
        stop.set()
        for thread in threads:
            thread.join(60)
        wrong = [s for s in statuses if s[0] not in (200, 503)]
        assert wrong == [], wrong
        for status, retry, text in statuses:
            if status == 503:
                assert retry == "2" and "database_unavailable" in text
        # the database is back: the next requests are served (the pools hold no dead
        # connection)
        for _ in range(4):
            answer = requests.post(f"{server.url}/v1/chat/completions", json=body,
                                   headers=headers, timeout=30)
            assert answer.status_code == 200, answer.text
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_settlements_across_a_postgresql_stop_are_kept_and_written_with_the_real_usage(
        gated, own_postgres, tmp_path):
    database = own_postgres.new_database()
    server = start(gated, tmp_path / "a", database, 2)
    try:
        key = new_key(server.url, "blip")
        admin(server.url, "POST", "/api/admin/budgets", scope="key", subject=key["id"],
              unit="tokens", period="total", limit=10**9)
        gate = threading.Event()
        gated.default = reply(gate)
        headers = {"Authorization": f"Bearer {key['key']}"}
        in_flight = [requests.post(f"{server.url}/v1/chat/completions", json=BODY,
                                   stream=True, timeout=30, headers=headers) for _ in range(6)]
        assert [answer.status_code for answer in in_flight] == [200] * 6
        ids = [answer.headers["X-Request-Id"] for answer in in_flight]
        own_postgres.halt()
        gate.set()
        for answer in in_flight:  # delivered in full while the database is away
            assert answer.text.rstrip().endswith("data: [DONE]")
        for request_id in ids:  # the access line is written whatever the ledger did
            server.wait_for_log(f"id={request_id}", "result=ok", "prompt_tokens=9",
                                timeout=30)
            server.wait_for_log(f"request {request_id} not settled yet (kept", timeout=30)
        assert open_rows_when_back(own_postgres, database) == 6  # nothing written meanwhile
        until(lambda: open_rows(database) == 0, "the kept settlements were never written",
              timeout=30)
    finally:
        gated.default = reply()
        gate.set()
        server.stop()
    engine = engine_of(database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT request_id, outcome, prompt_tokens, "
                                        "completion_tokens FROM ledger WHERE key_id = :k"),
                                {"k": key["id"]}).all()
            spent, reserved = conn.execute(sa.text(
                "SELECT spent, reserved FROM budget_counters")).one()
    finally:
        engine.dispose()
    assert sorted((r.request_id, r.outcome, r.prompt_tokens, r.completion_tokens)
                  for r in rows) == sorted((i, "ok", 9, 3) for i in ids)
    assert (spent, reserved) == (6 * 12, 0)


def open_rows_when_back(server: PostgreSQL, database: str) -> int:
    """Start the database again, and count the open rows before the workers' next retry can
    write (they try every couple of seconds)."""
    server.resume()
    return open_rows(database)


def test_on_postgresql_a_request_under_one_budget_is_admitted_in_one_statement(
        own_postgres, tmp_path):
    """One round trip: the reservation and the ledger's open row in one statement, its own
    transaction (no BEGIN and COMMIT around it); a refusal writes nothing."""
    url = own_postgres.new_database()
    db = open_database(url, tmp_path)
    try:
        budgets = Budgets(db, default_price=default_price("0.15/0.6"))
        budgets.set_budget("key", 1, "tokens", "total", 200)
        first = budgets.admit(Ask("m", 100, 50, "test", "first"), 1, 1)
        assert first.ledger_id is not None and first.header()
        with db.read() as conn:
            driver = conn.connection.dbapi_connection  # the pool's one connection
        with sent_to_server(driver, tmp_path / "trace") as sent:
            with pytest.raises(OverBudget):
                budgets.admit(Ask("m", 100, 50, "test", "second"), 1, 1)  # 150 + 150 > 200
        assert len(sent) == 1 and sent[0].startswith("WITH reserved AS"), sent
        with db.read() as conn:
            assert conn.execute(sa.text(
                "SELECT request_id, state FROM ledger")).all() == [("first", "open")]
            assert conn.execute(sa.text(
                "SELECT spent, reserved FROM budget_counters")).one() == (0, 150)
    finally:
        db.close()
