"""The console's JSON routes (issue 27; described in docs/console.md): who is signed in,
a user's own usage per day, and for admins the service's usage, overview, ledger and
upstreams. In the `api` door's error shape, with the same identity as the account routes
(`identity.caller()`). Routes only parse, check who asks and delegate: the sums are made by
the database in `usage`.

- Admin routes refuse anyone else with 403 `admin_required`, as `account_api` does.
- A user's own route filters by the caller's own id; nothing in its query names another
  user, so another user's data is not reachable from it.
- Every parameter is checked before any query: a date that is not YYYY-MM-DD, a range over
  MAX_DAYS days, an unknown `by`, a page below 1 are 400; an id too large to exist, or of
  nobody, is 404. Never a 500.
- `OPENAPI_PATHS` and `OPENAPI_SCHEMAS` describe these routes (OpenAPI 3.1) for the
  service's own document.
"""

from __future__ import annotations

import datetime as dt
import re
import time

from flask import Blueprint, Response, current_app, jsonify, request

from ..base.errors import BadRequest, NotFound, Unauthorized
from ..identity.callers import caller, public_with_accounts, require_admin
from ..money.usage import MAX_DAYS, Filter, Usage, csv_chunks

bp = Blueprint("console_api", __name__, url_prefix="/api")

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_ID = 2**31 - 1  # the largest id a row can have (INTEGER on both databases)
BYS = {"own": ("model", "key"), "admin": ("model", "key", "user")}
DEFAULT_DAYS = 30
UPSTREAM_WINDOW = 3600.0  # the upstreams' figures: the last hour of the ledger


def _state():
    return current_app.extensions["gpt_proxy"]


def _usage() -> Usage:
    return _state().budgets.usage


def _text(name: str, limit: int = 200) -> str | None:
    """A query parameter as text (None: absent or empty), at most `limit` characters."""
    value = request.args.get(name)
    if value is None or value == "":
        return None
    if len(value) > limit:
        raise BadRequest(f"'{name}' is longer than {limit} characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{name}' holds an invalid character", field=name) from None
    if "\x00" in value:  # in no stored text, and PostgreSQL refuses it in a query
        raise BadRequest(f"'{name}' holds an invalid character (NUL)", field=name)
    return value


def _whole(name: str, default: int, low: int, high: int) -> int:
    value = _text(name, 12)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}", field=name)
    return int(value)


def _id(name: str) -> int | None:
    """An id parameter: digits (else 400); one too large to exist is nobody's (404)."""
    value = _text(name, 40)
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise BadRequest(f"'{name}' must be an id (a whole number)", field=name)
    number = int(value)
    if not 1 <= number <= MAX_ID:
        raise NotFound(f"no {name} with id {value[:20]}", code=f"unknown_{name}", field=name)
    return number


def _date(name: str) -> dt.date | None:
    value = _text(name, 40)
    if value is None:
        return None
    try:
        if not DATE.fullmatch(value):
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be a date such as 2026-11-30", field=name) from None


def _range(usage: Usage) -> tuple[dt.date, dt.date]:
    """`from` and `to` (days in BUDGET_TZ, both included): by default the last 30 days."""
    today = usage.local_day(usage.clock())
    last = _date("to") or today
    first = _date("from") or last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise BadRequest("'from' is after 'to'", field="from")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadRequest(f"a range is at most {MAX_DAYS} days", field="from")
    return first, last


def _by(kind: str) -> str:
    by = _text("by", 20) or "model"
    if by not in BYS[kind]:
        raise BadRequest(f"'by' must be one of {', '.join(BYS[kind])}", field="by")
    return by


def _known_user(user_id: int | None) -> None:
    if user_id is not None and _state().accounts.get_user(user_id) is None:
        raise NotFound(f"no user with id {user_id}", code="unknown_user", field="user")


def _known_key(key_id: int | None) -> None:
    if key_id is not None and not _state().accounts.key_exists(key_id):
        raise NotFound(f"no key with id {key_id}", code="unknown_key", field="key")


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


# --- everyone ---------------------------------------------------------------------------------

