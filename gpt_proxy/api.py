"""Routes: parse and validate, pick the framing, delegate to the relay. Nothing else."""

from __future__ import annotations

import logging
import time
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import relay as relay_mod
from .errors import PayloadTooLarge, ProxyError
from .roles import assemble_messages
from .validation import parse_body, validate

bp = Blueprint("api", __name__)
log = logging.getLogger("gpt_proxy.access")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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


def _read_body(config) -> bytes:
    length = request.content_length
    if length is not None and length > config.max_body_bytes:
        raise PayloadTooLarge(f"the body is {length} bytes; at most {config.max_body_bytes} "
                              "are accepted")
    data = request.stream.read(config.max_body_bytes + 1)
    if len(data) > config.max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {config.max_body_bytes} bytes")
    return data


def _payload(chat, messages) -> dict:
    payload = {"model": chat.model, "messages": messages, "stream": True,
               "stream_options": {"include_usage": True}}
    if chat.temperature is not None:
        payload["temperature"] = chat.temperature
    if chat.max_tokens is not None:
        payload["max_tokens"] = chat.max_tokens
    return payload


@bp.post("/api/gpt/get")
def chat():
    state = current_app.extensions["gpt_proxy"]
    config = state.config
    body = parse_body(_read_body(config))
    chat_request = validate(body, config)
    role = state.roles.get(chat_request.role)
    messages = assemble_messages(role.render(), chat_request.history,
                                 system=chat_request.system,
                                 max_chars=config.max_history_chars)
    framing = choose_framing(request.headers.get("Accept", ""), chat_request.stream)
    g.chat = {"role": chat_request.role, "model": chat_request.model, "framing": framing}
    stream = state.upstream.open(_payload(chat_request, messages))
    relay = relay_mod.Relay(
        stream, heartbeat=config.heartbeat_seconds, max_event_bytes=config.max_event_bytes,
        client_gone=relay_mod.client_watcher(request.environ),
        max_seconds=config.max_stream_seconds,
        on_close=_access_logger(request.environ, g.get("request_id", "-"), g.get("started"),
                                g.chat, config.log_content and chat_request.history[-1]["content"]))
    if framing == JSON:
        outcome = relay.collect()
        if outcome.error is not None:
            raise outcome.error
        body = {"content": "".join(outcome.content), "finish_reason": outcome.finish_reason,
                "usage": outcome.usage, "model": outcome.model}
        if outcome.reasoning:
            body["reasoning"] = "".join(outcome.reasoning)
        return jsonify(body)
    framer = relay_mod.SSEFramer() if framing == SSE else relay_mod.TextFramer()
    response = Response(relay.frames(framer), mimetype=framing, headers=STREAM_HEADERS,
                        direct_passthrough=True)  # bytes already: no per-item re-encoding
    response.charset = "utf-8"
    g.streaming = True
    return response


def _access_logger(environ, request_id, started, info, content):
    """The access line of a relayed reply, written when it ends, with what it came to: one
    line per request (the app's own line is skipped for it). Never the key; the message text
    only when LOG_CONTENT is on."""
    from . import ACCESS_LOGGED
    from .security import loggable

    started = started or time.monotonic()
    client = environ.get("REMOTE_ADDR", "-")

    def write(outcome) -> None:
        environ[ACCESS_LOGGED] = True
        now = time.monotonic()
        ttft = (f"{(outcome.first_token_at - started) * 1000:.0f}ms"
                if outcome.first_token_at else "-")
        usage = outcome.usage if isinstance(outcome.usage, dict) else {}
        error = outcome.error
        status = error.status if (error is not None and info["framing"] == JSON) else 200
        result = ("client_left" if outcome.client_left else
                  f"error:{error.code}" if error is not None else "ok")
        extra = f" content={loggable(content, 2000)}" if content else ""
        log.info("request id=%s client=%s method=POST path=%s status=%d role=%s model=%s "
                 "framing=%s result=%s ttft=%s duration=%.0fms chars=%d prompt_tokens=%s "
                 "completion_tokens=%s%s", request_id, client, environ.get("PATH_INFO", "-"),
                 status, loggable(info["role"]), loggable(info["model"]), info["framing"],
                 loggable(result, 60), ttft, (now - started) * 1000, outcome.chars,
                 loggable(usage.get("prompt_tokens", "-"), 20),
                 loggable(usage.get("completion_tokens", "-"), 20), extra)
    return write


@bp.get("/api/roles")
def roles():
    return jsonify(current_app.extensions["gpt_proxy"].roles.list())


@bp.get("/api/limits")
def limits():
    """The limits a client should know before it sends (the page checks a role it keeps
    against `max_system_chars` when it is saved, not when it is first used)."""
    config = current_app.extensions["gpt_proxy"].config
    return jsonify({"max_system_chars": min(config.max_system_chars, config.max_history_chars - 1),
                    "max_history_chars": config.max_history_chars,
                    "max_messages": config.max_messages, "max_body_bytes": config.max_body_bytes})


@bp.get("/healthz")
def healthz():
    state = current_app.extensions["gpt_proxy"]
    return jsonify({"status": "ok", "upstream": state.upstream.mode,
                    "demo": state.config.demo, "model": state.config.openai_model})


def new_request_id() -> str:
    incoming = request.headers.get("X-Request-Id", "")
    if incoming and len(incoming) <= 64 and incoming.replace("-", "").isalnum():
        return incoming
    return uuid.uuid4().hex[:16]


def error_response(err: ProxyError):
    response = jsonify(err.to_dict())
    response.status_code = err.status
    for name, value in err.headers.items():
        response.headers[name] = value
    return response

