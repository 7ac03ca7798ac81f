"""The service's own protocol, POST /api/gpt/get, and its other routes: parse and validate,
pick the framing, delegate to the shared pipeline; the framers and the error shape of this
protocol. Nothing else.

Resumable replies (`replies`): `X-Resumable: 1` with an SSE framing asks for one; the reply's
id goes out in `X-Reply-Id` and in its first event. `GET /api/replies/<id>` (after
`Last-Event-ID` or `?after=`) sends the rest and follows it to its end (HEAD: the headers a
GET would get, changing nothing); `DELETE /api/replies/<id>` cancels it. All need the
credentials /api/gpt/get needs, and answer only the reply's owner."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import pipeline
from .chunks import Delta
from .errors import BadRequest, ProxyError
from .identity import caller, public_with_accounts
from .relay import Framer, Outcome, client_watcher
from .replies import Follow, parse_after
from .roles import MAX_ROLE_BYTES
from .sse import encode_json, encode_text
from .startup import health_problems
from .validation import parse_body, validate

bp = Blueprint("api", __name__)
CREDENTIALS = ("session", "key")  # what identifies a caller here (see identity)

SSE, JSON, TEXT = "text/event-stream", "application/json", "text/plain"
RESUMABLE = "X-Resumable"
REPLY_ROUTE = "/api/replies/<reply_id>"


def choose_framing(accept: str, stream: bool) -> str:
    """SSE if asked for by name, JSON if asked for by name (or `stream: false`), else raw text.
    Only explicit types count: curl's and fetch's `*/*` get the typewriter text."""
    if not stream:
        return JSON
    best, best_q = TEXT, 0.0
    for item in accept.split(","):
        kind, _, params = item.strip().partition(";")
        kind = kind.strip().lower()
        if kind not in (SSE, JSON, TEXT):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        rank = (SSE, JSON, TEXT).index(kind)
        if q > best_q or (q == best_q and q > 0 and rank < (SSE, JSON, TEXT).index(best)):
            best, best_q = kind, q
    return best


class SSEFramer(Framer):
    """`data: {"content": ...}` per delta, `event: done` / `event: error`, `: ping` comments."""

    opening = b": stream open\n\n"

    def delta(self, d: Delta) -> bytes:
        if d.kind == "content":
            return encode_text("content", d.text)
        if d.kind == "reasoning":
            return encode_text("reasoning", d.text)
        return encode_json({"finish_reason": d.finish_reason, "usage": d.usage,
                            "model": d.model}, "done")

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        return encode_json(err.to_dict(), "error")


class TextFramer(Framer):
    """The reply's text and nothing else; a failure ends it with a line `[error] ...`."""

    heartbeats = False

    def delta(self, d: Delta) -> bytes:
        return d.text.encode("utf-8") if d.kind == "content" else b""

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        text = "" if (not outcome.content or outcome.content[-1].endswith("\n")) else "\n"
        return f"{text}[error] {err.message}\n".encode()


def wants_resumable(value: str | None, framing: str) -> bool:
    """`X-Resumable: 1` asks for a resumable reply, which only an SSE framing can carry;
    absent or `0`: an ordinary reply. Anything else is a 400, never silently ignored."""
    if value is None or value.strip() == "0":
        return False
    if value.strip() != "1":
        raise BadRequest(f"{RESUMABLE} must be 1 (a resumable reply) or 0, not "
                         f"{value.strip()[:20]!r}", field=RESUMABLE)
    if framing != SSE:
        raise BadRequest(f"a resumable reply is sent as server-sent events: ask for it with "
                         f"Accept: text/event-stream (and stream: true) along with "
                         f"{RESUMABLE}: 1", field=RESUMABLE)
    return True


@bp.post("/api/gpt/get")
def chat():
    config = current_app.extensions["gpt_proxy"].config
    chat_request = validate(parse_body(pipeline.read_body(config)), config)
    framing = choose_framing(request.headers.get("Accept", ""), chat_request.stream)
    resumable = wants_resumable(request.headers.get(RESUMABLE), framing)
    options = {}
    if chat_request.temperature is not None:
        options["temperature"] = chat_request.temperature
    if chat_request.max_tokens is not None:
        options["max_tokens"] = chat_request.max_tokens
    relay = pipeline.start(pipeline.Turn(
        "gpt", framing, chat_request.history, chat_request.model, role=chat_request.role,
        system=chat_request.system, options=options,
        log_text=chat_request.history[-1]["content"], resumable=resumable))
    if framing == JSON:
        outcome = relay.collect()
        if outcome.error is not None:
            raise outcome.error
        body = {"content": "".join(outcome.content), "finish_reason": outcome.finish_reason,
                "usage": outcome.usage, "model": outcome.model}
        if outcome.reasoning:
            body["reasoning"] = "".join(outcome.reasoning)
        return jsonify(body)
    response = pipeline.stream_response(
        relay.frames(SSEFramer() if framing == SSE else TextFramer()), framing)
    if relay.reply is not None:
        response.headers["X-Reply-Id"] = relay.reply.id
    return response


