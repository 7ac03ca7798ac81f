"""Budgets and the ledger (`budgets`, `prices`) on a real SQLite file and a real PostgreSQL
server: periods, admission, settlement, expiry, and requests arriving together."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from gpt_proxy.base.errors import BadRequest, OverBudget, Unpriced
from gpt_proxy.base.prices import Price, PriceError, default_price, load_prices
from gpt_proxy.money.budgets import Ask, Budgets, Spent, parse_limit, window
from gpt_proxy.storage.db import DatabaseError

from .conftest import until
from .databases import statements_in

ROOT = Path(__file__).resolve().parent.parent
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz=dt.UTC) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


# --- periods ---------------------------------------------------------------------------------------

def test_a_day_is_a_calendar_day_in_the_budget_time_zone():
    # 22:59:59 UTC is 23:59:59 in Berlin (winter); one second later the next day starts
    assert window("day", at("2026-11-30T22:59:59"), BERLIN) == (
        "d:2026-11-30", at("2026-12-01T00:00:00", BERLIN))
    assert window("day", at("2026-11-30T23:00:00"), BERLIN)[0] == "d:2026-12-01"
    assert window("day", at("2026-11-30T23:30:00"), ZoneInfo("UTC"))[0] == "d:2026-11-30"


def test_days_across_a_daylight_saving_change_are_23_and_25_hours():
    spring = window("day", at("2026-03-29T12:00:00", BERLIN), BERLIN)
    assert spring[1] - at("2026-03-29T00:00:00", BERLIN) == 23 * 3600
    autumn = window("day", at("2026-10-25T12:00:00", BERLIN), BERLIN)
    assert autumn[1] - at("2026-10-25T00:00:00", BERLIN) == 25 * 3600


@pytest.mark.parametrize("moment,key,ends", [
    ("2026-01-31T23:59:59", "M:2026-01", "2026-02-01T00:00:00"),
    ("2028-02-29T12:00:00", "M:2028-02", "2028-03-01T00:00:00"),  # a leap year's February
    ("2026-12-31T23:59:59", "M:2026-12", "2027-01-01T00:00:00"),  # the year ends too
    ("2027-01-01T00:00:00", "M:2027-01", "2027-02-01T00:00:00"),
])
def test_a_month_ends_where_the_calendar_says(moment, key, ends):
    assert window("month", at(moment, BERLIN), BERLIN) == (key, at(ends, BERLIN))


def test_a_minute_and_the_total():
    assert window("minute", 120.5, BERLIN) == ("m:120", 180.0)
    assert window("total", 1e9, BERLIN) == ("total", None)


# --- prices ---------------------------------------------------------------------------------------

def test_prices_are_exact_and_costs_round_up_to_a_nanodollar():
    price = Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
    assert price.tokens(1_000_000, 0) == 150_000_000  # $0.15
    assert price.tokens(1, 0) == 150  # 0.15 µ$ = 150 n$
    assert price.tokens(1000, 1000, cached=400) == 600 * 150 + 400 * 75 + 1000 * 600
    assert Price(Decimal("0.0000001")).tokens(1, 0) == 1  # a tenth of a nanodollar: one


def test_the_prices_file_is_read_and_its_mistakes_name_the_model(tmp_path):
    good = tmp_path / "prices.toml"
    good.write_text('[models."m"]\ninput = 0.1\noutput = 0.3\n'
                    '[models."img"]\nimages = { "256x256" = 0.016 }\n')
    prices = load_prices(good)
    assert prices["m"].input == Decimal("0.1") and prices["img"].image("256x256", 2) == 32_000_000
    for text, word in (('[models."m"]\ninput = -1\n', "at least 0"),
                       ('[models."m"]\ncolour = 1\n', "colour"),
                       ('[models."m"]\n', "no price"),
                       ('[models."m"]\nimages = { "big" = 1 }\n', "sizes"),
                       ("[other]\n", "unknown table"), ("nonsense", "TOML")):
        good.write_text(text)
        with pytest.raises(PriceError, match=word):
            load_prices(good)
    assert default_price("1/2") == Price(Decimal(1), Decimal(2))
    with pytest.raises(PriceError):
        default_price("cheap")


def test_limits_as_people_write_them():
    assert parse_limit("usd", "5.00") == 5_000_000_000
    assert parse_limit("tokens", "1000") == 1000
    for unit, value in (("tokens", "1.5"), ("tokens", -1), ("usd", "five"), ("requests", True)):
        with pytest.raises(BadRequest):
            parse_limit(unit, value)


# --- admission and settlement ----------------------------------------------------------------------

@pytest.fixture()
def clock(clock):
    clock.now = at("2026-11-30T12:00:00")
    return clock


@pytest.fixture()
def budgets(db, clock):
    prices = {"priced": Price(Decimal("1"), Decimal("2"))}
    return Budgets(db, prices=prices, tz="Europe/Berlin", hold_seconds=600, clock=clock)


def ask(prompt=100, completion=50, model="priced", request_id="r") -> Ask:
    return Ask(model=model, prompt_tokens=prompt, completion_tokens=completion, door="test",
               request_id=request_id)


def counter(db, budget) -> tuple[int, int]:
    with db.read() as conn:
        rows = conn.execute(sa.text("SELECT spent, reserved FROM budget_counters "
                                    "WHERE budget_id = :b"), {"b": budget.id}).all()
    return (sum(r.spent for r in rows), sum(r.reserved for r in rows))


def ledger(db) -> list:
    with db.read() as conn:
        return conn.execute(sa.text("SELECT * FROM ledger ORDER BY id")).all()


def test_a_request_reserves_its_worst_case_then_pays_what_it_used(budgets, db):
    budget = budgets.set_budget("key", 7, "tokens", "day", 1000)
    hold = budgets.admit(ask(), None, 7)
    assert counter(db, budget) == (0, 150)
    assert hold.header() == "key.tokens.day=850"
    assert [row.state for row in ledger(db)] == ["open"]
    budgets.settle(hold, Spent(30, 12, upstream="a"))
    assert counter(db, budget) == (42, 0)
    row = ledger(db)[0]
    assert (row.state, row.prompt_tokens, row.completion_tokens, row.upstream, row.outcome,
            row.key_id) == ("settled", 30, 12, "a", "ok", 7)
    assert row.cost == 30 * 1000 + 12 * 2000  # $1 and $2 per million tokens
    budgets.settle(hold, Spent(999, 999))  # a second settlement changes nothing
    assert counter(db, budget) == (42, 0)


def test_a_budget_without_room_refuses_and_reserves_nothing_anywhere(budgets, db, clock):
    roomy = budgets.set_budget("service", 0, "tokens", "total", 10_000)
    tight = budgets.set_budget("user", 3, "tokens", "day", 200)
    first = budgets.admit(ask(), 3, None)
    with pytest.raises(OverBudget) as caught:
        budgets.admit(ask(), 3, None)
    message = caught.value.message
    assert "your account's daily tokens budget (200 tokens)" in message
    assert "resets at 2026-11-30T23:00:00Z" in message and "(in 11 h 0 min)" in message
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "39600"
    assert counter(db, roomy) == (0, 150) and counter(db, tight) == (0, 150)
    assert len(ledger(db)) == 1
    budgets.settle(first, Spent(10, 5))
    budgets.admit(ask(), 3, None)  # the real use left room


def test_a_failure_before_the_first_byte_costs_nothing(budgets, db):
    tokens = budgets.set_budget("key", 1, "tokens", "day", 1000)
    requests = budgets.set_budget("key", 1, "requests", "minute", 5)
    budgets.settle(budgets.admit(ask(), None, 1), Spent(outcome="failed"))
    assert counter(db, tokens) == (0, 0) and counter(db, requests) == (0, 0)
    assert ledger(db)[0].outcome == "failed"


def test_a_new_day_in_the_budget_time_zone_brings_new_room(budgets, clock):
    budgets.set_budget("key", 1, "tokens", "day", 150)
    budgets.settle(budgets.admit(ask(), None, 1), Spent(100, 50))
    with pytest.raises(OverBudget):
        budgets.admit(ask(), None, 1)
    clock.now = at("2026-11-30T22:59:59")  # 23:59:59 in Berlin
    with pytest.raises(OverBudget):
        budgets.admit(ask(), None, 1)
    clock.now = at("2026-11-30T23:00:00")  # midnight in Berlin
    budgets.admit(ask(), None, 1)


def test_a_reservation_made_before_midnight_is_settled_in_its_own_day(budgets, db, clock):
    budget = budgets.set_budget("key", 1, "tokens", "day", 1000)
    clock.now = at("2026-11-30T22:59:00")
    hold = budgets.admit(ask(), None, 1)
    clock.now = at("2026-11-30T23:01:00")
    budgets.settle(hold, Spent(10, 10))
    with db.read() as conn:
        rows = conn.execute(sa.text("SELECT window_key, spent, reserved FROM budget_counters "
                                    "WHERE budget_id = :b"), {"b": budget.id}).all()
    assert [tuple(r) for r in rows] == [("d:2026-11-30", 20, 0)]


def test_requests_per_minute_reset_each_minute(budgets, clock):
    budgets.set_budget("key", 9, "requests", "minute", 2)
    for _ in range(2):
        budgets.admit(ask(), None, 9)
    with pytest.raises(OverBudget) as caught:
        budgets.admit(ask(), None, 9)
    assert caught.value.code == "rate_limit_exceeded" and caught.value.unit == "requests"
    clock.now += 60
    budgets.admit(ask(), None, 9)


def test_a_money_budget_prices_the_worst_case_and_refuses_a_model_without_a_price(budgets, db):
    budget = budgets.set_budget("service", 0, "usd", "month", parse_limit("usd", "0.001"))
    hold = budgets.admit(ask(prompt=100, completion=50), None, None)
    assert counter(db, budget) == (0, 100 * 1000 + 50 * 2000)
    budgets.settle(hold, Spent(10, 5))
    assert counter(db, budget) == (10 * 1000 + 5 * 2000, 0)
    with pytest.raises(Unpriced, match="has no price"):
        budgets.admit(ask(model="unpriced"), None, None)
    budgets.default_price = Price(Decimal("3"), Decimal("3"))
    budgets.admit(ask(model="unpriced"), None, None)
    tokens_only = budgets.set_budget("service", 0, "usd", "month", 1)  # the same budget, $1e-9
    assert tokens_only.id == budget.id


def test_images_are_priced_per_image_by_size(db, clock):
    budgets = Budgets(db, prices={"img": Price(images={"256x256": Decimal("0.016")})},
                      clock=clock)
    budget = budgets.set_budget("service", 0, "usd", "total", parse_limit("usd", "0.05"))
    images = Ask("img", prompt_tokens=20, completion_tokens=0, door="test", request_id="i",
                 images=3, image_size="256x256")
    hold = budgets.admit(images, None, None)
    assert counter(db, budget) == (0, 48_000_000)
    budgets.settle(hold, Spent(images=2))  # one image failed: two paid
    assert counter(db, budget) == (32_000_000, 0)
    with pytest.raises(OverBudget):
        budgets.admit(images, None, None)  # $0.048 does not fit in the $0.018 left


def test_a_dead_workers_reservation_is_settled_at_its_worst_case_after_it_expires(budgets, db,
                                                                                 clock):
    budget = budgets.set_budget("key", 1, "tokens", "total", 1000)
    hold = budgets.admit(ask(), None, 1)  # the worker dies: never settled
    assert budgets.sweep() == 0
    clock.now += 601
    assert budgets.sweep() == 1
    assert counter(db, budget) == (150, 0)
    assert ledger(db)[0].outcome == "expired"
    budgets.settle(hold, Spent(1, 1))  # the worker was only slow: no second charge
    assert counter(db, budget) == (150, 0)


def test_old_ledger_rows_and_ended_minutes_are_deleted(db, clock):
    budgets = Budgets(db, ledger_days=30, clock=clock)
    budgets.set_budget("key", 1, "requests", "minute", 100)
    budgets.settle(budgets.admit(ask(), None, 1), Spent(1, 1))
    clock.now += 31 * 86400
    budgets.settle(budgets.admit(ask(request_id="new"), None, 1), Spent(1, 1))
    budgets.sweep()
    assert [row.request_id for row in ledger(db)] == ["new"]
    with db.read() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM budget_counters")).scalar() == 1


def test_requests_without_a_budget_still_leave_a_ledger_row(budgets, db):
    hold = budgets.admit(ask(), 5, 6)
    assert hold.ledger_id is None and ledger(db) == []
    budgets.settle(hold, Spent(3, 4, outcome="client_left", upstream="a"))
    assert ledger(db) == []  # waiting for its batch
    assert budgets.flush() == 1
    row = ledger(db)[0]
    assert (row.user_id, row.key_id, row.state, row.outcome, row.cost) == (
        5, 6, "settled", "client_left", 3 * 1000 + 4 * 2000)


def settle_unbudgeted(budgets, n: int, prefix: str = "r") -> None:
    for i in range(n):
        budgets.settle(budgets.admit(ask(request_id=f"{prefix}{i}"), 5, 6), Spent(1, 1))


def test_rows_without_a_budget_are_written_a_batch_at_a_time(budgets, db, monkeypatch):
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_BATCH", 3)
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_FLUSH_SECONDS", 3600)  # no timer here
    transactions = []
    real = db.raw_write

    def counted():
        transactions.append(1)
        return real()
    monkeypatch.setattr(db, "raw_write", counted)
    settle_unbudgeted(budgets, 2)
    assert ledger(db) == [] and transactions == []
    settle_unbudgeted(budgets, 1, prefix="third")
    assert [row.request_id for row in ledger(db)] == ["r0", "r1", "third0"]
    assert transactions == [1]  # three rows, one transaction


def test_a_batch_is_written_shortly_after_its_first_row_without_more_requests(db, clock,
                                                                            monkeypatch):
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_FLUSH_SECONDS", 0.05)
    budgets = Budgets(db, clock=clock)
    settle_unbudgeted(budgets, 1)
    until(lambda: len(ledger(db)) == 1, "the lone row was never written")
    assert not budgets._pending and budgets._timer is None


def test_a_row_queued_while_another_is_being_queued_is_kept_without_a_deadlock(budgets, db,
                                                                             monkeypatch):
    """The garbage collector may close a forgotten reply's relay, which queues its ledger row,
    in the middle of any allocation, also one made while another row is being queued: the
    queue must never ask its own thread for a lock it holds."""
    holds = [budgets.admit(ask(request_id=f"r{i}"), 5, 6) for i in range(2)]
    real = threading.Timer

    def timer(*args, **kwargs):  # the allocation during which the collector runs
        if not holds[1].done:
            budgets.settle(holds[1], Spent(1, 1))
        return real(*args, **kwargs)
    monkeypatch.setattr(threading, "Timer", timer)
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (budgets.settle(holds[0], Spent(1, 1)),
                                              finished.set()), daemon=True)
    worker.start()
    assert finished.wait(10), "queueing a row deadlocked"
    monkeypatch.undo()
    budgets.flush()
    assert sorted(row.request_id for row in ledger(db)) == ["r0", "r1"]


def test_reading_the_ledger_writes_this_process_batch_first(budgets, db):
    settle_unbudgeted(budgets, 2)
    assert [row["request_id"] for row in budgets.rows()] == ["r0", "r1"]
    settle_unbudgeted(budgets, 1, prefix="x")
    assert sum(day["requests"] for day in budgets.spend_by_day(user_id=5)) == 3


def test_a_batch_the_database_refuses_is_kept_and_written_later(budgets, db, monkeypatch,
                                                                caplog):
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_FLUSH_SECONDS", 3600)
    settle_unbudgeted(budgets, 2)
    real = db.raw_write

    def refused():
        raise DatabaseError("the database (sqlite:///x.db) cannot be written: disk I/O error")
    monkeypatch.setattr(db, "raw_write", refused)
    assert budgets.flush() == 0
    assert "ledger: 2 rows not written yet (kept, tried again)" in caplog.text
    monkeypatch.setattr(db, "raw_write", real)
    settle_unbudgeted(budgets, 1, prefix="x")
    assert budgets.flush() == 3
    assert [row.request_id for row in ledger(db)] == ["r0", "r1", "x0"]


def test_rows_waiting_at_exit_are_written(tmp_path):
    """A process that ends normally (gunicorn's graceful stop ends its workers so) writes
    what waits: `flush_all` is an atexit handler."""
    url = f"sqlite:///{tmp_path}/exit.db"
    code = (
        "from gpt_proxy.storage.db import open_database\n"
        "from gpt_proxy.money.budgets import Ask, Budgets, Spent\n"
        f"budgets = Budgets(open_database({url!r}, {str(ROOT)!r}))\n"
        "for i in range(5):\n"
        "    hold = budgets.admit(Ask(model='m', prompt_tokens=1, completion_tokens=1,"
        " door='test', request_id=f'exit{i}'), None, None)\n"
        "    budgets.settle(hold, Spent(1, 1))\n"
        "assert budgets._pending\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM ledger")).scalar() == 5
    finally:
        engine.dispose()


# --- requests arriving together ----------------------------------------------------------------------

@pytest.mark.parametrize("round_", range(3))
def test_requests_arriving_together_never_overshoot(budgets, db, round_):
    """Room for exactly N worst cases; 10 x N admissions at once from as many threads (each
    with its own connection): exactly N are admitted."""
    n = 4
    budget = budgets.set_budget("key", 100 + round_, "tokens", "day", n * 150)
    start = threading.Barrier(10 * n)
    admitted, refused, failed = [], [], []

    def one(i):
        start.wait(30)
        try:
            admitted.append(budgets.admit(ask(request_id=str(i)), None, 100 + round_))
        except OverBudget:
            refused.append(i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failed.append(exc)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(10 * n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failed == [] and len(admitted) == n and len(refused) == 9 * n
    assert counter(db, budget) == (0, n * 150)
    for hold in admitted:
        budgets.settle(hold, Spent(100, 50))
    spent, reserved = counter(db, budget)
    assert spent == n * 150 <= budget.limit and reserved == 0
    assert len([r for r in ledger(db) if r.state == "settled"]) == n


def test_the_reservations_of_one_request_are_one_transaction(budgets, db):
    """Two budgets where the second refuses: the first's reservation is rolled back, even with
    other requests committing around it."""
    first = budgets.set_budget("user", 1, "tokens", "day", 10_000)
    budgets.set_budget("key", 1, "tokens", "day", 100)
    with pytest.raises(OverBudget):
        budgets.admit(ask(), 1, 1)
    assert counter(db, first) == (0, 0)
    with db.read() as conn:  # nothing held anywhere: no counter row holds a reservation
        assert conn.execute(sa.text("SELECT COUNT(*) FROM budget_counters "
                                    "WHERE reserved <> 0")).scalar() == 0
    assert ledger(db) == []
    assert budgets.check() == []


# --- exactly the counters meant, whatever the interleaving (issue 26) -------------------------------

def three_budgets(budgets):
    """A key's requests per minute and tokens in total, and the service's dollars: every
    request of key 1 holds all three."""
    return (budgets.set_budget("service", 0, "usd", "total", 10**15),
            budgets.set_budget("key", 1, "requests", "minute", 10**6),
            budgets.set_budget("key", 1, "tokens", "total", 10**12))


def test_settlements_arriving_together_update_every_counter(budgets, db):
    """40 settlements of one key's three counters at once, from as many threads (each with
    its own connection): afterwards each counter is exactly what the ledger says, and
    nothing stays reserved. (A settlement joining the counters to a derived table skipped
    rows on PostgreSQL when it had waited for another's lock, and deadlocked with one
    taking the rows in the other order.)"""
    service, rpm, tokens = three_budgets(budgets)
    holds = [budgets.admit(ask(request_id=f"s{i}"), 1, 1) for i in range(40)]
    start = threading.Barrier(len(holds))

    def one(i: int) -> None:
        start.wait(30)
        budgets.settle(holds[i], Spent(10 + i, 5, outcome="ok"))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(holds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(row.state == "settled" for row in ledger(db))
    assert counter(db, tokens) == (sum(15 + i for i in range(40)), 0)
    assert counter(db, rpm) == (40, 0)
    assert counter(db, service) == (sum((10 + i) * 1000 + 5 * 2000 for i in range(40)), 0)
    assert budgets.check() == []


def test_a_counter_a_settlement_cannot_find_is_logged_with_the_request_id(budgets, db,
                                                                        caplog):
    _, rpm, tokens = three_budgets(budgets)
    hold = budgets.admit(ask(request_id="req-missing"), 1, 1)
    with db.write() as conn:  # the counter is gone (as if deleted by hand)
        conn.execute(sa.text("DELETE FROM budget_counters WHERE budget_id = :b"),
                     {"b": rpm.id})
    budgets.settle(hold, Spent(10, 5))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("req-missing" in line and f"budget {rpm.id}" in line for line in lines), lines
    assert counter(db, tokens) == (15, 0)  # the others were settled all the same
    assert ledger(db)[0].state == "settled"


def refuse_writes(db, monkeypatch, kind: str, times: int) -> list:
    """The next `times` write transactions fail with a DatabaseError of `kind` (as a dropped
    connection or a deadlock would); then the database answers again."""
    real = db.raw_write
    failed = []

    def write():
        if len(failed) < times:
            failed.append(kind)
            raise DatabaseError(f"the database cannot be written: {kind}", kind)
        return real()
    monkeypatch.setattr(db, "raw_write", write)
    return failed


@pytest.mark.parametrize("kind", ["conflict", "unavailable"])
def test_a_deadlock_or_a_dropped_connection_is_tried_again(budgets, db, monkeypatch, kind):
    _, _, tokens = three_budgets(budgets)
    failed = refuse_writes(db, monkeypatch, kind, 1)
    hold = budgets.admit(ask(), 1, 1)  # the first try fails, the second reserves
    assert failed == [kind] and counter(db, tokens) == (0, 150)
    refuse_writes(db, monkeypatch, kind, 2)
    budgets.settle(hold, Spent(10, 5))  # two tries fail, the third settles
    assert counter(db, tokens) == (15, 0) and budgets.check() == []


def test_a_settlement_the_database_cannot_take_is_kept_and_settled_later(budgets, db,
                                                                         monkeypatch, caplog):
    """The database is away for longer than the settlement's retries: the worker keeps the
    settlement, and settles it with the real usage once the database answers."""
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_FLUSH_SECONDS", 3600)  # flushed by hand
    _, _, tokens = three_budgets(budgets)
    hold = budgets.admit(ask(request_id="req-blip"), 1, 1)
    refuse_writes(db, monkeypatch, "unavailable", 10**6)
    budgets.settle(hold, Spent(10, 5))
    assert "request req-blip not settled yet (kept, tried again)" in caplog.text
    assert budgets.flush() == 0  # still away: kept
    monkeypatch.undo()
    assert counter(db, tokens) == (0, 150)
    assert budgets.flush() == 1
    row = ledger(db)[0]
    assert (row.state, row.prompt_tokens, row.completion_tokens) == ("settled", 10, 5)
    assert counter(db, tokens) == (15, 0) and budgets.check() == []


@pytest.fixture()
def pg_db(postgres):
    from gpt_proxy.storage.db import open_database

    database = open_database(postgres.new_database(), ROOT)
    yield database
    database.close()


def test_a_deadlock_with_another_transaction_is_tried_again(pg_db, clock, caplog):
    """A real deadlock on PostgreSQL (SQLite has one writer at a time): another transaction
    holds the key's tokens counter, a settlement takes its ledger row and waits for that
    counter, then the other asks for the ledger row. PostgreSQL ends the settlement (it
    waited first, and looks first); the settlement is tried again, and settles."""
    caplog.set_level("INFO", "gpt_proxy.budgets")
    db = pg_db
    budgets = Budgets(db, prices={"priced": Price(Decimal("1"), Decimal("2"))}, clock=clock,
                      hold_seconds=600)
    _, _, tokens = three_budgets(budgets)
    hold = budgets.admit(ask(request_id="req-deadlock"), 1, 1)
    engine = sa.create_engine(db.engine.url)
    done = threading.Event()
    try:
        with engine.connect() as other:
            other.execute(sa.text("SET deadlock_timeout = '20s'"))  # the settlement looks first
            other.execute(sa.text("UPDATE budget_counters SET spent = spent "
                                  "WHERE budget_id = :b"), {"b": tokens.id})
            worker = threading.Thread(target=lambda: (budgets.settle(hold, Spent(10, 5)),
                                                      done.set()), daemon=True)
            worker.start()

            def settlement_waits() -> bool:
                with engine.connect() as look:
                    return look.execute(sa.text(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'UPDATE budget_counters%'")).scalar() == 1
            until(settlement_waits, "the settlement never waited for the key's counter")
            other.execute(sa.text("UPDATE ledger SET state = state WHERE id = :i"),
                          {"i": hold.ledger_id})  # waits until the settlement is ended
            other.commit()
        assert done.wait(30), "the settlement never finished"
    finally:
        engine.dispose()
    assert "tried again (conflict)" in caplog.text and "deadlock" in caplog.text
    assert ledger(db)[0].state == "settled"
    assert counter(db, tokens) == (15, 0) and budgets.check() == []


# --- the budget check ---------------------------------------------------------------------------------

def test_the_check_finds_a_counter_that_is_not_what_the_ledger_says(budgets, db, clock):
    _, rpm, tokens = three_budgets(budgets)
    budgets.settle(budgets.admit(ask(request_id="a"), 1, 1), Spent(10, 5))
    budgets.settle(budgets.admit(ask(request_id="b"), 1, 1), Spent(outcome="failed"))
    budgets.admit(ask(request_id="c"), 1, 1)  # open: held
    expired = budgets.admit(ask(request_id="d"), 1, 1)
    clock.now += 601
    budgets.sweep()  # c and d expire: charged what they held
    budgets.settle(expired, Spent(1, 1))  # too late: changes nothing
    assert budgets.check() == []
    assert counter(db, tokens) == (15 + 150 + 150, 0) and counter(db, rpm) == (3, 0)
    with db.write() as conn:  # a settlement that was lost
        conn.execute(sa.text("UPDATE budget_counters SET spent = spent - 5, "
                             "reserved = reserved + 7 WHERE budget_id = :b"), {"b": tokens.id})
    drift = budgets.check()
    assert [(d.budget_id, d.kind, d.window, d.spent, d.reserved, d.ledger_spent,
             d.ledger_reserved) for d in drift] == [
        (tokens.id, "key.tokens.total", "total", 310, 7, 315, 0)]


def test_the_check_still_adds_up_when_old_ledger_rows_are_deleted(db, clock):
    """Rows older than LEDGER_DAYS are deleted; what they charged a counter is carried in it,
    so a total budget still agrees with its ledger."""
    budgets = Budgets(db, ledger_days=30, clock=clock, hold_seconds=600)
    tokens = budgets.set_budget("key", 1, "tokens", "total", 10**9)
    budgets.settle(budgets.admit(ask(request_id="old"), None, 1), Spent(10, 5))
    clock.now += 31 * 86400
    budgets.settle(budgets.admit(ask(request_id="new"), None, 1), Spent(1, 1))
    budgets.sweep()
    assert [row.request_id for row in ledger(db)] == ["new"]
    assert counter(db, tokens) == (17, 0) and budgets.check() == []


def test_the_reservations_are_read_from_the_database_by_every_process(db, clock):
    """Two workers (two Budgets over one database): a reservation made by one, whose worker
    then died, is seen by the other; drift shows when a counter holds what no row does."""
    first, second = (Budgets(db, clock=clock, hold_seconds=600) for _ in range(2))
    tokens = first.set_budget("key", 1, "tokens", "total", 10**9)
    first.admit(ask(), None, 1)  # never settled: its worker was killed
    held = second.admit(ask(request_id="x"), None, 1)
    assert second.reservations() == (2, {"tokens": 0, "usd": 0, "requests": 0})
    second.settle(held, Spent(1, 1))
    assert first.reservations()[0] == 1
    with db.write() as conn:
        conn.execute(sa.text("UPDATE budget_counters SET reserved = reserved + 9 "
                             "WHERE budget_id = :b"), {"b": tokens.id})
    assert first.reservations() == (1, {"tokens": 9, "usd": 0, "requests": 0})
    clock.now += 601
    first.sweep()
    assert first.reservations() == (0, {"tokens": 9, "usd": 0, "requests": 0})


def run_check(database_url: str) -> subprocess.CompletedProcess:
    """`flask --app app budgets check` on `database_url`, as an operator runs it."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_"))}
    env.update(DATABASE_URL=database_url, DOTENV_FILE=os.devnull, METRICS_BIND="")
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", "budgets", "check"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_budgets_check_exits_non_zero_naming_the_counter_and_both_sums(budgets, db,
                                                                       database_url):
    service, _, tokens = three_budgets(budgets)
    budgets.settle(budgets.admit(ask(request_id="a"), 1, 1), Spent(10, 5))
    budgets.admit(ask(request_id="b"), 1, 1)  # open
    agreed = run_check(database_url)
    assert agreed.returncode == 0, agreed.stderr
    assert "every counter agrees with the ledger" in agreed.stdout
    with db.write() as conn:
        conn.execute(sa.text("UPDATE budget_counters SET spent = spent + 3 "
                             "WHERE budget_id = :b"), {"b": tokens.id})
        conn.execute(sa.text("UPDATE budget_counters SET reserved = reserved + 1000 "  # n$
                             "WHERE budget_id = :b"), {"b": service.id})
    differ = run_check(database_url)
    assert differ.returncode == 1
    assert (f"budget {tokens.id} (key.tokens.total) window total: counter spent 18 reserved "
            "150; ledger says spent 15 reserved 150") in differ.stdout
    assert (f"budget {service.id} (service.usd.total) window total: counter spent 0.000020 "
            "reserved 0.000201; ledger says spent 0.000020 reserved 0.000200") in differ.stdout
    assert "2 counter(s) differ from the ledger" in differ.stderr


