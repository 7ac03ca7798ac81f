"""The OpenAPI 3.1 document of the service's own API, served at `GET /api/openapi.json`.

What it covers: every route under `/api/` (the service's own door `/api/gpt/get` and its
neighbours, the account and admin routes, the GPT Terminal user protocol, chat-process) and
`/healthz`, the page routes named in `PAGES`; not `/v1` (OpenAI's own API, which the official
SDKs check) and not `/metrics` (its own listener, Prometheus' format).

The rules it follows:
- One document per running app, built from what is registered: a path is described only when
  the app's url_map has it with that method (a module left out of an app leaves its routes
  out of the document), and the coverage test checks the other way round, that every route
  of the url_map is described (tests/test_openapi.py).
- It says what this server does under its settings: the security of each operation follows
  AUTH (open: none; token: the proxy token; users: the session cookie, an API key, and for
  `/api/admin/` PROXY_TOKEN when it is set), and the limits of a request (MAX_HISTORY_CHARS,
  MAX_SYSTEM_CHARS, MAX_MESSAGES) are the ones configured, so a generated request the
  document calls valid is one this server accepts by shape.
- Each door's errors in its own shape (each module's `error_response`): the `api` door
  answers `{"error": {"code", "message", "status"[, "field"]}}` with the error's status; the
  GPT Terminal user protocol answers HTTP 200 with `{"code": 4xxxx|50000, "message", "msg",
  "data": null}`; chat-process HTTP 200 with `{"status": "Fail"|"Unauthorized", "message",
  "data": null}`. The statuses listed per operation are all the ones it can answer; a 500
  is listed in the `api` shape because that is the shape of one (a defect, naming the
  request id), not because one is expected.
- Other modules add their own routes: a blueprint's module that exports `OPENAPI_PATHS`
  (path -> path item, in this document's terms, `{name}` for a path parameter; or a function
  of the Config giving one) and `OPENAPI_SCHEMAS` (name -> schema, under
  `#/components/schemas/`) is merged in (its operations refine those described here for the
  same path and method: their id, security and common errors stay), then filtered by the
  url_map like the others. The console's routes (docs/console.md) are described here too, as
  the base its module refines.
"""

from __future__ import annotations

import re

from flask import Blueprint, Flask, current_app, jsonify

from ..base.config import VERSION, Config
from ..identity.accounts import (
    MAX_EMAIL,
    MAX_KEY_NAME,
    MAX_KEYWORD,
    MAX_PASSWORD_BYTES,
    MAX_ROLE_DESCRIPTION,
    MAX_ROLE_ELEMENTS,
    MAX_ROLE_NAME,
    MAX_USERNAME,
    MIN_PASSWORD_CHARS,
)
from ..identity.callers import SESSION_COOKIE, public
from .account_api import MAX_PAGE, MAX_PER_PAGE, MAX_QUERY

bp = Blueprint("openapi", __name__)
OPENAPI_VERSION = "3.1.0"
PAGES = ("/", "/console")  # HTML pages: described as such, when registered
JSON, SSE, TEXT, CSV, HTML = ("application/json", "text/event-stream", "text/plain", "text/csv",
                              "text/html")
OCTETS = "application/octet-stream"
ERROR = {"$ref": "#/components/schemas/Error"}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@bp.get("/api/openapi.json")
@public
def openapi_json():
    """The document, built once per app (the routes and settings do not change while it
    runs)."""
    app = current_app._get_current_object()
    doc = app.extensions.get("gpt_proxy.openapi")
    if doc is None:
        doc = app.extensions["gpt_proxy.openapi"] = document(app)
    response = jsonify(doc)
    response.headers["Cache-Control"] = "no-cache"
    return response


# --- building blocks ------------------------------------------------------------------------

def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {JSON: {"schema": schema}}


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": _json(schema)}


REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
RETRY = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}, **REQUEST_ID}

API_ERRORS = {
    400: "Bad input: the body, a field or a parameter (`field` names it), or a Host not in "
         "ALLOWED_HOSTS (`bad_host`).",
    401: "No credential, or a wrong one (`unauthorized`, `invalid_api_key`).",
    403: "Refused: a cross-origin browser request (`forbidden_origin`), a session used from "
         "another site (`cross_site_session`), or what the route says.",
    404: "Not found (`not_found` and the route's own codes: `unknown_user`, `unknown_key`, "
         "`unknown_role`, ...). An id of another user is unknown, never forbidden.",
    410: "Gone (`reply_trimmed`: the events asked for are no longer kept).",
    413: "The body is larger than MAX_BODY_BYTES, or a text longer than its limit.",
    429: "Too many requests (`rate_limited`, RATE_LIMIT), login attempts "
         "(`too_many_attempts`, LOGIN_LIMIT) or a budget with no room (`budget_exceeded`); "
         "`Retry-After` says when to try again.",
    500: "An internal error (a defect: the message names the request id to find in the log).",
    502: "The upstream answered with an error or unusable bytes (`upstream_error`).",
    503: "Unavailable for a moment (the upstream, the reply store, the conversation store or "
         "the database); `Retry-After` when known.",
    504: "The upstream did not answer in time (`upstream_timeout`).",
}


# gunicorn's own answer, before the app sees the request: a request line over its
# limit_request_line (4094 bytes), which a long parameter in the path or the query reaches.
TOO_LONG = {"414": {"description": "URI too long: the request line is over gunicorn's limit "
                                   "(4094 bytes); answered by gunicorn as an HTML page",
                    "content": {HTML: {"schema": {"type": "string"}}}}}


