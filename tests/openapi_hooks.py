"""Schemathesis hooks for tests/test_openapi_live.py (loaded by `schemathesis run` through
SCHEMATHESIS_HOOKS): the credential of each generated request, kept valid.

The run signs in as one identity, named by the environment: FUZZ_URL (the server),
FUZZ_AS (a username; its password FUZZ_PASSWORD, its id FUZZ_USER_ID, FUZZ_ADMIN 1 for an
admin), FUZZ_CREDENTIAL (`session`: the cookie from POST /api/user/login; `key`: an API key
as a Bearer), and FUZZ_PROXY_TOKEN (the admin credential used to repair the identity). The
generated requests may end that identity's session (user/logout), revoke its key, or disable,
demote or re-password it (the admin routes): before each request the credential is checked
(one cheap request) and, when it no longer works, the identity is put back with the proxy
token and signs in again, so every request is made as the identity the run is about."""

from __future__ import annotations

import os

import requests
import schemathesis

SESSION_COOKIE = "gpt_proxy_session"


class _Identity:
    def __init__(self) -> None:
        self.url = os.environ["FUZZ_URL"]
        self.username = os.environ["FUZZ_AS"]
        self.password = os.environ["FUZZ_PASSWORD"]
        self.user_id = int(os.environ["FUZZ_USER_ID"])
        self.admin = os.environ.get("FUZZ_ADMIN") == "1"
        self.kind = os.environ["FUZZ_CREDENTIAL"]
        self.token = os.environ["FUZZ_PROXY_TOKEN"]
        self.http = requests.Session()
        self.http.trust_env = False  # the server is on 127.0.0.1: never through a proxy
        self.secret = os.environ.get("FUZZ_KEY", "")
        self.cookie = ""
        self.repairs = 0

    def _admin(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, self.url + path, timeout=30,
                                 headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def _works(self) -> bool:
        if self.kind == "session":
            if not self.cookie:
                return False
            answer = self.http.post(self.url + "/api/user/current", timeout=30,
                                    cookies={SESSION_COOKIE: self.cookie}).json()
            return answer.get("code") == 0 and answer["data"].get("admin") == self.admin
        answer = self.http.post(self.url + "/api/verify", json={"token": self.secret},
                                timeout=30).json()
        return answer.get("status") == "Success" and self._user_as_it_was()

    def _user_as_it_was(self) -> bool:
        found = [u for u in self._admin("GET", "/api/admin/users").json()["data"]
                 if u["id"] == self.user_id]
        return bool(found) and not found[0]["disabled"] and found[0]["admin"] == self.admin

    def _login(self) -> bool:
        answer = self.http.post(self.url + "/api/user/login", timeout=30,
                                json={"username": self.username, "password": self.password})
        self.cookie = answer.cookies.get(SESSION_COOKIE, "")
        return answer.json().get("code") == 0

    def _repair(self) -> None:
        self.repairs += 1
        self._admin("PATCH", f"/api/admin/users/{self.user_id}",
                    json={"disabled": False, "admin": self.admin}).raise_for_status()
        if self.kind == "session":
            if not self._login():  # a generated request changed the password
                self._admin("PATCH", f"/api/admin/users/{self.user_id}",
                            json={"password": self.password}).raise_for_status()
                assert self._login(), "the identity cannot sign in after its repair"
        elif self.http.post(self.url + "/api/verify", json={"token": self.secret},
                            timeout=30).json().get("status") != "Success":
            made = self._admin("POST", "/api/admin/keys",
                               json={"user": self.user_id, "name": "fuzz"})
            made.raise_for_status()
            self.secret = made.json()["key"]

    def credential(self) -> str:
        if not self._works():
            self._repair()
        return self.cookie if self.kind == "session" else self.secret


_identity: _Identity | None = None


@schemathesis.auth(refresh_interval=None, retry_on=[])
class FuzzIdentity:
    """Checked (and put back if need be) before every request; never cached."""

    def get(self, case, context) -> str:
        global _identity
        if _identity is None:
            _identity = _Identity()
        return _identity.credential()

    def set(self, case, data: str, context) -> None:
        if _identity.kind == "session":
            case.cookies = {**(case.cookies or {}), SESSION_COOKIE: data}
        else:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


INTERNAL = "internal error (request "  # the start of the message of an unexpected error


@schemathesis.check
def envelope_not_a_server_error(ctx, response, case) -> bool | None:
    """The GPT Terminal user protocol and chat-process answer an internal error with HTTP 200
    in their envelope (`code` 50000 / `status: Fail`), which not_a_server_error cannot see:
    an envelope whose message is the unexpected-error one is a server error all the same."""
    if not response.headers.get("content-type", [""])[0].startswith("application/json"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and str(body.get("message", "")).startswith(INTERNAL):
        raise AssertionError(f"an internal error in the door's envelope: {body['message']}")
    return None
