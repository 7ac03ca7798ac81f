"""Request validation: the one parser of request bodies (`parse_body`: a JSON object of real
text, or a 400), the ids a URL names (`IdConverter`, `parse_id`), and POST /api/gpt/get's
body (a `ChatRequest`, or a 400 naming the field). Nothing the client sent is dropped
silently: unknown fields are errors.

Ids: the database's ids are INTEGER columns (32-bit on PostgreSQL), so an id is the canonical
decimal form of 1..MAX_ID. Anything else in an id's place (too large for the column, zero,
a sign, a leading zero, thousands of digits, digits of another script) names nothing: the
route answers 404 "unknown", in its door's shape, after the credential checks, and the
database is never asked (it would overflow: a 500).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from flask import request
from werkzeug.routing import BaseConverter

from ..base.config import Config
from ..base.errors import BadRequest, NotFound, PayloadTooLarge
from ..identity.accounts import keyword_ok
from ..identity.callers import ADMIN_PREFIX, caller

MAX_ID = 2**31 - 1  # the largest INTEGER of PostgreSQL (SQLite's are 64-bit: the lower bound)
_ID = re.compile(r"[1-9][0-9]{0,9}")


def parse_id(text: str) -> int | None:
    """The id `text` names (ASCII digits, no sign or leading zero, 1..MAX_ID), or None."""
    if not isinstance(text, str) or not _ID.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def id_ok(value: object) -> bool:
    """Whether a JSON value can be an id (an integer of 1..MAX_ID, not a boolean)."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and 1 <= value <= MAX_ID)


class OutOfRange(str):
    """What `IdConverter` hands a view for a path segment that names no id (its text)."""


class IdConverter(BaseConverter):
    """`<id:key_id>`: a path segment of digits (with an optional sign) that matches the route
    whatever its size; the view gets an int of 1..MAX_ID, or an `OutOfRange` that
    `refuse_unknown_ids` answers with 404 before the view runs. Registered as "id"."""

    regex = r"[+-]?[0-9]+"
    weight = 50

    def to_python(self, value: str) -> int | OutOfRange:
        found = parse_id(value)
        return OutOfRange(value) if found is None else found

    def to_url(self, value: object) -> str:
        return str(value)


def refuse_unknown_ids() -> None:
    """Before a view (after the credential checks): an id that cannot exist is "unknown",
    named as the route names it (`key_id`: unknown_key). An admin route asked by someone who
    is not an admin is left to its view, whose 403 comes first, as for an id that exists."""
    if request.path.startswith(ADMIN_PREFIX) and not caller().is_admin:
        return
    for name, value in (request.view_args or {}).items():
        if isinstance(value, OutOfRange):
            noun = name.removesuffix("_id")
            raise NotFound(f"no {noun} with id {value[:30]}{'...' if len(value) > 30 else ''}",
                           code=f"unknown_{noun}")


ROLE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
FIELDS = ("message", "messages", "role", "temperature", "model", "stream", "system", "max_tokens")
HISTORY_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatRequest:
    history: list[dict]
    role: str = "default"
    temperature: float | None = None
    model: str | None = None  # None: the role's model, else OPENAI_MODEL
    stream: bool = True
    system: str | None = None
    max_tokens: int | None = None