def _errors(*statuses: int) -> dict:
    """Responses in the `api` door's error shape."""
    out = {}
    for status in statuses:
        headers = RETRY if status in (429, 503) else REQUEST_ID
        if status == 401:
            headers = {**REQUEST_ID,
                       "WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}}
        out[str(status)] = {"description": API_ERRORS[status], "headers": headers,
                            "content": _json(ERROR)}
    return out


def _ok(description: str, schema: dict | None = None, status: int = 200,
        content: dict | None = None, headers: dict | None = None) -> dict:
    return {str(status): {"description": description, "headers": {**REQUEST_ID, **(headers or {})},
                          "content": content if content is not None else _json(schema)}}


def _op(summary: str, tag: str, responses: dict, *, security: list | None = None,
        body: dict | None = None, parameters: list | None = None,
        description: str | None = None, op_id: str) -> dict:
    if any(p["in"] in ("path", "query") for p in parameters or ()):
        responses = {**responses, **TOO_LONG}
    op: dict = {"summary": summary, "tags": [tag], "operationId": op_id, "responses": responses}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    if security is not None:
        op["security"] = security
    return op


def _path_param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


ID = {"type": "integer", "minimum": 0}
ISO = {"type": ["string", "null"], "format": "date-time"}
NEW_KEY_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_NAME, "pattern": r"\S"},
    "expires_days": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 3650},
    "models": {"type": ["array", "null"], "minItems": 1, "maxItems": 100,
               "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}}}
PAGE_FIELDS = {  # a page of a list (asked for with q, page or per_page)
    "page": {"type": "integer", "minimum": 1}, "per_page": {"type": "integer", "minimum": 1},
    "has_more": {"type": "boolean", "description": "a next page has rows"},
    "q": {"type": ["string", "null"], "description": "the search, as applied"}}
DOLLARS = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]+$",
           "description": "dollars as a decimal string, e.g. \"0.004200\""}


# --- security by AUTH -----------------------------------------------------------------------

class Security:
    """The security requirement of each kind of route under the app's AUTH."""

    def __init__(self, config: Config) -> None:
        self.auth = config.auth
        self.admin_token = bool(config.proxy_token)

    def _pick(self, users: list) -> list:
        if self.auth == "open":
            return []
        if self.auth == "token":
            return [{"proxyToken": []}]
        return users

    @property
    def session_or_key(self) -> list:
        return self._pick([{"session": []}, {"apiKey": []}])

    @property
    def session(self) -> list:
        return self._pick([{"session": []}])

    @property
    def key(self) -> list:
        return self._pick([{"apiKey": []}])

    @property
    def admin(self) -> list:
        if self.auth == "open":
            return []
        if self.auth == "token":
            return [{"proxyToken": []}]
        return [{"session": []}] + ([{"proxyToken": []}] if self.admin_token else [])

    @property
    def optional(self) -> list:
        """A route public with accounts (a page shows it before sign-in), behind the token
        with AUTH=token."""
        if self.auth == "users":
            return [{}, {"session": []}, {"apiKey": []}]
        return self._pick([])

    public: list = []

    @property
    def secured(self) -> bool:
        return self.auth != "open"


def _with_401(security: list, statuses: tuple[int, ...]) -> tuple[int, ...]:
    """401 is among an operation's answers when it needs a credential."""
    needs = bool(security) and {} not in security
    return tuple(sorted(set(statuses) | ({401} if needs else set())))


# --- the schemas ----------------------------------------------------------------------------

