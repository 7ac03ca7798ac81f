"""The guards of gpt_proxy/budgets.py that the mutation run (bench/mutation.py) found no test
holding: deleting a budget touches that budget only and an unknown one is a 404, each budget
shows its own counter, the open-reservation drift counts a counter holding exactly 1 and a
row held by no counter, a ledger row's charges worked out the old way, and the export's
time bounds."""

from __future__ import annotations

import logging
from decimal import Decimal
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from gpt_proxy.base.errors import BadRequest, NotFound
from gpt_proxy.base.prices import Price
from gpt_proxy.money.budgets import Ask, Budgets, Spent, charges

from .test_budgets import ask, at, budgets, clock, counter  # noqa: F401 - fixtures


def test_deleting_a_budget_deletes_it_and_its_counters_only(budgets, db):  # noqa: F811
    gone = budgets.set_budget("key", 7, "tokens", "day", 1000)
    kept = budgets.set_budget("key", 7, "requests", "day", 10)
    budgets.settle(budgets.admit(ask(), None, 7), Spent(30, 12))
    assert counter(db, gone) == (42, 0) and counter(db, kept) == (1, 0)
    budgets.delete_budget(gone.id)
    assert [b.id for b in budgets.list_budgets()] == [kept.id]
    assert counter(db, gone) == (0, 0) and counter(db, kept) == (1, 0)
    with pytest.raises(NotFound) as unknown:
        budgets.delete_budget(gone.id)
    assert unknown.value.code == "unknown_budget" and str(gone.id) in str(unknown.value)


def test_each_budget_shows_its_own_counter(budgets):  # noqa: F811
    tokens = budgets.set_budget("key", 7, "tokens", "day", 1000)
    requests = budgets.set_budget("key", 7, "requests", "day", 10)
    budgets.settle(budgets.admit(ask(), None, 7), Spent(30, 12))
    shown = {row["unit"]: row for row in budgets.standing([requests, tokens])}
    assert (shown["tokens"]["spent"], shown["tokens"]["left"]) == (42, 958)
    assert (shown["requests"]["spent"], shown["requests"]["left"]) == (1, 9)


def test_drift_counts_a_counter_of_one_and_a_row_no_counter_holds(budgets, db):  # noqa: F811
    requests = budgets.set_budget("key", 7, "requests", "total", 10)
    budgets.admit(ask(), None, 7)  # one open row holding 1, a counter reserving 1
    assert budgets.reservations() == (1, {"tokens": 0, "usd": 0, "requests": 0})

    def reserve(amount):
        with db.write() as conn:
            conn.execute(sa.text("UPDATE budget_counters SET reserved = :r WHERE budget_id = :b"),
                         {"r": amount, "b": requests.id})
    reserve(0)  # the row holds 1 that no counter reserves
    assert budgets.reservations() == (1, {"tokens": 0, "usd": 0, "requests": 1})
    reserve(3)
    assert budgets.reservations() == (1, {"tokens": 0, "usd": 0, "requests": 2})


@pytest.mark.parametrize("outcome,unit,charged", [
    ("expired", "tokens", 500), ("ok", "tokens", 42), ("ok", "requests", 1),
    ("failed", "requests", 0), ("ok", "usd", 7000), ("expired", "requests", 500)])
def test_the_charges_of_a_row_settled_before_they_were_kept(outcome, unit, charged):
    """Rows settled before schema 4 kept no `charges`: they are worked out from the row by the
    rules settlement followed (an expired hold pays what it held)."""
    row = SimpleNamespace(charges=None, holds=f'[[3, "total", "{unit}", 500]]', outcome=outcome,
                          prompt_tokens=30, completion_tokens=12, cost=7000)
    assert charges(row) == [(3, "total", charged)]
    assert charges(SimpleNamespace(charges=None, holds=None, outcome="ok")) == []
    assert charges(SimpleNamespace(charges='[[3, "total", 9]]')) == [(3, "total", 9)]


