"""What makes the service safe to expose: who may call it, from where, how often, and the
headers every response carries. `install(app, config)` wires it all into the app factory.

- `TRUSTED_PROXIES`: how many proxies in front of us set `X-Forwarded-For`/`-Proto`; only then
  are those headers believed (werkzeug's ProxyFix). With 0 a client cannot pick its own IP.
- `ALLOWED_HOSTS`: when set, a request whose `Host` is not listed is a 400 (stops DNS
  rebinding from turning a visited web page into a client of a proxy on localhost).
- Cross-origin browser requests: refused with a 403 unless their `Origin` is in
  `CORS_ORIGINS`, whatever their content type (a "simple" cross-site POST would otherwise
  spend the key without a preflight). Listed origins get CORS headers from flask-cors, and
  then every answer of `/api/` and `/v1/` (plain, streamed, a preflight, a 401, 403 or 429)
  says `Vary: Origin`: its CORS headers depend on the request's Origin (flask-cors echoes the
  origin even for `*`, and sends nothing to an origin it does not allow or to none), so a
  shared cache must not hand one origin's answer to another.
- `RATE_LIMIT`: per client IP, per route, through Flask-Limiter; in `RATE_LIMIT_STORAGE`
  (memory, or Redis shared by every instance). A Redis outage falls back to per-process
  memory limits, never to a 500 and never to no limit. Checked before the token, so guessing
  the token is rate limited too.
- Who is calling (PROXY_TOKEN, accounts, sessions, keys) is `identity`'s, registered after
  these checks. `/healthz`, `/metrics` (on its own listener), the page and its static files
  need no credential.
- Every response: CSP without inline script, `nosniff`, `Referrer-Policy`, no framing.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, current_app, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.sansio.utils import host_is_trusted

from ..base.config import Config
from ..base.errors import BadRequest, ProxyError, RateLimited

log = logging.getLogger("gpt_proxy.security")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
OPEN_PATHS = ("/healthz", "/metrics")  # never behind the host check, token or rate limit


def install(app: Flask, config: Config) -> None:
    """Add every protection to `app`. Call it after the hook that sets `g.request_id`: the
    checks registered here run in this order: host, origin, rate limit, token."""
    if config.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies,
                                x_proto=config.trusted_proxies)
    if config.allowed_hosts:
        app.before_request(_host_check(config.allowed_hosts))
    app.before_request(_origin_check(config.cors_origins))
    if config.cors_origins:
        _install_cors(app, config.cors_origins, credentials=config.auth == "users")
        app.after_request(_vary_by_origin)
    if config.rate_limit:
        _install_limiter(app, config)
    app.after_request(_security_headers)


def _is_api(path: str) -> bool:
    """The routes that spend the key or show what it serves: every client protocol's."""
    return path.startswith(("/api/", "/v1/"))


# --- host and origin ------------------------------------------------------------------------

def _host_check(allowed: tuple[str, ...]):
    def check() -> None:
        if request.path in OPEN_PATHS:
            return
        host = request.environ.get("HTTP_HOST") or request.environ.get("SERVER_NAME", "")
        if not host_is_trusted(host, list(allowed)):
            raise BadRequest(f"this service does not answer for host {host[:100]!r}; "
                             "see ALLOWED_HOSTS", code="bad_host")
    return check


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Exact (case-insensitive) match against the allow-list; `*` allows every origin."""
    origin = origin.casefold()
    return any(item == "*" or item.casefold() == origin for item in allowed)


def _origin_check(allowed: tuple[str, ...]):
    """Browsers say where a request comes from (`Sec-Fetch-Site`); a cross-origin one that is
    not allowed is refused before it can reach the upstream. Requests from non-browser clients
    carry no such header and are left to the token."""
    def check() -> None:
        if not _is_api(request.path):
            return
        site = request.headers.get("Sec-Fetch-Site", "").lower()
        if site not in ("cross-site", "same-site"):
            return
        origin = request.headers.get("Origin", "")
        if origin and origin_allowed(origin, allowed):
            return
        raise ProxyError("cross-origin requests are not allowed here; see CORS_ORIGINS",
                         status=403, code="forbidden_origin")
    return check


def _install_cors(app: Flask, origins: tuple[str, ...], credentials: bool = False) -> None:
    from flask_cors import CORS

    wildcard = "*" in origins
    allowed = {"origins": "*" if wildcard else list(origins)}
    # Any request header a listed origin asks for is allowed: the OpenAI SDKs in a browser send
    # their own (X-Stainless-OS, -Retry-Count, -Timeout, ...; OpenAI-Organization), and a fixed
    # list would fail their preflight. What a request may do is decided by the origin list, the
    # credentials and the body, never by which headers it carries. Cookies (AUTH=users) only
    # for origins listed by name: with `*` no credentials are ever allowed.
    CORS(app, resources={r"/api/*": allowed, r"/v1/*": allowed},
         methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"], allow_headers="*",
         expose_headers=["X-Request-Id", "Retry-After", "X-Budget-Remaining", "X-Reply-Id"],
         supports_credentials=credentials and not wildcard, max_age=600)


def _vary_by_origin(response):
    if _is_api(request.path):
        response.vary.add("Origin")
    return response


# --- rate limits ----------------------------------------------------------------------------

def _install_limiter(app: Flask, config: Config) -> None:
    from flask_limiter import Limiter
    from flask_limiter.errors import RateLimitExceeded
    from flask_limiter.util import get_remote_address

    storage = config.rate_limit_storage
    options = {}
    if not storage.startswith("memory://"):  # a slow Redis must not hold requests for long
        options = {"socket_connect_timeout": 1, "socket_timeout": 1}
    limiter = Limiter(
        get_remote_address, app=app, default_limits=[config.rate_limit],
        storage_uri=storage, storage_options=options, strategy="sliding-window-counter",
        key_prefix="gpt_proxy", in_memory_fallback=[config.rate_limit],
        in_memory_fallback_enabled=True, swallow_errors=True, headers_enabled=False)
    limiter.request_filter(
        lambda: request.method == "OPTIONS" or not _is_api(request.path))

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(err: RateLimitExceeded):
        retry = _retry_after(limiter, err)
        state = current_app.extensions["gpt_proxy"]
        state.metrics.refused_by_rate_limit(request.url_rule.rule if request.url_rule
                                            else "unmatched")
        return state.respond(RateLimited(
            f"too many requests from this client: the limit is {err.limit.limit}; "
            f"retry in {retry} s", headers={"Retry-After": str(retry)}))


def _retry_after(limiter, err) -> int:
    """Whole seconds until the breached limit lets a request through again (at least 1)."""
    window = err.limit.limit.get_expiry()
    try:
        current = limiter.current_limit
        # the exact reset time: RequestLimit.reset_at rounds it down and adds a second, which
        # would tell a client to wait longer than the window itself
        seconds = current.window.reset_time - time.time() if current else window
    except Exception:  # noqa: BLE001 - storage trouble: fall back to the whole window
        seconds = window
    return min(window, max(1, int(seconds + 0.999)))


# --- the token ------------------------------------------------------------------------------

def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header, or ''."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (the time does not depend on where the strings differ)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"),
                               expected.encode("utf-8", "replace"))


# --- headers on every response ----------------------------------------------------------------

def _security_headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def loggable(value: object, limit: int = 200) -> str:
    """A value fit for one log line: control characters escaped (no forged lines), bounded."""
    text = str(value)[:limit]
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
