"""The console's JSON routes (`console_api`) and the sums behind them (`usage`), on a real
SQLite file and a real PostgreSQL server: each total equals the ledger's own sums, days are
BUDGET_TZ days across a daylight-saving change, the rollups stay right when a row is settled
late, admins only where it says admin, a user sees only their own, bad parameters are 400/404,
the CSV is the JSON pages; and the time to first token reaches the ledger."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import time
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from gpt_proxy import create_app
from gpt_proxy.identity.callers import SESSION_COOKIE

from .conftest import make_config
from .fake_upstream import stream_scenario

TZ = "Europe/Berlin"
BERLIN = ZoneInfo(TZ)
TOKEN = "console-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MODELS = ("m-big", "m-small", "m-rare")


def local(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def last_autumn_change(now: float) -> dt.date:
    """The last Sunday of October (Berlin's clocks go back an hour) before today."""
    year = dt.datetime.fromtimestamp(now, BERLIN).year
    for y in (year, year - 1):
        day = dt.date(y, 10, 31)
        day -= dt.timedelta(days=(day.weekday() + 1) % 7)
        if local(f"{day}T23:59:59") < now - 86400:
            return day
    raise AssertionError("unreachable")


@pytest.fixture()
def console(upstream, database_url, tmp_path):
    """An app with AUTH=users over `database_url`, three users (ann, bob, root the admin)
    with a key each, and a client signed in as each."""
    app = create_app(make_config(openai_base_url=upstream.url, auth="users",
                                 database_url=database_url, budget_tz=TZ, proxy_token=TOKEN,
                                 conversation_store=f"sqlite:///{tmp_path}/c.db"))
    state = app.extensions["gpt_proxy"]
    state.budgets.usage.commit_margin = 0.0  # no writer runs beside the test's own
    accounts = state.accounts
    people = {}
    for name, admin in (("ann", False), ("bob", False), ("root", True)):
        user = accounts.create_user(name, "correct horse battery", admin=admin)
        key, _ = accounts.create_key(user.id, f"{name}-key")
        client = app.test_client()
        client.set_cookie(SESSION_COOKIE, accounts.new_session(user))
        people[name] = (user, key, client)
    yield app, state, people
    state.budgets.db.close()


def insert(state, rows: list[dict]) -> list[int]:
    """Ledger rows as given (settled unless they say otherwise); their ids."""
    ids = []
    with state.budgets.db.write() as conn:
        for n, row in enumerate(rows):
            values = {"request_id": f"t{n}", "door": "openai", "model": "m-big",
                      "state": "settled", "prompt_tokens": 10, "completion_tokens": 5,
                      "cost": 1000, "outcome": "ok", "duration_ms": 500, "ttft_ms": 100,
                      "user_id": None, "key_id": None, "upstream": "openai", **row}
            values.setdefault("finished", values["created"] + 1)
            names = ", ".join(values)
            ids.append(conn.execute(sa.text(
                f"INSERT INTO ledger ({names}) VALUES ({', '.join(':' + k for k in values)}) "
                "RETURNING id"), values).scalar())
    return ids


def ledger_sums(state, where: str = "1 = 1", params: dict | None = None) -> tuple:
    with state.budgets.db.read() as conn:
        row = conn.execute(sa.text(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cost), 0) FROM ledger "
            f"WHERE state = 'settled' AND {where}"), params or {}).first()
    return tuple(int(v) for v in row)


def totals(answer: dict) -> tuple:
    t = answer["totals"]
    return (t["requests"], t["prompt_tokens"], t["completion_tokens"],
            round(float(t["cost"]) * 1e9))


def spread(state, people, now: float, days: int = 60) -> None:
    """Rows over the last `days` days for ann (with and without her key), bob and nobody,
    every model, some failed, some unpriced."""
    ann, bob = people["ann"], people["bob"]
    rows = []
    for i in range(days * 3):
        created = now - 3600 - i * 86400 / 3
        who = (ann, bob, None)[i % 3]
        rows.append({"created": created, "model": MODELS[i % 7 % 3],
                     "user_id": who[0].id if who else None,
                     "key_id": who[1].id if who and i % 2 else None,
                     "prompt_tokens": 10 + i, "completion_tokens": i % 11,
                     "cost": None if i % 13 == 0 else 1000 * i,
                     "outcome": "failed" if i % 17 == 0 else "ok"})
    insert(state, rows)


