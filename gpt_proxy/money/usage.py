"""What the ledger adds up to, for the console and `/api/usage`: spend, tokens and requests
per day (in BUDGET_TZ), split by model, key or user; the service's overview (today, this
month, percentiles of duration and time to first token, the top spenders); a filtered page of
the ledger; each upstream's recent figures. Over `db`; knows nothing of HTTP.

The rules it follows:
- Every sum is made by the database (GROUP BY), never by reading ledger rows into Python.
  Only settled rows count (an open row's cost is not known yet); an unpriced row costs 0.
- Days are calendar days in BUDGET_TZ, the zone budgets reset in (23 or 25 hours across a
  daylight-saving change): a row's day comes from a CASE over the days' boundaries worked out
  in Python by `zoneinfo` (SQLite has no time zones), a binary tree of comparisons.
- Rollups, not a write per request: settled rows are summed per day into four small tables
  (by user, key and model together; by model; by user; by key) by `refresh`, in chunks, when
  someone reads (the console), never at settlement, so a request costs no extra statement
  (issue 30 counts what each request costs). A settled row never changes, so a row once
  folded in stays right. `usage_state.watermark` says how far the rollups reach: every ledger
  row with an id up to it is in them, and a query adds the rows above it read live from the
  ledger, in the same snapshot. The watermark stops before the first row still open (a reply
  under way, or one a dead worker left until the sweep settles it), so a row settled late is
  read live until it is folded in. On PostgreSQL an id can become visible after a higher one
  (transactions commit out of order), so the rollups only reach ids that existed
  COMMIT_MARGIN seconds before (`candidate`); on SQLite a writer holds the database's lock
  until it commits, so every id below the highest one seen is already there.
- A change of BUDGET_TZ rebuilds the rollups (their days were another zone's); rows past
  LEDGER_DAYS leave the rollups as the sweep deletes them from the ledger (a whole day at a
  time).
- Percentiles are nearest-rank: PostgreSQL's `percentile_disc`, on SQLite the value at that
  offset of the rows in order (today's rows only: a few thousand).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..base.prices import dollars
from ..storage.db import Database, usage_state

EPOCH = dt.date(1970, 1, 1)
MAX_DAYS = 400  # the widest range a chart may ask for
COMMIT_MARGIN = 120.0  # PostgreSQL: ids older than this are committed or never will be
CHUNK_IDS = 20_000  # ledger ids folded per transaction (SQLite's write lock is held meanwhile)
REFRESH_EVERY = 10.0  # seconds between two refreshes in one process
REFRESH_SECONDS = 0.5  # the most one read spends folding a backlog (the rest is read live)
ERROR = "(outcome LIKE 'error:%' OR outcome IN ('failed', 'expired'))"
# `state = 'settled'` written so that no planner reads it through the index of open rows
# (SQLite without statistics takes any equality on an indexed column for a selective one)
SETTLED = "state || '' = 'settled'"

# The rollup tables: their columns besides `day`, and what each column is in the ledger.
ROLLUPS: dict[str, tuple[str, ...]] = {
    "usage_days": ("user_id", "key_id", "model"),
    "usage_days_model": ("model",),
    "usage_days_user": ("user_id",),
    "usage_days_key": ("key_id", "user_id"),
    "usage_weeks_key": ("key_id", "user_id"),  # their `day` is the week: day // 7
    "usage_weeks_user": ("user_id",),
}
WEEKLY = {"usage_days_key": "usage_weeks_key", "usage_days_user": "usage_weeks_user"}
LEDGER_DIM = {"user_id": "COALESCE(user_id, 0)", "key_id": "COALESCE(key_id, 0)",
              "model": "model"}
SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost")
LEDGER_SUMS = ("COUNT(*)", "COALESCE(SUM(prompt_tokens), 0)",
               "COALESCE(SUM(completion_tokens), 0)", "COALESCE(SUM(cost), 0)")
BY_COLUMN = {"model": "model", "key": "key_id", "user": "user_id"}


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_date(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=number)


@dataclass(frozen=True)
class Filter:
    """Which rows: one user's, one key's (None: any)."""

    user_id: int | None = None
    key_id: int | None = None

    def ledger(self) -> tuple[str, dict]:
        """For the rows above the watermark (read by id: `+ 0` keeps other indexes out)."""
        parts, params = [], {}
        if self.user_id is not None:
            parts.append("user_id + 0 = :f_user")
            params["f_user"] = self.user_id
        if self.key_id is not None:
            parts.append("key_id + 0 = :f_key")
            params["f_key"] = self.key_id
        return "".join(f" AND {p}" for p in parts), params

    def rollup(self) -> str:
        return "".join(f" AND {column} = :{name}" for column, name, value in (
            ("user_id", "f_user", self.user_id), ("key_id", "f_key", self.key_id))
            if value is not None)


class Usage:
    """The ledger's aggregations, over the rollups and the rows not yet in them."""

    def __init__(self, db: Database, *, tz: str = "UTC", ledger_days: float = 400.0,
                 clock: Callable[[], float] = time.time,
                 flush: Callable[[], object] | None = None) -> None:
        self.db = db
        self.commit_margin = COMMIT_MARGIN
        self.tz_name = tz
        self.tz = ZoneInfo(tz)
        self.ledger_days = ledger_days
        self.clock = clock
        self.flush = flush or (lambda: None)  # write this process's waiting ledger rows
        self._refreshed = float("-inf")

    # --- days ---------------------------------------------------------------------------------

    def local_day(self, moment: float) -> dt.date:
        return dt.datetime.fromtimestamp(moment, self.tz).date()

    def day_start(self, day: dt.date) -> float:
        """When `day` begins in BUDGET_TZ (a midnight a clock change skips: its first moment)."""
        start = dt.datetime(day.year, day.month, day.day, tzinfo=self.tz)
        moment = start.timestamp()
        if self.local_day(moment) != day:  # midnight did not exist: the day began later
            moment = dt.datetime(day.year, day.month, day.day, 1, tzinfo=self.tz).timestamp()
        return moment

    def _day_case(self, first: dt.date, last: dt.date) -> str:
        """SQL giving a ledger row's day number from `created`, for rows from the start of
        `first` to the end of `last`: a binary tree of comparisons with the days' starts
        (our own numbers, never a client's text)."""
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        starts = [self.day_start(d) for d in days]

        def tree(i: int, j: int) -> str:
            if j - i == 1:
                return str(day_number(days[i]))
            mid = (i + j) // 2
            return (f"CASE WHEN created < {starts[mid]!r} THEN {tree(i, mid)} "
                    f"ELSE {tree(mid, j)} END")
        return tree(0, len(days))

    # --- reading in one snapshot -------------------------------------------------------------

    @contextmanager
    def _snapshot(self) -> Iterator[tuple[Connection, int]]:
        """A connection whose statements all see the same database, and the watermark."""
        self.maybe_refresh()
        with self.db.read() as conn:
            if self.db.dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            else:
                conn.exec_driver_sql("BEGIN")
            try:
                mark = conn.execute(sa.text(
                    "SELECT watermark, tz FROM usage_state WHERE name = 'days'")).first()
                watermark = mark[0] if mark is not None and mark[1] == self.tz_name else 0
                yield conn, watermark
            finally:
                conn.rollback()

    # --- the rollups ---------------------------------------------------------------------------

    def maybe_refresh(self) -> None:
        """`refresh` at most every REFRESH_EVERY seconds in this process."""
        self.flush()
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_EVERY:
            self._refreshed = now
            self.refresh(seconds=REFRESH_SECONDS)

    def refresh(self, seconds: float | None = None) -> int:
        """Fold settled ledger rows into the rollups, a chunk per transaction, for at most
        `seconds` (None: until done); how many ledger ids were covered."""
        deadline = None if seconds is None else time.monotonic() + seconds
        covered = 0
        for _ in range(100_000):  # bounded: each step covers up to CHUNK_IDS ids or stops
            done = self._step()
            if done <= 0:
                break
            covered += done
            if deadline is not None and time.monotonic() >= deadline:
                break
        return covered

    def _step(self) -> int:
        now = self.clock()
        sqlite = self.db.dialect != "postgresql"
        with self.db.write() as conn:
            state = conn.execute(sa.select(usage_state).where(usage_state.c.name == "days")
                                 .with_for_update()).first()
            highest = conn.execute(sa.text("SELECT MAX(id) FROM ledger")).scalar() or 0
            if state is None or state.tz != self.tz_name:
                for table in ROLLUPS:
                    conn.execute(sa.text(f"DELETE FROM {table}"))
                conn.execute(usage_state.delete().where(usage_state.c.name == "days"))
                conn.execute(usage_state.insert().values(
                    name="days", tz=self.tz_name, watermark=0, candidate=highest,
                    candidate_at=now))
                self._prune(conn, now)
                return 1 if highest else 0
            mark, candidate, candidate_at = state.watermark, state.candidate, state.candidate_at
            if sqlite:
                candidate, candidate_at = highest, now  # see the module's rules
            elif mark >= candidate and candidate_at <= now - self.commit_margin:
                conn.execute(usage_state.update().where(usage_state.c.name == "days").values(
                    candidate=highest, candidate_at=now))
                self._prune(conn, now)
                return 0
            if candidate_at > now - self.commit_margin and not sqlite:
                return 0
            # through the index of open rows, a few (`MIN(id)` alone would walk the ids)
            first_open = conn.execute(sa.text(
                "SELECT MIN(id + 0) FROM ledger WHERE state = 'open'")).scalar()
            top = min(candidate, mark + CHUNK_IDS,
                      first_open - 1 if first_open is not None else candidate)
            if top <= mark:
                return 0
            span = conn.execute(sa.text(
                "SELECT MIN(created + 0), MAX(created + 0) FROM ledger "
                "WHERE id > :mark AND id <= :top"),
                {"mark": mark, "top": top}).first()
            if span[0] is not None:
                case = self._day_case(self.local_day(span[0]), self.local_day(span[1]))
                for table, dims in ROLLUPS.items():
                    bucket = f"({case}) / 7" if table in WEEKLY.values() else case
                    conn.execute(sa.text(self._fold_sql(table, dims, bucket)),
                                 {"mark": mark, "top": top})
            moved = conn.execute(usage_state.update().where(
                usage_state.c.name == "days", usage_state.c.watermark == mark).values(
                watermark=top, candidate=candidate, candidate_at=candidate_at))
            if moved.rowcount != 1:
                raise RuntimeError("usage rollups: the watermark moved under its lock")
            return top - mark

    @staticmethod
    def _fold_sql(table: str, dims: tuple[str, ...], case: str) -> str:
        columns = ", ".join(("day", *dims, *SUMS))
        picked = ", ".join((case, *(LEDGER_DIM[d] for d in dims), *LEDGER_SUMS))
        groups = ", ".join(str(i) for i in range(1, len(dims) + 2))
        keys = ", ".join(("day", *dims))
        adds = ", ".join(f"{s} = {table}.{s} + excluded.{s}" for s in SUMS)
        return (f"INSERT INTO {table} ({columns}) SELECT {picked} FROM ledger "
                f"WHERE id > :mark AND id <= :top AND {SETTLED} GROUP BY {groups} "
                f"ON CONFLICT ({keys}) DO UPDATE SET {adds}")

    def _prune(self, conn: Connection, now: float) -> None:
        """Days wholly past LEDGER_DAYS (the sweep deletes their rows) leave the rollups."""
        cutoff = day_number(self.local_day(now - self.ledger_days * 86400))
        for table in ROLLUPS:
            conn.execute(sa.text(f"DELETE FROM {table} WHERE day < :cutoff"),
                         {"cutoff": cutoff // 7 if table in WEEKLY.values() else cutoff})

    # --- sums per day ----------------------------------------------------------------------------

    def _union(self, table: str, group: str | None, first: dt.date, last: dt.date,
               where: Filter, extra: str = "") -> tuple[str, dict]:
        """The rollup's rows and the live ledger rows of the days `first`..`last`, as one
        derived table (day, g, requests, prompt_tokens, completion_tokens, cost)."""
        rollup_group = group or "0"
        live_group = LEDGER_DIM[group] if group else "0"
        ledger_where, params = where.ledger()
        params.update({"d0": day_number(first), "d1": day_number(last),
                       "lo": self.day_start(first),
                       "hi": self.day_start(last + dt.timedelta(days=1))})
        rollup_extra = extra.replace("{g}", rollup_group)
        live_extra = extra.replace("{g}", live_group)
        sql = (f"SELECT day, {rollup_group} AS g, requests, prompt_tokens, completion_tokens, "
               f"cost FROM {table} WHERE day >= :d0 AND day <= :d1{where.rollup()}"
               f"{rollup_extra} UNION ALL "
               f"SELECT {self._day_case(first, last)} AS day, {live_group} AS g, 1, "
               "COALESCE(prompt_tokens, 0), COALESCE(completion_tokens, 0), COALESCE(cost, 0) "
               f"FROM ledger WHERE id > :mark AND {SETTLED} AND created + 0 >= :lo "
               f"AND created + 0 < :hi{ledger_where}{live_extra}")
        return sql, params

    def _ranking(self, table: str, group: str, first: dt.date, last: dt.date,
                 where: Filter) -> tuple[str, dict]:
        """Like `_union` (its `day` meaningless), for ranking series over the range: keys
        and users from the weekly rollup for the whole weeks in it, from the daily one for
        the days at either end (a 90-day range: 12 weeks and up to 12 days, a fraction of
        the rows)."""
        union, params = self._union(table, group, first, last, where)
        weekly = WEEKLY.get(table)
        d0, d1 = day_number(first), day_number(last)
        w0, w1 = -(-d0 // 7), (d1 + 1) // 7 - 1  # the whole weeks inside
        if weekly is None or w0 > w1 or (table == "usage_days_user" and where.user_id):
            return union, params
        head, live = union.split(" UNION ALL ", 1)
        days = head.replace("WHERE day >= :d0 AND day <= :d1",
                            "WHERE ((day >= :d0 AND day < :e0) OR (day > :e1 AND day <= :d1))")
        weeks = head.replace(f"FROM {table} WHERE day >= :d0 AND day <= :d1",
                             f"FROM {weekly} WHERE day >= :w0 AND day <= :w1")
        params.update({"w0": w0, "w1": w1, "e0": w0 * 7, "e1": w1 * 7 + 6})
        return f"{weeks} UNION ALL {days} UNION ALL {live}", params

    @staticmethod
    def _table(by: str | None, where: Filter) -> str:
        """The smallest rollup that holds the grouping and the filters."""
        if where.key_id is not None:
            return "usage_days"
        if by == "model":
            return "usage_days" if where.user_id is not None else "usage_days_model"
        if by == "key":
            return "usage_days_key"
        if by == "user":
            return "usage_days_user"
        return "usage_days_user" if where.user_id is not None else "usage_days_model"

    def series(self, *, first: dt.date, last: dt.date, by: str, where: Filter = Filter(),
               limit: int = 10) -> dict:
        """Per day from `first` to `last`, split by `by` (model, key or user): the `limit`
        series that cost most (then most requests), the rest summed as one `other` series."""
        group = BY_COLUMN[by]
        table = self._table(by, where)
        sums = ", ".join(f"SUM({s})" for s in SUMS)
        with self._snapshot() as (conn, mark):
            union, params = self._ranking(table, group, first, last, where)
            params["mark"] = mark
            ranked = conn.execute(sa.text(
                f"SELECT g, {sums} FROM ({union}) AS u GROUP BY g "
                "ORDER BY SUM(cost) DESC, SUM(requests) DESC, g LIMIT :limit"),
                {**params, "limit": limit}).all()
            names = [row[0] for row in ranked]
            per_day: dict[object, dict[int, tuple]] = {name: {} for name in names}
            if names:
                marks = ", ".join(f":n{i}" for i in range(len(names)))
                union, params = self._union(table, group, first, last, where,
                                            f" AND {{g}} IN ({marks})")
                params.update({"mark": mark, **{f"n{i}": n for i, n in enumerate(names)}})
                for row in conn.execute(sa.text(
                        f"SELECT g, day, {sums} FROM ({union}) AS u GROUP BY g, day"), params):
                    per_day[row[0]][int(row[1])] = tuple(int(v) for v in row[2:])
            union, params = self._union(self._table(None, where), None, first, last, where)
            params["mark"] = mark
            totals = {int(row[0]): tuple(int(v) for v in row[1:]) for row in conn.execute(sa.text(
                f"SELECT day, {sums} FROM ({union}) AS u GROUP BY day"), params)}
            labels = self._labels(conn, by, names)
        numbers = [day_number(first) + i for i in range((last - first).days + 1)]
        zero = (0, 0, 0, 0)
        out = []
        for name in names:
            out.append(_series(*labels[name], [per_day[name].get(d, zero) for d in numbers]))
        rest = [tuple(t - sum(per_day[n].get(d, zero)[k] for n in names)
                      for k, t in enumerate(totals.get(d, zero))) for d in numbers]
        if any(any(values) for values in rest):
            other = _series("other", None, rest)
            other["other"] = True
            out.append(other)
        all_days = [totals.get(d, zero) for d in numbers]
        total = [sum(values[k] for values in all_days) for k in range(4)]
        return {"from": first.isoformat(), "to": last.isoformat(), "tz": self.tz_name,
                "by": by, "days": [day_date(d).isoformat() for d in numbers], "series": out,
                "totals": {"requests": total[0], "tokens": total[1] + total[2],
                           "prompt_tokens": total[1], "completion_tokens": total[2],
                           "cost": dollars(total[3])}}

    def _labels(self, conn: Connection, by: str, names: list) -> dict[object, tuple]:
        """(name, id) of each series: a model's name; a key's or user's name and id."""
        if by == "model":
            return {name: (name, None) for name in names}
        ids = [n for n in names if n]
        found: dict[int, str] = {}
        if ids:
            table, column = ("api_keys", "name") if by == "key" else ("users", "username")
            marks = ", ".join(f":i{i}" for i in range(len(ids)))
            found = {row[0]: row[1] for row in conn.execute(sa.text(
                f"SELECT id, {column} FROM {table} WHERE id IN ({marks})"),
                {f"i{i}": n for i, n in enumerate(ids)})}
        missing = "(no key)" if by == "key" else "(no user)"
        return {n: (found.get(n, f"#{n}") if n else missing, n or None) for n in names}

    def by_day(self, *, first: dt.date, last: dt.date, where: Filter = Filter()) -> list[dict]:
        """Rows of (day, model) with their sums, as `/api/usage` gives them (`by_day`)."""
        table = "usage_days" if where.user_id is not None or where.key_id is not None \
            else "usage_days_model"
        sums = ", ".join(f"SUM({s})" for s in SUMS)
        with self._snapshot() as (conn, mark):
            union, params = self._union(table, "model", first, last, where)
            params["mark"] = mark
            rows = conn.execute(sa.text(
                f"SELECT day, g, {sums} FROM ({union}) AS u GROUP BY day, g ORDER BY day, g"),
                params).all()
        return [{"day": day_date(int(r[0])).isoformat(), "model": r[1], "requests": int(r[2]),
                 "prompt_tokens": int(r[3]), "completion_tokens": int(r[4]),
                 "cost": dollars(int(r[5]))} for r in rows]

    # --- the overview --------------------------------------------------------------------------

    def overview(self, top: int = 10) -> dict:
        """Today's and this month's figures, and this month's top users, keys and models."""
        now = self.clock()
        today = self.local_day(now)
        month_first = today.replace(day=1)
        since = self.day_start(today)
        sums = ", ".join(f"SUM({s})" for s in SUMS)
        with self._snapshot() as (conn, mark):
            row = conn.execute(sa.text(
                "SELECT COUNT(*), COALESCE(SUM(cost), 0), "
                f"COALESCE(SUM(CASE WHEN {ERROR} THEN 1 ELSE 0 END), 0), "
                "COUNT(DISTINCT user_id), COALESCE(SUM(prompt_tokens), 0) + "
                "COALESCE(SUM(completion_tokens), 0) FROM ledger "
                f"WHERE created >= :since AND {SETTLED}"), {"since": since}).first()
            requests, spend, errors, active, tokens = (int(v or 0) for v in row)
            today_figures = {
                "spend": dollars(spend), "requests": requests, "errors": errors,
                "error_rate": round(errors / requests, 4) if requests else 0.0,
                "p50_ms": None, "p95_ms": None, "ttft_p50_ms": None, "ttft_p95_ms": None,
                "active_users": active, "tokens": tokens}
            for column, names in (("duration_ms", ("p50_ms", "p95_ms")),
                                  ("ttft_ms", ("ttft_p50_ms", "ttft_p95_ms"))):
                found = self._percentiles(conn, column, since, (0.5, 0.95))
                today_figures.update(zip(names, found, strict=True))
            union, params = self._union("usage_days_model", None, month_first, today, Filter())
            params["mark"] = mark
            month = conn.execute(sa.text(f"SELECT {sums} FROM ({union}) AS u"), params).first()
            month = [int(v or 0) for v in month]
            tops = {}
            for by in ("user", "key", "model"):
                union, params = self._ranking(self._table(by, Filter()), BY_COLUMN[by],
                                              month_first, today, Filter())
                params.update({"mark": mark, "limit": top})
                known = " WHERE g <> 0" if by != "model" else ""
                tops[by] = conn.execute(sa.text(
                    f"SELECT g, {sums} FROM ({union}) AS u{known} GROUP BY g "
                    "ORDER BY SUM(cost) DESC, SUM(requests) DESC, g LIMIT :limit"),
                    params).all()
            users = self._names(conn, "users", "username",
                                [r[0] for r in tops["user"]])
            keys = self._keys(conn, [r[0] for r in tops["key"]])

        def figures(row) -> dict:
            return {"spend": dollars(int(row[4])), "requests": int(row[1]),
                    "tokens": int(row[2]) + int(row[3])}
        return {
            "tz": self.tz_name, "now": _iso(now), "today": today_figures,
            "month": {"spend": dollars(month[3]), "requests": month[0],
                      "tokens": month[1] + month[2]},
            "top_users": [{"id": r[0], "username": users.get(r[0]), **figures(r)}
                          for r in tops["user"]],
            "top_keys": [{"id": r[0], "name": keys.get(r[0], (None, None))[0],
                          "username": keys.get(r[0], (None, None))[1], **figures(r)}
                         for r in tops["key"]],
            "top_models": [{"model": r[0], **figures(r)} for r in tops["model"]]}

    def _percentiles(self, conn: Connection, column: str, since: float,
                     ranks: tuple[float, ...]) -> list[int | None]:
        """Nearest-rank percentiles of `column` over settled rows since `since`."""
        where = f"created >= :since AND {SETTLED} AND {column} IS NOT NULL"
        if self.db.dialect == "postgresql":
            picks = ", ".join(f"percentile_disc({p}) WITHIN GROUP (ORDER BY {column})"
                              for p in ranks)
            row = conn.execute(sa.text(f"SELECT {picks} FROM ledger WHERE {where}"),
                               {"since": since}).first()
            return [None if v is None else int(v) for v in row]
        count = conn.execute(sa.text(f"SELECT COUNT(*) FROM ledger WHERE {where}"),
                             {"since": since}).scalar()
        found: list[int | None] = []
        for p in ranks:
            if not count:
                found.append(None)
                continue
            value = conn.execute(sa.text(
                f"SELECT {column} FROM ledger WHERE {where} ORDER BY {column} "
                "LIMIT 1 OFFSET :offset"),
                {"since": since, "offset": max(0, math.ceil(p * count) - 1)}).scalar()
            found.append(int(value))
        return found

    @staticmethod
    def _names(conn: Connection, table: str, column: str, ids: list) -> dict:
        ids = [i for i in ids if i]
        if not ids:
            return {}
        marks = ", ".join(f":i{i}" for i in range(len(ids)))
        return {row[0]: row[1] for row in conn.execute(sa.text(
            f"SELECT id, {column} FROM {table} WHERE id IN ({marks})"),
            {f"i{i}": n for i, n in enumerate(ids)})}

    @staticmethod
    def _keys(conn: Connection, ids: list) -> dict[int, tuple[str, str]]:
        ids = [i for i in ids if i]
        if not ids:
            return {}
        marks = ", ".join(f":i{i}" for i in range(len(ids)))
        return {row[0]: (row[1], row[2]) for row in conn.execute(sa.text(
            "SELECT k.id, k.name, u.username FROM api_keys k LEFT JOIN users u "
            f"ON u.id = k.user_id WHERE k.id IN ({marks})"),
            {f"i{i}": n for i, n in enumerate(ids)})}

    # --- the ledger itself -------------------------------------------------------------------------

    LEDGER_COLUMNS = ("id", "request_id", "created", "finished", "user_id", "key_id", "door",
                      "model", "role", "upstream", "prompt_tokens", "completion_tokens",
                      "images", "cost", "outcome", "duration_ms", "ttft_ms", "state",
                      "username", "key_name")

    def ledger(self, filters: Mapping[str, object], *, offset: int = 0,
               limit: int | None = None) -> Iterator[dict]:
        """Ledger rows matching `filters` (since, until: times; user_id, key_id, model, door,
        outcome: equal), newest first, with the user's and key's names; streamed."""
        self.flush()
        clauses, params = [], {}
        for name, sql in (("since", "l.created >= :since"), ("until", "l.created < :until"),
                          ("user_id", "l.user_id = :user_id"), ("key_id", "l.key_id = :key_id"),
                          ("model", "l.model = :model"), ("door", "l.door = :door"),
                          ("outcome", "l.outcome = :outcome")):
            if filters.get(name) is not None:
                clauses.append(sql)
                params[name] = filters[name]
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        columns = ", ".join(f"l.{c}" for c in self.LEDGER_COLUMNS[:-2])
        sql = (f"SELECT {columns}, u.username, k.name FROM ledger l "
               "LEFT JOIN users u ON u.id = l.user_id LEFT JOIN api_keys k ON k.id = l.key_id"
               f"{where} ORDER BY l.created DESC, l.id DESC")
        if limit is not None:
            sql += " LIMIT :limit OFFSET :offset"
            params.update({"limit": limit, "offset": offset})
        with self.db.read() as conn:
            result = conn.execution_options(yield_per=500).execute(sa.text(sql), params)
            for row in result:
                item = dict(zip(self.LEDGER_COLUMNS, row, strict=True))
                item["created"] = _iso(item["created"])
                item["finished"] = _iso(item["finished"]) if item["finished"] else None
                item["cost"] = dollars(item["cost"])
                yield item

    # --- upstreams -----------------------------------------------------------------------------

    def upstreams(self, since: float) -> dict[str, dict]:
        """Per upstream, over settled rows since `since`: requests, errors, nearest-rank p50
        and p95 of duration, and the latest error outcome."""
        self.flush()
        found: dict[str, dict] = {}
        with self.db.read() as conn:
            for name, requests, errors in conn.execute(sa.text(
                    f"SELECT upstream, COUNT(*), SUM(CASE WHEN {ERROR} THEN 1 ELSE 0 END) "
                    f"FROM ledger WHERE created >= :since AND {SETTLED} "
                    "AND upstream IS NOT NULL GROUP BY upstream"), {"since": since}):
                found[name] = {"requests": int(requests), "errors": int(errors or 0)}
            for name, entry in found.items():
                where = (f"created >= :since AND {SETTLED} AND upstream = :name "
                         "AND duration_ms IS NOT NULL")
                count = conn.execute(sa.text(f"SELECT COUNT(*) FROM ledger WHERE {where}"),
                                     {"since": since, "name": name}).scalar()
                for label, p in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)):
                    entry[label] = None if not count else int(conn.execute(sa.text(
                        f"SELECT duration_ms FROM ledger WHERE {where} ORDER BY duration_ms "
                        "LIMIT 1 OFFSET :offset"), {"since": since, "name": name,
                                                    "offset": math.ceil(p * count) - 1}
                    ).scalar())
                entry["last_error"] = conn.execute(sa.text(
                    f"SELECT outcome FROM ledger WHERE created >= :since AND upstream = :name "
                    f"AND {ERROR} ORDER BY created DESC LIMIT 1"),
                    {"since": since, "name": name}).scalar()
        return found


def _series(name: str, ident: int | None, values: list[tuple]) -> dict:
    return {"name": name, "id": ident,
            "requests": [int(v[0]) for v in values],
            "prompt_tokens": [int(v[1]) for v in values],
            "completion_tokens": [int(v[2]) for v in values],
            "tokens": [int(v[1]) + int(v[2]) for v in values],
            "cost": [dollars(int(v[3])) for v in values]}


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def csv_chunks(rows: Iterable[Mapping], columns: Sequence[str],
               chunk_bytes: int = 65536) -> Iterator[bytes]:
    """Ledger rows as CSV (a header of `columns`, then a line per row), in UTF-8 chunks of
    about `chunk_bytes`: an export of a year streams without holding it."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[name] for name in columns])
        if out.tell() > chunk_bytes:
            yield out.getvalue().encode("utf-8")
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode("utf-8")
