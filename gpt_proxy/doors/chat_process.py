"""The chat-process protocol (base path /api), as the chatgpt-web frontend and its forks, and
today's GPT Terminal frontend, speak it: those frontends work against this service unmodified.

- `POST /api/session`: whether a token is needed; `POST /api/verify`: checks one (both open
  without the token: a frontend calls them to learn it); `POST /api/config`: harmless facts
  for the settings page, never a secret or the upstream's address.
- `POST /api/chat-process` with `{prompt, options: {parentMessageId?, conversationId?},
  systemMessage?, temperature?, top_p?, model?}`: `application/octet-stream`, JSON objects
  separated by `\\n`, each the reply so far: `{role, id, parentMessageId, conversationId?,
  text, delta, detail}` (`detail`: the upstream's newest chunk with choices, so chatgpt-web
  can read `detail.choices[0].finish_reason` and continue a reply cut off by `length`).
  Those frontends parse the last line on every progress event, and parse a body that is one
  JSON value as an error envelope, so a reply always spans at least two lines: the first goes
  out before the upstream's first token. One line per wake-up of the relay, not per token;
  a heartbeat repeats the newest line (harmless to a reader that only looks at the last).
- Errors before the first byte: HTTP 200 with `{"status": "Fail", "message", "data": null}`
  (`"Unauthorized"` for a missing or wrong proxy token, on which the frontends ask for it
  again): they show `message` and nothing of a non-200 status. The access line keeps the real
  status. A failure mid-reply is one more line: the text so far plus `[error] <message>`.
- Memory: each user message and each reply is stored (`conversations`); `parentMessageId`
  rebuilds the history within MAX_MESSAGES and MAX_HISTORY_CHARS. An unknown or expired id
  starts a fresh conversation (the access line says `memory=unknown_parent`); a store that
  cannot be read or written is an error before the first byte. A reply is stored when it
  ends, with the text relayed (a cut-off reply as it was cut), before the client sees the
  end of the body, so an immediate follow-up finds it.
- `systemMessage` (at most MAX_SYSTEM_CHARS) is the system prompt; without one the role
  CHAT_PROCESS_ROLE applies. Unknown fields are errors: nothing sent is dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Blueprint, current_app, jsonify

from ..base.config import ROOT
from ..base.errors import BadRequest, PayloadTooLarge, ProxyError, with_wait
from ..identity.callers import caller, public
from ..identity.security import token_matches
from ..pipeline import stages as pipeline
from ..pipeline.relay import Framer, Outcome, Relay
from ..pipeline.roles import DEFAULT_ROLE
from ..pipeline.validation import check_model, check_text, parse_body
from ..storage.conversations import Resolved, Store, StoreError, new_id, open_store, resolve
from ..upstream.chunks import Delta

bp = Blueprint("chat_process", __name__, url_prefix="/api")
CREDENTIALS = ("key",)  # these frontends keep a token and send it as a Bearer (identity)
log = logging.getLogger("gpt_proxy.chat_process")

PATHS = frozenset(("/api/session", "/api/verify", "/api/config", "/api/chat-process"))
MEDIA = "application/octet-stream"
API_MODEL = "ChatGPTAPI"  # what the frontends expect: they then send systemMessage etc.
MAX_ID_CHARS = 128
FIELDS = ("prompt", "options", "systemMessage", "temperature", "top_p", "model")
OPTION_FIELDS = ("parentMessageId", "conversationId")
_STORE = "gpt_proxy.chat_process.store"
# The first line goes out before the upstream's first chunk; its `detail` has the shape of
# the role-only chunk the original backend's first line carried.
OPENING_DETAIL = {"choices": [{"index": 0, "delta": {"role": "assistant"},
                               "finish_reason": None}]}


def owns(path: str) -> bool:
    return path in PATHS


def envelope(status: str, message: str, data: object = None):
    return jsonify({"status": status, "message": message, "data": data})


def error_response(err: ProxyError):
    """HTTP 200 and the envelope the frontends show (`Unauthorized` makes them ask for the
    token again); the wait of a rate limit is part of the message, the only part shown."""
    message = with_wait(err)
    retry = err.headers.get("Retry-After")
    asks_again = err.code in ("unauthorized", "invalid_api_key")  # no or a bad credential
    response = envelope("Unauthorized" if asks_again else "Fail", message)
    if retry:
        response.headers["Retry-After"] = retry
    return response


# --- session, verify, config ----------------------------------------------------------------

def _config():
    return current_app.extensions["gpt_proxy"].config


@bp.post("/session")
@public
def session():
    return envelope("Success", "", {"auth": _config().auth != "open", "model": API_MODEL})


@bp.post("/verify")
@public
def verify():
    """Checks a token in constant time (AUTH=token), or an API key (AUTH=users); rate
    limited like every /api/ route (RATE_LIMIT)."""
    config = _config()
    body = parse_body(pipeline.read_body(config))
    token = body.get("token")
    users = config.auth == "users"
    if not isinstance(token, str) or not token.strip():
        raise BadRequest("the token is empty: enter " + ("your API key" if users else
                                                         "the proxy token (PROXY_TOKEN)"),
                         field="token")
    if config.auth == "open":
        return envelope("Success", "this service needs no token")
    if users:
        if current_app.extensions["gpt_proxy"].accounts.key(token.strip()) is not None:
            return envelope("Success", "the key is valid")
        raise ProxyError("the key is not valid (unknown, revoked or expired)", status=401,
                         code="wrong_token")
    if token_matches(token.strip(), config.proxy_token):
        return envelope("Success", "the token is valid")
    raise ProxyError("the token is wrong", status=401, code="wrong_token")


@bp.post("/config")
def settings():
    config = _config()
    return envelope("Success", "", {
        "apiModel": API_MODEL, "reverseProxy": "-",
        "timeoutMs": int(config.upstream_read_timeout * 1000),
        "socksProxy": "-", "httpsProxy": "-", "usage": "-"})


# --- the request ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatProcessRequest:
    prompt: str
    parent_id: str | None = None
    conversation_id: str | None = None
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    model: str | None = None


def _number(body: dict, name: str, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 <= value <= high):
        raise BadRequest(f"'{name}' must be a number from 0 to {high:g}", field=name)
    return float(value)


def _id(options: dict, name: str) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise BadRequest(f"'options.{name}' must be a message id: a string of at most "
                         f"{MAX_ID_CHARS} characters", field=f"options.{name}")
    return check_text(value, f"options.{name}")


def parse_request(body: dict, config) -> ChatProcessRequest:
    """Check every field; the first problem found is the `Fail` the client gets."""
    for key in body:
        if key not in FIELDS:
            raise BadRequest(f"'{str(key)[:100]}' is not a supported field (supported: "
                             f"{', '.join(FIELDS)})", field=str(key)[:100])
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' is required: the message, a non-empty string",
                         field="prompt")
    if len(prompt) > config.max_history_chars:
        raise PayloadTooLarge(f"the message is {len(prompt)} characters long, more than "
                              f"MAX_HISTORY_CHARS ({config.max_history_chars})", field="prompt",
                              code="message_too_long")
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object such as {\"parentMessageId\": \"...\"}",
                         field="options")
    for key in options:
        if key not in OPTION_FIELDS:
            raise BadRequest(f"'options.{str(key)[:100]}' is not a supported field "
                             f"(supported: {', '.join(OPTION_FIELDS)})",
                             field=f"options.{str(key)[:100]}")
    system = body.get("systemMessage")
    if system is not None:
        if not isinstance(system, str):
            raise BadRequest("'systemMessage' must be a string", field="systemMessage")
        if len(system) > config.max_system_chars:
            raise PayloadTooLarge(f"'systemMessage' is {len(system)} characters long; at most "
                                  f"{config.max_system_chars} are accepted (MAX_SYSTEM_CHARS)",
                                  field="systemMessage", code="system_too_long")
        check_text(system, "systemMessage")
    model = body.get("model")
    if model is not None:
        check_model(model, config)
    return ChatProcessRequest(
        prompt=check_text(prompt, "prompt"), parent_id=_id(options, "parentMessageId"),
        conversation_id=_id(options, "conversationId"), system=system or None,
        temperature=_number(body, "temperature", 2), top_p=_number(body, "top_p", 1),
        model=model)


# --- the store ------------------------------------------------------------------------------

def _unavailable(exc: StoreError) -> ProxyError:
    log.warning("%s", exc)
    return ProxyError(f"{exc}; try again later", status=503, code="store_unavailable")


def conversation_store() -> Store:
    """This process's store, opened on first use (a gunicorn worker opens its own after the
    fork); an open that fails is tried again by the next request."""
    extensions = current_app.extensions
    holder = extensions.setdefault(_STORE, {"lock": threading.Lock()})
    with holder["lock"]:
        store = holder.get("store")
        if store is None or holder.get("pid") != os.getpid():
            config = extensions["gpt_proxy"].config
            try:
                store = open_store(config.conversation_store,
                                   config.conversation_ttl_days * 86400, ROOT)
            except StoreError as exc:
                raise _unavailable(exc) from None
            holder.update(store=store, pid=os.getpid())
        return store


def use_store(app, store: Store) -> None:
    """Serve `app` from `store` (tests give theirs, with an injected clock)."""
    app.extensions[_STORE] = {"lock": threading.Lock(), "store": store, "pid": os.getpid()}


def _memory(resolved: Resolved, asked: bool) -> str:
    if resolved.unknown:
        return "unknown_parent"
    if not asked:
        return "new"
    return "after_reply" if resolved.followed_reply else "continued"


# --- the reply ------------------------------------------------------------------------------

class LineFramer(Framer):
    """Each write is one line: the reply so far, as the frontends read it."""

    raw = True  # `detail` is the upstream's own chunk

    def __init__(self, reply_id: str, parent_id: str, conversation_id: str | None) -> None:
        self.head: dict = {"role": "assistant", "id": reply_id, "parentMessageId": parent_id}
        if conversation_id:
            self.head["conversationId"] = conversation_id
        self.text = ""
        self.detail: dict = OPENING_DETAIL
        self.lines = 0
        self.opening = self.line("")

    def line(self, delta: str, text: str | None = None, **extra) -> bytes:
        """The reply so far as one line (after a line end, unless it is the first)."""
        value = {**self.head, "text": self.text if text is None else text, "delta": delta,
                 "detail": self.detail, **extra}
        try:
            data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in the upstream's chunk: escape it
            data = json.dumps(value, separators=(",", ":")).encode("ascii")
        self.lines += 1
        return data if self.lines == 1 else b"\n" + data

    def batch(self, deltas: list[Delta]) -> bytes:
        new: list[str] = []
        finished = False
        for d in deltas:
            if d.kind == "content":
                new.append(d.text)
            elif d.kind in ("chunk", "completion"):
                choices = d.chunk.get("choices")
                if isinstance(choices, list) and choices:
                    self.detail = d.chunk
                    finished = finished or any(isinstance(c, dict) and c.get("finish_reason")
                                               for c in choices)
        if not new and not finished:
            return b""
        delta = "".join(new)
        self.text += delta
        return self.line(delta)

    def ping(self) -> bytes:
        return self.line("")

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        mark = ("\n\n" if self.text else "") + f"[error] {err.message}"
        return self.line(mark, self.text + mark,
                         error={"code": err.code, "message": err.message})


def _body(relay: Relay, framer: LineFramer, saved: dict) -> Iterator[bytes]:
    """The relay's frames, then what only the end can tell: that the reply could not be
    stored, or (a reply with no line of its own) the reply once more, so the body is never a
    single JSON value."""
    yield from relay.frames(framer)
    if relay.outcome.client_left:
        return
    failure = saved.get("error")
    if failure is not None:
        yield framer.error(ProxyError(f"the reply could not be saved, so a follow-up will "
                                      f"not remember it: {failure}", code="store_unavailable"),
                           relay.outcome)
    elif framer.lines < 2:
        yield framer.line("")


@bp.post("/chat-process")
def chat_process():
    state = current_app.extensions["gpt_proxy"]
    config = state.config
    asked = parse_request(parse_body(pipeline.read_body(config)), config)
    store = conversation_store()
    owner = caller().owner
    try:
        resolved = resolve(store, asked.parent_id, max_messages=config.max_messages - 1,
                           max_chars=config.max_history_chars, owner=owner)
        history = [{"role": m.role, "content": m.text} for m in resolved.history
                   if m.text or m.role == "user"]  # a reply stopped before its first word
        user = store.add(new_id(), resolved.parent.id if resolved.parent else None, "user",
                         asked.prompt, owner)
    except StoreError as exc:
        raise _unavailable(exc) from None
    options = {name: value for name, value in (("temperature", asked.temperature),
                                               ("top_p", asked.top_p)) if value is not None}
    if config.max_tokens_ceiling:
        options["max_tokens"] = config.max_tokens_ceiling
    turn = pipeline.Turn(
        "chat-process", MEDIA, [*history, {"role": "user", "content": asked.prompt}],
        asked.model or None,  # none named: the role's model, else OPENAI_MODEL
        role=DEFAULT_ROLE if asked.system else config.chat_process_role, system=asked.system,
        options=options, log_text=asked.prompt,
        log_fields={"memory": _memory(resolved, asked.parent_id is not None),
                    "history": len(history)})
    reply_id = new_id()
    saved: dict = {}

    def store_reply(outcome: Outcome) -> None:
        try:
            store.add(reply_id, user.id, "assistant", "".join(outcome.content), owner)
        except StoreError as exc:
            log.warning("reply %s not stored: %s", reply_id, exc)
            saved["error"] = exc

    relay = pipeline.start(turn, on_close=store_reply)
    framer = LineFramer(reply_id, user.id, asked.conversation_id)
    return pipeline.stream_response(_body(relay, framer, saved), MEDIA)