# The start of every script `under_gevent` runs: a Budgets over an SQLite file of its own in
# the folder given (or the database URL given after it), each write transaction counted in
# `transactions`.
UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import json, sqlite3, sys, time, gevent
from pathlib import Path
from gpt_proxy.base.errors import OverBudget
from gpt_proxy.base.prices import default_price
from gpt_proxy.money import budgets as money
from gpt_proxy.money.budgets import Ask, Budgets, Spent
from gpt_proxy.storage.db import open_database

folder = Path(sys.argv[1])
db = open_database(sys.argv[2] if len(sys.argv) > 2 else f"sqlite:///{folder}/money.db", folder)
budgets = Budgets(db, default_price=default_price("0.15/0.6"))
transactions = []
write = db.raw_write
def counted(**how):
    transactions.append(1)
    return write(**how)
db.raw_write = counted
"""
# What the PostgreSQL scripts add: `reader`, an engine of its own (its reads are not in the
# trace), and `traced(path)`, libpq's own trace of the pool's one connection within the block.
ON_POSTGRESQL = """
from contextlib import contextmanager
import sqlalchemy
reader = sqlalchemy.create_engine(sys.argv[2].replace("postgresql://", "postgresql+psycopg://"))

@contextmanager
def traced(path):
    with db.read() as conn:
        driver = conn.connection.dbapi_connection  # the pool's one connection
    with open(path, "w") as out:
        driver.pgconn.trace(out.fileno())
        try:
            yield path
        finally:
            driver.pgconn.untrace()
