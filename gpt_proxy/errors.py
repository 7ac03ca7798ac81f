"""Errors as values: a code, a message and the HTTP status the edge should answer with.

The service modules raise these; the blueprint turns them into a JSON body before the first
byte, or into an SSE ``error`` event / a ``[error]`` text line after it.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base class: every failure a client may see."""

    status: int = 500
    code: str = "internal_error"
    says_when: bool = False  # the message itself says when to try again (see `with_wait`)

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.field = field

    def to_dict(self) -> dict:
        body: dict = {"code": self.code, "message": self.message, "status": self.status}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


def with_wait(err: ProxyError) -> str:
    """The message for a door whose clients show only a message (chat-process, the GPT
    Terminal user protocol): a Retry-After wait is added as "(retry in N s)", unless the
    message already says when (a budget names its reset time and how far off it is)."""
    retry = err.headers.get("Retry-After")
    if not retry or err.says_when or "retry in" in err.message:
        return err.message
    return f"{err.message} (retry in {retry} s)"


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class Unauthorized(ProxyError):
    status = 401
    code = "unauthorized"


class NotFound(ProxyError):
    status = 404
    code = "not_found"


class UnknownRole(NotFound):
    code = "unknown_role"


class Conflict(BadRequest):
    """A name that must be unique is taken (a username, an own role's keyword)."""

    code = "conflict"


class PayloadTooLarge(ProxyError):
    status = 413
    code = "payload_too_large"


class RateLimited(ProxyError):
    status = 429
    code = "rate_limited"


class Throttled(RateLimited):
    """Too many login (or registration) attempts for a username or an address."""

    code = "too_many_attempts"


class OverBudget(RateLimited):
    """A budget has no room for the request's worst case (the message says which, and when
    it resets)."""

    code = "budget_exceeded"
    says_when = True  # "it resets at ... (in 3 h 12 min)", or that it never does


class Unpriced(ProxyError):
    """A money budget applies, and the model has no price (and no DEFAULT_PRICE is set)."""

    status = 403
    code = "model_unpriced"


class ClientLeft(ProxyError):
    """The client went away before its reply started (nobody reads this answer; it names the
    outcome in the access log, as nginx's 499 does)."""

    status = 499
    code = "client_left"


class UpstreamError(ProxyError):
    """The upstream answered, but not with a usable stream (bad status, bad bytes, an error chunk)."""

    status = 502
    code = "upstream_error"


class UpstreamUnavailable(ProxyError):
    status = 503
    code = "upstream_unavailable"


class DatabaseUnavailable(ProxyError):
    """The service's own database failed for a moment (restarting, unreachable, busy): the
    request did nothing, and the same request a moment later may succeed."""

    status = 503
    code = "database_unavailable"
    RETRY_AFTER = "2"

    def __init__(self, message: str = "the service's database cannot be reached just now; "
                 "nothing was done: try again in a moment") -> None:
        super().__init__(message, headers={"Retry-After": self.RETRY_AFTER})


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"
