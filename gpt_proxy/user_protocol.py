"""The GPT Terminal user protocol: the routes the seed project's own backend (July 2023) served
to its frontend under /api (`user/*`, `role/*`, `gpt/getImage`), in its shape.

Every answer is HTTP 200 with an envelope: `{"code": 0, "data": ...}` on success,
`{"code": <code>, "message": "<text>", "data": null}` on failure, the codes being 40000 (bad
parameters), 40100 (not signed in), 40300 (forbidden), 40400 (not found), 50000 (anything
else). That frontend treats any other HTTP status as a broken server and stays stuck until it
is reloaded, so even an unexpected failure is a 200 envelope (the access line keeps the real
status). Its error box reads `msg` where the envelope says `message`, so both carry the text.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from .errors import ProxyError

bp = Blueprint("user_protocol", __name__, url_prefix="/api")

PREFIXES = ("/api/user/", "/api/role/")
PATHS = frozenset(("/api/gpt/getImage",))

BAD_PARAMETERS, NOT_SIGNED_IN, FORBIDDEN, NOT_FOUND, OTHER = 40000, 40100, 40300, 40400, 50000


def owns(path: str) -> bool:
    return path.startswith(PREFIXES) or path in PATHS


def ok(data: object = None):
    """Success: `{"code": 0, "data": ...}`."""
    return jsonify({"code": 0, "data": data})


def code_of(err: ProxyError) -> int:
    """The envelope code for an error, by its HTTP status."""
    status = err.status
    if status == 401:
        return NOT_SIGNED_IN
    if status == 403:
        return FORBIDDEN
    if status == 404:
        return NOT_FOUND
    if 400 <= status < 500:
        return BAD_PARAMETERS
    return OTHER


def error_response(err: ProxyError):
    """HTTP 200 and the failure envelope; a wait (rate limit) is said in the message."""
    message = err.message
    retry = err.headers.get("Retry-After")
    if retry and "retry in" not in message:
        message = f"{message} (retry in {retry} s)"
    response = jsonify({"code": code_of(err), "message": message, "msg": message, "data": None})
    if retry:
        response.headers["Retry-After"] = retry
    return response