def test_the_export_takes_rows_from_since_up_to_before_until(budgets, clock):  # noqa: F811
    budgets.set_budget("key", 7, "requests", "total", 10)
    start = clock.now
    for second in range(3):
        clock.now = start + second
        budgets.settle(budgets.admit(ask(request_id=f"r{second}"), None, 7), Spent(1, 1))
    rows = list(budgets.rows(since=start + 1, until=start + 2))
    assert [row["request_id"] for row in rows] == ["r1"]
    assert [row["request_id"] for row in budgets.rows(limit=2)] == ["r0", "r1"]
    assert at("2026-11-30T12:00:00") == start


def test_the_check_adds_up_every_open_row_of_a_counter(budgets, db):  # noqa: F811
    tokens = budgets.set_budget("key", 7, "tokens", "total", 10_000)
    for name in ("a", "b", "c"):
        budgets.admit(ask(request_id=name), None, 7)  # three open rows, one counter
    assert counter(db, tokens) == (0, 450)
    assert budgets.check() == []
    with db.write() as conn:
        conn.execute(sa.text("UPDATE budget_counters SET reserved = 300 WHERE budget_id = :b"),
                     {"b": tokens.id})
    [drift] = budgets.check()
    assert (drift.reserved, drift.ledger_reserved) == (300, 450)


def test_a_used_up_total_budget_says_it_never_resets(budgets):  # noqa: F811
    from gpt_proxy.base.errors import OverBudget

    budgets.set_budget("key", 7, "requests", "total", 1)
    budgets.admit(ask(), None, 7)
    with pytest.raises(OverBudget) as refused:
        budgets.admit(ask(request_id="again"), None, 7)
    assert refused.value.code == "budget_exceeded" and refused.value.status == 429
    assert "does not reset" in refused.value.message
    assert "Retry-After" not in refused.value.headers


def test_a_budget_resetting_in_under_a_second_says_retry_in_1(budgets, clock):  # noqa: F811
    from gpt_proxy.base.errors import OverBudget

    budgets.set_budget("key", 7, "requests", "minute", 1)
    clock.now = 1_800_000_059.5  # half a second before the minute ends
    budgets.admit(ask(), None, 7)
    with pytest.raises(OverBudget) as refused:
        budgets.admit(ask(request_id="again"), None, 7)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["Retry-After"] == "1"


def test_what_a_budget_shows_for_its_own_window_in_its_time_zone(budgets, clock):  # noqa: F811
    """A day is Berlin's (the budgets' time zone): at 23:30 UTC a new day has begun there, so
    yesterday's spend is not today's; a fresh budget shows nothing spent; what is left counts
    what is reserved and is never below 0; a total budget never resets."""
    day = budgets.set_budget("key", 7, "requests", "day", 2)
    total = budgets.set_budget("key", 7, "tokens", "total", 100)
    fresh = {row["unit"]: row for row in budgets.standing([day, total])}
    assert (fresh["requests"]["spent"], fresh["requests"]["left"]) == (0, 2)
    assert fresh["tokens"]["resets_at"] is None
    clock.now = at("2026-11-30T22:30:00")  # 23:30 in Berlin
    budgets.settle(budgets.admit(ask(prompt=10, completion=10), None, 7), Spent(5, 5))
    clock.now = at("2026-11-30T23:30:00")  # 00:30 on 1 December in Berlin
    budgets.admit(ask(prompt=10, completion=20, request_id="open"), None, 7)  # held
    shown = {row["unit"]: row for row in budgets.standing([day, total])}
    assert (shown["requests"]["spent"], shown["requests"]["reserved"]) == (0, 1)
    assert shown["requests"]["left"] == 1
    assert (shown["tokens"]["spent"], shown["tokens"]["reserved"]) == (10, 30)
    assert shown["tokens"]["left"] == 60
    budgets.admit(ask(prompt=10, completion=10, request_id="last"), None, 7)
    assert {row["unit"]: row["left"] for row in budgets.standing([day])} == {"requests": 0}


