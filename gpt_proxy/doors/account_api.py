"""The account routes in the service's own JSON shape (errors as `/api/gpt/get` answers them):
a user's own API keys (`/api/keys`) and spend (`/api/usage`), and the admin routes
(`/api/admin/...`: users, keys, invites, budgets, the ledger), for the web terminal, scripts
and operators. Routes only parse, check who is
asking and delegate to `accounts`; who is asking is `identity`'s `g.caller`.

- Keys are managed from a signed-in session (the web terminal), never with a key: a leaked
  key cannot make itself a successor. An admin (session of an admin user, or PROXY_TOKEN)
  manages anyone's. The new key is in the answer once and never again.
- Another user's key is "unknown" (404), never "forbidden": ids leak nothing.
- The admin lists of users and keys are whole without a parameter (as scripts have read
  them), or a page when asked with `q`, `page` or `per_page`: searched and cut by the
  database (a LIKE whose wildcards in `q` are escaped), one row more than the page to learn
  `has_more` without counting.
"""

from __future__ import annotations

import datetime as dt
import math

from flask import Blueprint, Response, current_app, jsonify, request

from ..base.errors import BadRequest, NotFound, ProxyError, Unauthorized
from ..identity.accounts import Key, User, check_text, iso_time
from ..identity.callers import Caller, caller, require_admin
from ..money.budgets import PERIODS, UNITS, parse_limit
from ..money.usage import csv_chunks
from ..pipeline.stages import read_body
from ..pipeline.validation import id_ok, parse_body, parse_id

bp = Blueprint("account_api", __name__, url_prefix="/api")

MAX_MODELS = 100


def _state():
    return current_app.extensions["gpt_proxy"]


def _body() -> dict:
    raw = read_body(_state().config)
    return parse_body(raw) if raw.strip() else {}


def _session_user() -> Caller:
    found = caller()
    if found.user is None:
        raise Unauthorized("sign in first (user login)", code="unauthorized")
    if found.kind != "session":
        raise ProxyError("keys are managed from a signed-in session (the web terminal's "
                         "gpt key), not with a key", status=403, code="session_required")
    return found


def _key_options(body: dict) -> dict:
    """`name`, `expires_days` and `models` of a new key."""
    name = check_text(body.get("name", "key"), "name", 100)
    days = body.get("expires_days")
    expires = None
    if days is not None:
        if (isinstance(days, bool) or not isinstance(days, (int, float))
                or not math.isfinite(days) or not 0 < days <= 3650):
            raise BadRequest("'expires_days' must be a number of days from 0 to 3650",
                             field="expires_days")
        expires = _state().accounts.clock() + days * 86400
    models = body.get("models")
    if models is not None:
        if (not isinstance(models, list) or not models or len(models) > MAX_MODELS
                or not all(isinstance(m, str) and 0 < len(m.strip()) <= 200 for m in models)):
            raise BadRequest("'models' must be a non-empty list of model names (or null for "
                             "any model)", field="models")
        models = tuple(dict.fromkeys(m.strip() for m in models))
    extra = sorted(set(body) - {"name", "expires_days", "models", "user"})
    if extra:
        raise BadRequest(f"'{str(extra[0])[:100]}' is not a supported field (supported: name, "
                         "expires_days, models)", field=str(extra[0])[:100])
    return {"name": name, "expires": expires, "models": models}


def _created(key: Key, secret: str):
    response = jsonify({**key.public(), "key": secret,
                        "note": "this is the only time the key is shown: keep it now"})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


# --- a user's own keys ------------------------------------------------------------------------

@bp.get("/keys")
def my_keys():
    signed = _session_user()
    return jsonify({"data": [k.public() for k in _state().accounts.list_keys(signed.user.id)]})


@bp.post("/keys")
def my_new_key():
    signed = _session_user()
    key, secret = _state().accounts.create_key(signed.user.id, **_key_options(_body()))
    return _created(key, secret)


@bp.delete("/keys/<id:key_id>")
def my_revoke(key_id: int):
    signed = _session_user()
    return jsonify(_state().accounts.revoke_key(key_id, user_id=signed.user.id).public())


# --- admin ------------------------------------------------------------------------------------

