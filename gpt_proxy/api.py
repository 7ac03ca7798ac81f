"""The service's own protocol, POST /api/gpt/get, and its other routes: parse and validate,
pick the framing, delegate to the shared pipeline; the framers and the error shape of this
protocol. Nothing else."""

from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify, request

from . import pipeline
from .chunks import Delta
from .errors import ProxyError
from .identity import caller, public_with_accounts
from .relay import Framer, Outcome
from .roles import MAX_ROLE_BYTES
from .sse import encode_json, encode_text
from .startup import health_problems
from .validation import parse_body, validate

bp = Blueprint("api", __name__)
CREDENTIALS = ("session", "key")  # what identifies a caller here (see identity)

SSE, JSON, TEXT = "text/event-stream", "application/json", "text/plain"


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


@bp.post("/api/gpt/get")
def chat():
    config = current_app.extensions["gpt_proxy"].config
    chat_request = validate(parse_body(pipeline.read_body(config)), config)
    framing = choose_framing(request.headers.get("Accept", ""), chat_request.stream)
    options = {}
    if chat_request.temperature is not None:
        options["temperature"] = chat_request.temperature
    if chat_request.max_tokens is not None:
        options["max_tokens"] = chat_request.max_tokens
    relay = pipeline.start(pipeline.Turn(
        "gpt", framing, chat_request.history, chat_request.model, role=chat_request.role,
        system=chat_request.system, options=options,
        log_text=chat_request.history[-1]["content"]))
    if framing == JSON:
        outcome = relay.collect()
        if outcome.error is not None:
            raise outcome.error
        body = {"content": "".join(outcome.content), "finish_reason": outcome.finish_reason,
                "usage": outcome.usage, "model": outcome.model}
        if outcome.reasoning:
            body["reasoning"] = "".join(outcome.reasoning)
        return jsonify(body)
    return pipeline.stream_response(relay.frames(SSEFramer() if framing == SSE else TextFramer()),
                           framing)


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