"""


def under_gevent(script: str, folder: Path, database_url: str | None = None):
    """What `script` printed (JSON), run after UNDER_GEVENT in a process of its own (gevent's
    monkey-patching cannot be undone in the test process)."""
    out = subprocess.run([sys.executable, "-c", UNDER_GEVENT + script, str(folder),
                          *([database_url] if database_url else [])], cwd=ROOT,
                         timeout=120, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


GATHER = """
budgets.set_budget("key", 1, "tokens", "total", 10**6)
holds = [budgets.admit(Ask("m", 100, 50, "test", f"r{k}"), 1, 1) for k in range(12)]
transactions.clear()  # the settlements' transactions are counted from here

def counters():
    with db.read() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT spent, reserved FROM budget_counters").all()]

def end(k):  # replies ending in one turn of the loop: each settles as its relay closes
    budgets.settle(holds[k], Spent(10, 2))
gevent.joinall([gevent.spawn(end, k) for k in range(10)])
right_after = counters()
deadline = gevent.get_hub().loop.now() + 10
while counters() != [(120, 300)] and gevent.get_hub().loop.now() < deadline:
    gevent.sleep(0.001)
settled = counters()
budgets.settle(holds[10], Spent(10, 2))
budgets.settle(holds[11], Spent(10, 2))
money.flush_all()  # a graceful stop: what still waits is written at once
print(json.dumps({"right_after": right_after, "settled": settled, "transactions":
                  len(transactions), "at_exit": counters()}))