def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also holds for '²' or '١', which int() refuses."""
    return text.isascii() and text.isdigit()


def _find_user(value: object) -> User:
    """A user named by id (an int) or by username; 404 if none (also for an id out of the
    database's range)."""
    accounts = _state().accounts
    user = None
    if isinstance(value, int) and not isinstance(value, bool):
        user = accounts.get_user(value) if id_ok(value) else None
    elif isinstance(value, str) and value.strip():
        user = accounts.find_user(value) if len(value) <= 200 and "\x00" not in value else None
    else:
        raise BadRequest("'user' must be a user id or a username", field="user")
    if user is None:
        raise NotFound(f"no user {str(value)[:100]!r}", code="unknown_user", field="user")
    return user


def _query_user(text: str) -> int | str:
    """A query's `user`: digits are an id (-1 when out of range: nobody's), else a name."""
    if _digits(text):
        return parse_id(text) or -1
    return text


PAGING = ("q", "page", "per_page")
MAX_PER_PAGE = 500
MAX_PAGE = 100_000
MAX_QUERY = 100


def _search() -> str | None:
    """`q`: text to look for (None: absent or empty); at most MAX_QUERY characters of valid
    Unicode without NUL (which no name holds, and PostgreSQL refuses in a query)."""
    q = request.args.get("q", "")
    if len(q) > MAX_QUERY:
        raise BadRequest(f"'q' is longer than {MAX_QUERY} characters", field="q")
    try:
        q.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("'q' holds an invalid character", field="q") from None
    if "\x00" in q:
        raise BadRequest("'q' holds an invalid character (NUL)", field="q")
    return q.strip() or None


def _whole(name: str, default: int, high: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    if not (_digits(value) and len(value) <= 7) or not 1 <= int(value) <= high:
        raise BadRequest(f"'{name}' must be a whole number from 1 to {high}", field=name)
    return int(value)


def _paging() -> tuple[int, int] | None:
    """(page, per_page) when the query names any of q, page or per_page; None otherwise
    (the whole list, as before paging existed)."""
    if not any(name in request.args for name in PAGING):
        return None
    return _whole("page", 1, MAX_PAGE), _whole("per_page", 50, MAX_PER_PAGE)


def _page(found: list, page: int, per_page: int, q: str | None) -> dict:
    return {"data": found[:per_page], "page": page, "per_page": per_page,
            "has_more": len(found) > per_page, "q": q}


@bp.get("/admin/users")
def admin_users():
    """Every user (no parameter), or a page of them: `q` (part of the name, any case),
    `page`, `per_page`."""
    require_admin()
    accounts = _state().accounts
    paging = _paging()
    if paging is None:
        return jsonify({"data": [u.public() for u in accounts.list_users()]})
    q = _search()
    page, per_page = paging
    found = accounts.list_users(q, offset=(page - 1) * per_page, limit=per_page + 1)
    return jsonify(_page([u.public() for u in found], page, per_page, q))


@bp.post("/admin/users")
def admin_new_user():
    require_admin()
    body = _body()
    admin = body.get("admin", False)
    if not isinstance(admin, bool):
        raise BadRequest("'admin' must be true or false", field="admin")
    user = _state().accounts.create_user(body.get("username"), body.get("password"),
                                         body.get("email"), admin=admin)
    response = jsonify(user.public())
    response.status_code = 201
    return response


@bp.patch("/admin/users/<id:user_id>")
def admin_change_user(user_id: int):
    require_admin()
    body = _body()
    accounts = _state().accounts
    if accounts.get_user(user_id) is None:
        raise NotFound(f"no user with id {user_id}", code="unknown_user")
    extra = sorted(set(body) - {"disabled", "admin", "password"})
    if extra or not body:
        raise BadRequest("send one or more of 'disabled', 'admin', 'password'",
                         field=str(extra[0])[:100] if extra else None)
    for name in ("disabled", "admin"):
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"'{name}' must be true or false", field=name)
    if "password" in body:
        accounts.set_password(user_id, body["password"])
    if "admin" in body:
        accounts.set_admin(user_id, body["admin"])
    if "disabled" in body:
        accounts.set_disabled(user_id, body["disabled"])
    return jsonify(accounts.get_user(user_id).public())


@bp.get("/admin/keys")
def admin_keys():
    """Every key (or one user's: `user`, an id or a name), or a page of them with their
    owner's `username`: `q` (part of the key's name), `page`, `per_page`."""
    require_admin()
    accounts = _state().accounts
    user = request.args.get("user")
    paging = _paging()
    q = _search() if paging is not None else None
    user_id = _find_user(_query_user(user)).id if user else None
    if paging is None:
        return jsonify({"data": [k.public() for k in accounts.list_keys(user_id)]})
    page, per_page = paging
    found = accounts.find_keys(user_id, q, offset=(page - 1) * per_page, limit=per_page + 1)
    return jsonify(_page([{**k.public(), "username": owner} for k, owner in found],
                         page, per_page, q))


@bp.post("/admin/keys")
def admin_new_key():
    require_admin()
    body = _body()
    user = _find_user(body.get("user"))
    key, secret = _state().accounts.create_key(user.id, **_key_options(body))
    return _created(key, secret)


@bp.delete("/admin/keys/<id:key_id>")
def admin_revoke(key_id: int):
    require_admin()
    return jsonify(_state().accounts.revoke_key(key_id).public())


@bp.post("/admin/invites")
def admin_invite():
    found = require_admin()
    body = _body()
    days = body.get("days", 7)
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days):
        raise BadRequest("'days' must be a number", field="days")
    code, expires = _state().accounts.create_invite(found.user_id, float(days))
    response = jsonify({"code": code, "expires": iso_time(expires)})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


# --- budgets and usage ------------------------------------------------------------------------

def _days(value: str | None, default: int = 31) -> int:
    if value is None:
        return default
    if not (_digits(value) and len(value) <= 3) or not 1 <= int(value) <= 400:
        raise BadRequest("'days' must be a whole number from 1 to 400", field="days")
    return int(value)


