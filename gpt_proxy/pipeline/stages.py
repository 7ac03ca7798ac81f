"""The one pipeline behind every client protocol: a parsed request in, a running relay out.

Each protocol module (`api` for /api/gpt/get, `openai_api` for /v1, `chat_process`,
`user_protocol`) parses its own request into a `Turn`, the value this module takes; from there
everything is shared: the role template and the history budget (`payload`), the upstream
request with failover, the relay with its heartbeats and cancellation, and the access line
and metrics written when the reply ends (`start`). The protocol then frames the relay's
deltas in its own shape and shapes its own errors.

A turn may ask for a resumable reply (`resumable`: a door that frames it as server-sent
events); then `start` begins its log in the reply store (`replies`) once the upstream
answered, and the relay numbers, logs and, when its client leaves, goes on with it. A turn
that did not ask touches no store.

A turn names its upstream operation (`operations`: chat completions by default, or
embeddings, images, the Responses API, legacy completions); what differs between them is
that small description, never a second path: every operation opens its upstream in `start`,
and only there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from flask import Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..base.config import Config
from ..base.errors import PayloadTooLarge, ProxyError, UnknownRole
from ..base.hub import pause
from ..identity.callers import Caller, caller
from ..identity.security import loggable
from ..money.budgets import IMAGE_TOKENS, Ask, Hold, Spent
from ..upstream.operations import CHAT, Operation, Usage
from .relay import Outcome, Relay, client_watcher
from .roles import DEFAULT_ROLE, ROLE_NAME, Role, assemble_messages

log = logging.getLogger("gpt_proxy.access")
ACCESS_LOGGED = "gpt_proxy.access_logged"  # environ flag: the relay wrote this request's line
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Turn:
    """One chat request, whatever door it came in by."""

    protocol: str  # for the access line: "gpt", "openai", ...
    framing: str  # the reply's media type: a stream, or application/json (a whole reply)
    history: list[dict]  # the client's conversation, validated by its protocol
    model: str | None  # the model asked of the upstream; None: the role's, else OPENAI_MODEL
    role: str = DEFAULT_ROLE  # the role template put before the conversation
    system: str | None = None  # an ad-hoc system message from the client
    options: Mapping[str, object] = field(default_factory=dict)  # other upstream fields, as sent
    stream: bool = True  # ask the upstream for a stream
    last_from_user: bool = True  # the conversation must end with the user's message
    log_text: str | None = None  # the user's message for the access line (LOG_CONTENT)
    log_fields: Mapping[str, object] = field(default_factory=dict)  # more `name=value` for it
    operation: Operation = CHAT  # what is asked of the upstream (not chat: `options` is the body)
    resumable: bool = False  # keep the reply in a log a client can resume (an SSE framing)

    @property
    def whole(self) -> bool:
        """The client gets one reply at the end, so an error becomes the HTTP status."""
        return self.framing == "application/json"


def read_body(config: Config) -> bytes:
    """The request body, at most MAX_BODY_BYTES of it (413 beyond: by Content-Length before
    reading, or by counting for a chunked body, whose reads may each return only a part)."""
    limit = config.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is {length} bytes; at most {limit} are accepted "
                              "(MAX_BODY_BYTES)")
    stream = request.stream
    parts, size = [], 0
    # A read allocates (and zeroes) the size it asks for: ask for what the body said it is,
    # or a modest piece of a chunked one, never the whole MAX_BODY_BYTES.
    piece = length + 1 if length is not None else READ_PIECE
    try:
        while size <= limit:
            data = stream.read(min(limit + 1 - size, piece))
            if not data:
                break
            parts.append(data)
            size += len(data)
    except RequestEntityTooLarge:  # werkzeug counts a chunked body against the same limit
        size = limit + 1
    if size > limit:
        raise PayloadTooLarge(f"the body is larger than the {limit} bytes accepted "
                              "(MAX_BODY_BYTES)")
    return b"".join(parts)


READ_PIECE = 65536
DRAIN_BYTES = 64 * 1024 * 1024  # the most of an unread body read and dropped before an error
DRAIN_SECONDS = 10.0


def drain_body(environ: dict) -> None:
    """Read and drop what is left of the request body (at most DRAIN_BYTES, DRAIN_SECONDS),
    before an error answer: a client that sends its whole body before reading (urllib, many
    HTTP libraries, browsers) would otherwise see the connection reset instead of the error
    when the server closes with its body unread."""
    stream = environ.get("wsgi.input")
    sock = environ.get("gunicorn.socket")
    if stream is None or (environ.get("CONTENT_LENGTH") in (None, "", "0")
                          and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower()):
        return
    old = sock.gettimeout() if sock is not None else None
    deadline = time.monotonic() + DRAIN_SECONDS
    try:
        if sock is not None:
            sock.settimeout(DRAIN_SECONDS)
        left = DRAIN_BYTES
        while left > 0 and time.monotonic() < deadline:
            data = stream.read(min(65536, left))
            if not data:
                return
            left -= len(data)
    except (OSError, ValueError):
        return  # the client is gone, or too slow: the error goes out as it can
    finally:
        if sock is not None:
            try:
                sock.settimeout(old)
            except OSError:
                pass


@dataclass(frozen=True)
class OwnRole:
    """A caller's own role (saved with `gpt diy` or the GPT Terminal page), ready to open a
    conversation: its messages exactly as saved (no `${VAR}` substitution: it is the
    user's own text), and no model of its own."""

    name: str
    messages: tuple[tuple[str, str], ...]
    model = None

    def render(self) -> list[dict[str, str]]:
        return [{"role": kind, "content": text} for kind, text in self.messages]


def find_role(name: str, caller: Caller) -> Role | OwnRole:
    """The role `name` means to this caller: its own role of that keyword, else the server's
    (`UnknownRole`, 404, when neither exists)."""
    state = current_app.extensions["gpt_proxy"]
    if name != DEFAULT_ROLE and caller.user is not None:
        own = state.accounts.role(caller.user.id, name)
        if own is not None:
            return OwnRole(own.keyword, own.elements)
    if name != DEFAULT_ROLE and not ROLE_NAME.fullmatch(name):
        raise UnknownRole(f"unknown role {name[:100]!r}: not one of the server's roles"
                          + ("" if caller.user is not None else
                             " (your own roles need you signed in)"), field="role")
    return state.roles.get(name)


def payload(turn: Turn, role: Role | OwnRole | None, config: Config) -> dict:
    """The upstream request body. Chat: role messages, system text and the history within its
    budget, the protocol's other fields as they are; a conversation that already opens with
    an own role's messages (the GPT Terminal page puts them there itself) gets them once, not
    twice. Any other operation: the client's body as its door checked it, with the model
    resolved. Streams report their usage."""
    if turn.operation.chat:
        head = role.render()
        history = turn.history
        if isinstance(role, OwnRole) and len(history) > len(head) and all(
                m.get("role") == h["role"] and m.get("content") == h["content"]
                for m, h in zip(history, head, strict=False)):
            history = history[len(head):]
        messages = assemble_messages(head, history, system=turn.system,
                                     max_chars=config.max_history_chars,
                                     last_from_user=turn.last_from_user)
        body = {**turn.options, "model": turn.model, "messages": messages, "stream": turn.stream}
    else:
        body = {**turn.options, "model": turn.model}
    if turn.stream and turn.operation.stream_usage:
        options = turn.options.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                  "include_usage": True}
    return body


