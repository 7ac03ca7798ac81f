"""Who is calling: one `Caller` per request, loaded once into `flask.g.caller` before the view
runs (as Flask's tutorial loads `g.user`), from the credential the request's door accepts.
Views and the pipeline read `g.caller`; none of them looks a session or key up itself.

The mode is one setting, AUTH:
- `open`: no identity; every caller is the same anonymous one.
- `token`: every `/api/` and `/v1/` route needs `Authorization: Bearer <PROXY_TOKEN>`,
  compared in constant time; routes marked `public` answer without it.
- `users`: accounts (`accounts`). Each door names the credentials it reads (its module's
  `CREDENTIALS`): the OpenAI API and chat-process read an API key from `Authorization:
  Bearer`; `/api/gpt/get`, the GPT Terminal user protocol and the account routes read the
  session cookie or a key. `/api/admin/` takes an admin's session, or PROXY_TOKEN as the
  admin credential (never a user key). A credential that is missing or wrong is a 401 in the
  door's own shape; a public route answers anyway, to nobody in particular.

A cookie never authenticates a cross-site request: a state-changing request carried by the
session cookie (and a login or registration, which would plant one) must come from the same
origin (`Sec-Fetch-Site: same-origin`, or without that header an `Origin` naming this host)
or from an origin listed in CORS_ORIGINS, which then gets `Access-Control-Allow-Credentials`
for its exact origin (never for `*`). A request with no browser headers at all (curl, a
script) is no cross-site request. The cookie is `HttpOnly`, `SameSite=Lax`, `Secure` when
the request came over https, and `Path=/`; every login sets a new session id.

Password checks are throttled per username and per client address (LOGIN_LIMIT, default 5
a minute), counted in the accounts database, so every worker and instance that shares the
accounts counts together (`LoginThrottle`). Each attempt is counted before the password is
checked, so a burst of parallel guesses cannot slip through between a check and a count; a
successful login gives its address its attempt back and clears its username's count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import Flask, current_app, g, request

from ..base.config import Config
from ..base.errors import ProxyError, Throttled, Unauthorized
from .accounts import Accounts, Counted, Identity, Key, User
from .security import bearer_token, origin_allowed, token_matches

log = logging.getLogger("gpt_proxy.identity")
View = TypeVar("View", bound=Callable[..., object])

SESSION_COOKIE = "gpt_proxy_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ADMIN_PREFIX = "/api/admin/"


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the mode's anonymous caller, the proxy token's holder, an
    admin by PROXY_TOKEN, or a user by session or key."""

    kind: str  # "open" | "token" | "nobody" | "admin" | "session" | "key"
    user: User | None = None
    key: Key | None = None
    session_hash: str | None = None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user is not None else None

    @property
    def key_id(self) -> int | None:
        return self.key.id if self.key is not None else None

    @property
    def owner(self) -> str:
        """Whose conversations and replies these are: `u<id>` for a user, '' otherwise."""
        return f"u{self.user.id}" if self.user is not None else ""

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin" or (self.kind == "session" and self.user is not None
                                        and self.user.admin)

    def may_use(self, model: str) -> bool:
        """Whether this caller's key allows `model` (a key may be limited to some models)."""
        return self.key is None or self.key.models is None or model in self.key.models


OPEN = Caller("open")
NOBODY = Caller("nobody")


def public(view: View) -> View:
    """Mark a route that answers without a credential (still host-checked and rate limited):
    one a client calls to learn what is needed, to check a credential, or to sign in."""
    view.public = ("token", "users")
    return view


def public_with_accounts(view: View) -> View:
    """Mark a route that answers without a credential when AUTH=users (a page must show
    something before its user signs in) but needs the proxy token when AUTH=token."""
    view.public = ("users",)
    return view


def same_origin_only(view: View) -> View:
    """Mark a route that plants or uses a session (login, registration): it must pass the
    same-origin rule even though it carries no cookie yet."""
    view.same_origin_only = True
    return view


def caller() -> Caller:
    return g.get("caller") or OPEN


def require_admin() -> Caller:
    """This request's caller if it is an admin (an admin's session, or PROXY_TOKEN), else a
    403 `admin_required`: the one check of every admin route."""
    found = caller()
    if not found.is_admin:
        raise ProxyError("this needs an admin: an admin's session, or PROXY_TOKEN "
                         "(AUTH=users or token)", status=403, code="admin_required")
    return found


def _is_api(path: str) -> bool:
    return path.startswith(("/api/", "/v1/"))


def install(app: Flask, config: Config, accounts: Accounts | None,
            protocols: tuple = ()) -> None:
    """Load the caller for every request (register after the host, origin and rate-limit
    checks: guessing credentials is rate limited too)."""
    if config.auth != "open" and config.proxy_token and len(config.proxy_token) < 16:
        logging.getLogger("gpt_proxy.security").warning(
            "PROXY_TOKEN is shorter than 16 characters: easy to guess")

    def credentials(path: str) -> tuple[str, ...]:
        if path.startswith(ADMIN_PREFIX):
            return ("admin", "session")
        for protocol in protocols:
            if protocol.owns(path):
                return getattr(protocol, "CREDENTIALS", ("session", "key"))
        return ("session", "key")

    def load() -> None:
        g.caller = OPEN
        if (request.method == "OPTIONS" or not _is_api(request.path)
                or request.routing_exception is not None):  # no such route: its 404 or 405
            return
        view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
        open_route = config.auth in getattr(view, "public", ())
        if getattr(view, "same_origin_only", False):
            check_same_origin(config)
        if config.auth == "open":
            return
        given = bearer_token(request.headers.get("Authorization", ""))
        if config.auth == "token":
            if given and token_matches(given, config.proxy_token):  # the token's holder
                g.caller = Caller("admin" if request.path.startswith(ADMIN_PREFIX) else "token")
                return
            if open_route:
                g.caller = NOBODY
                return
            raise Unauthorized(
                "a valid proxy token is required: send 'Authorization: Bearer <PROXY_TOKEN>'"
                if not given else "the proxy token is wrong",
                headers={"WWW-Authenticate": 'Bearer realm="gpt_proxy"'})
        g.caller = _user_caller(config, accounts, credentials(request.path), given,
                                open_route)

    app.before_request(load)

    @app.after_request
    def refresh_cookie(response):
        identity = g.get("refreshed_session")
        if identity is not None and not response.headers.get("Set-Cookie"):
            set_session_cookie(response, g.session_cookie, config)
        return response


