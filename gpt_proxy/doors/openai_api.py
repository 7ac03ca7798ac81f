"""The OpenAI API: GET /v1/models, POST /v1/chat/completions, and through the same pipeline
POST /v1/embeddings, /v1/images/generations, /v1/responses and /v1/completions (legacy), for
the clients people already run (the openai SDKs, LangChain, chat UIs, editor plugins, agent
tools): base URL `http://host:7345/v1`, API key = PROXY_TOKEN.

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
- The other operations (`operations`): the client's body is passed upstream as it is, after
  the same checks (the model allow-list, MAX_BODY_BYTES, MAX_TOKENS_CEILING on
  `max_output_tokens` and legacy `max_tokens`, each operation's own required fields and
  bounds); a request that names no model gets OPENAI_MODEL (OPENAI_IMAGE_MODEL for images;
  embeddings must name one); `role:<name>` models are for chat completions only. Whole
  answers are the upstream's bytes. A Responses stream is relayed event by event, each with
  its own event name and data as the upstream sent them, in their order; a failure after the
  first byte is one `event: error` in the Responses shape (`type`, `code`, `message`,
  `param`, `sequence_number`) that also carries `error`, on which the SDKs raise. Legacy
  completions stream like chat (their chunks, then `data: [DONE]`). Images and embeddings do
  not stream here. An image answer with a URL that is neither http(s) nor a `data:` image is
  refused (`images`).
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, jsonify, request

from ..base.errors import (
    BadRequest,
    ClientLeft,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    UpstreamError,
)
from ..base.sse import encode, encode_json
from ..identity.accounts import keyword_ok
from ..identity.callers import caller
from ..pipeline import stages as pipeline
from ..pipeline.relay import Framer, Outcome
from ..pipeline.roles import DEFAULT_ROLE, ROLE_NAME
from ..pipeline.validation import parse_body
from ..upstream.chunks import Delta, text_of
from ..upstream.images import MAX_PROMPT_CHARS
from ..upstream.operations import CHAT, COMPLETIONS, EMBEDDINGS, IMAGES, RESPONSES, Operation

bp = Blueprint("openai", __name__, url_prefix="/v1")
CREDENTIALS = ("key",)  # the SDKs send their api_key as a Bearer (see identity)

ROLE_PREFIX = "role:"
SSE, JSON = "text/event-stream", "application/json"
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
        message = (f"{request.path[:200]} is not served here; this service serves GET "
                   "/v1/models and POST /v1/chat/completions, /v1/responses, /v1/embeddings, "
                   "/v1/images/generations and /v1/completions")
    code = "invalid_api_key" if err.status == 401 else err.code  # what the SDKs and UIs know
    kind = error_type(err.status)
    if err.code == "budget_exceeded":  # OpenAI's out-of-credit answer: RateLimitError
        kind = code = "insufficient_quota"
    elif err.code == "rate_limit_exceeded":  # rpm / tpm, as OpenAI names them
        kind = getattr(err, "unit", None) or "requests"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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

def _check_tokens(body: dict, config, fields: tuple[str, ...] = CHAT.token_fields) -> dict:
    """The token fields within MAX_TOKENS_CEILING; the ceiling is sent as the first of them
    (chat: max_tokens, understood by every OpenAI-compatible API) when none is given."""
    given = False
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        given = True
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer", field=name)
        if config.max_tokens_ceiling and value > config.max_tokens_ceiling:
            raise BadRequest(f"'{name}' may be at most {config.max_tokens_ceiling} here",
                             field=name)
    if not given and config.max_tokens_ceiling and fields:
        return {fields[0]: config.max_tokens_ceiling}
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


def _body(raw: bytes) -> dict:
    """The JSON object of a request (`validation.parse_body` refuses lone surrogates)."""
    return parse_body(raw)


def parse_request(raw: bytes, config, roles, upstream) -> tuple[pipeline.Turn, bool]:
    """The request body -> the shared `Turn`, and whether the client asked for usage."""
    body = _body(raw)
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
    `data: {"error": ...}` event; the usage chunk only for a client that asked for it
    (`legacy`: legacy completions, whose whole answer has the shape of a chunk)."""

    raw = True
    opening = b": ok\n\n"  # the headers go out now: the client knows it was accepted

    def __init__(self, wants_usage: bool, legacy: bool = False) -> None:
        self.wants_usage = wants_usage
        self.legacy = legacy

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
            return encode_json(d.chunk if self.legacy else chunk_from_completion(d.chunk))
        return b""

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        return encode_json({"error": stream_error(err)})


