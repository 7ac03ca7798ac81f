"""Hostile input on every door: lone UTF-16 surrogates (JSON's "\\ud800" escapes, which
Python's json accepts, and the same code points sent as raw bytes) and ids out of the
database's range. Each is bad input or an unknown thing: a 400 or a 404 in the door's own
shape, the status in the access line, and never a 500 or a traceback in the log."""

from __future__ import annotations

import json
import logging

import pytest

from gpt_proxy.identity.accounts import Accounts

from .conftest import ANN, access_lines

ADMIN = "bad-input-admin-token-0123456789"
LONE = ("\ud800", "\udfff")


@pytest.fixture()
def doors(users_app):
    """An app with accounts, the admin token, a signed-in session (ann) and a key of ann's:
    (app, session client, admin headers, key headers)."""
    app = users_app(proxy_token=ADMIN, login_limit="1000/minute")
    client = app.test_client()
    client.post("/api/user/register", json={"username": ANN[0], "password": ANN[1]})
    assert client.post("/api/user/login", json={"username": ANN[0], "password": ANN[1]}
                       ).get_json()["code"] == 0
    accounts: Accounts = app.extensions["gpt_proxy"].accounts
    user = accounts.find_user(ANN[0])
    secret = accounts.create_key(user.id, "test")[1]
    accounts.create_role(user.id, "poet", "Poet", "", [("system", "a poet")])
    return (app, client, {"Authorization": f"Bearer {ADMIN}"},
            {"Authorization": f"Bearer {secret}"})


def raw(body: dict) -> bytes:
    """The body as JSON with every lone surrogate as a "\\uXXXX" escape (json.dumps's way)."""
    return json.dumps(body).encode("ascii")


def bodies(bad: str) -> list[tuple[str, str, str, dict]]:
    """(door, method, path, body) for every route that reads a body, `bad` in one field."""
    chat = [{"role": "user", "content": f"hello{bad}"}]
    return [
        ("api", "POST", "/api/gpt/get", {"message": f"hi{bad}"}),
        ("api", "POST", "/api/gpt/get", {"message": "hi", "model": f"m{bad}"}),
        ("api", "POST", "/api/gpt/get", {"message": "hi", "role": f"poet{bad}"}),
        ("api", "POST", "/api/gpt/get", {"messages": chat}),
        ("api", "POST", "/api/gpt/get", {f"field{bad}": 1, "message": "hi"}),
        ("openai", "POST", "/v1/chat/completions", {"model": f"fake{bad}", "messages": chat}),
        ("openai", "POST", "/v1/chat/completions", {"model": "fake-model", "messages": chat}),
        ("openai", "POST", "/v1/completions", {"model": "fake-model", "prompt": f"p{bad}"}),
        ("openai", "POST", "/v1/embeddings", {"model": "fake-model", "input": f"p{bad}"}),
        ("openai", "POST", "/v1/responses", {"model": "fake-model", "input": f"p{bad}"}),
        ("openai", "POST", "/v1/images/generations", {"prompt": f"p{bad}"}),
        ("chat", "POST", "/api/chat-process", {"prompt": f"hi{bad}"}),
        ("chat", "POST", "/api/chat-process", {"prompt": "hi",
                                               "options": {"parentMessageId": f"x{bad}"}}),
        ("chat", "POST", "/api/chat-process", {"prompt": "hi", "systemMessage": f"s{bad}"}),
        ("chat", "POST", "/api/verify", {"token": f"sk-{bad}"}),
        ("user", "POST", "/api/user/register", {"username": f"ann{bad}", "password": ANN[1]}),
        ("user", "POST", "/api/user/register", {"username": "zed", "password": f"{ANN[1]}{bad}"}),
        ("user", "POST", "/api/user/login", {"username": f"ann{bad}", "password": ANN[1]}),
        ("user", "POST", "/api/user/login", {"username": "ann", "password": f"{ANN[1]}{bad}"}),
        ("user", "POST", "/api/user/password", {"password": ANN[1],
                                                "newPassword": f"new password{bad}"}),
        ("user", "POST", "/api/user/password", {"password": f"{ANN[1]}{bad}",
                                                "newPassword": "new password 1"}),
        ("user", "POST", "/api/role/create", {"keyword": f"k{bad}", "name": "n",
                                              "roleElementList": [{"name": "system",
                                                                   "content": "c"}]}),
        ("user", "POST", "/api/role/create", {"keyword": "k2", "name": f"n{bad}",
                                              "roleElementList": [{"name": "system",
                                                                   "content": f"c{bad}"}]}),
        ("user", "POST", "/api/role/getRoleElementsByKeyword", {"keyword": f"poet{bad}"}),
        ("user", "POST", "/api/role/update", {"keyword": "poet", "description": f"d{bad}"}),
        ("user", "POST", "/api/role/delete", {"keyword": f"poet{bad}"}),
        ("user", "POST", "/api/gpt/getImage", {"prompt": f"p{bad}"}),
        ("user", "POST", "/api/user/current", {f"x{bad}": 1}),
        ("keys", "POST", "/api/keys", {"name": f"laptop{bad}"}),
        ("keys", "POST", "/api/keys", {"name": "laptop", "models": [f"m{bad}"]}),
        ("admin", "POST", "/api/admin/users", {"username": f"cat{bad}", "password": ANN[1]}),
        ("admin", "POST", "/api/admin/users", {"username": "cat", "password": f"{ANN[1]}{bad}"}),
        ("admin", "PATCH", "/api/admin/users/1", {"password": f"{ANN[1]}{bad}"}),
        ("admin", "POST", "/api/admin/keys", {"user": f"ann{bad}", "name": "k"}),
        ("admin", "POST", "/api/admin/budgets", {"scope": "user", "subject": f"ann{bad}",
                                                 "unit": "tokens", "period": "day",
                                                 "limit": 5}),
        ("admin", "POST", "/api/admin/invites", {f"days{bad}": 1}),
    ]