def _schemas(config: Config) -> dict:
    text_chars = config.max_history_chars
    system_chars = min(config.max_system_chars, config.max_history_chars)
    message = {"type": "object", "additionalProperties": False,
               "required": ["role", "content"],
               "properties": {"role": {"enum": ["system", "user", "assistant"]},
                              "content": {"type": "string", "maxLength": text_chars}}}
    history = {"type": "array", "minItems": 1, "maxItems": config.max_messages,
               "items": _ref("Message"),
               "description": "the conversation; the last item is the user's message, "
                              "not blank"}
    user = {"type": "object", "required": ["id", "username", "admin", "disabled"],
            "properties": {"id": {"type": "integer"}, "username": {"type": "string"},
                           "email": {"type": ["string", "null"]}, "createTime": ISO,
                           "admin": {"type": "boolean"}, "disabled": {"type": "boolean"}}}
    key = {"type": "object", "required": ["id", "user_id", "name", "hint"],
           "properties": {"id": {"type": "integer"}, "user_id": {"type": "integer"},
                          "name": {"type": "string"}, "hint": {"type": "string"},
                          "created": ISO, "last_used": ISO, "expires": ISO,
                          "models": {"type": ["array", "null"], "items": {"type": "string"}},
                          "revoked": ISO,
                          "username": {"type": "string",
                                       "description": "the owner's (a page of "
                                                      "/api/admin/keys only)"}}}
    new_key = {"allOf": [_ref("Key"), {"type": "object", "required": ["key", "note"],
                                       "properties": {"key": {"type": "string"},
                                                      "note": {"type": "string"}}}]}
    budget_amount = {"oneOf": [{"type": "integer"}, DOLLARS]}
    standing = {"type": "object",
                "required": ["id", "scope", "subject_id", "unit", "period", "limit", "spent",
                             "reserved", "left", "resets_at"],
                "properties": {"id": {"type": "integer"},
                               "scope": {"enum": ["service", "user", "key"]},
                               "subject_id": {"type": "integer"},
                               "unit": {"enum": ["tokens", "usd", "requests"]},
                               "period": {"enum": ["minute", "day", "month", "total"]},
                               "limit": budget_amount, "spent": budget_amount,
                               "reserved": budget_amount, "left": budget_amount,
                               "resets_at": ISO}}
    day = {"type": "object",
           "required": ["day", "model", "requests", "prompt_tokens", "completion_tokens",
                        "cost"],
           "properties": {"day": {"type": "string", "format": "date"},
                          "model": {"type": ["string", "null"]},
                          "requests": {"type": "integer"},
                          "prompt_tokens": {"type": "integer"},
                          "completion_tokens": {"type": "integer"}, "cost": DOLLARS}}
    nullable_int = {"type": ["integer", "null"]}
    nullable_str = {"type": ["string", "null"]}
    ledger_row = {"type": "object", "required": ["id", "request_id", "created", "cost", "state"],
                  "properties": {"id": {"type": "integer"}, "request_id": {"type": "string"},
                                 "created": ISO, "finished": ISO, "user_id": nullable_int,
                                 "key_id": nullable_int, "door": nullable_str,
                                 "model": nullable_str, "role": nullable_str,
                                 "upstream": nullable_str, "prompt_tokens": nullable_int,
                                 "completion_tokens": nullable_int, "images": nullable_int,
                                 "cost": {"oneOf": [DOLLARS, {"type": "null"}],
                                          "description": "null: the model had no price"},
                                 "outcome": nullable_str,
                                 "duration_ms": nullable_int, "state": {"type": "string"}}}
    element = {"type": "object", "required": ["content"],
               "properties": {"name": {"enum": ["system", "user", "assistant"]},
                              "role": {"enum": ["system", "user", "assistant"]},
                              "content": {"type": "string", "minLength": 1,
                                          "maxLength": system_chars}},
               "description": "`name` (as the GPT Terminal page sends it) or `role`: system "
                              "(first only), user or assistant"}
    role = {"type": "object", "required": ["id", "userId", "keyword", "name"],
            "properties": {"id": {"type": "integer"}, "userId": {"type": "integer"},
                           "keyword": {"type": "string"}, "name": {"type": "string"},
                           "description": {"type": "string"}, "createTime": ISO,
                           "updateTime": ISO}}

    def envelope_ok(data: dict) -> dict:
        return {"type": "object", "required": ["code", "data"],
                "properties": {"code": {"const": 0}, "data": data}}

    return {
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "description": "the `api` door's error (every route but the user protocol's and "
                           "chat-process')",
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "status"],
                "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "status": {"type": "integer"},
                               "field": {"type": "string"}}}}},
        "Message": message,
        "ChatRequest": {
            "type": "object", "additionalProperties": False,
            "description": "one of `message` (a string, or the conversation) and `messages`",
            "oneOf": [{"required": ["message"]}, {"required": ["messages"]}],
            "properties": {
                "message": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": text_chars,
                                       "pattern": r"\S"}, history]},
                "messages": history,
                "role": {"type": "string", "maxLength": 64,
                         "description": "a server role (GET /api/roles) or an own role's "
                                        "keyword; '' or absent: the default"},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                "model": {"type": ["string", "null"], "minLength": 1, "maxLength": 200,
                          "pattern": r"\S",
                          **({"enum": [*config.allowed_models, None]}
                             if config.allowed_models else {})},
                "stream": {"type": "boolean", "default": True},
                "system": {"type": ["string", "null"], "maxLength": system_chars},
                "max_tokens": {"type": ["integer", "null"], "minimum": 1,
                               **({"maximum": config.max_tokens_ceiling}
                                  if config.max_tokens_ceiling else {})}}},
        "ChatReply": {
            "type": "object", "required": ["content", "finish_reason", "usage", "model"],
            "properties": {"content": {"type": "string"},
                           "reasoning": {"type": "string"},
                           "finish_reason": {"type": ["string", "null"]},
                           "usage": {"type": ["object", "null"]},
                           "model": {"type": ["string", "null"]}}},
        "Role": {"type": "object", "required": ["name", "description"],
                 "properties": {"name": {"type": "string"}, "title": {"type": "string"},
                                "description": {"type": "string"},
                                "examples": {"type": "integer"}, "model": {"type": "string"},
                                "own": {"type": "boolean"}}},
        "Limits": {"type": "object",
                   "required": ["max_system_chars", "max_history_chars", "max_messages",
                                "max_body_bytes", "max_role_file_bytes"],
                   "properties": {name: {"type": "integer"} for name in (
                       "max_system_chars", "max_history_chars", "max_messages",
                       "max_body_bytes", "max_role_file_bytes")}},
        "Health": {"type": "object", "required": ["status", "upstream", "demo", "model"],
                   "properties": {"status": {"enum": ["ok", "unavailable"]},
                                  "upstream": {"type": "string"}, "demo": {"type": "boolean"},
                                  "model": {"type": "string"},
                                  "problems": {"type": "array", "items": {"type": "string"}}}},
        "ReplyState": {"type": "object", "required": ["reply_id", "state"],
                       "properties": {"reply_id": {"type": "string"},
                                      "state": {"enum": ["cancelling", "ended"]}}},
        "User": user,
        "Key": key,
        "NewKey": new_key,
        "KeyList": {"type": "object", "required": ["data"],
                    "properties": {"data": {"type": "array", "items": _ref("Key")},
                                   **PAGE_FIELDS}},
        "UserList": {"type": "object", "required": ["data"],
                     "properties": {"data": {"type": "array", "items": _ref("User")},
                                    **PAGE_FIELDS}},
        "NewKeyRequest": {"type": "object", "additionalProperties": False,
                          "properties": NEW_KEY_FIELDS},
        "Standing": standing,
        "NamedStanding": {"allOf": [_ref("Standing"), {
            "type": "object", "required": ["username", "key_name"],
            "properties": {
                "username": {"type": ["string", "null"],
                             "description": "the user's (scope user) or the key's owner's "
                                            "(scope key); null for the service or a subject "
                                            "that is gone"},
                "key_name": {"type": ["string", "null"],
                             "description": "the key's name (scope key), else null"}}}]},
        "BudgetList": {"type": "object", "required": ["data"],
                       "properties": {"data": {"type": "array",
                                               "items": _ref("NamedStanding")}}},
        "Usage": {"type": "object", "required": ["user", "key", "budgets", "by_day"],
                  "properties": {"user": {"type": ["string", "null"]},
                                 "key": {"type": ["string", "null"]},
                                 "budgets": {"type": "array", "items": _ref("Standing")},
                                 "by_day": {"type": "array", "items": day}}},
        "LedgerRow": ledger_row,
        "Ledger": {"type": "object", "required": ["data"],
                   "properties": {"data": {"type": "array", "items": _ref("LedgerRow")}}},
        "Invite": {"type": "object", "required": ["code", "expires"],
                   "properties": {"code": {"type": "string"}, "expires": ISO}},
        # the GPT Terminal user protocol: every answer HTTP 200 in an envelope
        "UserFailure": {
            "type": "object", "required": ["code", "message", "msg", "data"],
            "properties": {"code": {"enum": [40000, 40100, 40300, 40400, 50000]},
                           "message": {"type": "string"}, "msg": {"type": "string"},
                           "data": {"type": "null"}},
            "description": "40000 bad parameters, 40100 not signed in, 40300 forbidden, "
                           "40400 not found, 50000 anything else (HTTP 200 all the same)"},
        "UserOkUser": envelope_ok(user),
        "UserOkId": envelope_ok({"type": "integer"}),
        "UserOkTrue": envelope_ok({"const": True}),
        "UserOkRoles": envelope_ok({"type": "array", "items": _ref("OwnRole")}),
        "UserOkRole": envelope_ok(_ref("OwnRole")),
        "UserOkMessages": envelope_ok({"type": "array", "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}}),
        "UserOkImages": envelope_ok({"type": "array", "items": {
            "type": "object", "required": ["url"],
            "properties": {"url": {"type": "string", "pattern": "^data:image/"}}}}),
        "OwnRole": role,
        "RoleElement": element,
        # chat-process
        "Envelope": {
            "type": "object", "required": ["status", "message", "data"],
            "properties": {"status": {"enum": ["Success", "Fail", "Unauthorized"]},
                           "message": {"type": "string"}, "data": {}},
            "description": "chat-process' answer: `Fail` or `Unauthorized` (a missing or "
                           "wrong key: the page asks for it again) carry the error in "
                           "`message`, HTTP 200 all the same"},
        "ChatProcessRequest": {
            "type": "object", "additionalProperties": False, "required": ["prompt"],
            "properties": {
                "prompt": {"type": "string", "minLength": 1, "maxLength": text_chars,
                           "pattern": r"\S"},
                "options": {"type": ["object", "null"], "additionalProperties": False,
                            "properties": {
                                "parentMessageId": {"type": ["string", "null"],
                                                    "maxLength": 128},
                                "conversationId": {"type": ["string", "null"],
                                                   "maxLength": 128}}},
                "systemMessage": {"type": ["string", "null"], "maxLength": system_chars},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
                "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "model": {"type": ["string", "null"], "minLength": 1, "maxLength": 200}}},
    }


# --- the operations of each door ------------------------------------------------------------

def _api_paths(config: Config, sec: Security) -> dict:
    body_codes = (400, 403, 413, 429, 500, 503)
    chat_sec = sec.session_or_key
    chat = _op(
        "Send a conversation, get the reply", "api", op_id="chat",
        description="The reply's framing follows `Accept` when `stream` is true (the "
                    "default): `text/event-stream` gives server-sent events (`data: "
                    "{\"content\"}` per delta, `event: done`, `event: error`, `: ping`), "
                    "`application/json` the whole reply as one object, anything else "
                    "(curl's `*/*`) the text alone. `stream: false` is always JSON. An error "
                    "before the first byte is a JSON error with its status; after it, an "
                    "`error` event (SSE) or a last line `[error] ...` (text). `X-Resumable: "
                    "1` with server-sent events keeps the reply to be resumed "
                    "(`X-Reply-Id`, GET /api/replies/{reply_id}).",
        security=chat_sec,
        parameters=[{"name": "X-Resumable", "in": "header", "required": False,
                     "schema": {"enum": ["0", "1"]},
                     "description": "1: a resumable reply (needs Accept: text/event-stream)"}],
        body=_body(_ref("ChatRequest")),
        responses={**_ok("The reply, framed as `Accept` asked", content={
            SSE: {"schema": {"type": "string"}}, JSON: {"schema": _ref("ChatReply")},
            TEXT: {"schema": {"type": "string"}}},
            headers={"X-Reply-Id": {"description": "a resumable reply's id",
                                    "schema": {"type": "string"}}}),
            **_errors(*_with_401(chat_sec, (*body_codes, 404, 502, 504)))})
    resume_params = [
        _path_param("reply_id", {"type": "string"},
                    "the id from `X-Reply-Id` (a credential: keep it private)"),
        _query("after", {"type": "string", "pattern": "^[0-9]{1,18}$"},
               "the id of the last event received (or send Last-Event-ID)"),
        {"name": "Last-Event-ID", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
         "description": "the id of the last event received"}]
    replies = {
        "get": _op("Resume a resumable reply", "api", op_id="resumeReply",
                   description="The events after `Last-Event-ID` (or `?after=`; neither: "
                               "from the start), then the live reply to its end, from "
                               "whichever instance holds it. Only its owner finds it.",
                   security=chat_sec, parameters=resume_params,
                   responses={**_ok("The rest of the reply", content={
                       SSE: {"schema": {"type": "string"}}}),
                       **_errors(*_with_401(chat_sec, (400, 403, 404, 410, 429, 500, 503)))}),
        "delete": _op("Cancel a resumable reply", "api", op_id="cancelReply",
                      security=chat_sec, parameters=resume_params[:1],
                      responses={**_ok("It had ended already", _ref("ReplyState")),
                                 **_ok("Cancelling: its upstream closes within a second",
                                       _ref("ReplyState"), status=202),
                                 **_errors(*_with_401(chat_sec, (400, 403, 404, 429, 500,
                                                                 503)))})}
    optional = sec.optional
    return {
        "/api/gpt/get": {"post": chat},
        "/api/replies/{reply_id}": replies,
        "/api/roles": {"get": _op(
            "The server's roles, then the caller's own", "api", op_id="listRoles",
            security=optional,
            responses={**_ok("The roles", {"type": "array", "items": _ref("Role")}),
                       **_errors(*_with_401(optional, (400, 403, 429, 500, 503)))})},
        "/api/limits": {"get": _op(
            "The limits a client should know before it sends", "api", op_id="limits",
            security=optional,
            responses={**_ok("The limits", _ref("Limits")),
                       **_errors(*_with_401(optional, (400, 403, 429, 500, 503)))})},
        "/api/openapi.json": {"get": _op(
            "This document", "api", op_id="openapi", security=sec.public,
            responses={**_ok("The OpenAPI 3.1 document", {"type": "object"}),
                       **_errors(400, 403, 429, 500)})},
        "/healthz": {"get": _op(
            "Liveness (no upstream call)", "api", op_id="healthz", security=sec.public,
            responses={**_ok("Alive", _ref("Health")),
                       **_ok("A folder the service writes cannot be written",
                             _ref("Health"), status=503),
                       **_errors(500)})},
    }


def _account_paths(config: Config, sec: Security) -> dict:
    own, admin = sec.session, sec.admin
    common = (400, 403, 429, 500, 503)
    key_id = _path_param("key_id", ID, "the key's id")
    days = _query("days", {"type": "string", "pattern": "^0*([1-9][0-9]?|[1-3][0-9]{2}|400)$"},
                  "how many days back (1-400, default 31)")
    user_filter = _query("user", {"type": "string", "maxLength": 200},
                         "a user's id or username (empty: everyone)")
    paging = [
        _query("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
               "page number (with q, page or per_page the answer is a page: `page`, "
               "`per_page`, `has_more`; with none of them, every row)"),
        _query("per_page", {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE,
                            "default": 50}, "rows per page")]
    search = {"type": "string", "maxLength": MAX_QUERY, "pattern": "^[^\\x00]*$"}
    find_user = _query("q", search,
                       "part of the username, any case (as usernames compare); `%` and `_` "
                       "are plain characters; the exact name comes first")
    find_key = _query("q", search,
                      "part of the key's name, any case (A-Z only on SQLite); `%` and `_` "
                      "are plain characters")

    def a(summary: str, op_id: str, ok: dict, *, security: list, extra: tuple = (),
          **kw) -> dict:
        return _op(summary, "accounts" if security is not admin else "admin", op_id=op_id,
                   security=security,
                   responses={**ok, **_errors(*_with_401(security, (*common, *extra)))}, **kw)

    user_body = {"type": "object", "required": ["username", "password"],
                 "properties": {"username": {"type": "string", "maxLength": MAX_USERNAME},
                                "password": {"type": "string", "minLength": MIN_PASSWORD_CHARS,
                                             "maxLength": MAX_PASSWORD_BYTES},
                                "email": {"type": ["string", "null"], "maxLength": MAX_EMAIL},
                                "admin": {"type": "boolean", "default": False}}}
    change = {"type": "object", "additionalProperties": False, "minProperties": 1,
              "properties": {"disabled": {"type": "boolean"}, "admin": {"type": "boolean"},
                             "password": {"type": "string", "minLength": MIN_PASSWORD_CHARS,
                                          "maxLength": MAX_PASSWORD_BYTES}}}
    admin_key = {"type": "object", "additionalProperties": False, "required": ["user"],
                 "properties": {"user": {"oneOf": [{"type": "integer"},
                                                   {"type": "string", "minLength": 1,
                                                    "maxLength": 200}]},
                                **NEW_KEY_FIELDS},
                 "description": "a key for `user` (an id or a username)"}
    budget = {"type": "object", "additionalProperties": False,
              "required": ["scope", "unit", "period", "limit"],
              "properties": {"scope": {"enum": ["service", "user", "key"]},
                             "subject": {"oneOf": [{"type": "integer"}, {"type": "string"}],
                                         "description": "the user (id or name) or the key's "
                                                        "id; none for the service"},
                             "unit": {"enum": ["tokens", "usd", "requests"]},
                             "period": {"enum": ["minute", "day", "month", "total"]},
                             "limit": {"oneOf": [{"type": "integer", "minimum": 0},
                                                 {"type": "string"}],
                                       "description": "a whole number; for usd dollars, "
                                                      "e.g. \"5.00\""}}}
    with_session = ("403: a key is not a session (`session_required`): keys are managed from "
                    "a signed-in session.")
    return {
        "/api/keys": {
            "get": a("The caller's own API keys", "myKeys", _ok("The keys", _ref("KeyList")),
                     security=own, description=with_session),
            "post": a("Make an API key (shown once)", "myNewKey",
                      _ok("The new key, with the secret", _ref("NewKey"), status=201),
                      security=own, extra=(413,), body=_body(_ref("NewKeyRequest"), False),
                      description=with_session)},
        "/api/keys/{key_id}": {"delete": a(
            "Revoke one of the caller's keys", "myRevoke", _ok("The revoked key", _ref("Key")),
            security=own, extra=(404,), parameters=[key_id], description=with_session)},
        "/api/usage": {"get": a(
            "The caller's spend by day and the budgets that apply", "myUsage",
            _ok("Spend and budgets", _ref("Usage")), security=sec.session_or_key,
            parameters=[days])},
        "/api/admin/users": {
            "get": a("Every user, or a page of those whose name holds `q`", "adminUsers",
                     _ok("The users", _ref("UserList")), security=admin,
                     parameters=[find_user, *paging]),
            "post": a("Make a user", "adminNewUser", _ok("The user", _ref("User"), status=201),
                      security=admin, extra=(413,), body=_body(user_body))},
        "/api/admin/users/{user_id}": {"patch": a(
            "Disable, enable, make admin, or set the password of a user", "adminChangeUser",
            _ok("The user", _ref("User")), security=admin, extra=(404, 413),
            parameters=[_path_param("user_id", ID, "the user's id")], body=_body(change))},
        "/api/admin/keys": {
            "get": a("Every key (or one user's), or a page of them", "adminKeys",
                     _ok("The keys", _ref("KeyList")), security=admin, extra=(404,),
                     parameters=[user_filter, find_key, *paging]),
            "post": a("Make a key for a user (shown once)", "adminNewKey",
                      _ok("The new key", _ref("NewKey"), status=201), security=admin,
                      extra=(404, 413), body=_body(admin_key))},
        "/api/admin/keys/{key_id}": {"delete": a(
            "Revoke any key", "adminRevoke", _ok("The revoked key", _ref("Key")),
            security=admin, extra=(404,), parameters=[key_id])},
        "/api/admin/invites": {"post": a(
            "Make an invite code (REGISTRATION=invite)", "adminInvite",
            _ok("The code", _ref("Invite"), status=201), security=admin, extra=(413,),
            body=_body({"type": "object", "properties": {
                "days": {"type": "number", "exclusiveMinimum": 0, "maximum": 365,
                         "default": 7}}}, False))},
        "/api/admin/budgets": {
            "get": a("Every budget with its standing and its subject's names", "adminBudgets",
                     _ok("The budgets", _ref("BudgetList")), security=admin),
            "post": a("Make a budget or change its limit", "adminSetBudget",
                      _ok("The budget", _ref("Standing"), status=201), security=admin,
                      extra=(404, 413), body=_body(budget))},
        "/api/admin/budgets/{budget_id}": {"delete": a(
            "Delete a budget", "adminDeleteBudget",
            _ok("Deleted", {"type": "object", "required": ["deleted"],
                            "properties": {"deleted": {"type": "integer"}}}),
            security=admin, extra=(404,),
            parameters=[_path_param("budget_id", ID, "the budget's id")])},
        "/api/admin/usage": {"get": a(
            "The usage ledger (filtered; CSV export)", "adminUsage",
            _ok("Ledger rows, oldest first", content={
                JSON: {"schema": _ref("Ledger")},
                CSV: {"schema": {"type": "string"}}}),
            security=admin, extra=(404,), parameters=[
                user_filter,
                _query("key", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "a key's id"),
                _query("from", {"type": "string"}, "from this moment: an ISO 8601 date such "
                       "as 2026-11-30, or a date and time (UTC unless it says otherwise)"),
                _query("to", {"type": "string"}, "before this moment (as `from`)"),
                _query("format", {"enum": ["json", "csv"]}, "json (default) or csv"),
                _query("limit", {"type": "string",
                                 "pattern": "^0*([1-9][0-9]{0,3}|10000)$"},
                       "at most this many rows (JSON; 1-10000, default 1000)")])},
    }


def _user_protocol_paths(config: Config, sec: Security) -> dict:
    def answer(ok: str) -> dict:
        return _ok("HTTP 200 always: `{\"code\": 0, \"data\"}`, or a failure envelope",
                   {"oneOf": [_ref(ok), _ref("UserFailure")]})

    def u(summary: str, op_id: str, ok: str, *, security: list, body: dict | None = None,
          required: bool = True, description: str | None = None) -> dict:
        return {"post": _op(summary, "user protocol", op_id=op_id, security=security,
                            responses=answer(ok), description=description,
                            body=_body(body if body is not None else {"type": "object"},
                                       required and body is not None))}

    credentials = {"type": "object", "required": ["username", "password"],
                   "properties": {"username": {"type": "string", "minLength": 1,
                                               "maxLength": MAX_USERNAME},
                                  "password": {"type": "string", "minLength": 1,
                                               "maxLength": MAX_PASSWORD_BYTES}}}
    register = {"type": "object", "required": ["username", "password"],
                "properties": {**credentials["properties"],
                               "email": {"type": ["string", "null"], "maxLength": MAX_EMAIL},
                               "invite": {"type": "string",
                                          "description": "REGISTRATION=invite"}}}
    keyword = {"type": "string", "minLength": 1, "maxLength": MAX_KEYWORD}
    elements = {"type": "array", "minItems": 1, "maxItems": MAX_ROLE_ELEMENTS,
                "items": _ref("RoleElement")}
    role_fields = {"name": {"type": "string", "minLength": 1, "maxLength": MAX_ROLE_NAME},
                   "description": {"type": ["string", "null"],
                                   "maxLength": MAX_ROLE_DESCRIPTION},
                   "roleElementList": elements}
    signed = sec.session_or_key
    image = {"type": "object", "additionalProperties": False, "required": ["prompt"],
             "properties": {"prompt": {"type": "string", "minLength": 1, "maxLength": 32_000},
                            "number": {"oneOf": [{"type": "integer", "minimum": 0,
                                                  "maximum": 5},
                                                 {"type": "string", "pattern": "^[0-5]$"},
                                                 {"type": "null"}]},
                            "size": {"enum": ["256x256", "512x512", "1024x1024"]}}}
    with_cookie = "Sets the session cookie (`" + SESSION_COOKIE + "`)."
    return {
        "/api/user/register": u("Register (REGISTRATION=open or invite)", "userRegister",
                                "UserOkId", security=sec.public, body=register),
        "/api/user/login": u("Sign in", "userLogin", "UserOkUser", security=sec.public,
                             body=credentials, description=with_cookie),
        "/api/user/current": u("Who is signed in", "userCurrent", "UserOkUser",
                               security=sec.public, required=False),
        "/api/user/logout": u("Sign out (ends this session)", "userLogout", "UserOkTrue",
                              security=sec.public, required=False),
        "/api/user/password": u(
            "Change one's own password (every other session ends)", "userPassword",
            "UserOkTrue", security=signed,
            body={"type": "object", "required": ["password", "newPassword"],
                  "properties": {"password": {"type": "string", "minLength": 1},
                                 "newPassword": {"type": "string",
                                                 "minLength": MIN_PASSWORD_CHARS,
                                                 "maxLength": MAX_PASSWORD_BYTES}}}),
        "/api/role/create": u("Make an own role", "roleCreate", "UserOkId", security=signed,
                              body={"type": "object",
                                    "required": ["keyword", "name", "roleElementList"],
                                    "properties": {"keyword": keyword, **role_fields}}),
        "/api/role/listByUserId": u("The caller's own roles", "roleList", "UserOkRoles",
                                    security=signed, required=False),
        "/api/role/getRoleElementsByKeyword": u(
            "An own role's messages", "roleElements", "UserOkMessages", security=signed,
            body={"type": "object", "required": ["keyword"], "properties": {"keyword": keyword}}),
        "/api/role/update": u("Change an own role", "roleUpdate", "UserOkRole", security=signed,
                              body={"type": "object", "required": ["keyword"],
                                    "properties": {"keyword": keyword, **role_fields}}),
        "/api/role/delete": u("Delete an own role", "roleDelete", "UserOkTrue",
                              security=signed,
                              body={"type": "object", "required": ["keyword"],
                                    "properties": {"keyword": keyword}}),
        "/api/gpt/getImage": u("Make images (OPENAI_IMAGE_MODEL) as data: URLs", "getImage",
                               "UserOkImages", security=signed, body=image),
    }


def _chat_process_paths(config: Config, sec: Security) -> dict:
    def c(summary: str, op_id: str, *, security: list, body: dict | None = None,
          content: dict | None = None) -> dict:
        desc = "HTTP 200 always; a failure is `status: Fail` (or `Unauthorized`)"
        return {"post": _op(summary, "chat-process", op_id=op_id, security=security,
                            body=_body(body, True) if body is not None else None,
                            responses=_ok(desc, content=content or _json(_ref("Envelope"))))}

    return {
        "/api/session": c("Whether a token is needed, and the model kind", "cpSession",
                          security=sec.public),
        "/api/verify": c("Check a token (an API key with AUTH=users)", "cpVerify",
                         security=sec.public,
                         body={"type": "object", "required": ["token"],
                               "properties": {"token": {"type": "string", "minLength": 1}}}),
        "/api/config": c("The settings the page shows", "cpConfig", security=sec.key),
        "/api/chat-process": c(
            "Send a message, get the reply as lines of JSON", "chatProcess",
            security=sec.key, body=_ref("ChatProcessRequest"),
            content={OCTETS: {"schema": {"type": "string"},
                              "x-description": "one JSON object per line: the reply so far"},
                     JSON: {"schema": _ref("Envelope")}}),
    }


def _console_paths(config: Config, sec: Security) -> dict:
    """The console's routes (docs/console.md), used only when the console module
    registers them and describes none itself."""
    admin, own = sec.admin, sec.session_or_key
    series_q = [_query("from", {"type": "string", "format": "date"}, "first day (BUDGET_TZ)"),
                _query("to", {"type": "string", "format": "date"}, "last day (BUDGET_TZ)")]
    common = (400, 403, 429, 500, 503)
    obj = {"type": "object"}

    def g(summary: str, op_id: str, security: list, params: list | None = None,
          content: dict | None = None) -> dict:
        return {"get": _op(summary, "console", op_id=op_id, security=security,
                           parameters=params,
                           responses={**_ok("The answer", obj, content=content),
                                      **_errors(*_with_401(security, common))})}

    by = _query("by", {"enum": ["model", "key", "user"]}, "what a series is of")
    return {
        "/api/console/me": g("Who is signed in, the zone and the time", "consoleMe",
                             sec.optional),
        "/api/usage/series": g("The caller's usage as daily series", "usageSeries", own,
                               [*series_q, by]),
        "/api/admin/usage/series": g("Everyone's usage as daily series", "adminUsageSeries",
                                     admin, [*series_q, by,
                                             _query("user", {"type": "string"}, "a user"),
                                             _query("key", {"type": "string"}, "a key")]),
        "/api/admin/overview": g("Today's and this month's figures", "adminOverview", admin),
        "/api/admin/ledger": g("The ledger, paged (CSV export)", "adminLedger", admin,
                               content={JSON: {"schema": obj},
                                        CSV: {"schema": {"type": "string"}}}),
        "/api/admin/upstreams": g("The upstreams' state", "adminUpstreams", admin),
    }


def _page_paths() -> dict:
    return {path: {"get": _op("A page of the web terminal" if path == "/" else "The console",
                              "pages", op_id="page" + re.sub(r"\W", "_", path),
                              security=[],
                              responses=_ok("The page", content={HTML: {"schema": {
                                  "type": "string"}}}))} for path in PAGES}


# --- the document ---------------------------------------------------------------------------

def flask_path(path: str) -> str:
    """`/api/keys/{key_id}` -> a pattern comparable with a url_map rule's path."""
    return re.sub(r"\{[^}]+\}", "<>", path)


def _rule_path(rule: str) -> str:
    return re.sub(r"<[^>]+>", "<>", rule)


def registered(app: Flask) -> dict[str, set[str]]:
    """Each rule's path (parameters as `<>`) -> its methods, lower case, without the HEAD
    and OPTIONS Flask adds to every route."""
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        methods = {m.lower() for m in (rule.methods or ())} - {"head", "options"}
        found.setdefault(_rule_path(rule.rule), set()).update(methods)
    return found


def _module_parts(app: Flask, config: Config) -> tuple[dict, dict]:
    """OPENAPI_PATHS and OPENAPI_SCHEMAS of each registered blueprint's module."""
    import importlib

    paths: dict = {}
    schemas: dict = {}
    for blueprint in app.blueprints.values():
        if blueprint is bp:
            continue
        module = importlib.import_module(blueprint.import_name)
        part = getattr(module, "OPENAPI_PATHS", None)
        if part is not None:
            paths.update(part(config) if callable(part) else part)
        more = getattr(module, "OPENAPI_SCHEMAS", None)
        if more is not None:
            schemas.update(more(config) if callable(more) else more)
    return paths, schemas


def document(app: Flask) -> dict:
    """The OpenAPI 3.1 document of `app`: what it registers, under its settings."""
    config: Config = app.extensions["gpt_proxy"].config
    sec = Security(config)
    described: dict = {}
    for part in (_console_paths(config, sec), _page_paths(), _api_paths(config, sec),
                 _account_paths(config, sec), _user_protocol_paths(config, sec),
                 _chat_process_paths(config, sec)):
        described.update(part)
    module_paths, module_schemas = _module_parts(app, config)
    for path, item in module_paths.items():  # a module's operation refines one described
        here = described.setdefault(path, {})  # here: its id, security and common errors stay
        for method, op in item.items():
            base = here.get(method, {})
            here[method] = {**base, **op, "responses": {**base.get("responses", {}),
                                                        **op.get("responses", {})}}
    routes = registered(app)
    paths = {}
    for path, item in described.items():
        methods = routes.get(flask_path(path), set())
        kept = {name: op for name, op in item.items() if name not in _METHODS or name in methods}
        if any(name in _METHODS for name in kept):
            paths[path] = kept
    schemes: dict = {}
    if config.auth == "users":
        schemes["session"] = {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                              "description": "the session cookie POST /api/user/login sets"}
        schemes["apiKey"] = {"type": "http", "scheme": "bearer", "bearerFormat": "sk-gpx-...",
                             "description": "an API key (POST /api/keys)"}
    if config.auth == "token" or (config.auth == "users" and config.proxy_token):
        schemes["proxyToken"] = {"type": "http", "scheme": "bearer",
                                 "description": "PROXY_TOKEN (AUTH=token; with AUTH=users "
                                                "the admin credential)"}
    components: dict = {
        "schemas": {**_schemas(config), **module_schemas},
        "headers": {
            "X-Request-Id": {"required": True, "description": "this request's id, as in the "
                             "access log", "schema": {"type": "string"}},
            "Retry-After": {"description": "seconds to wait before trying again",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            "WWW-Authenticate": {"description": "the credential expected",
                                 "schema": {"type": "string"}}},
    }
    if schemes:
        components["securitySchemes"] = schemes
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "gpt_proxy", "version": VERSION,
                 "description": "The service's own API (AUTH=" + config.auth + "). The "
                                "OpenAI-compatible API under /v1 is OpenAI's own, "
                                "described by OpenAI."},
        "servers": [{"url": "/"}],
        "tags": [{"name": name} for name in ("api", "accounts", "admin", "user protocol",
                                             "chat-process", "console", "pages")],
        "paths": paths,
        "components": components,
    }