# --- totals -------------------------------------------------------------------------------------

def test_series_totals_equal_the_ledgers_sums_and_usage_by_day(console):
    app, state, people = console
    usage = state.budgets.usage
    now = time.time()
    spread(state, people, now)
    today = usage.local_day(now)
    first = today - dt.timedelta(days=39)
    lo, hi = usage.day_start(first), usage.day_start(today + dt.timedelta(days=1))
    # the last minute before the first day (in BUDGET_TZ): 40 x 24 hours ago, not 40 days
    insert(state, [{"created": lo - 60, "user_id": people["ann"][0].id}])
    span = {"created >= :lo AND created < :hi": {"lo": lo, "hi": hi}}
    (where, params), = span.items()
    root = people["root"][2]
    for by in ("model", "key", "user"):
        answer = root.get(f"/api/admin/usage/series?from={first}&to={today}&by={by}").get_json()
        assert totals(answer) == ledger_sums(state, where, params), by
        assert len(answer["days"]) == 40 and answer["tz"] == TZ
        for k, name in enumerate(("requests", "prompt_tokens", "completion_tokens")):
            assert sum(sum(s[name]) for s in answer["series"]) == totals(answer)[k]
        if by != "model":  # each key's and user's own sums (ranked through weekly rollups)
            column = f"{by}_id"
            for series in answer["series"]:
                mine = f"{column} = :i" if series["id"] else f"{column} IS NULL"
                assert (sum(series["requests"]), sum(series["prompt_tokens"])) == \
                    ledger_sums(state, f"{where} AND {mine}", {**params, "i": series["id"]})[:2]
    ann, _, ann_client = people["ann"]
    own = ann_client.get(f"/api/usage/series?from={first}&to={today}").get_json()
    assert totals(own) == ledger_sums(state, f"{where} AND user_id = :u", {**params,
                                                                         "u": ann.id})
    by_day = ann_client.get("/api/usage?days=40").get_json()["by_day"]
    assert (sum(r["requests"] for r in by_day), sum(r["prompt_tokens"] for r in by_day),
            sum(r["completion_tokens"] for r in by_day),
            round(sum(float(r["cost"]) for r in by_day) * 1e9)) == totals(own)
    by_key = ann_client.get(f"/api/usage/series?from={first}&to={today}&by=key").get_json()
    assert {s["name"] for s in by_key["series"]} == {"ann-key", "(no key)"}
    assert totals(by_key) == totals(own)


def test_the_series_beyond_the_limit_are_summed_as_other(console):
    app, state, people = console
    now = time.time()
    spread(state, people, now, days=20)
    today = state.budgets.usage.local_day(now)
    answer = people["root"][2].get(
        f"/api/admin/usage/series?from={today - dt.timedelta(days=19)}&to={today}"
        "&by=model&limit=1").get_json()
    top, other = answer["series"]
    assert other == {**other, "name": "other", "id": None, "other": True}
    assert sum(top["requests"]) + sum(other["requests"]) == answer["totals"]["requests"]
    assert top["name"] == "m-big"  # the costliest


def test_a_day_is_a_budget_tz_day_across_the_clocks_going_back(console):
    app, state, people = console
    change = last_autumn_change(time.time())  # 25 hours long in Berlin
    before, after = change - dt.timedelta(days=1), change + dt.timedelta(days=1)
    insert(state, [
        {"created": local(f"{before}T23:59:59")},            # the day before
        {"created": local(f"{change}T00:00:00")},            # first second (+02:00)
        {"created": local(f"{change}T12:00:00")},            # after the change (+01:00)
        {"created": local(f"{change}T23:59:00")},            # 25 h after its midnight
        {"created": local(f"{after}T00:00:01")},             # the next day
    ])
    answer = people["root"][2].get(
        f"/api/admin/usage/series?from={before}&to={after}").get_json()
    assert answer["days"] == [str(before), str(change), str(after)]
    assert answer["series"][0]["requests"] == [1, 3, 1]
    # the UTC day would differ: 23:59 in Berlin is 22:59 UTC, and 00:00 is 22:00 UTC before
    assert dt.datetime.fromtimestamp(local(f"{change}T00:00:00"), dt.UTC).date() == before


