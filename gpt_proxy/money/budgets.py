"""Budgets and the usage ledger: each key, user and the whole service spends only what it was
given, and every request leaves one row saying what it came to. Over `db`; knows nothing of
HTTP.

A budget is a limit on one subject (the service, a user, or a key) in one unit (tokens,
US dollars counted in nanodollars, or requests) over one period (`minute`, `day`, `month`,
`total`; days and months are calendar ones in BUDGET_TZ, a minute is a UTC minute). Each
period's use is a counter row (`spent`, `reserved`). Requests and tokens per minute per key
(rpm, tpm) are budgets too: `requests` or `tokens` per `minute`.

The rules that make it exact:
- Admission, before the upstream is asked: the request's worst case is reserved against every
  budget that applies to it, in one transaction, each budget by one conditional write of its
  own counter row, taken in the one lock order (budget id, then window):

      INSERT INTO budget_counters ... SELECT :budget, :window, 0, :amount
        WHERE :amount <= <the limit>
      ON CONFLICT (budget_id, window) DO UPDATE SET reserved = reserved + :amount
        WHERE spent + reserved + :amount <= <the limit>  RETURNING spent, reserved

  A budget whose row does not come back has no room: the transaction is rolled back
  (nothing stays reserved anywhere), and the request is refused naming the budget and when
  it resets. Never a read, a decision in Python, then a write: on PostgreSQL, ON CONFLICT DO
  UPDATE locks the existing row and evaluates its WHERE on the newest committed version of
  it (READ COMMITTED's rule for the conflicting row), so the second of two writers checks
  what the first committed; on SQLite the transaction holds the database's write lock. So
  requests arriving together can never all pass one check.
- The worst case: the prompt, bounded by the bytes of the JSON sent upstream (every token is
  at least one byte of UTF-8), an image part counted as IMAGE_TOKENS tokens instead of its
  bytes; plus the completion, bounded by `max_tokens` (or `max_completion_tokens`) times `n`.
  A request with no such bound under a budget is sent with `max_tokens` = MAX_TOKENS_CEILING,
  else BUDGET_MAX_TOKENS, so its worst case is known.
- The reservation is a ledger row in state `open`, holding what it reserved per counter.
- Settlement, however the reply ends, in one transaction: the ledger row is settled (only if
  still open: settling twice is impossible), with what it charged each counter (`charges`),
  then each counter's reservation becomes the real amount by a plain `UPDATE ... WHERE
  budget_id = :b AND window_key = :w` of its own, in the one lock order, each checked to
  touch its one row (a counter that is not there is logged with the request id). The amount:
  the upstream's reported usage; for a reply cut short (the client left, or the upstream
  broke off) the prompt's bound plus one token per text chunk relayed (OpenAI-compatible
  APIs stream one token per chunk); nothing for a failure before the first byte. Failover
  settles once, with the upstream that answered. (A single `UPDATE ... FROM (SELECT ...
  UNION ALL ...)` skipped counters on PostgreSQL when it had waited for another's row lock,
  and took the rows in no fixed order: lost updates and deadlocks, issue 26.)
- On SQLite under gevent, the admissions a worker is asked for while it writes one are written
  together in its next transaction (SQLite locks the whole database for any write
  transaction, so one per request only multiplied the fixed cost): each request's own
  reservations are still all or none (a request refused gives back, in that transaction, what
  it had reserved on its earlier budgets, each counter checked to move one row). On
  PostgreSQL, whose row locks one transaction would take out of the order below, only the
  requests under the same one budget are written together: their sum by the one conditional
  write and their open rows in one statement; when the sum has no room, nothing is written
  and each is admitted alone, in turn (exactly whom one-by-one admission would take).
- Under gevent, the settlements of one worker's replies that end within SETTLE_GATHER_SECONDS
  of each other are written in one transaction, the batch writer's below (each row and counter
  checked as above): a reservation is given back at most that much later, never sooner. On
  PostgreSQL, settlements that all hold one same counter are one statement.
- A batch the database refuses for good is written a row at a time: a row refused alone is
  logged with its request and left out, never holding up the others. Text is written without
  NUL or lone surrogates, and usage past MAX_REPORTED is counted at that (and logged).
- One lock order everywhere: admission, settlement and the sweep take counter rows by budget
  id, then window; settlement and the sweep take their ledger rows first, which admission
  never waits for. A transaction PostgreSQL ends to break a deadlock (or a serialization
  failure), or one whose connection was dropped, is tried again on a fresh connection, at
  most ATTEMPTS times in all.
- A settlement the database cannot take after that (it is restarting, unreachable) is kept
  by the worker in the queue of ledger rows below and written with its next batch, tried
  again every couple of seconds until the database answers, with the real amounts; the
  access line is written meanwhile. Only a queue past LEDGER_PENDING_MAX drops its oldest,
  and says which requests were never settled.
- A worker that dies leaves open rows: once past their `expires` (the longest a reply can
  run, MAX_STREAM_SECONDS, plus the upstream's timeouts and a minute) any process settles
  them at the amount reserved (the upstream may have served them in full; the budget is
  never overshot, and the ledger says `expired`).
- Ledger rows older than LEDGER_DAYS, and counters of minutes an hour over, are deleted;
  what a deleted row charged each counter is added to that counter's `carried`, so `check`
  (every counter against the ledger: `flask budgets check`) still adds up afterwards.
- The row of a request no budget applied to (nothing reserved, nothing to settle) is written
  with others in one transaction: when LEDGER_BATCH rows wait, LEDGER_FLUSH_SECONDS after the
  first of them, before this process reads the ledger, and when the process stops (atexit,
  and gunicorn's worker_exit hook). A transaction per request cost 0.2 ms of CPU, about a
  tenth of a short request's; a graceful stop loses nothing, a killed worker at most half a
  second of such rows. A batch the database refuses is kept and tried again (up to
  LEDGER_PENDING_MAX rows, then the oldest are dropped and logged).
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from ..base import hub
from ..base.errors import BadRequest, NotFound, OverBudget, Unpriced
from ..base.prices import Price, dollars
from ..storage.db import Database, DatabaseError, Raw, budget_counters, budgets, ledger

log = logging.getLogger("gpt_proxy.budgets")

SCOPES = ("service", "user", "key")
UNITS = ("tokens", "usd", "requests")
PERIODS = ("minute", "day", "month", "total")
IMAGE_TOKENS = 3000  # the bound of one image part in a prompt
CACHE_SECONDS = 0.5  # how long a subject's list of budgets is reused (changes: < 1 s)
SWEEP_EVERY = 60.0
SWEEP_BATCH = 200
LEDGER_BATCH = 200
LEDGER_FLUSH_SECONDS = 0.5
LEDGER_PENDING_MAX = 50_000
# Under gevent the settlements of one worker's replies that end within this long of each
# other are written in one transaction (the batch's, see the module's rules): a reservation
# is given back at most this much later (a budget can only look fuller meanwhile, never
# emptier), and a transaction's fixed cost is shared.
SETTLE_GATHER_SECONDS = 0.01
# A batch the database refused for good is written one row at a time; when this many are
# refused before one is written, the database refuses everything (full, read-only), not a row.
PROBE_ALONE = 3
# The most tokens (2**32, a thousand times the longest context) and images one request is
# counted for: an upstream that reports more (a broken or hostile one: JSON numbers have no
# bound) is counted this much, and the request is logged. Beyond them the ledger's integers
# (64-bit tokens and cost, 32-bit images on PostgreSQL) could overflow, and a row the
# database refuses would hold up the rows written with it.
MAX_REPORTED = {"prompt_tokens": 2**32, "completion_tokens": 2**32, "cached_tokens": 2**32,
                "images": 2**31 - 1}
_PERIOD_WORDS = {"minute": "per-minute", "day": "daily", "month": "monthly", "total": "total"}


@dataclass(frozen=True)
class Budget:
    id: int
    scope: str
    subject_id: int
    unit: str
    period: str
    limit: int

    @property
    def label(self) -> str:
        """`scope.unit.period`, e.g. key.tokens.day (bounded: for metrics and headers)."""
        return f"{self.scope}.{self.unit}.{self.period}"

    def amount(self, value: int) -> str:
        if self.unit == "usd":
            return f"${dollars(value)}"
        return f"{value:,} {self.unit}"

    def describe(self) -> str:
        whose = {"service": "the service's", "user": "your account's", "key": "this key's"}
        return (f"{whose[self.scope]} {_PERIOD_WORDS[self.period]} {self.unit} budget "
                f"({self.amount(self.limit)})")

    def public(self) -> dict:
        return {"id": self.id, "scope": self.scope, "subject_id": self.subject_id,
                "unit": self.unit, "period": self.period, "limit": self.limit
                if self.unit != "usd" else dollars(self.limit)}


@dataclass(frozen=True)
class Ask:
    """What a request may cost at worst, and what the ledger should say of it."""

    model: str
    prompt_tokens: int | None  # the bound; None: no budget applies, and it is worked out
    #                            only if the ledger needs it (a reply cut short)
    completion_tokens: int  # the bound
    door: str
    request_id: str
    role: str | None = None
    images: int = 0
    image_size: str | None = None


@dataclass(frozen=True)
class Spent:
    """What a request came to."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    images: int = 0
    outcome: str = "ok"
    upstream: str | None = None
    ttft_ms: int | None = None  # from the request to the first token relayed