def credentials(door: str, admin: dict, key: dict) -> dict:
    """The headers a door's request carries (the session rides in the client's cookie)."""
    return {"openai": key, "chat": key, "admin": admin}.get(door, {})


def check_refused(door: str, response, caplog) -> None:
    """400 in the door's shape (the frontend doors: HTTP 200 and their failure envelope),
    and 400 in the access line."""
    text = response.get_data(as_text=True)
    assert response.status_code != 500 and "internal error" not in text, text
    body = response.get_json()
    if door in ("api", "keys", "admin"):
        assert response.status_code == 400 and body["error"]["code"] == "bad_request", text
    elif door == "openai":
        assert response.status_code == 400, text
        assert body["error"]["type"] == "invalid_request_error", text
    elif door == "chat":
        assert response.status_code == 200 and body["status"] == "Fail", text
    else:
        assert response.status_code == 200 and body["code"] == 40000, text
    line = access_lines(caplog, response.headers["X-Request-Id"])
    assert line and " status=400 " in line[0], line


@pytest.mark.parametrize("bad", LONE, ids=["high", "low"])
def test_a_lone_surrogate_is_bad_input_on_every_door(doors, caplog, bad):
    app, client, admin, key = doors
    caplog.set_level(logging.INFO)
    for door, method, path, body in bodies(bad):
        response = client.open(path, method=method, data=raw(body),
                               headers={**credentials(door, admin, key),
                                        "Content-Type": "application/json"})
        check_refused(door, response, caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert "Traceback" not in caplog.text
    accounts: Accounts = app.extensions["gpt_proxy"].accounts  # and nothing was made
    assert [u.username for u in accounts.list_users()] == [ANN[0]]
    assert [r.keyword for r in accounts.roles(1)] == ["poet"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le"])
def test_a_surrogate_sent_as_raw_bytes_is_bad_input(doors, caplog, encoding):
    """The same bodies with the surrogate's code point written as bytes (ED A0 80 in UTF-8,
    a lone unit in UTF-16), which Python's json decodes with `surrogatepass`."""
    app, client, admin, key = doors
    caplog.set_level(logging.INFO)
    for door, method, path, body in bodies("\ud800"):
        data = json.dumps(body, ensure_ascii=False).encode(encoding, "surrogatepass")
        response = client.open(path, method=method, data=data, headers={
            **credentials(door, admin, key), "Content-Type": "application/json"})
        check_refused(door, response, caplog)
    assert "Traceback" not in caplog.text


def test_a_surrogate_pair_is_a_character_and_passes(doors, upstream):
    """"\\ud83d\\ude00" is one emoji (what json.dumps writes for it): not refused."""
    app, client, admin, key = doors
    response = client.post("/api/gpt/get", data=raw({"message": "hi \U0001F600"}),
                           headers={"Content-Type": "application/json",
                                    "Accept": "application/json"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert upstream.records[-1].json["messages"][-1]["content"] == "hi \U0001F600"


def test_surrogates_in_a_query_or_a_path_are_never_an_error(doors, caplog):
    """A URL is percent-decoded as UTF-8 with replacement: "%ED%A0%80" cannot become a lone
    surrogate; such requests are answered like any other odd value."""
    app, client, admin, key = doors
    caplog.set_level(logging.INFO)
    for path, headers in (("/api/replies/r%ED%A0%80?after=%ED%A0%80", {}),
                          ("/api/admin/keys?user=ann%ED%A0%80", admin),
                          ("/api/admin/usage?user=ann%ED%B0%80&key=%ED%A0%80", admin),
                          ("/api/usage?days=%ED%A0%80", {}),
                          ("/v1/models/m%ED%A0%80", key)):
        response = client.get(path, headers=headers)
        assert response.status_code in (400, 404), (path, response.get_data(as_text=True))
    assert "Traceback" not in caplog.text


# --- ids out of the database's range ---------------------------------------------------------

HUGE = "9999999999999999999999999"
NOT_IDS = [HUGE, str(2**31), str(2**63), "9" * 5000, "0", "-1", "+1", "007", "-" + HUGE]


@pytest.fixture()
def id_doors(users_app, database_url):
    """As `doors`, on SQLite and on PostgreSQL (ids are 32-bit INTEGER columns there)."""
    app = users_app(proxy_token=ADMIN, database_url=database_url)
    client = app.test_client()
    client.post("/api/user/register", json={"username": ANN[0], "password": ANN[1]})
    assert client.post("/api/user/login", json={"username": ANN[0], "password": ANN[1]}
                       ).get_json()["code"] == 0
    return app, client, {"Authorization": f"Bearer {ADMIN}"}


def check_unknown(response, code: str, caplog) -> None:
    text = response.get_data(as_text=True)
    assert response.status_code == 404, text
    assert response.get_json()["error"]["code"] == code, text
    assert "Traceback" not in caplog.text


def test_an_id_out_of_range_is_unknown_on_every_route(id_doors, caplog):
    app, client, admin = id_doors
    caplog.set_level(logging.INFO)
    for text in NOT_IDS:
        check_unknown(client.delete(f"/api/keys/{text}"), "unknown_key", caplog)
        check_unknown(client.patch(f"/api/admin/users/{text}", json={"admin": True},
                                   headers=admin), "unknown_user", caplog)
        check_unknown(client.delete(f"/api/admin/keys/{text}", headers=admin), "unknown_key",
                      caplog)
        check_unknown(client.delete(f"/api/admin/budgets/{text}", headers=admin),
                      "unknown_budget", caplog)
    for text in (HUGE, str(2**31), "9" * 5000):
        check_unknown(client.get(f"/api/admin/keys?user={text}", headers=admin),
                      "unknown_user", caplog)
    for text in (HUGE, str(2**31)):
        check_unknown(client.get(f"/api/admin/keys?user={text}", headers=admin),
                      "unknown_user", caplog)
        check_unknown(client.get(f"/api/admin/usage?user={text}", headers=admin),
                      "unknown_user", caplog)
        check_unknown(client.get(f"/api/admin/usage?key={text}", headers=admin),
                      "unknown_key", caplog)
        check_unknown(client.post("/api/admin/keys", json={"user": int(text), "name": "k"},
                                  headers=admin), "unknown_user", caplog)
        check_unknown(client.post("/api/admin/budgets", json={
            "scope": "user", "subject": int(text), "unit": "tokens", "period": "day",
            "limit": 5}, headers=admin), "unknown_user", caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_largest_id_is_asked_for_and_the_credential_comes_first(id_doors, caplog):
    """2**31 - 1 fits the column: the database answers (unknown); without a credential the
    answer is 401 whatever the id."""
    app, client, admin = id_doors
    check_unknown(client.delete(f"/api/admin/keys/{2**31 - 1}", headers=admin), "unknown_key",
                  caplog)
    assert client.delete(f"/api/admin/keys/{HUGE}").status_code == 403  # a user, not admin
    anonymous = app.test_client()
    assert anonymous.delete(f"/api/keys/{HUGE}").status_code == 401
    assert anonymous.delete(f"/api/admin/budgets/{HUGE}").status_code == 401


def test_a_real_id_still_works(id_doors):
    app, client, admin = id_doors
    made = client.post("/api/keys", json={"name": "laptop"})
    assert made.status_code == 201
    key_id = made.get_json()["id"]
    assert client.delete(f"/api/keys/{key_id}").get_json()["revoked"]
    user_id = app.extensions["gpt_proxy"].accounts.find_user(ANN[0]).id
    assert client.get(f"/api/admin/keys?user={user_id}", headers=admin).get_json()["data"]


@pytest.mark.parametrize("query", ["days=\u00b2", "days=" + "9" * 5000])
def test_odd_digits_in_a_query_are_bad_input(doors, query):
    """"²" is a digit to str.isdigit() but not to int(); 5,000 digits exceed int()'s limit."""
    app, client, admin, key = doors
    response = client.get(f"/api/usage?{query}")
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "days"
    response = client.get(f"/api/admin/usage?limit={query[5:]}", headers=admin)
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "limit"
