"""The OpenAI API: GET /v1/models and POST /v1/chat/completions, for the clients people already
run (the openai SDKs, LangChain, chat UIs, editor plugins): base URL `http://host:7345/v1`,
API key = PROXY_TOKEN.

- Models are the ones a request may name (ALLOWED_MODELS, else OPENAI_MODEL and the models
  the upstreams in UPSTREAMS_FILE name) plus one `role:<name>` per role template: that
  role's messages go before the client's, and the role's own model (front matter `model`)
  is asked, else OPENAI_MODEL. A plain model name gets the `default` role (none, unless the
  operator wrote `roles/default.md`), as on /api/gpt/get.
- The request body is passed upstream as it is (tools, response_format, n, logprobs, fields
  not invented yet, message contents as strings or parts), within the shared limits:
  ALLOWED_MODELS, MAX_TOKENS_CEILING (max_tokens and max_completion_tokens; max_tokens is
  sent when a request names neither), MAX_MESSAGES, MAX_HISTORY_CHARS, MAX_BODY_BYTES.
- `stream: true`: the upstream's own chunks, each decoded and re-encoded as one `data:` line,
  then `data: [DONE]`; heartbeats are SSE comments. The upstream is always asked for usage
  (the access log counts tokens); a client that did not ask for it does not get the usage
  chunk. A failure after the first byte is one `data: {"error": {...}}` event, on which
  the SDKs raise while iterating.
- `stream: false`: the upstream's completion object as it sent it (assembled from its chunks
  if it streamed anyway).
- Errors before the first byte: `{"error": {"message", "type", "param", "code"}}` with the
  statuses of /api/gpt/get, except that a model or role this service does not serve is a 404
  (`model_not_found`), as OpenAI answers; the SDKs raise their typed exceptions from these.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, jsonify, request

from . import pipeline
from .accounts import keyword_ok
from .chunks import Delta, text_of
from .errors import BadRequest, NotFound, PayloadTooLarge, ProxyError
from .identity import caller
from .relay import Framer, Outcome
from .roles import DEFAULT_ROLE, ROLE_NAME
from .sse import encode_json
from .validation import parse_body

bp = Blueprint("openai", __name__, url_prefix="/v1")
CREDENTIALS = ("key",)  # the SDKs send their api_key as a Bearer (see identity)

ROLE_PREFIX = "role:"
SSE, JSON = "text/event-stream", "application/json"
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape in the raw JSON
_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


# OpenAI API paths without the /v1 a base URL must end in: a client given the bare host asks
# for these; it gets OpenAI's error shape and a 404 that names the base URL to use.
_UNVERSIONED = ("/chat/completions", "/completions", "/models", "/embeddings", "/responses")


def owns(path: str) -> bool:
    return (path.startswith("/v1/") or path == "/v1" or path in _UNVERSIONED
            or path.startswith("/models/"))


def error_type(status: int) -> str:
    """OpenAI's `type` for a status (the SDKs pick their exception class by the status)."""
    return _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(err: ProxyError) -> dict:
    # The shared history budget names the conversation `message`, as /api/gpt/get calls it.
    param = "messages" if err.field == "message" else err.field
    message = err.message
    if err.code == "not_found" and not request.path.startswith("/v1"):
        message = (f"{request.path[:200]} is not served here: the OpenAI API is under /v1, so "
                   f"the base URL to give a client is {request.host_url[:200]}v1")
    elif err.code == "not_found":  # no route: say what is served here
        message = (f"{request.path[:200]} is not served here; this service serves "
                   "GET /v1/models and POST /v1/chat/completions")
    code = "invalid_api_key" if err.status == 401 else err.code  # what the SDKs and UIs know
    return {"error": {"message": message, "type": error_type(err.status), "param": param,
                      "code": code}}


def error_response(err: ProxyError):
    response = jsonify(error_body(err))
    response.status_code = err.status
    for name, value in err.headers.items():
        response.headers[name] = value
    return response


# --- models ---------------------------------------------------------------------------------