@bp.get("/usage")
def my_usage():
    """The caller's own spend by day and model, and every budget that applies to it with what
    is left and when it resets (AUTH=open or token: the service's)."""
    found = caller()
    state = _state()
    if state.config.auth == "users" and found.user is None:
        raise Unauthorized("sign in first (user login), or send an API key",
                           code="unauthorized")
    budgets = state.budgets
    days = _days(request.args.get("days"))
    return jsonify({
        "user": found.user.username if found.user is not None else None,
        "key": found.key.name if found.key is not None else None,
        "budgets": budgets.standing(budgets.applying(found.user_id, found.key_id)),
        "by_day": budgets.spend_by_day(user_id=found.user_id, days=days)})


def _subject(scope: object, subject: object) -> int:
    accounts = _state().accounts
    if scope == "service":
        return 0
    if scope == "user":
        return _find_user(subject).id
    if scope == "key":
        if isinstance(subject, bool) or not isinstance(subject, int):
            raise BadRequest("a key's budget names the key by its id ('subject')",
                             field="subject")
        if not (id_ok(subject) and accounts.key_exists(subject)):
            raise NotFound(f"no key with id {subject}", code="unknown_key", field="subject")
        return subject
    raise BadRequest("'scope' must be service, user or key", field="scope")


@bp.get("/admin/budgets")
def admin_budgets():
    """Every budget with its standing and its subject's names: `username` (a user's, or a
    key's owner's) and `key_name` (null where they do not apply or the subject is gone), from
    one lookup of the ids shown."""
    require_admin()
    state = _state()
    found = state.budgets.list_budgets()
    user_names, key_names = state.accounts.names(
        (b.subject_id for b in found if b.scope == "user"),
        (b.subject_id for b in found if b.scope == "key"))
    rows = []
    for row in state.budgets.standing(found):
        username = key_name = None
        if row["scope"] == "user":
            username = user_names.get(row["subject_id"])
        elif row["scope"] == "key":
            key_name, username = key_names.get(row["subject_id"], (None, None))
        rows.append({**row, "username": username, "key_name": key_name})
    return jsonify({"data": rows})


@bp.post("/admin/budgets")
def admin_set_budget():
    """Make a budget or change its limit: {scope, subject, unit, period, limit} (`usd`
    limits in dollars, e.g. "5.00"; rpm and tpm: `requests` or `tokens` per `minute`)."""
    require_admin()
    body = _body()
    extra = sorted(set(body) - {"scope", "subject", "unit", "period", "limit"})
    if extra:
        raise BadRequest(f"'{str(extra[0])[:100]}' is not a supported field",
                         field=str(extra[0])[:100])
    unit, period = body.get("unit"), body.get("period")
    if unit not in UNITS:
        raise BadRequest(f"'unit' must be one of {', '.join(UNITS)}", field="unit")
    if period not in PERIODS:
        raise BadRequest(f"'period' must be one of {', '.join(PERIODS)}", field="period")
    budgets = _state().budgets
    budget = budgets.set_budget(body.get("scope"), _subject(body.get("scope"),
                                                            body.get("subject")),
                                unit, period, parse_limit(unit, body.get("limit")))
    response = jsonify(budgets.standing([budget])[0])
    response.status_code = 201
    return response


@bp.delete("/admin/budgets/<id:budget_id>")
def admin_delete_budget(budget_id: int):
    require_admin()
    _state().budgets.delete_budget(budget_id)
    return jsonify({"deleted": budget_id})


def _moment(value: str | None, name: str) -> float | None:
    """A `from`/`to` bound: an ISO date or date-time (UTC unless it says otherwise)."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be a date such as 2026-11-30 (or a date and time)",
                         field=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@bp.get("/admin/usage")
def admin_usage():
    """The ledger: `?user=&key=&from=&to=` filter it, `format=csv` exports it (streamed)."""
    require_admin()
    args = request.args
    user = args.get("user")
    user_id = _find_user(_query_user(user)).id if user else None
    key = args.get("key")
    if key is not None and not _digits(key):
        raise BadRequest("'key' must be a key's id", field="key")
    if key is not None and parse_id(key) is None:
        raise NotFound(f"no key with id {key[:30]}", code="unknown_key", field="key")
    since, until = _moment(args.get("from"), "from"), _moment(args.get("to"), "to")
    budgets = _state().budgets
    options = {"user_id": user_id, "key_id": parse_id(key) if key else None, "since": since,
               "until": until}
    kind = args.get("format", "json")
    if kind == "csv":
        response = Response(csv_chunks(budgets.rows(**options), budgets.LEDGER_COLUMNS),
                            mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response
    if kind != "json":
        raise BadRequest("'format' must be json or csv", field="format")
    limit = args.get("limit", "1000")
    if not (_digits(limit) and len(limit) <= 5) or not (
            1 <= int(limit) <= 10_000):
        raise BadRequest("'limit' must be a whole number from 1 to 10000", field="limit")
    return jsonify({"data": list(budgets.rows(**options, limit=int(limit)))})