@dataclass(frozen=True)
class Drift:
    """A counter that is not what the ledger says (`budgets check`)."""

    budget_id: int
    kind: str  # scope.unit.period
    window: str
    spent: int
    reserved: int
    ledger_spent: int
    ledger_reserved: int


@dataclass(frozen=True)
class _Settlement:
    """A ledger row to settle (`row`: its columns; without `outcome`, an expiry) and what
    each counter it holds gives back and is charged: (budget, window, held, charged), in the
    one lock order."""

    ledger_id: int
    request_id: str
    row: dict
    counters: list[tuple[int, str, int, int]]
    kept: bool = False  # the database refused it once: told in the log, written later


@dataclass
class _Admission:
    """An admission waiting to be written with others (`Budgets._admit_together`)."""

    hold: Hold
    amounts: list  # (budget, window, ends, amount), in the one lock order
    now: float
    done: object = None  # gevent.event.AsyncResult: the ledger id, or the refusal
    ledger_id: int | None = None
    refusal: Exception | None = None  # its refusal (OverBudget), or the database's error
    cancelled: bool = False


@dataclass
class Hold:
    """An admitted request: its ledger row (None: no budget applied, the row is written at
    settlement) and what it reserved."""

    ask: Ask
    user_id: int | None
    key_id: int | None
    started: float
    ledger_id: int | None = None
    holds: list[tuple[int, str, str, int]] = field(default_factory=list)  # budget, window,
    #                                                                        unit, amount
    remaining: list[tuple[Budget, int]] = field(default_factory=list)
    price: Price | None = None
    done: bool = False

    def header(self) -> str:
        """`X-Budget-Remaining`: each budget's room left if this request costs its worst."""
        return ", ".join(f"{b.label}={dollars(left) if b.unit == 'usd' else left}"
                         for b, left in self.remaining)


_windows: dict[tuple[str, ZoneInfo], tuple[float, float, str, float]] = {}  # the last seen


def window(period: str, now: float, tz: ZoneInfo) -> tuple[str, float | None]:
    """The counter a moment falls in for `period`, and when that period ends. A day's or a
    month's is worked out once per period and reused while `now` is inside it (working it
    out takes a time zone conversion, a few microseconds on every admission)."""
    if period == "total":
        return "total", None
    if period == "minute":
        start = int(now // 60) * 60
        return f"m:{start}", start + 60.0
    known = _windows.get((period, tz))
    if known is not None and known[0] <= now < known[1]:
        return known[2], known[3]
    key, ends = _calendar_window(period, now, tz)
    # reused from this moment (known to be in the period) to the period's end: no time zone
    # rule (DST) can put a moment between the two in another period
    _windows[(period, tz)] = (now, ends, key, ends)
    return key, ends


def _calendar_window(period: str, now: float, tz: ZoneInfo) -> tuple[str, float]:
    """A day's or a month's counter key, and when that period ends."""
    local = dt.datetime.fromtimestamp(now, tz)
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        ends = (start + dt.timedelta(days=1)).replace(tzinfo=None)
        return f"d:{start:%Y-%m-%d}", ends.replace(tzinfo=tz).timestamp()
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start.replace(tzinfo=None) + dt.timedelta(days=32)).replace(day=1)
    return f"M:{start:%Y-%m}", following.replace(tzinfo=tz).timestamp()


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _in(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.999))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


# Every statement that moves a counter touches one row, named by its whole key, and its row
# count is checked: PostgreSQL's READ COMMITTED re-checks a row another transaction changed
# while this one waited, and a statement joining the counters to a derived table could then
# skip rows without an error (issue 26). Counter rows are always taken in one order, by budget
# id then window (`_in_order`), so two transactions never wait for each other in a circle.
_RESERVE = (
    "INSERT INTO budget_counters (budget_id, window_key, spent, reserved, ends, carried) "
    "SELECT CAST(:budget_id AS INTEGER), CAST(:window_key AS VARCHAR(24)), 0, "
    "CAST(:amount AS BIGINT), CAST(:ends AS DOUBLE PRECISION), 0 "
    "WHERE CAST(:amount AS BIGINT) <= (SELECT amount_limit FROM budgets WHERE id = :budget_id) "
    "ON CONFLICT (budget_id, window_key) DO UPDATE "
    "SET reserved = budget_counters.reserved + excluded.reserved "
    "WHERE budget_counters.spent + budget_counters.reserved + excluded.reserved "
    "<= (SELECT amount_limit FROM budgets WHERE id = excluded.budget_id) "
    "RETURNING spent, reserved")
# PostgreSQL, one budget: the reservation and the ledger's open row in one statement, which
# runs as a transaction of its own (autocommit): one round trip instead of four (BEGIN, the
# two statements, COMMIT). No row back: no room, and nothing was written (the ledger row is
# inserted from what the reservation returned).
_RESERVE_AND_OPEN = (
    "WITH reserved AS (" + _RESERVE + "), opened AS ("
    "INSERT INTO ledger (request_id, created, user_id, key_id, door, model, role, state, "
    "expires, holds) SELECT CAST(:request_id AS VARCHAR(64)), CAST(:created AS DOUBLE "
    "PRECISION), CAST(:user_id AS INTEGER), CAST(:key_id AS INTEGER), CAST(:door AS "
    "VARCHAR(32)), CAST(:model AS VARCHAR(200)), CAST(:role AS VARCHAR(64)), 'open', "
    "CAST(:expires AS DOUBLE PRECISION), CAST(:holds AS TEXT) FROM reserved RETURNING id) "
    "SELECT opened.id, reserved.spent, reserved.reserved FROM opened, reserved")