def _models() -> list[dict]:
    state = current_app.extensions["gpt_proxy"]
    config = state.config
    created = int(state.started)
    names = config.allowed_models or dict.fromkeys([config.openai_model,
                                                    *state.upstream.models()])
    models = [{"id": model, "object": "model", "created": created, "owned_by": "upstream"}
              for model in names]
    for role in state.roles.list():
        if role["name"] != DEFAULT_ROLE:
            models.append({"id": ROLE_PREFIX + role["name"], "object": "model",
                           "created": created, "owned_by": "gpt_proxy",
                           "description": role["description"]})
    who = caller()
    if who.key is not None and who.key.models is not None:  # a key sees what it may use
        models = [m for m in models if m["owned_by"] != "upstream" or who.may_use(m["id"])]
    if who.user is not None:  # the caller's own roles, for the caller only
        taken = {m["id"] for m in models}
        models += [{"id": ROLE_PREFIX + role.keyword, "object": "model", "created": created,
                    "owned_by": "you", "description": role.description}
                   for role in state.accounts.roles(who.user.id)
                   if ROLE_PREFIX + role.keyword not in taken]
    return models


def _unknown_model(model: str) -> NotFound:
    return NotFound(f"the model {model[:200]!r} does not exist here; GET /v1/models lists "
                    "the models and roles (role:<name>) this service serves",
                    code="model_not_found", field="model")


@bp.get("/models")
def list_models():
    return jsonify({"object": "list", "data": _models()})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    for model in _models():
        if model["id"] == model_id:
            return jsonify(model)
    raise _unknown_model(model_id)


# --- chat completions -----------------------------------------------------------------------

def _check_tokens(body: dict, config) -> dict:
    """max_tokens / max_completion_tokens within MAX_TOKENS_CEILING; the ceiling is sent as
    max_tokens (understood by every OpenAI-compatible API) when neither is given."""
    given = False
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        given = True
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer", field=name)
        if config.max_tokens_ceiling and value > config.max_tokens_ceiling:
            raise BadRequest(f"'{name}' may be at most {config.max_tokens_ceiling} here",
                             field=name)
    if not given and config.max_tokens_ceiling:
        return {"max_tokens": config.max_tokens_ceiling}
    return {}


def _check_messages(messages: object, config) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of message objects",
                         field="messages")
    if len(messages) > config.max_messages:
        raise PayloadTooLarge(f"'messages' has {len(messages)} messages; at most "
                              f"{config.max_messages} are accepted (MAX_MESSAGES)",
                              field="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content'", field=where)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"'{where}.role' must be a string such as 'user'",
                             field=f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"'{where}.content' must be a string, an array of content parts "
                             "or null", field=f"{where}.content")
    return messages