def test_the_overview_adds_up_today_and_this_month(console):
    app, state, people = console
    usage = state.budgets.usage
    now = time.time()
    start = usage.day_start(usage.local_day(now))
    durations = [120, 80, 4000, 300, 250, 900, 60]
    ttfts = [50, None, 700, 90, 40, 200, 30]
    insert(state, [{"created": start + (now - start) * (i + 1) / 9, "duration_ms": d,
                    "ttft_ms": t, "user_id": people["ann" if i % 2 else "bob"][0].id,
                    "key_id": people["ann"][1].id if i % 2 else None,
                    "outcome": "error:upstream_error" if i == 2 else "ok", "cost": 10 ** i}
                   for i, (d, t) in enumerate(zip(durations, ttfts, strict=True))])
    insert(state, [{"created": start - 10, "cost": 5}])  # yesterday: not today
    answer = people["root"][2].get("/api/admin/overview").get_json()
    today = answer["today"]

    def rank(values, p):
        values = sorted(v for v in values if v is not None)
        return values[math.ceil(p * len(values)) - 1]
    assert (today["requests"], today["errors"], today["active_users"], today["tokens"]) == (
        7, 1, 2, 7 * 15)
    assert today["spend"] == f"{sum(10 ** i for i in range(7)) / 1e9:.6f}"
    assert today["error_rate"] == round(1 / 7, 4)
    assert (today["p50_ms"], today["p95_ms"]) == (rank(durations, .5), rank(durations, .95))
    assert (today["ttft_p50_ms"], today["ttft_p95_ms"]) == (rank(ttfts, .5), rank(ttfts, .95))
    month_start = usage.day_start(usage.local_day(now).replace(day=1))
    assert answer["month"]["requests"] == ledger_sums(state, "created >= :s",
                                                      {"s": month_start})[0]
    assert answer["top_users"][0]["username"] == "bob"  # 10**6 is bob's (i = 6)
    assert answer["top_keys"][0] == {**answer["top_keys"][0], "name": "ann-key",
                                     "username": "ann"}
    assert answer["top_models"][0]["model"] == "m-big"
    assert answer["tz"] == TZ and isinstance(answer["service_budgets"], list)


def test_the_rollups_stay_right_when_a_row_is_settled_late(console):
    app, state, people = console
    usage = state.budgets.usage
    now = time.time()
    ann = people["ann"][0]
    insert(state, [{"created": now - 5 * 86400 + i, "user_id": ann.id} for i in range(5)])
    (open_id,) = insert(state, [{"created": now - 4 * 86400, "state": "open", "cost": None,
                                 "prompt_tokens": None, "completion_tokens": None,
                                 "outcome": None, "user_id": ann.id}])
    insert(state, [{"created": now - 3 * 86400 + i, "user_id": ann.id} for i in range(5)])
    usage.refresh()
    with state.budgets.db.read() as conn:
        mark = conn.execute(sa.text("SELECT watermark FROM usage_state")).scalar()
    assert mark == open_id - 1  # the open row holds the rollups back; later rows read live
    today = usage.local_day(now)
    path = f"/api/admin/usage/series?from={today - dt.timedelta(days=9)}&to={today}"
    root = people["root"][2]
    assert totals(root.get(path).get_json()) == ledger_sums(state) == (10, 100, 50, 10_000)
    with state.budgets.db.write() as conn:  # settled now, five days after it began
        conn.execute(sa.text(
            "UPDATE ledger SET state = 'settled', prompt_tokens = 7, completion_tokens = 3, "
            "cost = 7000, outcome = 'expired' WHERE id = :id"), {"id": open_id})
    assert totals(root.get(path).get_json()) == ledger_sums(state) == (11, 107, 53, 17_000)
    usage.refresh()
    with state.budgets.db.read() as conn:
        assert conn.execute(sa.text("SELECT watermark FROM usage_state")).scalar() > open_id
    answer = root.get(path).get_json()
    assert totals(answer) == ledger_sums(state)
    assert answer["series"][0]["requests"][5] == 1  # four days ago: the late row's day
    # and again from a fresh rollup (as a change of BUDGET_TZ makes it)
    with state.budgets.db.write() as conn:
        conn.execute(sa.text("UPDATE usage_state SET tz = 'UTC'"))
    usage.refresh()
    assert totals(root.get(path).get_json()) == ledger_sums(state)