def test_charges_of_an_old_row_without_tokens_or_cost_are_zero():
    for unit in ("tokens", "usd"):
        row = SimpleNamespace(charges=None, holds=f'[[3, "total", "{unit}", 500]]', outcome="ok",
                              prompt_tokens=None, completion_tokens=None, cost=None)
        assert charges(row) == [(3, "total", 0)]


# --- settlement -----------------------------------------------------------------------------------

class Metrics:
    def __init__(self) -> None:
        self.failed = 0

    def settlement_failed(self) -> None:
        self.failed += 1


def test_a_settlement_whose_counter_is_gone_is_logged_with_its_request_and_counted(
        db, clock, caplog):  # noqa: F811
    metrics = Metrics()
    budgets = Budgets(db, clock=clock, hold_seconds=600, metrics=metrics)  # noqa: F811
    tokens = budgets.set_budget("key", 7, "tokens", "total", 10_000)
    with caplog.at_level(logging.ERROR, logger="gpt_proxy"):
        budgets.settle(budgets.admit(ask(request_id="fine"), None, 7), Spent(1, 1))
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert metrics.failed == 0
        hold = budgets.admit(ask(request_id="orphan"), None, 7)
        with db.write() as conn:
            conn.execute(sa.text("DELETE FROM budget_counters WHERE budget_id = :b"),
                         {"b": tokens.id})
        budgets.settle(hold, Spent(1, 1))
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "request orphan:" in error and "fine" not in error and "(0 rows touched)" in error
    assert metrics.failed == 1


def test_a_settlement_that_fails_is_logged_with_its_request_and_counted(
        db, clock, caplog, monkeypatch):  # noqa: F811
    metrics = Metrics()
    budgets = Budgets(db, clock=clock, hold_seconds=600, metrics=metrics)  # noqa: F811
    budgets.set_budget("key", 7, "tokens", "total", 10_000)
    hold = budgets.admit(ask(request_id="req-42"), None, 7)

    def broken(*_):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(budgets, "_settle", broken)
    with caplog.at_level(logging.ERROR, logger="gpt_proxy"):
        budgets.settle(hold, Spent(1, 1))  # never raises: the reply is over
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "ledger: request req-42 not settled" and record.exc_info
    assert metrics.failed == 1


@pytest.mark.parametrize("reserved", [True, False], ids=["held", "unbudgeted"])
def test_a_ledger_row_keeps_bounded_text_and_the_exact_duration(budgets, db, clock,  # noqa: F811
                                                                reserved):
    if reserved:
        budgets.set_budget("key", 7, "requests", "total", 10)
    long_ask = Ask(model="m" * 300, prompt_tokens=10, completion_tokens=10, door="test",
                   request_id="r" * 100, role="x" * 100)
    hold = budgets.admit(long_ask, None, 7)
    clock.now += 1.5
    budgets.settle(hold, Spent(3, 4, upstream="u" * 100, outcome="o" * 100, ttft_ms=12))
    budgets.flush()
    with db.read() as conn:
        row = conn.execute(sa.text("SELECT * FROM ledger")).one()
    assert (len(row.request_id), len(row.model), len(row.upstream), len(row.outcome)) == (
        64, 200, 64, 64)
    assert len(row.role) == 64
    assert (row.duration_ms, row.ttft_ms) == (1500, 12)