def _lone_surrogate(value: object, path: str) -> str | None:
    """Where a string holding a lone UTF-16 surrogate sits (it cannot be sent as UTF-8)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, path) or _lone_surrogate(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found:
                return found
    return None


def parse_request(raw: bytes, config, roles, upstream) -> tuple[pipeline.Turn, bool]:
    """The request body -> the shared `Turn`, and whether the client asked for usage."""
    body = parse_body(raw)
    if _SURROGATE.search(raw):
        where = _lone_surrogate(body, "")
        if where:
            where = where.lstrip(".")
            raise BadRequest(f"'{where}' holds an invalid character (a lone UTF-16 surrogate)",
                             field=where)
    model = body.get("model", config.openai_model)
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise BadRequest("'model' must be a non-empty string of at most 200 characters",
                         field="model")
    role = DEFAULT_ROLE
    if model.startswith(ROLE_PREFIX):
        role = model[len(ROLE_PREFIX):]
        if role == DEFAULT_ROLE or not (ROLE_NAME.fullmatch(role) or keyword_ok(role)):
            raise _unknown_model(model)
        try:
            pipeline.find_role(role, caller())
        except ProxyError:
            raise _unknown_model(model) from None
        upstream_model = None  # the role's model (front matter), else OPENAI_MODEL
    elif (config.allowed_models and model not in config.allowed_models
          or not upstream.serves(model)):
        raise _unknown_model(model)
    else:
        upstream_model = model
    messages = _check_messages(body.get("messages"), config)
    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", field="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequest("'stream_options' must be an object", field="stream_options")
    options = {key: value for key, value in body.items()
               if key not in ("model", "messages", "stream")}
    options.update(_check_tokens(body, config))
    wants_usage = bool(stream_options and stream_options.get("include_usage") is True)
    log_text = next((text_of(m.get("content")) for m in reversed(messages)
                     if m.get("role") == "user"), None)
    turn = pipeline.Turn("openai", SSE if stream else JSON, messages, upstream_model,
                         role=role, options=options, stream=stream, last_from_user=False,
                         log_text=log_text)
    return turn, wants_usage


@bp.post("/chat/completions")
def chat_completions():
    state = current_app.extensions["gpt_proxy"]
    turn, wants_usage = parse_request(pipeline.read_body(state.config), state.config,
                                      state.roles, state.upstream)
    relay = pipeline.start(turn)
    if turn.stream:
        return pipeline.stream_response(relay.frames(ChunkFramer(wants_usage)), SSE)
    outcome = relay.collect(raw=True)
    if outcome.error is not None:
        raise outcome.error
    if len(outcome.chunks) == 1 and outcome.chunks[0].kind == "completion":
        return Response(outcome.chunks[0].text, mimetype=JSON)  # as the upstream sent it
    return jsonify(completion_from_chunks(outcome.chunks))


class ChunkFramer(Framer):
    """The upstream's chunks as `data:` lines, `data: [DONE]` at the end, errors as one
    `data: {"error": ...}` event; the usage chunk only for a client that asked for it."""

    raw = True
    opening = b": ok\n\n"  # the headers go out now: the client knows it was accepted

    def __init__(self, wants_usage: bool) -> None:
        self.wants_usage = wants_usage

    def delta(self, d: Delta) -> bytes:
        kind = d.kind
        if kind == "chunk":
            if (not self.wants_usage and not d.chunk.get("choices")
                    and isinstance(d.chunk.get("usage"), dict)):
                return b""
            return b"data: " + d.text.encode("utf-8") + b"\n\n"
        if kind == "done":
            return b"data: [DONE]\n\n"
        if kind == "completion":  # the upstream ignored stream: true
            return encode_json(chunk_from_completion(d.chunk))
        return b""

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        return encode_json({"error": {"message": err.message, "type": error_type(err.status),
                                      "code": err.code}})


# --- completion <-> chunks ------------------------------------------------------------------

_APPENDED = frozenset(("content", "refusal", "reasoning_content", "reasoning", "arguments"))


def _merge(target: dict, delta: dict) -> None:
    """Fold one delta into what came before: text fields are appended, tool calls are merged
    by their index, lists (logprobs) extended, objects merged, anything else replaced."""
    for key, value in delta.items():
        old = target.get(key)
        if value is None:
            target.setdefault(key, None)
        elif key in _APPENDED and isinstance(value, str) and isinstance(old, str):
            target[key] = old + value
        elif key == "tool_calls" and isinstance(value, list):
            calls = old if isinstance(old, list) else []
            for call in value:
                if not isinstance(call, dict):
                    continue
                index = call.get("index", len(calls))
                slot = next((c for c in calls if c.get("index") == index), None)
                if slot is None:
                    calls.append(slot := {"index": index})
                _merge(slot, call)
            target[key] = calls
        elif isinstance(value, list) and isinstance(old, list):
            target[key] = old + value
        elif isinstance(value, dict):
            if not isinstance(old, dict):
                target[key] = old = {}
            _merge(old, value)
        else:
            target[key] = value


def completion_from_chunks(chunks: list[Delta]) -> dict:
    """One `chat.completion` object from a streamed reply's chunks."""
    top: dict = {}
    choices: dict[int, dict] = {}
    usage = None
    for d in chunks:
        for key, value in d.chunk.items():
            if key == "choices" and isinstance(value, list):
                for choice in value:
                    if not isinstance(choice, dict):
                        continue
                    index = choice.get("index", 0)
                    slot = choices.setdefault(index, {
                        "index": index, "message": {"role": "assistant", "content": None},
                        "logprobs": None, "finish_reason": None})
                    for name, item in choice.items():
                        if name == "delta" and isinstance(item, dict):
                            _merge(slot["message"], item)
                        elif name != "index":
                            _merge(slot, {name: item})
            elif key == "usage":
                usage = value if isinstance(value, dict) else usage
            elif key != "object" and (value is not None or key not in top):
                top[key] = value
    for slot in choices.values():
        for call in slot["message"].get("tool_calls") or ():
            call.pop("index", None)
    completion = {"id": top.pop("id", None), "object": "chat.completion",
                  "created": top.pop("created", None), "model": top.pop("model", None),
                  "choices": [choices[i] for i in sorted(choices, key=_index_order)],
                  "usage": usage}
    completion.update(top)
    return completion


def _index_order(index: object) -> tuple:
    return (0, index) if isinstance(index, int) else (1, str(index))


def chunk_from_completion(completion: dict) -> dict:
    """One chunk holding a whole completion (for a stream whose upstream sent one object)."""
    chunk = {key: value for key, value in completion.items() if key != "choices"}
    chunk["object"] = "chat.completion.chunk"
    chunk["choices"] = [
        {"index": choice.get("index", 0), "delta": choice.get("message") or {},
         "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason")}
        for choice in completion.get("choices") or () if isinstance(choice, dict)]
    return chunk