@bp.get(REPLY_ROUTE)
def resume(reply_id: str):
    """The events of a resumable reply after `Last-Event-ID` (or `?after=`; none: from the
    start), then the live reply to its end, from whichever instance holds it. HEAD: the
    status and headers a GET would get, and nothing else (the reply is not claimed, so
    its live client goes on)."""
    state = current_app.extensions["gpt_proxy"]
    unknown = sorted(set(request.args) - {"after"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:50]!r} (only 'after' is read)",
                         field=unknown[0][:50])
    after = parse_after(request.headers.get("Last-Event-ID"), request.args.get("after"))
    if request.method == "HEAD":  # Flask answers HEAD here: a safe method changes nothing
        state.replies.check(reply_id, caller().owner, after)
        g.chat = {"protocol": "gpt", "framing": SSE}
        return Response(iter(()), mimetype=SSE, headers=pipeline.STREAM_HEADERS,
                        direct_passthrough=True)  # no length: a GET's body has none
    follow = state.replies.follow(reply_id, caller().owner, after,
                                  client_watcher(request.environ),
                                  state.config.heartbeat_seconds)
    g.chat = {"protocol": "gpt", "framing": SSE}
    return pipeline.stream_response(_followed(follow, request.environ), SSE)


def _followed(follow: Follow, environ: dict) -> Iterator[bytes]:
    """A follower's body, then its access line (written when it ends, as a relay's is);
    the path without the reply's id, which is a credential."""
    metrics = current_app.extensions["gpt_proxy"].metrics
    request_id, started = g.get("request_id", "-"), g.get("started") or time.monotonic()
    client = environ.get("REMOTE_ADDR", "-")

    def body() -> Iterator[bytes]:
        try:
            yield from follow
        finally:
            follow.close()
            environ[pipeline.ACCESS_LOGGED] = True
            metrics.answered(REPLY_ROUTE, "gpt", SSE,
                             "ok" if follow.result in ("ok", "client_left") else
                             f"resume_{follow.result}")
            logging.getLogger("gpt_proxy.access").info(
                "request id=%s client=%s method=GET path=/api/replies/<id> status=200 "
                "protocol=gpt framing=%s result=resumed:%s after=%d events=%d duration=%.0fms",
                request_id, client, SSE, follow.result, follow.after, follow.events,
                (time.monotonic() - started) * 1000)
    return body()


@bp.delete(REPLY_ROUTE)
def cancel_reply(reply_id: str):
    """Cancel a resumable reply: its upstream is closed within a second, wherever it runs
    (202); one that had ended already is left as it is (200)."""
    state = current_app.extensions["gpt_proxy"]
    result = state.replies.cancel(reply_id, caller().owner)
    return jsonify({"reply_id": reply_id, "state": result}), 202 if result == "cancelling" else 200


@bp.get("/api/roles")
@public_with_accounts
def roles():
    """The server's roles, then (signed in) the caller's own, marked `"own": true`."""
    state = current_app.extensions["gpt_proxy"]
    listed = state.roles.list()
    who = caller()
    if who.user is not None:
        listed += [{"name": role.keyword, "title": role.name, "description": role.description,
                    "examples": sum(1 for kind, _ in role.elements if kind == "assistant"),
                    "own": True} for role in state.accounts.roles(who.user.id)]
    return jsonify(listed)


@bp.get("/api/limits")
@public_with_accounts
def limits():
    """The limits a client should know before it sends (the page checks a role it keeps
    against `max_system_chars` when it is saved, not when it is first used, and an exported
    role file against `max_role_file_bytes`, the largest file `roles/` loads)."""
    config = current_app.extensions["gpt_proxy"].config
    return jsonify({"max_system_chars": min(config.max_system_chars, config.max_history_chars - 1),
                    "max_history_chars": config.max_history_chars,
                    "max_messages": config.max_messages, "max_body_bytes": config.max_body_bytes,
                    "max_role_file_bytes": MAX_ROLE_BYTES})


@bp.get("/healthz")
def healthz():
    """Liveness, no upstream call; 503 when a folder the service writes cannot be written
    (the start-up check, run again: gpt_proxy/startup.py)."""
    state = current_app.extensions["gpt_proxy"]
    problems = health_problems(state.config)
    body = {"status": "unavailable" if problems else "ok", "upstream": state.upstream.mode,
            "demo": state.config.demo, "model": state.config.openai_model}
    if problems:
        body["problems"] = problems
    return jsonify(body), 503 if problems else 200


def new_request_id() -> str:
    incoming = request.headers.get("X-Request-Id", "")
    if incoming and len(incoming) <= 64 and incoming.replace("-", "").isalnum():
        return incoming
    return os.urandom(8).hex()


def owns(path: str) -> bool:
    """Every path not claimed by another protocol answers errors in this one's shape."""
    return True


def error_response(err: ProxyError):
    """`{"error": {"code", "message", "status"[, "field"]}}` with the error's status."""
    response = jsonify(err.to_dict())
    response.status_code = err.status
    for name, value in err.headers.items():
        response.headers[name] = value
    return response