"""


def test_settlements_ending_together_under_gevent_are_written_in_one_transaction(tmp_path):
    """The gevent worker gathers the settlements of replies that end within
    SETTLE_GATHER_SECONDS into one transaction (a reservation is given back that much later,
    never sooner), and a graceful stop writes what still waits."""
    result = under_gevent(GATHER, tmp_path)
    assert result["right_after"] == [[0, 12 * 150]]  # all still held as the replies end
    assert result["settled"] == [[10 * 12, 2 * 150]]  # ten settled, two still held
    assert result["transactions"] == 2  # the ten together, then the two at the stop
    assert result["at_exit"] == [[12 * 12, 0]]


ADMIT_TOGETHER = """
# key 1: room for 6 requests of 150 tokens; both keys under the service's 20 requests in all,
# taken after each key's own budget (the one lock order: budget id)
budgets.set_budget("key", 1, "tokens", "total", 6 * 150)
budgets.set_budget("key", 2, "tokens", "total", 10**6)
budgets.set_budget("service", 0, "requests", "total", 20)
transactions.clear()  # counted from the admissions on

def ask(key, k):
    try:
        return budgets.admit(Ask("m", 100, 50, "test", f"k{key}-{k}"), key, key).ledger_id
    except OverBudget as refusal:
        return str(refusal)