@bp.get("/console/me")
@public_with_accounts
def me():
    """Who the console is showing: the signed-in user (or null), the auth mode, BUDGET_TZ."""
    found = caller()
    state = _state()
    user = found.user
    return jsonify({"user": None if user is None else {
        "id": user.id, "username": user.username, "admin": user.admin},
        "auth": state.config.auth, "tz": state.config.budget_tz, "now": _iso(time.time())})


@bp.get("/usage/series")
def my_series():
    """The caller's own usage per day, split by model or by key."""
    found = caller()
    if _state().config.auth == "users" and found.user is None:
        raise Unauthorized("sign in first (user login), or send an API key",
                           code="unauthorized")
    usage = _usage()
    first, last = _range(usage)
    by = _by("own")
    limit = _whole("limit", 10, 1, 50)
    return jsonify(usage.series(first=first, last=last, by=by, limit=limit,
                                where=Filter(user_id=found.user_id)))


# --- admins -----------------------------------------------------------------------------------

@bp.get("/admin/usage/series")
def admin_series():
    """Every user's usage per day (or one user's, or one key's), split by model, key or user."""
    require_admin()
    usage = _usage()
    first, last = _range(usage)
    by = _by("admin")
    limit = _whole("limit", 10, 1, 50)
    user_id, key_id = _id("user"), _id("key")
    _known_user(user_id)
    _known_key(key_id)
    return jsonify(usage.series(first=first, last=last, by=by, limit=limit,
                                where=Filter(user_id=user_id, key_id=key_id)))


@bp.get("/admin/overview")
def admin_overview():
    """Today and this month at a glance, the service's budgets, the top spenders."""
    require_admin()
    budgets = _state().budgets
    overview = _usage().overview()
    service = [b for b in budgets.list_budgets() if b.scope == "service"]
    overview["service_budgets"] = budgets.standing(service)
    ordered = ("tz", "now", "today", "month", "service_budgets", "top_users", "top_keys",
               "top_models")
    return jsonify({name: overview[name] for name in ordered})