def start(turn: Turn, on_close: Callable[[Outcome], None] | None = None) -> Relay:
    """Open the upstream for `turn` (its status checked: a failure raises the error the client
    gets) and return the relay that will carry the reply, with the access line attached."""
    pause()  # the running replies' tokens before the rest of this set-up (`hub`)
    state = current_app.extensions["gpt_proxy"]
    config = state.config
    who = caller()
    operation = turn.operation
    role, role_model = None, False
    if operation.chat:
        role = find_role(turn.role, who)
        role_model = turn.model is None and role.model is not None
    if turn.model is None:  # the request named no model: the role's, else the default
        turn = replace(turn, model=role and role.model or config.openai_model)
    if not who.may_use(turn.model):
        raise ProxyError(f"this API key may not use model {turn.model[:200]!r} (it may use: "
                         f"{', '.join(who.key.models)})", status=403,
                         code="model_not_allowed_for_key", field="model")
    g.chat = {"role": turn.role, "model": turn.model, "framing": turn.framing,
              "protocol": turn.protocol}
    body = payload(turn, role, config)
    hold = admit(body, turn, who)
    gone = client_watcher(request.environ)
    # Every operation of every door opens its upstream here and nowhere else: the place for
    # a step that must come first (admission: `operation.asked(body)` is the most it may use).
    try:
        stream = state.upstream.open(body, gone, operation.path)
    except BaseException as err:
        state.budgets.settle(hold, Spent(outcome="failed"))  # nothing was relayed
        if isinstance(err, ProxyError):  # for the access line of this error
            g.chat["upstream"] = getattr(err, "upstream", "-")
            g.chat["tried"] = getattr(err, "tried", 0)
        raise
    try:
        pause()  # and again once it answered, before the relay is built and its head goes out
    except BaseException:  # the worker stopping: nothing was relayed
        stream.close()
        state.budgets.settle(hold, Spent(outcome="failed"))
        raise
    reply = None
    if turn.resumable:  # no store call yet: its log is written as it is relayed
        reply = state.replies.begin(who.owner, grace=config.resume_grace_seconds,
                                    heartbeat=config.heartbeat_seconds,
                                    request_id=g.get("request_id", "-"))
    started = g.get("started") or time.monotonic()
    write_line = access_logger(request.environ, g.get("request_id", "-"), started,
                               turn, config.log_content and turn.log_text, stream)
    metrics = state.metrics
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.stream_started(turn.protocol)

    def closed(outcome: Outcome) -> None:
        try:
            outcome.measured = measure(operation, outcome, body)
            if on_close is not None:
                on_close(outcome)
        finally:
            first = outcome.first_token_at  # the ledger's times count from admission
            try:  # settle never raises (a settlement the database refuses is kept)...
                state.budgets.settle(hold, spent(
                    outcome, hold.ask, getattr(stream, "upstream", "demo"), body,
                    ttft_ms=None if first is None else max(0, int((
                        state.budgets.clock() - (time.monotonic() - first) - hold.started)
                        * 1000))))
            finally:  # ...and the access line is written whatever happened
                write_line(outcome)
            metrics.stream_ended(route=route, protocol=turn.protocol, framing=turn.framing,
                                 model=turn.model, outcome=outcome,
                                 role="own" if isinstance(role, OwnRole) else turn.role,
                                 started=started, upstream=getattr(stream, "upstream", "demo"),
                                 role_model=role_model)
    return Relay(stream, heartbeat=config.heartbeat_seconds,
                 max_event_bytes=max(config.max_event_bytes, operation.max_answer_bytes),
                 client_gone=gone, max_seconds=config.max_stream_seconds, on_close=closed,
                 reader_type=operation.reader_type, reply=reply)