def test_the_cost_counts_cached_tokens_at_their_price_and_adds_the_images(
        db, clock):  # noqa: F811
    price = Price(Decimal("1"), Decimal("2"), Decimal("0.5"),
                  images={"256x256": Decimal("0.01"), "1024x1024": Decimal("0.04")})
    budgets = Budgets(db, prices={"p": price}, clock=clock, hold_seconds=600)  # noqa: F811
    budgets.set_budget("key", 7, "usd", "total", 10**12)
    budgets.settle(budgets.admit(ask(model="p", request_id="text"), None, 7),
                   Spent(100, 10, cached_tokens=40))
    image_ask = Ask(model="p", prompt_tokens=10, completion_tokens=0, door="test",
                    request_id="image", images=2, image_size="256x256")
    budgets.settle(budgets.admit(image_ask, None, 7), Spent(10, 0, images=2))
    with db.read() as conn:
        costs = dict(conn.execute(sa.text("SELECT request_id, cost FROM ledger")).all())
    assert costs["text"] == price.tokens(100, 10, 40) == 60 * 1000 + 40 * 500 + 10 * 2000
    assert costs["image"] == price.tokens(10, 0) + price.image("256x256", 2) == (
        10 * 1000 + 20_000_000)


# --- which budgets, and how much -------------------------------------------------------------------

def test_a_request_meets_the_service_its_users_and_its_keys_budgets_only(budgets):  # noqa: F811
    service = budgets.set_budget("service", 99, "requests", "total", 100)
    mine = budgets.set_budget("user", 3, "requests", "total", 100)
    key = budgets.set_budget("key", 7, "requests", "total", 100)
    budgets.set_budget("user", 4, "requests", "total", 100)  # another user's
    budgets.set_budget("key", 8, "requests", "total", 100)  # another key's
    budgets.set_budget("key", 3, "requests", "total", 100)  # key 3, not user 3
    assert [b.id for b in budgets.applying(3, 7)] == [service.id, mine.id, key.id]
    assert [b.id for b in budgets.applying(3, None)] == [service.id, mine.id]
    assert [b.id for b in budgets.applying(None, 7)] == [service.id, key.id]
    assert [b.id for b in budgets.applying(None, None)] == [service.id]
    assert [(b.scope, b.subject_id) for b in budgets.list_budgets()][0] == ("service", 0)


@pytest.mark.parametrize("args", [
    ("team", 1, "tokens", "day"), ("user", 1, "euros", "day"), ("user", 1, "tokens", "week")])
def test_a_budget_of_an_unknown_scope_unit_or_period_is_refused(budgets, args):  # noqa: F811
    with pytest.raises(BadRequest) as refused:
        budgets.set_budget(*args, 10)
    assert "service" in str(refused.value) and "minute" in str(refused.value)


def test_a_budget_limit_is_a_whole_number_from_0_to_under_2_to_the_62(budgets):  # noqa: F811
    assert budgets.set_budget("key", 1, "tokens", "day", 0).limit == 0
    assert budgets.set_budget("key", 1, "tokens", "day", 2**62 - 1).limit == 2**62 - 1
    for limit in (-1, 2**62, True, 1.5, "5"):
        with pytest.raises(BadRequest) as refused:
            budgets.set_budget("key", 1, "tokens", "day", limit)
        assert refused.value.field == "limit" and "whole number" in str(refused.value)


def test_an_image_request_reserves_its_images_and_its_prompt(db, clock):  # noqa: F811
    price = Price(Decimal("1"), Decimal("2"),
                  images={"256x256": Decimal("0.01"), "1024x1024": Decimal("0.04")})
    budgets = Budgets(db, prices={"p": price}, clock=clock, hold_seconds=600)  # noqa: F811
    usd = budgets.set_budget("key", 7, "usd", "total", 10**12)
    image_ask = Ask(model="p", prompt_tokens=10, completion_tokens=5, door="test",
                    request_id="image", images=2, image_size="256x256")
    budgets.admit(image_ask, None, 7)
    assert counter(db, usd) == (0, 2 * 10_000_000 + 10 * 1000)  # 2 x $0.01 and the prompt


def test_a_day_and_a_month_end_on_the_whole_second_whatever_the_moment():
    from gpt_proxy.money.budgets import window

    from .test_budgets import BERLIN

    moment = at("2026-11-30T12:00:00") + 0.75
    assert window("day", moment, BERLIN)[1] == at("2026-12-01T00:00:00", BERLIN)
    assert window("month", moment, BERLIN)[1] == at("2026-12-01T00:00:00", BERLIN)