# --- who sees what ---------------------------------------------------------------------------

ADMIN_PATHS = ("/api/admin/overview", "/api/admin/usage/series", "/api/admin/ledger",
               "/api/admin/ledger?format=csv", "/api/admin/upstreams")


def test_admin_routes_refuse_everyone_else(console):
    app, state, people = console
    for path in ADMIN_PATHS:
        answer = people["ann"][2].get(path)
        assert answer.status_code == 403, path
        assert answer.get_json()["error"]["code"] == "admin_required"
        assert app.test_client().get(path).status_code == 401
        assert people["root"][2].get(path).status_code == 200
        assert app.test_client().get(path, headers=ADMIN).status_code == 200


def test_a_user_sees_only_their_own(console):
    app, state, people = console
    now = time.time()
    spread(state, people, now, days=10)
    ann, ann_key, ann_client = people["ann"]
    today = state.budgets.usage.local_day(now)
    span = f"from={today - dt.timedelta(days=9)}&to={today}"
    own = ann_client.get(f"/api/usage/series?{span}").get_json()
    bob = people["bob"][0]
    # naming bob (or his key) changes nothing: the route reads only the caller's own
    for extra in (f"&user={bob.id}", f"&key={people['bob'][1].id}", "&by=key"):
        assert totals(ann_client.get(f"/api/usage/series?{span}{extra}").get_json()) == \
            totals(own)
    # within the span: at 00:30 in BUDGET_TZ its first day began 9 days and 30 minutes ago,
    # after the oldest of ann's rows (9 days and an hour ago)
    assert totals(own) == ledger_sums(state, "user_id = :u AND created >= :lo", {
        "u": ann.id, "lo": state.budgets.usage.day_start(today - dt.timedelta(days=9))})
    names = {s["name"] for s in ann_client.get(f"/api/usage/series?{span}&by=key")
             .get_json()["series"]}
    assert "bob-key" not in names
    assert app.test_client().get("/api/usage/series").status_code == 401
    me = ann_client.get("/api/console/me").get_json()
    assert me["user"] == {"id": ann.id, "username": "ann", "admin": False}
    assert me["tz"] == TZ and me["auth"] == "users"
    assert app.test_client().get("/api/console/me").get_json()["user"] is None


@pytest.mark.parametrize("query,status", [
    ("/api/admin/usage/series?from=2026-13-01", 400),
    ("/api/admin/usage/series?from=yesterday", 400),
    ("/api/admin/usage/series?from=2026-1-1", 400),
    ("/api/admin/usage/series?from=2024-01-01&to=2025-02-04", 400),  # 401 days
    ("/api/admin/usage/series?from=2026-02-02&to=2026-02-01", 400),
    ("/api/admin/usage/series?by=door", 400),
    ("/api/admin/usage/series?limit=0", 400),
    ("/api/admin/usage/series?user=abc", 400),
    ("/api/admin/usage/series?user=99999999999999999999999999", 404),
    ("/api/admin/usage/series?user=2147483647", 404),
    ("/api/admin/usage/series?key=-1", 400),
    ("/api/admin/usage/series?key=123456", 404),
    ("/api/admin/usage/series?from=%ED%A0%80", 400),  # a lone surrogate, as UTF-8 bytes
    ("/api/admin/usage/series?from=%F0%90%80%80", 400),
    ("/api/admin/ledger?page=0", 400),
    ("/api/admin/ledger?per_page=501", 400),
    ("/api/admin/ledger?page=1e3", 400),
    ("/api/admin/ledger?from=2026-02-30", 400),
    ("/api/admin/ledger?to=2026-01-01T25:00:00", 400),
    ("/api/admin/ledger?from=2026-02-02&to=2026-02-01", 400),
    ("/api/admin/ledger?user=99999999999999999999999999", 404),
    ("/api/admin/ledger?model=" + "x" * 201, 400),
    ("/api/admin/ledger?format=xml", 400),
    ("/api/usage/series?by=user", 400),
    ("/api/usage/series?to=9999-12-31&from=0001-01-01", 400),
])
def test_bad_parameters_are_refused_by_name(console, query, status):
    app, state, people = console
    client = people["root"][2] if "/admin/" in query else people["ann"][2]
    answer = client.get(query)
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert set(answer.get_json()["error"]) >= {"code", "message"}