def stream_error(err: ProxyError) -> dict:
    """A failure after the first byte, as OpenAI's streams carry one (the SDKs raise on it)."""
    return {"message": err.message, "type": error_type(err.status), "code": err.code}


# --- the other operations -------------------------------------------------------------------

def _model(body: dict, operation: Operation, config, upstream) -> str:
    """The model an operation's request asks for: named, else the operation's default; one
    the allow-list and the upstreams serve (else 404, as for chat)."""
    model = body.get("model")
    if model is None:
        if operation.model_setting is None:
            raise BadRequest(f"'model' is required for /v1{operation.path}", field="model")
        model = getattr(config, operation.model_setting)
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise BadRequest("'model' must be a non-empty string of at most 200 characters",
                         field="model")
    if model.startswith(ROLE_PREFIX):
        raise NotFound(f"the model {model[:200]!r} does not exist for /v1{operation.path}: "
                       "role models (role:<name>) are served by /v1/chat/completions only",
                       code="model_not_found", field="model")
    if config.allowed_models and model not in config.allowed_models or not upstream.serves(model):
        raise _unknown_model(model)
    return model


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false", field=name)
    return value


def _check_embeddings(body: dict) -> None:
    """`input`: a string, or up to MAX_EMBEDDING_INPUTS strings or token arrays; none empty."""
    value = body.get("input")
    one = True
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a non-empty string, or a non-empty array of strings "
                         "or of token arrays", field="input")
    elif all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        value = [value]  # one token array
    else:
        one = False
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise PayloadTooLarge(f"'input' has {len(value)} items; at most "
                              f"{MAX_EMBEDDING_INPUTS} are accepted", field="input")
    for i, item in enumerate(value):
        where = "input" if one else f"input[{i}]"
        if isinstance(item, str):
            if not item:
                raise BadRequest(f"'{where}' is empty", field=where)
        elif not (isinstance(item, list) and item and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item)):
            raise BadRequest(f"'{where}' must be a non-empty string or an array of token ids",
                             field=where)
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", field="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or dimensions < 1):
        raise BadRequest("'dimensions' must be a positive integer", field="dimensions")


def _check_images(body: dict) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' is required: describe the image", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"'prompt' is {len(prompt)} characters long; at most "
                         f"{MAX_PROMPT_CHARS} are accepted", field="prompt")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10):
        raise BadRequest("'n' must be an integer from 1 to 10", field="n")
    size = body.get("size")
    if size is not None and not (isinstance(size, str) and _SIZE.fullmatch(size)):
        raise BadRequest("'size' must look like 1024x1024 (or be 'auto')", field="size")
    form = body.get("response_format")
    if form is not None and form not in ("url", "b64_json"):
        raise BadRequest("'response_format' must be 'url' or 'b64_json'", field="response_format")