# PostgreSQL under gevent, several requests under the same one budget admitted together
# (`Budgets._admit_group`): their reservations' sum reserved by the one conditional write,
# and their open rows inserted from one JSON array (ids drawn first, so each request learns
# its own), in one statement. No row back: the sum has no room and nothing was written; each
# request is then admitted alone, in turn, as it would have been.
_RESERVE_AND_OPEN_GROUP = (
    "WITH reserved AS (" + _RESERVE + "), v AS (SELECT * FROM json_to_recordset("
    "CAST(:rows AS JSON)) AS v(n INTEGER, request_id VARCHAR(64), "
    "created DOUBLE PRECISION, user_id INTEGER, key_id INTEGER, door VARCHAR(32), "
    "model VARCHAR(200), role VARCHAR(64), expires DOUBLE PRECISION, holds TEXT)), "
    "ids AS (SELECT n, nextval(pg_get_serial_sequence('ledger', 'id')) AS id FROM v "
    "WHERE EXISTS (SELECT 1 FROM reserved)), opened AS ("
    "INSERT INTO ledger (id, request_id, created, user_id, key_id, door, model, role, state, "
    "expires, holds) SELECT ids.id, v.request_id, v.created, v.user_id, v.key_id, v.door, "
    "v.model, v.role, 'open', v.expires, v.holds FROM v JOIN ids ON ids.n = v.n RETURNING id) "
    "SELECT ids.n, ids.id, reserved.spent, reserved.reserved FROM ids "
    "JOIN opened ON opened.id = ids.id, reserved ORDER BY ids.n")
_UNRESERVE = (  # within the transaction that reserved it (see `Budgets._reserve`)
    "UPDATE budget_counters SET reserved = reserved - :amount "
    "WHERE budget_id = :budget_id AND window_key = :window_key")
_SETTLE_COUNTER = (
    "UPDATE budget_counters SET reserved = reserved - :held, spent = spent + :charged "
    "WHERE budget_id = :budget_id AND window_key = :window_key")
# PostgreSQL, settlements that all hold one counter (one budget): their ledger rows and the
# counter in one statement, a transaction of its own (autocommit), one round trip for the
# batch instead of BEGIN, one UPDATE per row, the counter's and COMMIT. The rows come as one
# JSON array (`json_to_recordset`: the same text, so the same prepared statement, for any
# number of rows, at half the client's CPU of an array per column); each row is settled only
# if still open, and the counter moves by what the rows settled here held and charged (sums
# computed once, before the counter is taken: a counter that waited for another's lock is
# re-checked on its whole key, with those same sums), and not at all when none was. The
# statement returns the rows it settled, each with the number of counter rows it moved
# (checked to be 1). Ledger rows are never taken by an admission, so taking them first keeps
# the one lock order.
_SETTLE_TOGETHER = (
    "WITH v AS (SELECT * FROM json_to_recordset(CAST(:rows AS JSON)) AS v(id INTEGER, "
    "finished DOUBLE PRECISION, upstream VARCHAR(64), prompt_tokens BIGINT, "
    "completion_tokens BIGINT, images INTEGER, cost BIGINT, outcome VARCHAR(64), "
    "duration_ms INTEGER, ttft_ms INTEGER, charges TEXT, held BIGINT, charged BIGINT)), "
    "settled AS (UPDATE ledger SET finished = v.finished, upstream = v.upstream, "
    "prompt_tokens = v.prompt_tokens, completion_tokens = v.completion_tokens, "
    "images = v.images, cost = v.cost, outcome = v.outcome, duration_ms = v.duration_ms, "
    "ttft_ms = v.ttft_ms, charges = v.charges, state = 'settled' FROM v "
    "WHERE ledger.id = v.id AND ledger.state = 'open' RETURNING ledger.id, v.held, v.charged), "
    "moved AS (UPDATE budget_counters SET reserved = reserved - (SELECT SUM(held) FROM settled), "
    "spent = spent + (SELECT SUM(charged) FROM settled) "
    "WHERE budget_id = :budget_id AND window_key = :window_key "
    "AND EXISTS (SELECT 1 FROM settled) RETURNING 1) "
    "SELECT settled.id, (SELECT COUNT(*) FROM moved) FROM settled")
ATTEMPTS = 3  # a transaction PostgreSQL ended to break a deadlock, or a dropped connection


def _text(value: str | None, most: int) -> str | None:
    """`value` as a ledger column holds it: at most `most` characters, any NUL (which
    PostgreSQL refuses in text) or lone surrogate (no character: UTF-8 cannot hold it) made a
    replacement character. A model name comes from the client, an outcome from the upstream's
    error: a row the database refused would hold up every row written with it."""
    if value is None:
        return None
    value = value[:most]
    if value.isascii() and "\x00" not in value:
        return value
    return _UNWRITABLE.sub("\ufffd", value)


_UNWRITABLE = re.compile("[\x00\ud800-\udfff]")


def _whose(hold: Hold, created: float) -> dict:
    """The columns saying whose request a ledger row is, and what it asked for."""
    ask = hold.ask
    return {"request_id": _text(ask.request_id, 64), "created": created,
            "user_id": hold.user_id, "key_id": hold.key_id, "door": _text(ask.door, 32),
            "model": _text(ask.model, 200), "role": _text(ask.role or None, 64)}


def _in_order(holds):
    """Counter rows in the one order every transaction takes them: budget id, then window."""
    return sorted(holds, key=lambda hold: (hold[0], hold[1]))


# The statements every request runs: plain SQL for the driver (`Database.raw_write`), since
# SQLAlchemy's execution layer would cost more than the statements themselves.
_LEDGER_OPEN = (
    "INSERT INTO ledger (request_id, created, user_id, key_id, door, model, role, state, "
    "expires, holds) VALUES (:request_id, :created, :user_id, :key_id, :door, :model, :role, "
    "'open', :expires, :holds) RETURNING id")
_LEDGER_SETTLE = (
    "UPDATE ledger SET finished = :finished, upstream = :upstream, "
    "prompt_tokens = :prompt_tokens, completion_tokens = :completion_tokens, images = :images, "
    "cost = :cost, outcome = :outcome, duration_ms = :duration_ms, ttft_ms = :ttft_ms, "
    "charges = :charges, "
    "state = 'settled' WHERE id = :id AND state = 'open'")
_LEDGER_EXPIRE = (
    "UPDATE ledger SET finished = :finished, outcome = 'expired', charges = :charges, "
    "state = 'settled' WHERE id = :id AND state = 'open'")
_LEDGER_SETTLED = (
    "INSERT INTO ledger (request_id, created, user_id, key_id, door, model, role, finished, "
    "upstream, prompt_tokens, completion_tokens, images, cost, outcome, duration_ms, ttft_ms, "
    "state) VALUES (:request_id, :created, :user_id, :key_id, :door, :model, :role, :finished, "
    ":upstream, :prompt_tokens, :completion_tokens, :images, :cost, :outcome, :duration_ms, "
    ":ttft_ms, 'settled')")