def test_a_lone_surrogate_in_a_filter_finds_nothing(console):
    app, state, people = console
    answer = people["root"][2].get("/api/admin/ledger?model=%ED%A0%80&outcome=%ED%B0%80")
    assert answer.status_code == 200 and answer.get_json()["data"] == []


# --- the ledger ---------------------------------------------------------------------------------

def test_the_csv_of_a_filtered_ledger_is_its_json_pages(console):
    app, state, people = console
    now = time.time()
    spread(state, people, now, days=12)
    ann = people["ann"][0]
    root = people["root"][2]
    today = state.budgets.usage.local_day(now)
    query = f"user={ann.id}&model=m-big&from={today - dt.timedelta(days=8)}&to={today}"
    pages, page = [], 1
    while True:
        answer = root.get(f"/api/admin/ledger?{query}&page={page}&per_page=3").get_json()
        pages += answer["data"]
        if not answer["has_more"]:
            break
        page += 1
    assert page > 1 and all(r["username"] == "ann" and r["model"] == "m-big" for r in pages)
    created = [r["created"] for r in pages]
    assert created == sorted(created, reverse=True)
    exported = root.get(f"/api/admin/ledger?{query}&format=csv")
    assert exported.headers["Content-Disposition"].startswith("attachment")
    table = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
    head, body = table[0], table[1:]
    assert body == [["" if r[c] is None else str(r[c]) for c in head] for r in pages]
    lo = state.budgets.usage.day_start(today - dt.timedelta(days=8))
    assert len(body) == ledger_sums(state, "user_id = :u AND model = 'm-big' AND created >= :lo",
                                    {"u": ann.id, "lo": lo})[0]


def test_upstreams_show_their_state_and_never_a_key(console):
    app, state, people = console
    insert(state, [{"created": time.time() - 60, "upstream": "openai", "duration_ms": d,
                    "outcome": "ok" if d < 900 else "error:upstream_timeout"}
                   for d in (100, 200, 300, 1000)])
    answer = people["root"][2].get("/api/admin/upstreams")
    (entry,) = answer.get_json()["data"]
    assert (entry["name"], entry["state"], entry["requests"], entry["errors"],
            entry["latency_p50_ms"], entry["last_error"]) == (
        "openai", "closed", 4, 1, 200, "error:upstream_timeout")
    assert "sk-test" not in answer.get_data(as_text=True)


# --- time to first token ---------------------------------------------------------------------------

def test_the_time_to_first_token_reaches_the_ledger(console, upstream):
    app, state, people = console
    upstream.push(stream_scenario(["Hello", " there"], first_delay=0.2))
    client = people["ann"][2]
    assert client.post("/api/gpt/get", json={"message": "hi"}).get_data(as_text=True) == \
        "Hello there"
    state.budgets.flush()
    with state.budgets.db.read() as conn:
        ttft, duration = conn.execute(sa.text(
            "SELECT ttft_ms, duration_ms FROM ledger")).one()
    assert 200 <= ttft <= duration


# --- the OpenAPI description -------------------------------------------------------------------------