def _check_responses(body: dict) -> None:
    value = body.get("input")
    if value is not None and not isinstance(value, (str, list)):
        raise BadRequest("'input' must be a string or an array of input items", field="input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("'instructions' must be a string", field="instructions")


def _check_completions(body: dict) -> None:
    prompt = body.get("prompt")
    if not (isinstance(prompt, str) and prompt or isinstance(prompt, list) and prompt):
        raise BadRequest("'prompt' is required: a string, or an array of strings or tokens",
                         field="prompt")


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit on one embeddings request
_SIZE = re.compile(r"\d{2,5}x\d{2,5}|auto")
_CHECKS = {EMBEDDINGS: _check_embeddings, IMAGES: _check_images, RESPONSES: _check_responses,
           COMPLETIONS: _check_completions}


def parse_operation(raw: bytes, operation: Operation, config, upstream
                    ) -> tuple[pipeline.Turn, bool]:
    """An operation's request body -> the shared `Turn` (its body passed on as it is, with
    the model resolved and the token ceiling applied), and whether the client asked a stream
    for its usage. Every bad field is a 4xx naming it, before the upstream is asked."""
    body = _body(raw)
    model = _model(body, operation, config, upstream)
    stream = _flag(body, "stream")
    if stream and not operation.streams:
        raise BadRequest(f"'stream' is not supported for /v1{operation.path} here: ask for one "
                         "whole answer", field="stream")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequest("'stream_options' must be an object", field="stream_options")
    _CHECKS[operation](body)
    options = {key: value for key, value in body.items() if key != "model"}
    options.update(_check_tokens(body, config, operation.token_fields))
    prompt = body.get("prompt", body.get("input"))
    turn = pipeline.Turn("openai", SSE if stream else JSON, [], model, options=options,
                         stream=stream, last_from_user=False, operation=operation,
                         log_text=prompt if isinstance(prompt, str) else None)
    wants_usage = bool(stream_options and stream_options.get("include_usage") is True)
    return turn, wants_usage


def _run(operation: Operation, framer: Framer | None = None):
    """Parse, open through the pipeline, relay: a stream, or the upstream's whole answer."""
    state = current_app.extensions["gpt_proxy"]
    turn, wants_usage = parse_operation(pipeline.read_body(state.config), operation,
                                        state.config, state.upstream)
    relay = pipeline.start(turn)
    if turn.stream:
        if framer is None:
            framer = ChunkFramer(wants_usage, legacy=operation is COMPLETIONS)
        return pipeline.stream_response(relay.frames(framer), SSE)
    outcome = relay.collect(raw=True)
    if outcome.error is not None:
        raise outcome.error
    if outcome.client_left:
        raise ClientLeft("the client left before the answer was whole")
    chunks = outcome.chunks
    if len(chunks) == 1 and chunks[0].kind == "completion":
        return Response(chunks[0].text, mimetype=JSON)  # as the upstream sent it
    if operation is COMPLETIONS:
        return jsonify(completion_from_chunks(chunks, legacy=True))
    if operation is RESPONSES:  # it streamed anyway: its last response object is the answer
        for d in reversed(chunks):
            response = d.chunk.get("response") if d.chunk else None
            if isinstance(response, dict) and d.chunk.get("type") in (
                    "response.completed", "response.incomplete"):
                return jsonify(response)
    raise UpstreamError(f"the upstream answered /v1{operation.path} with an event stream, "
                        "not one JSON object")


@bp.post("/embeddings")
def embeddings():
    return _run(EMBEDDINGS)


@bp.post("/images/generations")
def images_generations():
    return _run(IMAGES)


@bp.post("/responses")
def responses():
    return _run(RESPONSES, EventFramer())


@bp.post("/completions")
def completions():
    return _run(COMPLETIONS)


class EventFramer(Framer):
    """A Responses stream as the upstream sent it: each event with its own name and data, in
    order. Our own failure after the first byte is one `error` event in the Responses shape
    that also carries `error` (the SDKs raise on it); after the upstream's own error or
    `response.failed` event, relayed already, nothing more is added."""

    raw = True
    opening = b": ok\n\n"

    def __init__(self) -> None:
        self.sequence = -1  # the last sequence_number the upstream sent
        self.failed = False

    def delta(self, d: Delta) -> bytes:
        kind = d.kind
        if kind == "event":
            number = d.chunk.get("sequence_number") if d.chunk is not None else None
            if isinstance(number, int):
                self.sequence = number
            return encode(d.text, None if d.event == "message" else d.event)
        if kind == "error":
            self.failed = True
        elif kind == "completion":  # the upstream answered one response object to a stream
            self.sequence += 1
            return encode_json({"type": "response.completed", "sequence_number": self.sequence,
                                "response": d.chunk}, "response.completed")
        return b""

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        if self.failed:
            return b""
        self.sequence += 1
        return encode_json({"type": "error", "code": err.code, "message": err.message,
                            "param": None, "sequence_number": self.sequence,
                            "error": stream_error(err)}, "error")


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


def completion_from_chunks(chunks: list[Delta], legacy: bool = False) -> dict:
    """One `chat.completion` object from a streamed reply's chunks (`legacy`: one
    `text_completion` object, from a legacy completion's)."""
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
                        "index": index, "text": ""} if legacy else {
                        "index": index, "message": {"role": "assistant", "content": None},
                        "logprobs": None, "finish_reason": None})
                    for name, item in choice.items():
                        if name == "delta" and isinstance(item, dict):
                            _merge(slot["message"], item)
                        elif legacy and name == "text" and isinstance(item, str):
                            slot["text"] += item
                        elif name != "index":
                            _merge(slot, {name: item})
            elif key == "usage":
                usage = value if isinstance(value, dict) else usage
            elif key != "object" and (value is not None or key not in top):
                top[key] = value
    for slot in choices.values():
        for call in slot.get("message", {}).get("tool_calls") or ():
            call.pop("index", None)
    completion = {"id": top.pop("id", None),
                  "object": "text_completion" if legacy else "chat.completion",
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