class Budgets:
    """Admission, settlement, the ledger, and the budgets themselves."""

    def __init__(self, db: Database, *, prices: Mapping[str, Price] | None = None,
                 default_price: Price | None = None, tz: str = "UTC",
                 hold_seconds: float = 1230.0, ledger_days: float = 400.0,
                 clock: Callable[[], float] = time.time, metrics=None,
                 gather: bool = True) -> None:
        self.db = db
        self.prices = prices or {}
        self.default_price = default_price
        self.tz = ZoneInfo(tz)
        self.hold_seconds = hold_seconds
        self.ledger_days = ledger_days
        self.clock = clock
        self.metrics = metrics
        self._cache: dict[tuple, tuple[float, list[Budget]]] = {}
        self._last_sweep = float("-inf")
        # Ledger rows of unbudgeted requests, not yet written. No lock guards them: a row is
        # queued when a reply's relay closes, which the garbage collector may do in the middle
        # of any allocation, so a lock held here could be asked for again by its own thread.
        self._pending: collections.deque[dict] = collections.deque()
        self._timer = None  # threading.Timer, or hub.later's timer under gevent
        self._due = 0.0  # when the flush `_timer` makes is due (time.monotonic)
        self.gather = gather  # under gevent: admissions (SQLite) and settlements written together
        self._admitting: list[_Admission] = []  # admissions waiting (`_admit_together`)
        self._admitter = False  # a greenlet is writing them
        self._flushing = False
        _instances.add(self)
        from .usage import Usage
        self.usage = Usage(db, tz=tz, ledger_days=ledger_days, clock=clock, flush=self.flush)

    # --- which budgets apply ----------------------------------------------------------------

    def applying(self, user_id: int | None, key_id: int | None) -> list[Budget]:
        """The budgets a request of this user and key must fit (the service's included), in
        id order (the order rows are locked in: no deadlock between two transactions)."""
        subject = (user_id, key_id)
        now = self.clock()
        cached = self._cache.get(subject)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        whose = budgets.c.scope == "service"
        if user_id is not None:
            whose = sa.or_(whose, sa.and_(budgets.c.scope == "user",
                                          budgets.c.subject_id == user_id))
        if key_id is not None:
            whose = sa.or_(whose, sa.and_(budgets.c.scope == "key",
                                          budgets.c.subject_id == key_id))
        with self.db.read() as conn:
            rows = conn.execute(sa.select(budgets).where(whose).order_by(budgets.c.id)).all()
        found = [Budget(r.id, r.scope, r.subject_id, r.unit, r.period, r.amount_limit)
                 for r in rows]
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[subject] = (now, found)
        return found

    def price(self, model: str) -> Price | None:
        return self.prices.get(model) or self.default_price

    # --- admission ----------------------------------------------------------------------------

    def _amount(self, budget: Budget, ask: Ask, price: Price | None) -> int:
        if budget.unit == "requests":
            return 1
        if budget.unit == "tokens":
            return ask.prompt_tokens + ask.completion_tokens
        if price is None:
            raise Unpriced(f"the model {ask.model[:200]!r} has no price, and a money budget "
                           "applies: the operator adds it to PRICES_FILE (or sets "
                           "DEFAULT_PRICE)", field="model")
        if ask.images:
            cost = price.image(ask.image_size, ask.images)
            if cost is None:
                raise Unpriced(f"images of size {ask.image_size!r} from {ask.model[:200]!r} "
                               "have no price, and a money budget applies", field="size")
            return cost + price.tokens(ask.prompt_tokens, 0)
        return price.tokens(ask.prompt_tokens, ask.completion_tokens)

    def admit(self, ask: Ask, user_id: int | None, key_id: int | None,
              applying: list[Budget] | None = None) -> Hold:
        """Reserve `ask`'s worst case against every budget that applies (one transaction, or
        one statement for one budget on PostgreSQL; under gevent, written together with the
        worker's other admissions of the moment, `_admit_together`);
        OverBudget naming the first budget without room. `applying`: `self.applying(user_id,
        key_id)` as the caller already read it (the ask was bounded for that list)."""
        now = self.clock()
        if now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            self.sweep()
        hold = Hold(ask, user_id, key_id, now, price=self.price(ask.model))
        if applying is None:
            applying = self.applying(user_id, key_id)
        if not applying:
            return hold
        amounts = []
        for budget in applying:
            key, ends = window(budget.period, now, self.tz)
            amounts.append((budget, key, ends, self._amount(budget, ask, hold.price)))
        amounts.sort(key=lambda item: (item[0].id, item[1]))  # the one lock order
        hold.holds = [(budget.id, key, budget.unit, amount) for budget, key, _, amount in amounts]

        if (self.gather and (self.db.sqlite is not None or len(amounts) == 1)
                and hub.on_gevent()):
            hold.ledger_id = self._admit_together(_Admission(hold, amounts, now))
            return hold
        try:
            if self.db.sqlite is None and len(amounts) == 1:
                hold.ledger_id = self._admit_in_one_statement(hold, amounts[0], now)
            else:
                hold.ledger_id = self._transaction(
                    lambda conn: self._reserve(conn, hold, amounts, now, undo=False))
        except OverBudget as refusal:
            self._refused(refusal)
            raise
        return hold

    def _reserve(self, conn: Raw, hold: Hold, amounts: list, now: float, undo: bool) -> int:
        """Reserve `amounts` (budget, window, ends, amount: in the one lock order) and open
        the request's ledger row, in the transaction of `conn`; its id. A budget without room
        raises its refusal: the transaction is rolled back (nothing stays reserved anywhere),
        or with `undo` (other requests' reservations share the transaction) the counters this
        request already moved are moved back first, each checked to touch its one row."""
        found = {}
        for budget, key, ends, amount in amounts:
            rows = conn.execute(_RESERVE, {"budget_id": budget.id, "window_key": key,
                                           "amount": amount, "ends": ends})
            if len(rows) != 1:  # no room (the row is not written, or not changed)
                for earlier, earlier_key, _, earlier_amount in amounts:
                    if not undo or earlier.id not in found:
                        break
                    conn.execute(_UNRESERVE, {"budget_id": earlier.id,
                                              "window_key": earlier_key,
                                              "amount": earlier_amount})
                    if conn.rowcount != 1:
                        raise DatabaseError(f"the counter of budget {earlier.id}, window "
                                            f"{earlier_key}, reserved just now, is not there")
                raise self._refusal(budget, ends, now)
            found[budget.id] = rows[0]
        hold.remaining = [(budget, max(0, budget.limit - found[budget.id][0]
                                       - found[budget.id][1]))
                          for budget, _, _, _ in amounts]
        return conn.execute(_LEDGER_OPEN, self._open_row(hold, now))[0][0]

    def _open_row(self, hold: Hold, now: float) -> dict:
        """The columns of a request's open ledger row (`_LEDGER_OPEN`, `_RESERVE_AND_OPEN`)."""
        return {**_whose(hold, now), "expires": now + self.hold_seconds,
                "holds": json.dumps(hold.holds)}

    def _admit_in_one_statement(self, hold: Hold, amount: tuple, now: float) -> int:
        """PostgreSQL, one budget (`_RESERVE_AND_OPEN`): the ledger row's id, or the refusal
        (counted in the metrics by the caller)."""
        budget, key, ends, reserve = amount
        params = {"budget_id": budget.id, "window_key": key, "amount": reserve, "ends": ends,
                  **self._open_row(hold, now)}
        rows = self._transaction(lambda conn: conn.execute(_RESERVE_AND_OPEN, params),
                                 autocommit=True)
        if len(rows) != 1:  # no room: nothing was written
            raise self._refusal(budget, ends, now)
        ledger_id, spent, reserved = rows[0]
        hold.remaining = [(budget, max(0, budget.limit - spent - reserved))]
        return ledger_id

    def _admit_groups(self, batch: list[_Admission]) -> None:
        """PostgreSQL: `batch` (each request under one budget), a statement per counter
        (`_RESERVE_AND_OPEN_GROUP`, or `_RESERVE_AND_OPEN` for a request alone); each
        admission's ledger id, or its refusal or the database's error, set on it."""
        groups: dict[tuple[int, str], list[_Admission]] = {}
        for admission in batch:
            budget, key, _, _ = admission.amounts[0]
            groups.setdefault((budget.id, key), []).append(admission)
        for group in groups.values():
            try:
                if len(group) > 1 and self._admit_group(group):
                    continue
                for admission in group:  # alone, in turn: the sum had no room
                    try:
                        admission.ledger_id = self._admit_in_one_statement(
                            admission.hold, admission.amounts[0], admission.now)
                    except OverBudget as refusal:
                        admission.refusal = refusal
            except DatabaseError as exc:
                for admission in group:
                    if admission.ledger_id is None and admission.refusal is None:
                        admission.refusal = exc

    def _admit_group(self, group: list[_Admission]) -> bool:
        """`_RESERVE_AND_OPEN_GROUP` for `group` (one counter between them): whether the sum
        had room (each admission's ledger id set), else nothing was written."""
        budget, key, ends, _ = group[0].amounts[0]
        opened = [{**self._open_row(admission.hold, admission.now), "n": n}
                  for n, admission in enumerate(group)]
        params = {"rows": json.dumps(opened), "budget_id": budget.id, "window_key": key,
                  "ends": ends, "amount": sum(admission.amounts[0][3] for admission in group)}
        rows = self._transaction(lambda conn: conn.execute(_RESERVE_AND_OPEN_GROUP, params),
                                 autocommit=True)
        if not rows:
            return False
        if len(rows) != len(group):
            raise DatabaseError(f"{len(group)} requests were admitted together but "
                                f"{len(rows)} ledger rows came back")
        for admission, (_, ledger_id, spent, reserved) in zip(group, rows, strict=True):
            admission.ledger_id = ledger_id
            admission.hold.remaining = [(budget, max(0, budget.limit - spent - reserved))]
        return True

    def _refused(self, refusal: OverBudget) -> None:
        if self.metrics is not None:
            self.metrics.budget_refused(refusal.budget_label)

    def _admit_together(self, admission: _Admission) -> int:
        """Under gevent: this admission joins the others of the worker that come while one
        is written, and they are written together (`_admit_batches`): on SQLite in one
        transaction (each request's own reservations all or none, see `_reserve`'s undo),
        SQLite taking the whole database's write lock for any transaction; on PostgreSQL (a
        request under one budget) a statement per counter (`_admit_groups`). The ledger
        row's id, or this request's refusal or the database's error."""
        from gevent import spawn
        from gevent.event import AsyncResult

        admission.done = AsyncResult()
        self._admitting.append(admission)
        if not self._admitter:
            self._admitter = True
            spawn(self._admit_batches)
        try:
            return admission.done.get()
        except OverBudget as refusal:
            self._refused(refusal)
            raise
        except BaseException:  # killed while it waited (the worker stopping)
            admission.cancelled = True
            if admission.hold.ledger_id is None and admission.done.successful():
                admission.hold.ledger_id = admission.done.value
            if admission.hold.ledger_id is not None:  # reserved meanwhile: give it back
                self.settle(admission.hold, Spent(outcome="failed"))
            raise

    def _admit_batches(self) -> None:
        """Write the admissions waiting, a batch at a time (SQLite: one transaction;
        PostgreSQL: `_admit_groups`), until none waits."""
        try:
            while self._admitting:
                batch = [a for a in self._admitting if not a.cancelled]
                self._admitting.clear()
                if not batch:
                    continue

                def reserve_all(conn: Raw, batch: list[_Admission] = batch) -> None:
                    for admission in batch:
                        admission.refusal = admission.ledger_id = None
                        try:
                            admission.ledger_id = self._reserve(
                                conn, admission.hold, admission.amounts, admission.now,
                                undo=True)
                        except OverBudget as refusal:
                            admission.refusal = refusal
                try:
                    if self.db.sqlite is not None:
                        self._transaction(reserve_all)
                    else:  # one budget each: a statement per counter
                        self._admit_groups(batch)
                except BaseException as exc:  # noqa: BLE001 - every request of it is told
                    for admission in batch:
                        admission.done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for admission in batch:
                    if admission.refusal is not None:
                        admission.done.set_exception(admission.refusal)
                    elif admission.cancelled:  # gone while it was written: give it back
                        admission.hold.ledger_id = admission.ledger_id
                        self.settle(admission.hold, Spent(outcome="failed"))
                    else:
                        admission.done.set(admission.ledger_id)
        finally:
            self._admitter = False

    def _transaction(self, work: Callable[[Raw], object], autocommit: bool = False):
        """`work(conn)` in one write transaction, tried again (at most ATTEMPTS times in all)
        when PostgreSQL ended it to break a deadlock, or the connection was dropped: a new
        transaction on a fresh connection. Any other DatabaseError, or the last, is raised.
        `autocommit` (PostgreSQL): `work` runs one statement, its own transaction."""
        for attempt in range(ATTEMPTS):
            try:
                with (self.db.raw_write(autocommit=True) if autocommit
                      else self.db.raw_write()) as conn:
                    return work(conn)
            except DatabaseError as exc:
                if not exc.transient or attempt == ATTEMPTS - 1:
                    raise
                log.info("budgets: transaction tried again (%s): %s", exc.kind, exc)
                time.sleep(0.005 * 4 ** attempt)  # 5 ms, 20 ms (gevent's sleep under gevent)
        raise AssertionError("unreachable")

    def _refusal(self, budget: Budget, ends: float | None, now: float) -> OverBudget:
        """The refusal naming `budget`; `budget_label` is its metric's label (`_refused`)."""
        if ends is None:
            refusal = OverBudget(f"{budget.describe()} is used up; it does not reset (ask the "
                                 "operator for more)", code="budget_exceeded")
        else:
            wait = max(1, int(ends - now + 0.999))
            code = "rate_limit_exceeded" if budget.period == "minute" else "budget_exceeded"
            refusal = OverBudget(f"{budget.describe()} has no room for this request; it resets "
                                 f"at {_iso(ends)} (in {_in(ends - now)})", code=code,
                                 headers={"Retry-After": str(wait)})
            refusal.unit = budget.unit
        refusal.budget_label = budget.label
        return refusal

    # --- settlement ----------------------------------------------------------------------------

    def settle(self, hold: Hold, spent: Spent) -> None:
        """The hold becomes what the request came to (see the module's rules); once. Never
        raises: a settlement the database cannot take now is kept and tried again."""
        if hold.done:
            return
        hold.done = True
        try:
            self._settle(hold, spent)
        except Exception:  # noqa: BLE001 - the reply is over: tell, with the request id
            log.exception("ledger: request %s not settled", hold.ask.request_id)
            if self.metrics is not None:
                self.metrics.settlement_failed()

    def _settle(self, hold: Hold, spent: Spent) -> None:
        now = self.clock()
        ask = hold.ask
        over = {name: most for name, most in MAX_REPORTED.items()
                if (getattr(spent, name) or 0) > most}
        if over:
            log.warning("ledger: request %s: the upstream reported more %s than one request "
                        "can use; counted as %s", ask.request_id, " and ".join(over),
                        " and ".join(map(str, over.values())))
            spent = replace(spent, **over)
        cost = None
        if hold.price is not None:
            cost = hold.price.tokens(spent.prompt_tokens, spent.completion_tokens,
                                     spent.cached_tokens)
            if spent.images:
                cost += hold.price.image(ask.image_size, spent.images) or 0
        actual = {"tokens": spent.prompt_tokens + spent.completion_tokens,
                  "requests": 1 if spent.outcome != "failed" else 0, "usd": cost or 0}
        row = {"finished": now, "upstream": _text(spent.upstream, 64),
               "prompt_tokens": spent.prompt_tokens, "completion_tokens": spent.completion_tokens,
               "images": spent.images or None, "cost": cost, "outcome": _text(spent.outcome, 64),
               "duration_ms": int((now - hold.started) * 1000), "ttft_ms": spent.ttft_ms}
        if hold.ledger_id is None:  # nothing reserved: the row joins the next batch
            self._queue({**_whose(hold, hold.started), **row})
            return
        counters = [(budget_id, key, held, actual[unit])
                    for budget_id, key, unit, held in _in_order(hold.holds)]
        row["charges"] = json.dumps([(b, k, charged) for b, k, _, charged in counters])
        item = _Settlement(hold.ledger_id, _text(ask.request_id, 64), row, counters)
        if self.gather and self._flush_within(SETTLE_GATHER_SECONDS, item):
            return
        try:
            self._write([item])
        except DatabaseError as exc:
            self._keep(item, exc)

    def _write(self, items: list[_Settlement], rows: list[dict] | None = None) -> int:
        """Settle `items` and insert the settled `rows` (of unbudgeted requests) in one
        transaction; how many items were settled. On PostgreSQL, settlements that all hold the
        one same counter and nothing else, with no rows: one statement (`_SETTLE_TOGETHER`)."""
        if (not rows and self.db.sqlite is None and items
                and len({tuple(item.counters[0][:2]) for item in items}) == 1
                and all(len(item.counters) == 1 and item.row.get("outcome") is not None
                        for item in items)):
            return self._transaction(lambda conn: self._apply_together(conn, items),
                                     autocommit=True)

        def write(conn: Raw) -> int:
            if rows:
                conn.executemany(_LEDGER_SETTLED, rows)
            return self._apply(conn, items) if items else 0
        return self._transaction(write)

    def _apply_together(self, conn: Raw, items: list[_Settlement]) -> int:
        """`_SETTLE_TOGETHER` for `items` (one counter between them); how many were settled."""
        budget_id, key = items[0].counters[0][:2]
        rows = [{**item.row, "id": item.ledger_id, "held": item.counters[0][2],
                 "charged": item.counters[0][3]} for item in items]
        settled = conn.execute(_SETTLE_TOGETHER, {"rows": json.dumps(rows),
                                                  "budget_id": budget_id, "window_key": key})
        if settled and settled[0][1] != 1:
            ids = {row[0] for row in settled}
            done = [item for item in items if item.ledger_id in ids]
            self._counter_missing(done, budget_id, key, settled[0][1],
                                  sum(item.counters[0][2] for item in done),
                                  sum(item.counters[0][3] for item in done))
        return len(settled)

    def _apply(self, conn: Raw, items: list[_Settlement]) -> int:
        """Settle `items` in the transaction of `conn`: their ledger rows first (each only if
        still open), then every counter they hold, once each, in the one lock order, each
        UPDATE checked to touch its one row. How many were settled."""
        settled = []
        for item in items:
            statement = _LEDGER_EXPIRE if item.row.get("outcome") is None else _LEDGER_SETTLE
            conn.execute(statement, {"id": item.ledger_id, **item.row})
            if conn.rowcount == 1:
                settled.append(item)  # else: settled already (expired by a sweep)
        moves: dict[tuple[int, str], list[int]] = {}
        for item in settled:
            for budget_id, key, held, charged in item.counters:
                move = moves.setdefault((budget_id, key), [0, 0])
                move[0] += held
                move[1] += charged
        for (budget_id, key), (held, charged) in sorted(moves.items()):
            conn.execute(_SETTLE_COUNTER, {"budget_id": budget_id, "window_key": key,
                                           "held": held, "charged": charged})
            if conn.rowcount != 1:
                self._counter_missing([item for item in settled if any(
                    c[:2] == (budget_id, key) for c in item.counters)],
                    budget_id, key, conn.rowcount, held, charged)
        return len(settled)

    def _counter_missing(self, whose: list[_Settlement], budget_id: int, key: str,
                         touched: int, held: int, charged: int) -> None:
        log.error("ledger: request %s: the counter of budget %s, window %s, was not there to "
                  "settle (%d rows touched): a reservation of %d and a charge of %d are not "
                  "counted (was the budget deleted?)", ", ".join(i.request_id for i in whose),
                  budget_id, key, touched, held, charged)
        if self.metrics is not None:
            self.metrics.settlement_failed()

    def _keep(self, item: _Settlement, exc: DatabaseError) -> None:
        """A settlement the database did not take: kept in the queue of ledger rows, written
        with the next batch (tried again every few seconds until the database answers)."""
        self._pending.append(replace(item, kept=True))
        log.warning("ledger: request %s not settled yet (kept, tried again): %s",
                    item.request_id, exc)
        if self._timer is None:
            self._flush_later(LEDGER_FLUSH_SECONDS * 4)

    def _flush_within(self, seconds: float, item: _Settlement) -> bool:
        """Under gevent: `item` joins the queue, written with whatever else comes in the next
        `seconds` in one transaction (see SETTLE_GATHER_SECONDS); False elsewhere (the caller
        settles it now)."""
        if not hub.on_gevent():
            return False
        self._pending.append(item)
        if self._timer is not None and self._due <= time.monotonic() + seconds:
            return True  # a flush comes soon enough
        if self._timer is not None:
            self._timer.cancel()  # a later one: this one writes all that waits
        self._flush_later(seconds)
        return True

    # --- the rows of unbudgeted requests, and settlements kept, in batches -----------------------

    def _queue(self, row: dict) -> None:
        self._pending.append(row)
        if len(self._pending) >= LEDGER_BATCH and not self._flushing:
            self.flush()
        elif self._timer is None:
            self._flush_later(LEDGER_FLUSH_SECONDS)

    def _flush_later(self, seconds: float) -> None:
        """A flush in `seconds` (a greenlet under gevent). Two threads racing here make two
        timers; the later flush finds less, or nothing, to write."""
        self._due = time.monotonic() + seconds
        self._timer = hub.later(seconds, self.flush)
        if self._timer is None:  # no gevent: a thread of its own
            self._timer = timer = threading.Timer(seconds, self.flush)
            timer.daemon = True
            timer.start()

    def flush(self) -> int:
        """Write the rows waiting, and the settlements kept, in one transaction; how many."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # harmless from the timer's own flush
        batch: list = []
        while len(batch) < LEDGER_PENDING_MAX:
            try:
                batch.append(self._pending.popleft())  # atomic: rows queued meanwhile stay
            except IndexError:
                break
        if not batch:
            return 0
        self._flushing = True  # a row queued meanwhile waits for the timer, not a nested flush
        try:
            return self._write_batch(batch)
        finally:
            self._flushing = False

    def _write_batch(self, batch: list) -> int:
        """`batch` (rows and settlements) in one transaction; how many were written. A batch
        the database could not take now is kept; one it refused for good is written one at a
        time (`_one_at_a_time`)."""
        rows = [item for item in batch if isinstance(item, dict)]
        settlements = [item for item in batch if isinstance(item, _Settlement)]
        try:
            self._write(settlements, rows)
        except Exception as exc:  # noqa: BLE001 - kept, or each tried alone
            if isinstance(exc, DatabaseError) and exc.transient:
                self._keep_all(batch, exc)
                return 0
            return self._one_at_a_time(batch, exc)
        kept = [item.request_id for item in settlements if item.kept]
        if kept:
            log.warning("ledger: %d settlement(s) kept through a database failure written: "
                        "requests %s", len(kept), ", ".join(kept))
        return len(batch)

    def _one_at_a_time(self, batch: list, exc: Exception) -> int:
        """A batch refused by something trying again will not cure: each item in a transaction
        of its own, so that one row the database (or its driver) refuses holds up no other.
        An item refused alone while others were written is left out and logged with its
        request (an open row of it is settled by the sweep at what it reserved). When the
        first few are refused and none written, the database refuses everything (full,
        read-only): the batch is kept whole, but for the items its driver could not even send.
        How many were written."""
        log.warning("ledger: a batch of %d rows was refused (%s: %s); writing them one at a "
                    "time", len(batch), type(exc).__name__, exc)
        written, kept, refused = 0, [], []
        for i, item in enumerate(batch):
            if not written and len(kept) + len(refused) >= PROBE_ALONE:
                kept += [(rest, exc) for rest in batch[i:]]
                break
            try:
                self._write([item]) if isinstance(item, _Settlement) else self._write([], [item])
                written += 1
            except DatabaseError as err:
                (kept if err.transient else refused).append((item, err))
            except Exception as err:  # noqa: BLE001 - a row the driver cannot send: never
                refused.append((item, err))
        if not written:  # the database's own refusals: kept, with the rest
            kept += [(item, err) for item, err in refused if isinstance(err, DatabaseError)]
            refused = [(item, err) for item, err in refused if not isinstance(err, DatabaseError)]
        for item, err in refused:
            log.error("ledger: request %s: its row was refused and is left out (%s: %s)%s",
                      item.request_id if isinstance(item, _Settlement) else item["request_id"],
                      type(err).__name__, err, "; its reservation is settled by the sweep "
                      "at what it held" if isinstance(item, _Settlement) else "")
            if self.metrics is not None and isinstance(item, _Settlement):
                self.metrics.settlement_failed()
        if kept:  # in the order they came
            keep = {id(item) for item, _ in kept}
            self._keep_all([item for item in batch if id(item) in keep], kept[0][1])
        return written

    def _keep_all(self, batch: list, exc: Exception) -> None:
        """`batch` back at the head of the queue, tried again in a few seconds (the oldest
        dropped past LEDGER_PENDING_MAX, saying which requests were never settled)."""
        for item in batch:
            if isinstance(item, _Settlement) and not item.kept:  # told as `_keep` tells
                log.warning("ledger: request %s not settled yet (kept, tried again): %s",
                            item.request_id, exc)
        batch = [replace(item, kept=True) if isinstance(item, _Settlement) else item
                 for item in batch]
        self._pending.extendleft(reversed(batch))
        over = len(self._pending) - LEDGER_PENDING_MAX
        dropped = [self._pending.popleft() for _ in range(max(0, over))]
        lost = [item.request_id for item in dropped if isinstance(item, _Settlement)]
        log.error("ledger: %d rows not written yet (kept, tried again): %s%s%s",
                  len(batch), exc, f"; the {over} oldest dropped" if over > 0 else "",
                  f"; never settled: requests {', '.join(lost)}" if lost else "")
        if self._timer is None:
            self._flush_later(LEDGER_FLUSH_SECONDS * 4)

    def sweep(self) -> int:
        """Settle open rows past their expiry at what they reserved; delete old ledger rows
        (what they charged each counter is added to its `carried`, so the budget check still
        adds up) and ended counters. How many rows were settled."""
        now = self.clock()
        settled = 0
        try:
            with self.db.read() as conn:
                stale = conn.execute(sa.select(ledger.c.id, ledger.c.request_id, ledger.c.holds)
                                     .where(ledger.c.state == "open", ledger.c.expires < now)
                                     .order_by(ledger.c.id).limit(SWEEP_BATCH)).all()
            items = []
            for row in stale:
                counters = [(budget_id, key, held, held)
                            for budget_id, key, _, held in _in_order(json.loads(row.holds or
                                                                                "[]"))]
                items.append(_Settlement(row.id, row.request_id, {
                    "finished": now, "charges": json.dumps([(b, k, c) for b, k, _, c
                                                            in counters])}, counters))
            if items:
                settled = self._write(items)
            self._forget(now)
        except DatabaseError as exc:
            log.warning("ledger sweep failed: %s", exc)
        if settled:
            log.warning("ledger: %d reservation(s) of a worker that stopped were settled at "
                        "their worst case", settled)
        return settled

    def _forget(self, now: float) -> None:
        """Delete ledger rows older than LEDGER_DAYS (a batch at a time), carrying what they
        charged into their counters, and counters of minutes that ended an hour ago."""
        with self.db.write() as conn:
            old = conn.execute(sa.select(*_CHARGE_COLUMNS).where(
                ledger.c.created < now - self.ledger_days * 86400,
                ledger.c.state == "settled").order_by(ledger.c.id).limit(5000)).all()
            carry: dict[tuple[int, str], int] = collections.defaultdict(int)
            for row in old:
                for budget_id, key, charged in charges(row):
                    carry[(budget_id, key)] += charged
            for (budget_id, key), amount in sorted(carry.items()):  # the one lock order
                if amount:  # (a counter deleted meanwhile has nothing to carry it)
                    conn.execute(budget_counters.update().where(
                        budget_counters.c.budget_id == budget_id,
                        budget_counters.c.window_key == key).values(
                        carried=budget_counters.c.carried + amount))
            if old:
                conn.execute(ledger.delete().where(ledger.c.id.in_([row.id for row in old])))
            conn.execute(budget_counters.delete().where(
                budget_counters.c.ends < now - 3600, budget_counters.c.reserved == 0,
                budget_counters.c.window_key.like("m:%")))

    # --- is every counter what the ledger says? ------------------------------------------------

    def check(self) -> list[Drift]:
        """Every counter compared with the ledger, at one moment: `spent` must be what its
        settled rows charged it (plus `carried`, the charges of rows since deleted), and
        `reserved` what its open rows hold. The counters that differ."""
        self.flush()
        spent: dict[tuple[int, str], int] = collections.defaultdict(int)
        reserved: dict[tuple[int, str], int] = collections.defaultdict(int)
        with self.db.snapshot() as conn:
            counters = conn.execute(sa.select(
                budget_counters.c.budget_id, budget_counters.c.window_key,
                budget_counters.c.spent, budget_counters.c.reserved, budget_counters.c.carried,
                budgets.c.scope, budgets.c.unit, budgets.c.period).join(
                budgets, budgets.c.id == budget_counters.c.budget_id).order_by(
                budget_counters.c.budget_id, budget_counters.c.window_key)).all()
            rows = conn.execution_options(yield_per=2000).execute(
                sa.select(ledger.c.state, *_CHARGE_COLUMNS).where(ledger.c.holds.is_not(None)))
            for row in rows:
                if row.state == "open":
                    for budget_id, key, _, held in json.loads(row.holds):
                        reserved[(budget_id, key)] += held
                else:
                    for budget_id, key, charged in charges(row):
                        spent[(budget_id, key)] += charged
        return [Drift(c.budget_id, f"{c.scope}.{c.unit}.{c.period}", c.window_key, c.spent,
                      c.reserved, c.carried + spent[(c.budget_id, c.window_key)],
                      reserved[(c.budget_id, c.window_key)])
                for c in counters
                if (c.spent, c.reserved) != (c.carried + spent[(c.budget_id, c.window_key)],
                                             reserved[(c.budget_id, c.window_key)])]

    def reservations(self) -> tuple[int, dict[str, int]]:
        """For the metrics, read from the database (every worker and instance agree): the
        open ledger rows, and per unit how far the counters' reservations are from what those
        rows hold (0 when they agree). Cheap: open rows, and counters holding something (an
        index of its own)."""
        with self.db.snapshot() as conn:
            held_rows = conn.execute(sa.select(ledger.c.holds).where(
                ledger.c.state == "open")).scalars().all()
            counters = conn.execute(sa.select(
                budget_counters.c.budget_id, budget_counters.c.window_key,
                budget_counters.c.reserved, budgets.c.unit).join(
                budgets, budgets.c.id == budget_counters.c.budget_id).where(
                budget_counters.c.reserved != 0)).all()
        expected: dict[tuple[int, str], int] = collections.defaultdict(int)
        units = {}
        for holds in held_rows:
            for budget_id, key, unit, held in json.loads(holds or "[]"):
                expected[(budget_id, key)] += held
                units[(budget_id, key)] = unit
        drift = dict.fromkeys(UNITS, 0)
        for counter in counters:
            key = (counter.budget_id, counter.window_key)
            drift[counter.unit] = drift.get(counter.unit, 0) + abs(
                counter.reserved - expected.pop(key, 0))
        for key, held in expected.items():  # held by open rows, reserved by no counter
            drift[units[key]] = drift.get(units[key], 0) + abs(held)
        return len(held_rows), drift

    # --- the budgets themselves ------------------------------------------------------------------

    def set_budget(self, scope: str, subject_id: int, unit: str, period: str,
                   limit: int) -> Budget:
        """Make a budget, or change its limit (one per scope, subject, unit and period)."""
        if scope not in SCOPES or unit not in UNITS or period not in PERIODS:
            raise BadRequest(f"a budget is one of {SCOPES} x {UNITS} x {PERIODS}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**62:
            raise BadRequest("a budget's limit is a whole number, at least 0", field="limit")
        subject_id = 0 if scope == "service" else subject_id
        where = (budgets.c.scope == scope, budgets.c.subject_id == subject_id,
                 budgets.c.unit == unit, budgets.c.period == period)
        with self.db.write() as conn:
            changed = conn.execute(budgets.update().where(*where).values(amount_limit=limit))
            if changed.rowcount == 0:
                conn.execute(budgets.insert().values(scope=scope, subject_id=subject_id,
                                                     unit=unit, period=period,
                                                     amount_limit=limit, created=self.clock()))
            row = conn.execute(sa.select(budgets).where(*where)).first()
        self._cache.clear()
        return Budget(row.id, row.scope, row.subject_id, row.unit, row.period, row.amount_limit)

    def delete_budget(self, budget_id: int) -> None:
        with self.db.write() as conn:
            conn.execute(budget_counters.delete().where(budget_counters.c.budget_id == budget_id))
            done = conn.execute(budgets.delete().where(budgets.c.id == budget_id))
        if done.rowcount != 1:
            raise NotFound(f"no budget with id {budget_id}", code="unknown_budget")
        self._cache.clear()

    def list_budgets(self) -> list[Budget]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(budgets).order_by(budgets.c.id)).all()
        return [Budget(r.id, r.scope, r.subject_id, r.unit, r.period, r.amount_limit)
                for r in rows]

    # --- what people see ------------------------------------------------------------------------

    def standing(self, applying: list[Budget]) -> list[dict]:
        """Each budget with its current period's spend, what is reserved and left, and when
        it resets."""
        now = self.clock()
        found = []
        with self.db.read() as conn:
            for budget in applying:
                key, ends = window(budget.period, now, self.tz)
                row = conn.execute(sa.select(budget_counters.c.spent, budget_counters.c.reserved)
                                   .where(budget_counters.c.budget_id == budget.id,
                                          budget_counters.c.window_key == key)).first()
                spent, reserved = (row.spent, row.reserved) if row is not None else (0, 0)
                show = dollars if budget.unit == "usd" else (lambda v: v)
                found.append({**budget.public(), "spent": show(spent),
                              "reserved": show(reserved),
                              "left": show(max(0, budget.limit - spent - reserved)),
                              "resets_at": _iso(ends) if ends else None})
        return found

    def spend_by_day(self, *, user_id: int | None = None, key_id: int | None = None,
                     days: int = 31) -> list[dict]:
        """Spend per day and model over the last `days` calendar days in BUDGET_TZ (today
        included), summed by the database (`usage`)."""
        from .usage import Filter

        today = self.usage.local_day(self.clock())
        return self.usage.by_day(first=today - dt.timedelta(days=days - 1), last=today,
                                 where=Filter(user_id=user_id, key_id=key_id))

    LEDGER_COLUMNS = ("id", "request_id", "created", "finished", "user_id", "key_id", "door",
                      "model", "role", "upstream", "prompt_tokens", "completion_tokens",
                      "images", "cost", "outcome", "duration_ms", "ttft_ms", "state")

    def rows(self, *, user_id: int | None = None, key_id: int | None = None,
             since: float | None = None, until: float | None = None,
             limit: int | None = None) -> Iterator[dict]:
        """Ledger rows, oldest first (streamed: an export of a year reads in batches)."""
        self.flush()
        query = sa.select(*[ledger.c[name] for name in self.LEDGER_COLUMNS])
        for column, value in ((ledger.c.user_id, user_id), (ledger.c.key_id, key_id)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(ledger.c.created >= since)
        if until is not None:
            query = query.where(ledger.c.created < until)
        query = query.order_by(ledger.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as conn:
            result = conn.execution_options(yield_per=500).execute(query)
            for row in result:
                item = dict(row._mapping)
                item["created"] = _iso(item["created"])
                item["finished"] = _iso(item["finished"]) if item["finished"] else None
                item["cost"] = dollars(item["cost"])
                yield item


_CHARGE_COLUMNS = (ledger.c.id, ledger.c.holds, ledger.c.charges, ledger.c.outcome,
                   ledger.c.prompt_tokens, ledger.c.completion_tokens, ledger.c.cost)


def charges(row) -> list[tuple[int, str, int]]:
    """What a settled ledger row charged each counter: (budget, window, amount). Rows settled
    before the ledger kept it (schema 4) are worked out from their columns, by the rules
    settlement followed."""
    if row.charges:
        return [tuple(item) for item in json.loads(row.charges)]
    found = []
    for budget_id, key, unit, held in json.loads(row.holds or "[]"):
        if row.outcome == "expired":
            charged = held
        elif unit == "tokens":
            charged = (row.prompt_tokens or 0) + (row.completion_tokens or 0)
        elif unit == "requests":
            charged = 0 if row.outcome == "failed" else 1
        else:
            charged = row.cost or 0
        found.append((budget_id, key, charged))
    return found


_instances: weakref.WeakSet[Budgets] = weakref.WeakSet()


@atexit.register
def flush_all() -> None:
    """Write every batch of ledger rows still waiting in this process (a graceful stop)."""
    for budgets_ in list(_instances):
        try:
            budgets_.flush()
        except Exception:  # noqa: BLE001 - at exit: tell, and go on to the next
            log.exception("ledger: rows not written at exit")


def parse_limit(unit: str, value: object) -> int:
    """A limit as given by a person (dollars for `usd`) -> the stored whole number."""
    from ..base.prices import NANO, PriceError, parse_dollars

    if unit == "usd":
        try:
            return int(parse_dollars(value, "the limit") * NANO)
        except PriceError as exc:
            raise BadRequest(str(exc), field="limit") from None
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise BadRequest(f"a {unit} limit is a whole number", field="limit")
    try:
        number = int(str(value))
    except ValueError:
        raise BadRequest(f"a {unit} limit is a whole number", field="limit") from None
    if number < 0:
        raise BadRequest("a limit is at least 0", field="limit")
    return number