def test_the_answers_match_their_openapi_description(console):
    import jsonschema_rs

    from gpt_proxy.doors.console_api import OPENAPI_PATHS, OPENAPI_SCHEMAS

    app, state, people = console
    spread(state, people, time.time(), days=5)
    root = people["root"][2]
    for path, item in OPENAPI_PATHS.items():
        answer = root.get(path)
        assert answer.status_code == 200, path
        ref = item["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        validator = jsonschema_rs.validator_for(
            {**ref, "components": {"schemas": OPENAPI_SCHEMAS}})
        assert validator.is_valid(answer.get_json()), (path, answer.get_json())
        refused = root.get(f"{path}?from=nonsense&by=nonsense&page=0")
        if refused.status_code != 200:
            assert jsonschema_rs.validator_for(
                {"$ref": "#/components/schemas/ConsoleError",
                 "components": {"schemas": OPENAPI_SCHEMAS}}).is_valid(refused.get_json())


# --- users and keys: search and pages ----------------------------------------------------------

def _names(answer) -> list[str]:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return [row["username"] for row in answer.get_json()["data"]]


def test_user_search_is_case_insensitive_and_takes_wildcards_as_plain_characters(console):
    app, state, people = console
    for name in ("Ünal", "a_c", "abc", "xa_cx", "pg1", "pg10", "pg2"):
        state.accounts.create_user(name, "correct horse battery")
    root = people["root"][2]
    assert _names(root.get("/api/admin/users?q=ÜNAL")) == ["Ünal"]
    assert _names(root.get("/api/admin/users?q=%C3%BCnal")) == ["Ünal"]
    assert _names(root.get("/api/admin/users?q=a_c")) == ["a_c", "xa_cx"]  # not abc
    assert _names(root.get("/api/admin/users?q=%25")) == []  # `%` is no wildcard either
    assert _names(root.get("/api/admin/users?q=B")) == ["bob", "abc"]
    # the exact name first, then by id
    assert _names(root.get("/api/admin/users?q=pg1")) == ["pg1", "pg10"]
    assert _names(root.get("/api/admin/users?q=PG10")) == ["pg10"]
    assert _names(root.get("/api/admin/users?q=G")) == ["pg1", "pg10", "pg2"]


def test_user_pages_move_through_every_user_once_and_say_when_more_follow(console):
    app, state, people = console
    for n in range(7):
        state.accounts.create_user(f"page{n}", "correct horse battery")
    root = people["root"][2]
    every = _names(root.get("/api/admin/users"))
    assert len(every) == 10
    seen = []
    for page, more in ((1, True), (2, True), (3, True), (4, False)):
        answer = root.get(f"/api/admin/users?page={page}&per_page=3").get_json()
        assert (answer["page"], answer["per_page"], answer["has_more"]) == (page, 3, more)
        seen += [row["username"] for row in answer["data"]]
    assert seen == every
    found = root.get("/api/admin/users?q=page&per_page=5&page=2").get_json()
    assert [u["username"] for u in found["data"]] == ["page5", "page6"]
    assert found["has_more"] is False and found["q"] == "page"
    # without a parameter: every user, in the shape it always had
    assert set(root.get("/api/admin/users").get_json()) == {"data"}


def test_key_pages_carry_the_owner_and_search_the_keys_name(console):
    app, state, people = console
    ann = people["ann"][0]
    for name in ("Laptop", "phone", "old laptop"):
        state.accounts.create_key(ann.id, name)
    root = people["root"][2]
    answer = root.get("/api/admin/keys?q=LAPTOP").get_json()
    assert [(k["name"], k["username"]) for k in answer["data"]] == [
        ("Laptop", "ann"), ("old laptop", "ann")]
    assert answer["has_more"] is False
    assert [k["name"] for k in root.get("/api/admin/keys?user=bob&page=1").get_json()[
        "data"]] == ["bob-key"]
    assert [k["name"] for k in root.get("/api/admin/keys?q=%25").get_json()["data"]] == []
    first = root.get("/api/admin/keys?per_page=4").get_json()
    second = root.get("/api/admin/keys?per_page=4&page=2").get_json()
    assert first["has_more"] is True and second["has_more"] is False
    every = root.get("/api/admin/keys").get_json()
    assert set(every) == {"data"} and "username" not in every["data"][0]
    assert [k["id"] for k in first["data"] + second["data"]] == [k["id"] for k in every["data"]]