def measure(operation: Operation, outcome: Outcome, body: dict) -> Usage:
    """What the reply used, as its operation reads it; never raises (a strange answer is an
    unknown usage, not a failed close)."""
    try:
        return operation.usage(outcome, body)
    except Exception:  # noqa: BLE001 - the access line and the relay's close must still run
        logging.getLogger("gpt_proxy").exception("reading the usage of a %s reply failed",
                                                 operation.name)
        return Usage()


def admit(body: dict, turn: Turn, who: Caller) -> Hold:
    """Reserve the request's worst case against the caller's budgets (see `budgets`): the
    prompt's bound, and what the operation says it may make (`Operation.asked`: tokens, or
    images). A request that could make any number of tokens, under a budget, is first given a
    bound (its operation's first token field: MAX_TOKENS_CEILING, else BUDGET_MAX_TOKENS)."""
    state = current_app.extensions["gpt_proxy"]
    operation = turn.operation
    asked = operation.asked(body)
    output = asked.output_tokens
    applying = state.budgets.applying(who.user_id, who.key_id)
    if output is None and operation.token_fields and applying:
        output = body[operation.token_fields[0]] = (state.config.max_tokens_ceiling
                                                    or state.config.budget_max_tokens)
    choices = body.get("n") if operation.chat and _count(body.get("n")) else 1
    hold = state.budgets.admit(Ask(
        model=turn.model, prompt_tokens=prompt_bound(body) if applying else None,
        completion_tokens=(output or 0) * max(choices, 1), door=turn.protocol,
        request_id=g.get("request_id", "-"), role=turn.role if operation.chat else None,
        images=asked.images, image_size=asked.image_size), who.user_id, who.key_id, applying)
    g.budget_hold = hold
    return hold


_IMAGE_PARTS = ("image_url", "input_image", "image")