# 10 requests of key 1 and 20 of key 2 arriving in one turn of the loop
jobs = [gevent.spawn(ask, 1, k) for k in range(10)] + [gevent.spawn(ask, 2, k) for k in range(20)]
gevent.joinall(jobs, timeout=30)
results = [job.value for job in jobs]
with db.read() as conn:
    counters = sorted(tuple(r) for r in conn.exec_driver_sql(
        "SELECT budget_id, spent, reserved FROM budget_counters").all())
    open_rows = conn.exec_driver_sql("SELECT count(*) FROM ledger WHERE state = 'open'").scalar()
print(json.dumps({"results": results, "counters": counters, "open_rows": open_rows,
                  "transactions": len(transactions)}))
"""


def test_admissions_arriving_together_on_sqlite_under_gevent_share_a_transaction_all_or_none(
        tmp_path):
    """SQLite under gevent writes the admissions that arrive together in one transaction, and
    each request's reservations stay all or none: one refused by its second budget gives back,
    in that transaction, what it had reserved on its first."""
    result = under_gevent(ADMIT_TOGETHER, tmp_path)
    key1, key2 = result["results"][:10], result["results"][10:]
    assert sum(isinstance(r, int) for r in key1) == 6  # the key's room: 6 x 150 tokens
    assert all("key" in r for r in key1 if isinstance(r, str))
    admitted2 = [r for r in key2 if isinstance(r, int)]
    assert len(admitted2) == 20 - 6  # the service's 20 requests, 6 taken by key 1
    assert all("service" in r for r in key2 if isinstance(r, str))
    # budget 1 (key 1), 2 (key 2), 3 (the service): what the admitted requests reserved, and
    # nothing of the refused ones (key 2's refused requests had reserved on budget 2 first)
    assert result["counters"] == [[1, 0, 6 * 150], [2, 0, 14 * 150], [3, 0, 20]]
    assert result["open_rows"] == 20
    assert result["transactions"] == 1  # the thirty arrived in one turn: one transaction


KILLED_WHILE_ADMITTED = """
budgets.set_budget("key", 1, "tokens", "total", 10**6)