def _moment(name: str, usage: Usage, end: bool) -> float | None:
    """A ledger bound: a day in BUDGET_TZ (`to` includes it), or a date and time (UTC unless
    it says otherwise)."""
    value = _text(name, 40)
    if value is None:
        return None
    try:
        if DATE.fullmatch(value):
            day = dt.date.fromisoformat(value)
            return usage.day_start(day + dt.timedelta(days=1) if end else day)
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?", value):
            raise ValueError
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise BadRequest(f"'{name}' must be a date such as 2026-11-30, or a date and time "
                         "such as 2026-11-30T14:00:00Z", field=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _ledger_filters(usage: Usage) -> dict:
    filters = {"since": _moment("from", usage, False), "until": _moment("to", usage, True),
               "user_id": _id("user"), "key_id": _id("key"), "model": _text("model"),
               "door": _text("door", 32), "outcome": _text("outcome", 64)}
    if (filters["since"] is not None and filters["until"] is not None
            and filters["since"] >= filters["until"]):
        raise BadRequest("'from' is after 'to'", field="from")
    _known_user(filters["user_id"])
    _known_key(filters["key_id"])
    return filters


@bp.get("/admin/ledger")
def admin_ledger():
    """The ledger, filtered, newest first: a page of JSON, or all of it as CSV."""
    require_admin()
    usage = _usage()
    kind = _text("format", 10) or "json"
    if kind not in ("json", "csv"):
        raise BadRequest("'format' must be json or csv", field="format")
    filters = _ledger_filters(usage)
    if kind == "csv":
        response = Response(csv_chunks(usage.ledger(filters), usage.LEDGER_COLUMNS),
                            mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="ledger.csv"'
        return response
    page = _whole("page", 1, 1, 100_000)
    per_page = _whole("per_page", 50, 1, 500)
    rows = list(usage.ledger(filters, offset=(page - 1) * per_page, limit=per_page + 1))
    return jsonify({"data": rows[:per_page], "page": page, "per_page": per_page,
                    "has_more": len(rows) > per_page})


@bp.get("/admin/upstreams")
def admin_upstreams():
    """Each upstream: its breaker's state (this worker's), and from the ledger's last hour
    (every instance) its requests, errors and latency."""
    require_admin()
    from ..base.config import without_password

    state = _state()
    upstream = state.upstream
    now = time.time()
    figures = _usage().upstreams(now - UPSTREAM_WINDOW)
    endpoints = getattr(upstream, "endpoints", None)
    if endpoints is None:  # the demo upstream: one, never broken
        listed = [("demo", None, "closed")]
    else:
        states = {item["name"]: item["state"] for item in upstream.health()}
        listed = [(ep.name, without_password(ep.spec.base_url).split("?")[0],
                   states.get(ep.name, "closed")) for ep in endpoints]
    data = []
    for name, base_url, breaker in listed:
        entry = figures.get(name, {})
        requests, errors = entry.get("requests", 0), entry.get("errors", 0)
        data.append({"name": name, "base_url": base_url, "state": breaker,
                     "requests": requests, "errors": errors,
                     "error_rate": round(errors / requests, 4) if requests else 0.0,
                     "latency_p50_ms": entry.get("latency_p50_ms"),
                     "latency_p95_ms": entry.get("latency_p95_ms"),
                     "last_error": entry.get("last_error")})
    return jsonify({"data": data, "scope": "state: this worker's breaker; figures: the "
                    "ledger's last hour, every instance", "window_seconds": int(UPSTREAM_WINDOW)})


# --- the OpenAPI description ---------------------------------------------------------------------

def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _answers(schema: str, *errors: int) -> dict:
    found = {"200": {"description": "OK", "content": {"application/json": {
        "schema": _ref(schema)}}}}
    words = {400: "bad parameter", 401: "not signed in", 403: "not an admin",
             404: "unknown user or key"}
    for status in errors:
        found[str(status)] = {"description": words[status], "content": {
            "application/json": {"schema": _ref("ConsoleError")}}}
    return found


_DAY = {"anyOf": [{"type": "string", "format": "date"},
                  {"type": "string", "maxLength": 0, "description": "empty: the default"}]}
_RANGE = [_query("from", "first day (YYYY-MM-DD in BUDGET_TZ); default: 29 days before `to`",
                 _DAY),
          _query("to", "last day, included (YYYY-MM-DD in BUDGET_TZ); default: today", _DAY),
          _query("limit", "series shown (the rest summed as `other`)",
                 {"type": "integer", "minimum": 1, "maximum": 50, "default": 10})]
_ID = {"type": "integer", "minimum": 1}
_MONEY = {"type": "string", "pattern": r"^\d+\.\d{6}$", "description": "US dollars"}
_FIGURES = {"spend": _MONEY, "requests": {"type": "integer"}, "tokens": {"type": "integer"}}

OPENAPI_PATHS: dict = {
    "/api/console/me": {"get": {
        "summary": "Who the console shows, the auth mode and BUDGET_TZ",
        "tags": ["console"], "responses": _answers("ConsoleMe", 401)}},
    "/api/usage/series": {"get": {
        "summary": "The caller's own usage per day, by model or key",
        "tags": ["console"],
        "parameters": [*_RANGE, _query("by", "split by", {"enum": ["model", "key"],
                                                          "default": "model"})],
        "responses": _answers("UsageSeries", 400, 401)}},
    "/api/admin/usage/series": {"get": {
        "summary": "The service's usage per day, by model, key or user (admin)",
        "tags": ["console"],
        "parameters": [*_RANGE, _query("by", "split by", {"enum": ["model", "key", "user"],
                                                          "default": "model"}),
                       _query("user", "one user's id", _ID), _query("key", "one key's id", _ID)],
        "responses": _answers("UsageSeries", 400, 401, 403, 404)}},
    "/api/admin/overview": {"get": {
        "summary": "Today, this month, the service's budgets, the top spenders (admin)",
        "tags": ["console"], "responses": _answers("Overview", 401, 403)}},
    "/api/admin/ledger": {"get": {
        "summary": "The ledger filtered, newest first: a page, or all as CSV (admin)",
        "tags": ["console"],
        "parameters": [
            _query("from", "from this day (BUDGET_TZ) or moment (ISO 8601)",
                   {"type": "string"}),
            _query("to", "to the end of this day, or before this moment", {"type": "string"}),
            _query("user", "a user's id", _ID), _query("key", "a key's id", _ID),
            _query("model", "a model", {"type": "string", "maxLength": 200}),
            _query("door", "a door (gpt, openai, ...)", {"type": "string", "maxLength": 32}),
            _query("outcome", "an outcome (ok, client_left, error:...)",
                   {"type": "string", "maxLength": 64}),
            _query("page", "page number", {"type": "integer", "minimum": 1,
                                           "maximum": 100000, "default": 1}),
            _query("per_page", "rows per page", {"type": "integer", "minimum": 1,
                                                 "maximum": 500, "default": 50}),
            _query("format", "json (a page) or csv (every row)",
                   {"enum": ["json", "csv"], "default": "json"})],
        "responses": {**_answers("LedgerPage", 400, 401, 403, 404), "200": {
            "description": "a page (JSON) or the whole filtered ledger (CSV)", "content": {
                "application/json": {"schema": _ref("LedgerPage")},
                "text/csv": {"schema": {"type": "string"}}}}}}},
    "/api/admin/upstreams": {"get": {
        "summary": "Each upstream's breaker state and recent figures (admin)",
        "tags": ["console"], "responses": _answers("Upstreams", 401, 403)}},
}

_COUNTS = {"type": "array", "items": {"type": "integer"}}
_NULLABLE_INT = {"type": ["integer", "null"]}
OPENAPI_SCHEMAS: dict = {
    "ConsoleError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}}}},
    "ConsoleMe": {"type": "object", "required": ["user", "auth", "tz", "now"], "properties": {
        "user": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
            "id": {"type": "integer"}, "username": {"type": "string"},
            "admin": {"type": "boolean"}}}]},
        "auth": {"type": "string"}, "tz": {"type": "string"},
        "now": {"type": "string", "format": "date-time"}}},
    "UsageSeries": {"type": "object",
                    "required": ["from", "to", "tz", "by", "days", "series", "totals"],
                    "properties": {
        "from": _DAY, "to": _DAY, "tz": {"type": "string"}, "by": {"type": "string"},
        "days": {"type": "array", "items": _DAY},
        "series": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "id": _NULLABLE_INT,
            "other": {"type": "boolean", "description": "the series beyond `limit`, summed"},
            "requests": _COUNTS, "prompt_tokens": _COUNTS, "completion_tokens": _COUNTS,
            "tokens": _COUNTS, "cost": {"type": "array", "items": _MONEY}}}},
        "totals": {"type": "object", "properties": {
            "requests": {"type": "integer"}, "tokens": {"type": "integer"},
            "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
            "cost": _MONEY}}}},
    "Overview": {"type": "object", "properties": {
        "tz": {"type": "string"}, "now": {"type": "string", "format": "date-time"},
        "today": {"type": "object", "properties": {
            **_FIGURES, "errors": {"type": "integer"}, "error_rate": {"type": "number"},
            "p50_ms": _NULLABLE_INT, "p95_ms": _NULLABLE_INT, "ttft_p50_ms": _NULLABLE_INT,
            "ttft_p95_ms": _NULLABLE_INT, "active_users": {"type": "integer"}}},
        "month": {"type": "object", "properties": _FIGURES},
        "service_budgets": {"type": "array", "items": {"type": "object"}},
        "top_users": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "username": {"type": ["string", "null"]}, **_FIGURES}}},
        "top_keys": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "name": {"type": ["string", "null"]},
            "username": {"type": ["string", "null"]}, **_FIGURES}}},
        "top_models": {"type": "array", "items": {"type": "object", "properties": {
            "model": {"type": "string"}, **_FIGURES}}}}},
    "LedgerPage": {"type": "object", "required": ["data", "page", "per_page", "has_more"],
                   "properties": {
        "data": {"type": "array", "items": {"type": "object"}},
        "page": {"type": "integer"}, "per_page": {"type": "integer"},
        "has_more": {"type": "boolean"}}},
    "Upstreams": {"type": "object", "properties": {
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "base_url": {"type": ["string", "null"]},
            "state": {"enum": ["closed", "open", "half_open"]},
            "requests": {"type": "integer"}, "errors": {"type": "integer"},
            "error_rate": {"type": "number"}, "latency_p50_ms": _NULLABLE_INT,
            "latency_p95_ms": _NULLABLE_INT, "last_error": {"type": ["string", "null"]}}}},
        "scope": {"type": "string"}, "window_seconds": {"type": "integer"}}},
}