def prompt_bound(body: dict) -> int:
    """At least the prompt's tokens: the bytes of the JSON sent upstream (a token is never
    shorter than one byte of UTF-8), each image part counted as IMAGE_TOKENS instead."""
    images = 0

    def without_images(value):
        nonlocal images
        if isinstance(value, dict):
            if value.get("type") in _IMAGE_PARTS:
                images += 1
                return None
            return {key: without_images(item) for key, item in value.items()}
        if isinstance(value, list):
            return [without_images(item) for item in value]
        return value
    data = json.dumps(without_images(body), ensure_ascii=False).encode("utf-8", "replace")
    return len(data) + images * IMAGE_TOKENS


def spent(outcome: Outcome, ask: Ask, upstream: str, body: dict,
          ttft_ms: int | None = None) -> Spent:
    """What a relayed reply came to: the usage the upstream reported (as its operation reads
    it); without it (the client left, the upstream broke off or sent none) the prompt's bound
    (the ask's, or worked out from `body` now when no budget needed it before) plus one
    token per text chunk relayed. `ttft_ms`: to its first token, for the ledger."""
    measured = getattr(outcome, "measured", None) or Usage()
    result = ("client_left" if outcome.client_left else
              f"error:{outcome.error.code}" if outcome.error is not None else "ok")
    usage = outcome.usage if isinstance(outcome.usage, dict) else {}
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if _count(cached) else 0
    if measured.input_tokens is not None and (measured.output_tokens is not None
                                               or ask.completion_tokens == 0):
        return Spent(measured.input_tokens, measured.output_tokens or 0, cached,
                     images=measured.images, outcome=result, upstream=upstream,
                     ttft_ms=ttft_ms)
    if measured.images:  # images counted from the answer; no token usage reported
        return Spent(0, 0, images=measured.images, outcome=result, upstream=upstream,
                     ttft_ms=ttft_ms)
    prompt = ask.prompt_tokens if ask.prompt_tokens is not None else prompt_bound(body)
    return Spent(prompt, len(outcome.content) + len(outcome.reasoning),
                 outcome=result + ("" if result != "ok" else ":no_usage"), upstream=upstream,
                 ttft_ms=ttft_ms)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def stream_response(frames, mimetype: str) -> Response:
    """A streamed reply: never cached or buffered by a proxy on the way, never compressed."""
    response = Response(frames, mimetype=mimetype, headers=STREAM_HEADERS,
                        direct_passthrough=True)  # bytes already: no per-item re-encoding
    response.charset = "utf-8"
    g.streaming = True
    return response


def access_logger(environ: dict, request_id: str, started: float | None, turn: Turn,
                  content: str | None, stream=None) -> Callable[[Outcome], None]:
    """The access line of a relayed reply, written when it ends, with what it came to: one
    line per request (the app's own line is skipped for it). Never the key; the message text
    only when LOG_CONTENT is on."""
    started = started or time.monotonic()
    client = environ.get("REMOTE_ADDR", "-")
    upstream = getattr(stream, "upstream", "demo")
    tried = getattr(stream, "tried", 1)

    def write(outcome: Outcome) -> None:
        environ[ACCESS_LOGGED] = True
        now = time.monotonic()
        ttft = (f"{(outcome.first_token_at - started) * 1000:.0f}ms"
                if outcome.first_token_at else "-")
        usage = outcome.measured if isinstance(outcome.measured, Usage) else Usage()
        error = outcome.error
        status = error.status if (error is not None and turn.whole) else 200
        result = ("client_left" if outcome.client_left else
                  f"error:{error.code}" if error is not None else "ok")
        extra = "".join(f" {name}={loggable(value, 100)}"
                        for name, value in turn.log_fields.items())
        if usage.images:
            extra += f" images={usage.images} size={loggable(usage.image_size or '-', 20)}"
        if outcome.reply_state:
            extra += f" resumable={outcome.reply_state}"
        extra += f" content={loggable(content, 2000)}" if content else ""
        log.info("request id=%s client=%s method=POST path=%s status=%d protocol=%s role=%s "
                 "model=%s upstream=%s tried=%d framing=%s result=%s ttft=%s duration=%.0fms "
                 "chars=%d prompt_tokens=%s completion_tokens=%s%s", request_id, client,
                 loggable(environ.get("PATH_INFO", "-")), status, turn.protocol,
                 loggable(turn.role), loggable(turn.model), upstream, tried, turn.framing,
                 loggable(result, 60), ttft, (now - started) * 1000, outcome.chars,
                 "-" if usage.input_tokens is None else usage.input_tokens,
                 "-" if usage.output_tokens is None else usage.output_tokens, extra)
    return write
