"""The guards of gpt_proxy/identity.py that the mutation run (bench/mutation.py) found no test
holding: a session moved on gets its cookie again, logging out removes the cookie where it
was set, the challenge a 401 sends, which part of LOGIN_LIMIT counts, and the wait a
throttled login is told."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpt_proxy.base.errors import ProxyError
from gpt_proxy.identity.accounts import SESSION_REFRESH_SECONDS, Counted
from gpt_proxy.identity.callers import SESSION_COOKIE, LoginThrottle

from .conftest import ANN, sign_up


def cookie_header(response) -> str:
    [header] = [v for k, v in response.headers.items() if k.lower() == "set-cookie"]
    return header


def test_a_session_moved_on_sends_its_cookie_again(users_app):
    """The expiry moves on (at most once an hour) in the database and in the browser: the
    same cookie, with a fresh Max-Age; a request within the hour sets no cookie."""
    app = users_app(session_days=2)
    accounts = app.extensions["gpt_proxy"].accounts
    client = app.test_client()
    sign_up(client, *ANN)
    value = client.get_cookie(SESSION_COOKIE).value
    quiet = client.post("/api/user/current", json={})
    assert quiet.get_json()["code"] == 0 and "Set-Cookie" not in quiet.headers
    start = accounts.clock()
    accounts.clock = lambda: start + SESSION_REFRESH_SECONDS + 5
    accounts._sessions.clear()
    moved = client.post("/api/user/current", json={})
    assert moved.get_json()["code"] == 0, moved.get_json()
    header = cookie_header(moved)
    assert header.startswith(f"{SESSION_COOKIE}={value};")
    assert f"Max-Age={2 * 86400}" in header and "HttpOnly" in header and "Path=/" in header


def test_logging_out_removes_the_cookie_from_the_whole_site(users_app):
    client = users_app().test_client()
    sign_up(client, *ANN)
    response = client.post("/api/user/logout", json={})
    assert response.get_json()["code"] == 0
    header = cookie_header(response)
    assert "Path=/;" in header + ";" and ("Max-Age=0" in header or "Expires=Thu, 01 Jan 1970"
                                           in header)
    assert client.post("/api/user/current", json={}).get_json()["code"] != 0


def test_a_missing_credential_is_challenged_as_bearer(users_app):
    client = users_app().test_client()
    response = client.get("/api/keys")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gpt_proxy"'
    wrong = client.get("/api/keys", headers={"Authorization": "Bearer sk-nothing"})
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="gpt_proxy"'


@pytest.mark.parametrize("setting", ["2/minute;100/hour", "2/minute,100/hour",
                                     "2 per minute; 100 per hour", "2/minute, 100/hour"])
def test_the_first_limit_of_login_limit_is_the_one_counted(setting):
    throttle = LoginThrottle(SimpleNamespace(login_limit=setting), accounts=None)
    assert (throttle.limit, throttle.seconds) == (2, 60.0)


class Refusing:
    """An accounts store that refuses every attempt, its window ending in `wait` s."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.subjects = None

    def count_attempt(self, subjects, limit, seconds):
        self.subjects = subjects
        return Counted(refused=subjects[-1], wait=self.wait)


@pytest.mark.parametrize("wait,told", [(0.2, 1), (0.0, 1), (1.0, 1), (30.5, 31), (59.9, 60)])
def test_a_throttled_login_is_told_the_whole_seconds_to_wait(wait, told):
    accounts = Refusing(wait)
    throttle = LoginThrottle(SimpleNamespace(login_limit="5/minute"), accounts)
    with pytest.raises(ProxyError) as refused:
        throttle.attempt("10.0.0.1", "ann")
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == str(told)
    assert f"retry in {told} s" in str(refused.value)
    assert "too many login attempts for this user" in str(refused.value)
    assert accounts.subjects == ["login:address:10.0.0.1", "login:user:ann"]


@pytest.mark.parametrize("site,status", [("none", 201), ("cross-site", 403)])
def test_a_request_the_user_started_carries_the_cookie(users_app, site, status):
    """`Sec-Fetch-Site: none` is a request the user made (typed, bookmarked), never one a
    page made: the session counts whatever Origin says; a cross-site one never does."""
    client = users_app().test_client()
    sign_up(client, *ANN)
    response = client.post("/api/keys", json={"name": "k"},
                           headers={"Sec-Fetch-Site": site, "Origin": "https://elsewhere.example"})
    assert response.status_code == status, response.get_data(as_text=True)


@pytest.mark.parametrize("route", ["/api/user/login", "/api/user/register"])
@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},  # CORS_ORIGINS=*
    {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-Site
], ids=["cross-site", "origin-only"])
def test_no_other_site_may_plant_a_session_even_when_every_origin_may_call(users_app, route,
                                                                         headers):
    """CORS_ORIGINS=* lets any page call the API, but a login or registration (which would
    set the cookie) must come from this service's pages or an origin listed by name."""
    client = users_app(cors_origins=("*",)).test_client()
    if route.endswith("login"):
        client.post("/api/user/register", json={"username": ANN[0], "password": ANN[1]})
    response = client.post(route, json={"username": "zed", "password": ANN[1]}, headers=headers)
    assert response.get_json()["code"] == 40300, response.get_json()
    assert client.get_cookie(SESSION_COOKIE) is None


def test_public_routes_answer_without_a_credential_when_accounts_are_on(users_app):
    client = users_app().test_client()
    assert client.get("/api/roles").status_code == 200
    assert client.get("/api/keys").status_code == 401  # a route that is not public
