"""The GPT Terminal user protocol (July 2023), route by route, with every error envelope; the
attacks the issue names (fixation, cross-site requests, brute force, secrets in logs)."""

from __future__ import annotations

import logging

import pytest

from gpt_proxy.identity.callers import SESSION_COOKIE

from .conftest import ANN, BOB, sign_up
from .fake_upstream import stream_scenario

CASES = [{"name": "system", "content": "You answer in haiku."},
         {"name": "user", "content": "the sea"},
         {"name": "assistant", "content": "waves fold / into light"}]


def envelope(response, code: int = 0):
    """The body of an answer that must be HTTP 200 with `code`."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == code, body
    if code:
        assert body["data"] is None and body["message"] and body["msg"] == body["message"]
    return body


@pytest.fixture()
def app(users_app):
    return users_app()


@pytest.fixture()
def client(app):
    return app.test_client()


# --- user/* ------------------------------------------------------------------------------------

def test_register_answers_the_new_users_id(client):
    body = envelope(client.post("/api/user/register", json={
        "username": "ann", "password": ANN[1], "email": "ann@example.com"}))
    assert isinstance(body["data"], int)


@pytest.mark.parametrize("fields,word", [
    ({}, "username"),
    ({"username": "ann"}, "password"),
    ({"username": "ann", "password": "short"}, "at least 8"),
    ({"username": "local", "password": ANN[1]}, "reserved"),
    ({"username": "a b", "password": ANN[1]}, "username"),
    ({"username": "ann", "password": ANN[1], "email": "not-an-address"}, "email"),
    ({"username": "a';DROP TABLE users;--", "password": ANN[1]}, "username"),
])
def test_register_refuses_bad_parameters_with_40000(client, fields, word):
    body = envelope(client.post("/api/user/register", json=fields), 40000)
    assert word in body["message"]


def test_register_refuses_a_taken_name_whatever_its_case(client):
    sign_up(client, *ANN)
    body = envelope(client.post("/api/user/register", json={"username": "ANN",
                                                              "password": BOB[1]}), 40000)
    assert "taken" in body["message"]


def test_registration_closed_or_by_invite(users_app):
    closed = users_app(registration="closed").test_client()
    body = envelope(closed.post("/api/user/register", json={"username": "ann",
                                                              "password": ANN[1]}), 40300)
    assert "closed" in body["message"]
    app = users_app(registration="invite")
    invited = app.test_client()
    envelope(invited.post("/api/user/register", json={"username": "ann", "password": ANN[1]}),
             40000)
    code, _ = app.extensions["gpt_proxy"].accounts.create_invite(None, 1)
    envelope(invited.post("/api/user/register", json={"username": "ann", "password": ANN[1],
                                                      "invite": code}))
    body = envelope(invited.post("/api/user/register", json={
        "username": "bob", "password": BOB[1], "invite": code}), 40000)
    assert "used" in body["message"]


def test_login_answers_the_user_without_any_secret_and_sets_a_safe_cookie(client):
    client.post("/api/user/register", json={"username": "ann", "password": ANN[1],
                                            "email": "ann@example.com"})
    response = client.post("/api/user/login", json={"username": "ann", "password": ANN[1]})
    user = envelope(response)["data"]
    assert user["username"] == "ann" and user["email"] == "ann@example.com"
    assert isinstance(user["id"], int)
    text = response.get_data(as_text=True)
    assert ANN[1] not in text and "argon2" not in text and "password" not in text
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Path=/" in cookie and "Secure" not in cookie
    assert "Max-Age=2592000" in cookie  # SESSION_DAYS=30


def test_the_cookie_is_secure_when_the_request_came_over_https(users_app):
    client = users_app(trusted_proxies=1).test_client()
    client.post("/api/user/register", json={"username": "ann", "password": ANN[1]})
    response = client.post("/api/user/login", json={"username": "ann", "password": ANN[1]},
                           headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize("name,password", [("ann", "wrong password"), ("nobody", ANN[1])])
def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(client, name, password):
    client.post("/api/user/register", json={"username": "ann", "password": ANN[1]})
    body = envelope(client.post("/api/user/login", json={"username": name,
                                                         "password": password}), 40400)
    assert body["message"] == "wrong username or password"


def test_current_and_logout_take_no_body_and_say_when_nobody_is_signed_in(client):
    envelope(client.post("/api/user/current"), 40100)
    envelope(client.post("/api/user/logout"), 40100)
    sign_up(client, *ANN)
    assert envelope(client.post("/api/user/current"))["data"]["username"] == "ann"
    assert envelope(client.post("/api/user/logout"))["data"] is True
    envelope(client.post("/api/user/current"), 40100)
    envelope(client.post("/api/user/logout"), 40100)


def test_a_logged_out_cookie_stays_dead(client):
    sign_up(client, *ANN)
    token = client.get_cookie(SESSION_COOKIE).value
    client.post("/api/user/logout")
    client.set_cookie(SESSION_COOKIE, token)
    envelope(client.post("/api/user/current"), 40100)


def test_every_login_makes_a_new_session_id_and_ends_the_old_one(client):
    """No fixation: a session id chosen before login (by an attacker) is never the one the
    login sets, and a second login ends the first session."""
    sign_up(client, *ANN)
    first = client.get_cookie(SESSION_COOKIE).value
    client.set_cookie(SESSION_COOKIE, "attacker-chosen-value")
    envelope(client.post("/api/user/login", json={"username": "ann", "password": ANN[1]}))
    second = client.get_cookie(SESSION_COOKIE).value
    assert second not in (first, "attacker-chosen-value")
    client.set_cookie(SESSION_COOKIE, first)
    envelope(client.post("/api/user/login", json={"username": "ann", "password": ANN[1]}))
    third = client.get_cookie(SESSION_COOKIE).value
    client.set_cookie(SESSION_COOKIE, first)
    envelope(client.post("/api/user/current"), 40100)  # the session the login came with ended
    client.set_cookie(SESSION_COOKIE, third)
    envelope(client.post("/api/user/current"))


def test_changing_the_password_ends_the_other_sessions(app):
    one, two = app.test_client(), app.test_client()
    sign_up(one, *ANN)
    envelope(two.post("/api/user/login", json={"username": "ann", "password": ANN[1]}))
    envelope(one.post("/api/user/password", json={"password": "wrong one!",
                                                  "newPassword": "new password"}), 40000)
    envelope(one.post("/api/user/password", json={"password": ANN[1],
                                                  "newPassword": "new password"}))
    envelope(one.post("/api/user/current"))
    envelope(two.post("/api/user/current"), 40100)
    envelope(two.post("/api/user/login", json={"username": "ann", "password": ANN[1]}), 40400)
    envelope(two.post("/api/user/login", json={"username": "ann",
                                               "password": "new password"}))


# --- role/* -------------------------------------------------------------------------------------

def test_roles_need_a_signed_in_user(client):
    for path, body in (("/api/role/create", {"keyword": "poet"}), ("/api/role/listByUserId", None),
                       ("/api/role/getRoleElementsByKeyword", {"keyword": "poet"})):
        envelope(client.post(path, json=body) if body else client.post(path), 40100)


def test_create_list_and_read_an_own_role(client):
    sign_up(client, *ANN)
    body = envelope(client.post("/api/role/create", json={
        "keyword": "poet", "name": "Haiku poet", "description": "answers in haiku",
        "roleElementList": CASES}))
    assert "data" in body
    listed = envelope(client.post("/api/role/listByUserId"))["data"]
    assert [(r["keyword"], r["name"], r["description"]) for r in listed] == [
        ("poet", "Haiku poet", "answers in haiku")]
    assert isinstance(listed[0]["id"], int)
    elements = envelope(client.post("/api/role/getRoleElementsByKeyword",
                                    json={"keyword": "poet"}))["data"]
    assert elements == [{"role": c["name"], "content": c["content"]} for c in CASES]


def test_a_free_keyword_is_an_error_envelope_as_the_page_checks_it(client):
    sign_up(client, *ANN)
    body = envelope(client.post("/api/role/getRoleElementsByKeyword",
                                json={"keyword": "poet"}), 40400)
    assert "poet" in body["message"]


@pytest.mark.parametrize("change,code", [
    ({"keyword": "cli"}, 40000),  # a server role's name
    ({"keyword": "a b"}, 40000),
    ({"name": ""}, 40000),
    ({"roleElementList": []}, 40000),
    ({"roleElementList": [{"name": "robot", "content": "x"}]}, 40000),
    ({"roleElementList": [{"name": "user", "content": "q"},
                          {"name": "system", "content": "late"}]}, 40000),
    ({"roleElementList": [{"name": "user", "content": "q"}] * 12}, 40000),
    ({"roleElementList": [{"name": "system", "content": ""}]}, 40000),
    ({"roleElementList": [{"name": "system", "content": "x" * 20_001}]}, 40000),
])
def test_role_create_refuses_bad_parameters(client, change, code):
    sign_up(client, *ANN)
    body = {"keyword": "poet", "name": "Poet", "description": "", "roleElementList": CASES,
            **change}
    envelope(client.post("/api/role/create", json=body), code)
    assert envelope(client.post("/api/role/listByUserId"))["data"] == []


def test_a_keyword_the_user_already_has_is_an_error_envelope(client):
    sign_up(client, *ANN)
    role = {"keyword": "poet", "name": "Poet", "description": "d", "roleElementList": CASES}
    envelope(client.post("/api/role/create", json=role))
    envelope(client.post("/api/role/create", json={**role, "keyword": "POET"}), 40000)


def test_one_user_never_reaches_another_users_role(app):
    ann, bob = app.test_client(), app.test_client()
    sign_up(ann, *ANN)
    sign_up(bob, *BOB)
    envelope(ann.post("/api/role/create", json={"keyword": "poet", "name": "Poet",
                                                "description": "", "roleElementList": CASES}))
    envelope(bob.post("/api/role/getRoleElementsByKeyword", json={"keyword": "poet"}), 40400)
    assert envelope(bob.post("/api/role/listByUserId"))["data"] == []
    response = bob.post("/api/gpt/get", json={"message": "hi", "role": "poet"})
    assert response.status_code == 404 and "poet" in response.get_json()["error"]["message"]


def test_update_and_delete_an_own_role(client):
    sign_up(client, *ANN)
    envelope(client.post("/api/role/create", json={"keyword": "poet", "name": "Poet",
                                                   "description": "", "roleElementList": CASES}))
    changed = envelope(client.post("/api/role/update", json={
        "keyword": "poet", "description": "shorter", "roleElementList": CASES[:1]}))["data"]
    assert changed["description"] == "shorter" and changed["name"] == "Poet"
    assert len(envelope(client.post("/api/role/getRoleElementsByKeyword",
                                    json={"keyword": "poet"}))["data"]) == 1
    envelope(client.post("/api/role/delete", json={"keyword": "poet"}))
    envelope(client.post("/api/role/delete", json={"keyword": "poet"}), 40400)


# --- gpt/get with an own role --------------------------------------------------------------------

def test_the_pages_own_role_cases_reach_the_upstream_exactly_once(client, upstream):
    """The July-2023 page fetches the role's cases and puts them at the head of `message`
    itself, with `role` set to the keyword: the server must not add them again."""
    sign_up(client, *ANN)
    envelope(client.post("/api/role/create", json={"keyword": "poet", "name": "Poet",
                                                   "description": "", "roleElementList": CASES}))
    cases = envelope(client.post("/api/role/getRoleElementsByKeyword",
                                 json={"keyword": "poet"}))["data"]
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "yes"}]
    upstream.push(stream_scenario(["ok"]))
    response = client.post("/api/gpt/get", json={
        "message": [*cases, *history, {"role": "user", "content": "the moon"}],
        "role": "poet", "temperature": 1, "model": "fake-model"})
    assert response.status_code == 200 and response.get_data(as_text=True) == "ok"
    sent = upstream.wait_for_request().json["messages"]
    assert sent == [*cases, *history, {"role": "user", "content": "the moon"}]


def test_an_own_role_without_its_cases_in_the_message_gets_them_once(client, upstream):
    sign_up(client, *ANN)
    envelope(client.post("/api/role/create", json={"keyword": "poet", "name": "Poet",
                                                   "description": "", "roleElementList": CASES}))
    upstream.push(stream_scenario(["ok"]))
    response = client.post("/api/gpt/get", json={"message": "the moon", "role": "POET"})
    assert response.status_code == 200
    sent = upstream.wait_for_request().json["messages"]
    assert sent == [{"role": c["name"], "content": c["content"]} for c in CASES] + [
        {"role": "user", "content": "the moon"}]


# --- every outcome is HTTP 200 --------------------------------------------------------------------

def test_unknown_routes_methods_and_bodies_are_envelopes(client, app, monkeypatch):
    envelope(client.post("/api/user/nothing"), 40400)
    envelope(client.get("/api/user/login"), 40000)
    envelope(client.post("/api/user/login", data="{nope", content_type="application/json"),
             40000)
    envelope(client.post("/api/user/login", json=["a", "list"]), 40000)
    envelope(client.post("/api/user/login", data="x" * 2_000_000,
                         content_type="application/json"), 40000)

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")
    monkeypatch.setattr(app.extensions["gpt_proxy"].accounts, "authenticate", broken)
    body = envelope(client.post("/api/user/login", json={"username": "ann",
                                                         "password": ANN[1]}), 50000)
    assert "database" not in body["message"] and "Traceback" not in body["message"]


def test_a_megabyte_username_is_plain_bad_input(client):
    envelope(client.post("/api/user/login", json={"username": "x" * 900_000,
                                                  "password": ANN[1]}), 40000)
    envelope(client.post("/api/user/register", json={"username": "x" * 900_000,
                                                     "password": ANN[1]}), 40000)


def test_accounts_off_answers_in_the_envelope(users_app):
    client = users_app(auth="open").test_client()
    envelope(client.post("/api/user/current"), 40100)
    body = envelope(client.post("/api/user/login", json={"username": "ann",
                                                         "password": ANN[1]}), 40300)
    assert "AUTH=users" in body["message"]


# --- attacks --------------------------------------------------------------------------------------

CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}


@pytest.mark.parametrize("headers", [
    CROSS_SITE,
    {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.localhost"},
    {"Origin": "https://evil.example"},  # a browser that sends no Sec-Fetch-Site
])
def test_a_cross_site_request_carrying_the_cookie_is_refused(client, upstream, headers):
    sign_up(client, *ANN)
    body = envelope(client.post("/api/user/logout", headers=headers), 40300)
    assert "own pages" in body["message"] or "cross-origin" in body["message"]
    envelope(client.post("/api/user/current"))  # still signed in
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers=headers)
    assert response.status_code == 403 and upstream.records == []


def test_same_origin_requests_with_the_cookie_pass(client, upstream):
    sign_up(client, *ANN)
    upstream.push(stream_scenario(["ok"]))
    response = client.post("/api/gpt/get", json={"message": "hi"}, headers={
        "Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"})
    assert response.status_code == 200 and response.get_data(as_text=True) == "ok"


def test_a_listed_origin_may_send_the_cookie_with_credentials_allowed(users_app, upstream):
    client = users_app(cors_origins=("https://chat.example.com",)).test_client()
    sign_up(client, *ANN)
    headers = {"Sec-Fetch-Site": "cross-site", "Origin": "https://chat.example.com"}
    response = client.post("/api/user/current", headers=headers)
    envelope(response)
    assert response.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


def test_a_wildcard_origin_never_carries_the_cookie(users_app, upstream):
    client = users_app(cors_origins=("*",)).test_client()
    sign_up(client, *ANN)
    response = client.post("/api/user/logout", headers=CROSS_SITE)
    envelope(response, 40300)
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_logging_in_from_another_site_is_refused(client):
    client.post("/api/user/register", json={"username": "ann", "password": ANN[1]})
    envelope(client.post("/api/user/login", json={"username": "ann", "password": ANN[1]},
                         headers=CROSS_SITE), 40300)
    assert client.get_cookie(SESSION_COOKIE) is None


def test_failed_logins_are_throttled_with_the_wait_in_the_answer(users_app):
    client = users_app(login_limit="5/minute").test_client()
    client.post("/api/user/register", json={"username": "ann", "password": ANN[1]})
    for _ in range(5):
        envelope(client.post("/api/user/login", json={"username": "ann", "password": "nope nope"}),
                 40400)
    response = client.post("/api/user/login", json={"username": "ann", "password": ANN[1]})
    body = envelope(response, 40000)
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= 60 and f"retry in {wait} s" in body["message"]
    assert client.get_cookie(SESSION_COOKIE) is None


def test_the_address_limit_holds_across_usernames(users_app):
    client = users_app(login_limit="5/minute").test_client()
    for i in range(5):
        envelope(client.post("/api/user/login", json={"username": f"user{i}",
                                                      "password": "nope nope"}), 40400)
    body = envelope(client.post("/api/user/login", json={"username": "someone",
                                                         "password": "nope nope"}), 40000)
    assert "address" in body["message"]


def test_no_password_or_hash_reaches_a_log_line_or_a_reply(app, caplog):
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    secrets, replies = [ANN[1], "new password 2", "wrong password 3"], []
    replies.append(client.post("/api/user/register", json={"username": "ann",
                                                          "password": ANN[1]}))
    replies.append(client.post("/api/user/login", json={"username": "ann",
                                                       "password": "wrong password 3"}))
    replies.append(client.post("/api/user/login", json={"username": "ann",
                                                       "password": ANN[1]}))
    replies.append(client.post("/api/user/password", json={"password": ANN[1],
                                                          "newPassword": "new password 2"}))
    replies.append(client.post("/api/user/current"))
    replies.append(client.post("/api/user/register", json={"username": "ann",
                                                          "password": ANN[1]}))
    stored = app.extensions["gpt_proxy"].accounts.db
    with stored.read() as conn:
        hashes = [row[0] for row in conn.exec_driver_sql("SELECT password_hash FROM users")]
    cookie = client.get_cookie(SESSION_COOKIE).value
    text = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(
        r.get_data(as_text=True) + str(r.headers) for r in replies)
    for secret in [*secrets, *hashes, "$argon2"]:
        assert secret not in text
    assert cookie not in "\n".join(r.getMessage() for r in caplog.records)