def until(condition):
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline
        gevent.sleep(0.001)

if len(sys.argv) > 2:  # PostgreSQL: another process holds the counter's row
    import psycopg
    budgets.settle(budgets.admit(Ask("m", 100, 50, "test", "r0"), 1, 1), Spent(outcome="failed"))
    budgets.flush()
    other = psycopg.connect(sys.argv[2])
    other.execute("SELECT 1 FROM budget_counters FOR UPDATE")
else:
    other = sqlite3.connect(folder / "money.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
request = gevent.spawn(budgets.admit, Ask("m", 100, 50, "test", "r1"), 1, 1)
until(lambda: budgets._admitter and not budgets._admitting)  # its batch waits for the lock
request.kill()  # the request goes away (its worker stopping) while its admission is written
other.rollback()  # the lock is free: the batch is written
def rows():
    with db.read() as conn:
        return ([tuple(r) for r in conn.exec_driver_sql(
                    "SELECT spent, reserved FROM budget_counters").all()],
                [tuple(r) for r in conn.exec_driver_sql(
                    "SELECT state, outcome FROM ledger").all()])
until(lambda: not budgets._admitter)
budgets.flush()
print(json.dumps(rows()))
"""


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_request_gone_while_its_admission_was_written_gives_its_reservation_back(
        tmp_path, store, request):
    url = request.getfixturevalue("postgres").new_database() if store == "postgresql" else None
    counters, ledger = under_gevent(KILLED_WHILE_ADMITTED, tmp_path, url)
    assert counters == [[0, 0]]  # reserved, then given back: nothing held, nothing spent
    assert ledger == [["settled", "failed"]] * (2 if url else 1)  # (r0 made the counter)


SETTLE_TOGETHER = ON_POSTGRESQL + """
now = [time.time()]
budgets = Budgets(db, default_price=default_price("0.15/0.6"), hold_seconds=600,
                  clock=lambda: now[0])
budgets.set_budget("key", 1, "tokens", "total", 10**6)
holds = [budgets.admit(Ask("m", 100, 50, "test", "r0"), 1, 1)]
now[0] += 300
holds += [budgets.admit(Ask("m", 100, 50, "test", f"r{k}"), 1, 1) for k in range(1, 10)]
now[0] += 350  # r0 is past its expiry (a worker that died, as far as a sweep can tell)
swept = budgets.sweep()

def counters():
    with reader.connect() as conn:
        return [list(r) for r in conn.exec_driver_sql(
            "SELECT spent, reserved FROM budget_counters")]
before = counters()
with traced(folder / "trace") as trace:
    gevent.joinall([gevent.spawn(budgets.settle, hold, Spent(10, 2)) for hold in holds])
    deadline = time.monotonic() + 10
    while counters() == before and time.monotonic() < deadline:
        gevent.sleep(0.001)
with reader.connect() as conn:
    rows = [list(r) for r in conn.exec_driver_sql(
        "SELECT request_id, state, outcome FROM ledger ORDER BY request_id")]
print(json.dumps({"swept": swept, "before": before, "after": counters(), "rows": rows,
                  "transactions": len(transactions), "trace": trace.read_text()}))
"""


def test_on_postgresql_settlements_of_one_budget_are_written_together_in_one_statement(
        postgres, tmp_path):
    """Ten replies under one budget end in one turn of a gevent worker: their ledger rows and
    the counter are settled by one statement (no BEGIN, no COMMIT, no statement per row).
    One of them was already settled by a sweep (its worker looked dead): it is left as the
    sweep settled it and the counter moves by the other nine alone."""
    result = under_gevent(SETTLE_TOGETHER, tmp_path, postgres.new_database())
    assert result["swept"] == 1
    assert result["before"] == [[150, 9 * 150]]  # r0 at its worst case, nine held
    sent = statements_in(result["trace"])
    assert [s.split(" ")[0] for s in sent] == ["WITH"], sent
    assert "UPDATE budget_counters" in sent[0] and "json_to_recordset" in sent[0]
    assert result["after"] == [[150 + 9 * 12, 0]]
    assert result["rows"] == [["r0", "settled", "expired"]] + [
        [f"r{k}", "settled", "ok"] for k in range(1, 10)]


def test_a_missing_counter_of_a_one_budget_settlement_is_logged_with_the_request_id(
        budgets, db, caplog):
    """The same check where a request under one budget settles in one statement (PostgreSQL)
    as where it settles in a transaction (SQLite, several budgets)."""
    tokens = budgets.set_budget("key", 1, "tokens", "total", 10**6)
    hold = budgets.admit(ask(request_id="req-lone"), 1, 1)
    with db.write() as conn:
        conn.execute(sa.text("DELETE FROM budget_counters WHERE budget_id = :b"),
                     {"b": tokens.id})
    budgets.settle(hold, Spent(10, 5))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("req-lone" in line and f"budget {tokens.id}" in line and "reservation of 150"
               in line and "charge of 15" in line for line in lines), lines
    assert ledger(db)[0].state == "settled"


def test_an_upstream_reporting_absurd_usage_is_counted_at_the_most_and_holds_up_no_one(
        budgets, db, caplog):
    """JSON numbers have no bound: a broken or hostile upstream's 10**30 tokens (or images)
    would overflow the ledger's integers, and the row the database refused would take the
    rows written with it. Counted as the most one request can use, and logged."""
    tokens = budgets.set_budget("key", 1, "tokens", "total", 10**15)
    hold = budgets.admit(ask(request_id="absurd"), 1, 1)
    budgets.settle(hold, Spent(10**30, 5, images=10**12))
    for name, prompt in (("absurd-free", 10**30), ("plain", 7)):  # unbudgeted: one batch
        budgets.settle(budgets.admit(ask(request_id=name), 1, 2), Spent(prompt, 1))
    assert budgets.flush() == 2
    rows = {row.request_id: row for row in ledger(db)}
    assert (rows["absurd"].prompt_tokens, rows["absurd"].images) == (2**32, 2**31 - 1)
    assert counter(db, tokens) == (2**32 + 5, 0)
    assert rows["absurd-free"].prompt_tokens == 2**32 and rows["plain"].prompt_tokens == 7
    assert all(row.state == "settled" for row in rows.values())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("absurd:" in line and "prompt_tokens and images" in line for line in warned)


def test_a_row_the_database_refuses_alone_holds_up_no_other(budgets, db, monkeypatch, caplog):
    """One row no database can take (a number past any integer column) in a batch: the
    batch is written one row at a time, the others are written, and the one refused is
    logged with its request and left out, not kept and tried again with every later batch
    (which would hold up all of them). A settlement left out so keeps its reservation, which
    the sweep settles at what it held."""
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_FLUSH_SECONDS", 3600)  # by hand
    tokens = budgets.set_budget("key", 1, "tokens", "total", 10**6)
    held = budgets.admit(ask(request_id="bad-held"), 1, 1)
    budgets.settle(held, Spent(10, 5, ttft_ms=2**70))  # refused alone (kept by PostgreSQL)
    assert counter(db, tokens) == (0, 150)
    for name, ttft in (("good-a", 5), ("bad-free", 2**70), ("good-b", None)):
        budgets.settle(budgets.admit(ask(request_id=name), 1, 2), Spent(1, 1, ttft_ms=ttft))
    assert budgets.flush() == 2
    assert sorted(row.request_id for row in ledger(db) if row.state == "settled") == [
        "good-a", "good-b"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("bad-free: its row was refused and is left out" in line for line in errors)
    assert any("bad-held" in line for line in errors), errors  # alone, or in the batch
    assert budgets.flush() == 0  # nothing kept to try again
    assert counter(db, tokens) == (0, 150)  # still held, until the sweep settles it


ADMIT_GROUP = ON_POSTGRESQL + """
budgets.set_budget("key", 1, "tokens", "total", 6 * 150)  # room for 6 of the 10
budgets.set_budget("key", 2, "tokens", "total", 10**6)  # room for all
budgets.admit(Ask("m", 100, 50, "test", "first"), 1, 3)  # no budget: the sweep's turn
budgets.applying(1, 1), budgets.applying(1, 2)  # their budgets, read (and kept a moment)

def one(key, k):
    try:
        hold = budgets.admit(Ask("m", 100, 50, "test", f"k{key}-{k}"), 1, key)
        return [hold.ledger_id, hold.remaining[0][1]]
    except OverBudget:
        return "refused"
with traced(folder / "trace") as trace:
    roomy = [g.get() for g in gevent.joinall([gevent.spawn(one, 2, k) for k in range(10)])]
tight = [g.get() for g in gevent.joinall([gevent.spawn(one, 1, k) for k in range(10)])]
with reader.connect() as conn:
    rows = {r[0]: r[1] for r in conn.exec_driver_sql("SELECT id, request_id FROM ledger")}
    counters = {r[0]: [r[1], r[2]] for r in conn.exec_driver_sql(
        "SELECT b.subject_id, c.spent, c.reserved FROM budget_counters c "
        "JOIN budgets b ON b.id = c.budget_id")}
print(json.dumps({"roomy": roomy, "tight": tight, "rows": rows, "counters": counters,
                  "trace": trace.read_text()}))
"""


def test_on_postgresql_admissions_under_one_budget_arriving_together_are_one_statement(
        postgres, tmp_path):
    """Ten requests of a key under one budget arrive in one turn of a gevent worker: their
    reservations (the sum, by the one conditional write) and their ledger rows in one
    statement, each request given its own row. Ten of a key whose budget has room for six:
    the sum has none, so each is admitted alone in turn, and exactly six are."""
    result = under_gevent(ADMIT_GROUP, tmp_path, postgres.new_database())
    sent = [s for s in statements_in(result["trace"])  # (the budgets' list is read first)
            if "budget_counters" in s or "ledger" in s]
    assert len(sent) == 1, sent
    assert "json_to_recordset" in sent[0] and "INSERT INTO ledger" in sent[0]
    rows = {int(k): v for k, v in result["rows"].items()}
    assert [rows[ledger_id] for ledger_id, _ in result["roomy"]] == [
        f"k2-{k}" for k in range(10)]
    assert {remaining for _, remaining in result["roomy"]} == {10**6 - 10 * 150}
    assert sum(1 for r in result["tight"] if r != "refused") == 6
    assert result["tight"][6:] == ["refused"] * 4  # in the order they came
    assert result["counters"] == {"1": [0, 900], "2": [0, 1500]}
    assert len(rows) == 16


def test_a_model_name_with_nul_or_a_lone_surrogate_is_written_to_the_ledger(budgets, db):
    """PostgreSQL refuses NUL in text, and UTF-8 cannot hold a lone surrogate: the ledger
    keeps such a name (the client's) with a replacement character in their place, and the
    row is written with its batch."""
    for name, model in (("nul", "gpt\x00-4o"), ("surrogate", "gpt\ud800"), ("plain", "m")):
        budgets.settle(budgets.admit(ask(model=model, request_id=name), 1, 2), Spent(1, 1))
    assert budgets.flush() == 3
    assert [(row.request_id, row.model) for row in ledger(db)] == [
        ("nul", "gpt\ufffd-4o"), ("surrogate", "gpt\ufffd"), ("plain", "m")]


def test_a_database_refusing_every_row_is_probed_a_few_times_and_the_batch_kept(
        budgets, db, monkeypatch, caplog):
    """Refused for good (a full disk, say: not something a retry cures), a batch is tried a
    row at a time; when the first PROBE_ALONE rows are all refused the database refuses
    everything, not a row: the batch is kept whole (not left out row by row), and the rest
    is not tried one by one."""
    monkeypatch.setattr("gpt_proxy.money.budgets.LEDGER_FLUSH_SECONDS", 3600)  # by hand
    settle_unbudgeted(budgets, 5)
    real, tries = db.raw_write, []

    def refused(**how):
        tries.append(1)
        raise DatabaseError("the database (sqlite:///x.db) cannot be written: disk full")
    monkeypatch.setattr(db, "raw_write", refused)
    assert budgets.flush() == 0
    assert len(tries) == 1 + 3  # the batch, then three rows alone
    assert "ledger: 5 rows not written yet (kept, tried again)" in caplog.text
    assert "left out" not in caplog.text
    monkeypatch.setattr(db, "raw_write", real)
    assert budgets.flush() == 5
    assert [row.request_id for row in ledger(db)] == [f"r{i}" for i in range(5)]