def check_text(value: str, name: str) -> str:
    """A string must be encodable as UTF-8: a lone surrogate ("\\ud800") is not a character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{name}' holds an invalid character (a lone UTF-16 surrogate)",
                         field=name) from None
    return value


def check_model(model: object, config: Config) -> str:
    """A model a request names: a string of 1-200 characters that ALLOWED_MODELS allows."""
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise BadRequest("'model' must be a non-empty string of at most 200 characters",
                         field="model")
    check_text(model, "model")
    if config.allowed_models and model not in config.allowed_models:
        raise BadRequest(f"model {model!r} is not allowed here (allowed: "
                         f"{', '.join(config.allowed_models)})", field="model",
                         code="model_not_allowed")
    return model


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \uD800-\uDFFF escape in JSON text


def lone_surrogate(value: object, path: str = "") -> str | None:
    """Where in a parsed JSON value a string (or an object's key) holds a lone UTF-16
    surrogate, which is no character and cannot be written as UTF-8; None if nowhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate(key, path or "body") or lone_surrogate(
                item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{path}[{i}]" if path else f"[{i}]")
            if found:
                return found
    return None


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body, every string in it real text: the one place every
    door parses a body. The bytes are decoded strictly (JSON's own detection of UTF-8, -16 or
    -32): Python's json would let a surrogate's code point in through its `surrogatepass`
    decoding. A "\\ud800" escape with no partner is refused too, naming the field (JSON
    allows it; nothing downstream can encode it: SQLite, argon2, the upstream, our own error
    message). The walk runs only when such an escape is in the text."""
    if not raw.strip():
        raise BadRequest("the body is empty: send a JSON object such as {\"message\": \"hello\"}")
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text (or holds a code point that is no "
                         "character)") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object such as {\"message\": \"hello\"}")
    if _SURROGATE_ESCAPE.search(text):
        where = lone_surrogate(body)
        if where is not None:
            where = where.encode("utf-8", "replace").decode("utf-8")[:100]
            raise BadRequest(f"'{where}' holds an invalid character (a lone UTF-16 surrogate)",
                             field=where)
    return body


def _history(value: object, name: str, config: Config) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string or a non-empty array of "
                         "{role, content} objects", field=name)
    if len(value) > config.max_messages:
        raise PayloadTooLarge(f"'{name}' has {len(value)} messages; at most "
                              f"{config.max_messages} are accepted (MAX_MESSAGES)", field=name)
    history = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content'", field=where)
        extra = sorted(set(item) - {"role", "content"})
        if extra:
            raise BadRequest(f"'{where}.{extra[0]}' is not a supported field "
                             "(each message has only 'role' and 'content')", field=f"{where}.{extra[0]}")
        role, content = item.get("role"), item.get("content")
        if role not in HISTORY_ROLES:
            raise BadRequest(f"'{where}.role' must be one of system, user, assistant",
                             field=f"{where}.role")
        if not isinstance(content, str):
            raise BadRequest(f"'{where}.content' must be a string", field=f"{where}.content")
        history.append({"role": role, "content": check_text(content, f"{where}.content")})
    if history[-1]["role"] != "user":
        raise BadRequest(f"the last item of '{name}' must be the user's message",
                         field=f"{name}[{len(history) - 1}].role")
    if not history[-1]["content"].strip():
        raise BadRequest(f"the last message of '{name}' is empty", field=f"{name}[{len(history) - 1}].content")
    return history


def validate(body: dict, config: Config) -> ChatRequest:
    """Check every field; the first problem found is the 400 the client gets."""
    for key in body:
        if key not in FIELDS:
            raise BadRequest(f"'{key}' is not a supported field (supported: {', '.join(FIELDS)})",
                             field=str(key)[:100])
    if "message" in body and "messages" in body:
        raise BadRequest("send either 'message' or 'messages', not both", field="messages")
    if "message" in body:
        message = body["message"]
        if isinstance(message, str):
            if not message.strip():
                raise BadRequest("'message' is empty", field="message")
            history = [{"role": "user", "content": check_text(message, "message")}]
        else:
            history = _history(message, "message", config)
    elif "messages" in body:
        history = _history(body["messages"], "messages", config)
    else:
        raise BadRequest("'message' is required: a string, or an array of {role, content}",
                         field="message")

    role = body.get("role", "default")
    if role == "":
        role = "default"  # the GPT Terminal page's "no role"
    if not isinstance(role, str) or not (ROLE_RE.fullmatch(role) or keyword_ok(role)):
        raise BadRequest("'role' must be a role name like 'cli' (a server role: lowercase "
                         "letters, digits, '-' and '_'; an own role's keyword: letters, digits, "
                         "'_', '.' and '-'; at most 64 characters)", field="role")

    temperature = body.get("temperature")
    if temperature is not None:
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not math.isfinite(temperature) or not 0 <= temperature <= 2):
            raise BadRequest("'temperature' must be a number from 0 to 2", field="temperature")
        temperature = float(temperature)

    model = body.get("model")
    model = None if model is None else check_model(model, config)  # None: the role's model

    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", field="stream")

    system = body.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise BadRequest("'system' must be a string", field="system")
        check_text(system, "system")
        if len(system) > config.max_system_chars:
            raise PayloadTooLarge(f"'system' is {len(system)} characters long; at most "
                                  f"{config.max_system_chars} are accepted (MAX_SYSTEM_CHARS)",
                                  field="system", code="system_too_long")

    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("'max_tokens' must be a positive integer", field="max_tokens")
        if config.max_tokens_ceiling and max_tokens > config.max_tokens_ceiling:
            raise BadRequest(f"'max_tokens' may be at most {config.max_tokens_ceiling} here",
                             field="max_tokens")
    elif config.max_tokens_ceiling:
        max_tokens = config.max_tokens_ceiling

    return ChatRequest(history=history, role=role, temperature=temperature, model=model,
                       stream=stream, system=system or None, max_tokens=max_tokens)