def _user_caller(config: Config, accounts: Accounts, forms: tuple[str, ...], given: str,
                 open_route: bool) -> Caller:
    if given:
        if "admin" in forms and config.proxy_token and token_matches(given,
                                                                       config.proxy_token):
            return Caller("admin")
        if "key" in forms:
            identity = accounts.key(given)
            if identity is not None:
                return Caller("key", identity.user, identity.key)
            if not open_route:
                raise Unauthorized("the API key is not valid (unknown, revoked or expired)",
                                   code="invalid_api_key", headers=_challenge())
    if "session" in forms:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie:
            identity = accounts.session(cookie)
            if identity is not None:
                if request.method not in SAFE_METHODS:
                    check_same_origin(config)
                _note_refresh(identity, cookie)
                return Caller("session", identity.user, session_hash=identity.session_hash)
    if open_route:
        return NOBODY
    if "key" in forms and "session" not in forms:
        message = "an API key is required: send 'Authorization: Bearer <key>'"
    elif "admin" in forms:
        message = ("sign in as an admin, or send 'Authorization: Bearer <PROXY_TOKEN>'")
    else:
        message = "sign in first (user login), or send 'Authorization: Bearer <key>'"
    raise Unauthorized(message, code="invalid_api_key" if given else "unauthorized",
                       headers=_challenge())


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="gpt_proxy"'}


def _note_refresh(identity: Identity, cookie: str) -> None:
    if identity.refreshed:
        g.refreshed_session = identity
        g.session_cookie = cookie


def check_same_origin(config: Config) -> None:
    """Refuse a browser request from another origin that is not listed in CORS_ORIGINS
    (a `*` in the list does not count: a cookie is never honoured for just any origin)."""
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    origin = request.headers.get("Origin", "")
    listed = bool(origin) and origin != "*" and origin_allowed(
        origin, tuple(item for item in config.cors_origins if item != "*"))
    if site in ("same-origin", "none"):
        return
    if site in ("same-site", "cross-site"):
        if listed:
            return
    elif not origin or origin.rstrip("/") == request.host_url.rstrip("/") or listed:
        return  # no browser headers at all, or a browser that sends only Origin
    raise ProxyError("a signed-in request must come from this service's own pages (or an "
                     "origin listed in CORS_ORIGINS)", status=403, code="cross_site_session")


def set_session_cookie(response, value: str, config: Config) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=int(config.session_days * 86400),
                        path="/", secure=request.is_secure, httponly=True, samesite="Lax")


def clear_session_cookie(response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=request.is_secure, httponly=True,
                           samesite="Lax")


# --- failed logins --------------------------------------------------------------------------

class LoginThrottle:
    """Password checks per username and per client address, within LOGIN_LIMIT, counted in
    the accounts database (`Accounts.count_attempt`), which every worker and every instance
    sharing the accounts shares: the count cannot be per process, whatever
    RATE_LIMIT_STORAGE says (a per-process count let each worker check its own five).

    An attempt is counted before its password is checked (a burst cannot slip through between
    a check and a count). One that succeeds takes its count back from the address (a
    household or an office behind one address may sign in as often as it likes) and clears
    its username's count (the password was right: whoever typed it needs no more guesses).
    A registration counts against its address whatever its outcome."""

    def __init__(self, config: Config, accounts: Accounts) -> None:
        from limits import parse

        limit = parse(config.login_limit.split(";")[0].split(",")[0])
        self.limit = limit.amount
        self.seconds = float(limit.get_expiry())
        self.accounts = accounts

    def attempt(self, address: str, username: str | None = None, what: str = "login"
                ) -> Counted:
        """Count one attempt (`what`: a login, or a registration, counted apart) before the
        password is checked; Throttled with the wait if the address or the username has
        used its attempts (and then nothing is counted)."""
        subjects = [f"{what}:address:{address}"]
        if username:
            subjects.append(f"{what}:user:{username}")
        counted = self.accounts.count_attempt(subjects, self.limit, self.seconds)
        if counted.refused is not None:
            kind = counted.refused.split(":")[1]
            wait = max(1, int(counted.wait + 0.999))
            raise Throttled(f"too many {what} attempts for this {kind}: retry in {wait} s",
                            headers={"Retry-After": str(wait)})
        return counted

    def succeeded(self, counted: Counted) -> None:
        """The password was right: the address gets its attempt back, the username's count
        starts again."""
        for subject, ends in counted.subjects:
            if ":user:" in subject:
                self.accounts.clear_attempts(subject)
            else:
                self.accounts.uncount_attempt(subject, ends)