def test_budget_rows_name_their_user_and_key_in_batches(console, monkeypatch):
    """The budgets page names each budget's subject from the rows themselves (it no longer
    loads every user and key): a user budget carries the username, a key budget the key's
    name and its owner's, the service neither; looked up a few ids at a time."""
    from gpt_proxy.identity import accounts as accounts_module

    monkeypatch.setattr(accounts_module, "NAMES_AT_ONCE", 2)  # several batches of each
    app, state, people = console
    root = people["root"][2]
    extra = [state.accounts.create_user(f"Ünal.{n}", "correct horse battery")
             for n in range(3)]
    made = []
    for user in [people["ann"][0], people["bob"][0], *extra]:
        made.append(root.post("/api/admin/budgets", json={
            "scope": "user", "subject": user.id, "unit": "requests", "period": "day",
            "limit": 5}))
    for name in ("ann", "bob", "root"):
        made.append(root.post("/api/admin/budgets", json={
            "scope": "key", "subject": people[name][1].id, "unit": "tokens", "period": "day",
            "limit": 100}))
    made.append(root.post("/api/admin/budgets", json={
        "scope": "service", "unit": "usd", "period": "month", "limit": "9.00"}))
    assert all(m.status_code == 201 for m in made), [m.get_json() for m in made]
    rows = root.get("/api/admin/budgets").get_json()["data"]
    named = {(r["scope"], r["subject_id"]): (r["username"], r["key_name"]) for r in rows}
    assert named == {
        ("user", people["ann"][0].id): ("ann", None),
        ("user", people["bob"][0].id): ("bob", None),
        **{("user", u.id): (u.username, None) for u in extra},
        ("key", people["ann"][1].id): ("ann", "ann-key"),
        ("key", people["bob"][1].id): ("bob", "bob-key"),
        ("key", people["root"][1].id): ("root", "root-key"),
        ("service", 0): (None, None)}
    # the standing is still there beside the names
    assert all({"limit", "spent", "left", "resets_at"} <= set(r) for r in rows)


@pytest.mark.parametrize("query,status", [
    ("/api/admin/users?page=0", 400),
    ("/api/admin/users?page=", 400),
    ("/api/admin/users?page=-1", 400),
    ("/api/admin/users?page=1.5", 400),
    ("/api/admin/users?page=%C2%B2", 400),  # '²' is a digit to str.isdigit()
    ("/api/admin/users?page=99999999999999999999999999", 400),
    ("/api/admin/users?per_page=0", 400),
    ("/api/admin/users?per_page=501", 400),
    ("/api/admin/users?q=" + "x" * 101, 400),
    ("/api/admin/users?q=a%00b", 400),
    ("/api/admin/keys?page=0", 400),
    ("/api/admin/keys?per_page=501", 400),
    ("/api/admin/keys?q=a%00b", 400),
    ("/api/admin/keys?user=nobody&page=1", 404),
    ("/api/admin/keys?user=99999999999999999999999999&q=a", 404),
])
def test_bad_paging_and_search_parameters_are_refused_by_name(console, query, status):
    app, state, people = console
    answer = people["root"][2].get(query)
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert set(answer.get_json()["error"]) >= {"code", "message"}


@pytest.mark.parametrize("path", ["/api/admin/users", "/api/admin/keys"])
def test_a_lone_surrogate_in_a_search_finds_nothing(console, path):
    app, state, people = console
    answer = people["root"][2].get(f"{path}?q=%ED%A0%80")
    assert answer.status_code == 200 and answer.get_json()["data"] == []


def test_a_nul_in_a_filter_is_refused_not_taken_for_a_database_failure(console):
    """PostgreSQL refuses a NUL in a query's text: it was answered 503 "database
    unavailable" (the ledger's filters) before being checked here."""
    app, state, people = console
    root = people["root"][2]
    for name in ("model", "door", "outcome"):
        answer = root.get(f"/api/admin/ledger?{name}=a%00b")
        assert answer.status_code == 400, answer.get_data(as_text=True)
        assert answer.get_json()["error"]["field"] == name
    for path in ("/api/admin/keys?user=a%00b", "/api/admin/usage?user=a%00b"):
        answer = root.get(path)
        assert answer.status_code == 404, answer.get_data(as_text=True)
        assert answer.get_json()["error"]["code"] == "unknown_user"
