"""AUTH=users on every door: each reads identity its own way and answers its absence in its own
shape; keys, their model lists and ownership of conversations and roles; the account and admin
routes."""

from __future__ import annotations

import pytest

from gpt_proxy.identity.accounts import KEY_PREFIX

from .conftest import ANN, BOB, new_key, sign_up
from .fake_upstream import stream_scenario

PROXY_TOKEN = "admin-token-0123456789abcdef"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def app(users_app):
    return users_app(proxy_token=PROXY_TOKEN, allowed_models=("fake-model", "big-model"))


# --- /v1 ------------------------------------------------------------------------------------------

def test_v1_needs_a_key_and_says_so_as_openai_does(app, upstream):
    client = app.test_client()
    for headers in ({}, bearer("sk-gpx-nonsense"), bearer(PROXY_TOKEN)):
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 401
        error = response.get_json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
    key = new_key(app, *ANN)
    upstream.push(stream_scenario(["hello"]))
    response = client.post("/v1/chat/completions", headers=bearer(key), json={
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.get_json()["choices"][0]["message"]["content"] == "hello"


def test_a_revoked_key_is_refused_at_once(app):
    accounts = app.extensions["gpt_proxy"].accounts
    key = new_key(app, *ANN)
    client = app.test_client()
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    accounts.revoke_key(accounts.list_keys()[0].id)
    assert client.get("/v1/models", headers=bearer(key)).status_code == 401


def test_a_key_limited_to_some_models_sees_and_uses_only_those(app, upstream):
    key = new_key(app, *ANN, models=("fake-model",))
    client = app.test_client()
    listed = [m["id"] for m in client.get("/v1/models", headers=bearer(key)).get_json()["data"]]
    assert "fake-model" in listed and "big-model" not in listed
    response = client.post("/v1/chat/completions", headers=bearer(key), json={
        "model": "big-model", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 403
    assert response.get_json()["error"]["type"] == "permission_error"
    assert response.get_json()["error"]["code"] == "model_not_allowed_for_key"
    assert upstream.records == []


def test_own_roles_are_models_for_their_owner_only(app, upstream):
    ann_key, bob_key = new_key(app, *ANN), new_key(app, *BOB)
    accounts = app.extensions["gpt_proxy"].accounts
    ann = accounts.find_user("ann")
    accounts.create_role(ann.id, "Poet", "Poet", "haiku", [("system", "Answer in haiku.")])
    client = app.test_client()
    mine = [m["id"] for m in client.get("/v1/models", headers=bearer(ann_key)).get_json()["data"]]
    theirs = [m["id"] for m in client.get("/v1/models",
                                          headers=bearer(bob_key)).get_json()["data"]]
    assert "role:Poet" in mine and "role:Poet" not in theirs
    upstream.push(stream_scenario(["ok"]))
    response = client.post("/v1/chat/completions", headers=bearer(ann_key), json={
        "model": "role:Poet", "messages": [{"role": "user", "content": "sea"}]})
    assert response.status_code == 200
    assert upstream.wait_for_request().json["messages"][0] == {
        "role": "system", "content": "Answer in haiku."}
    response = client.post("/v1/chat/completions", headers=bearer(bob_key), json={
        "model": "role:Poet", "messages": [{"role": "user", "content": "sea"}]})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "model_not_found"


# --- chat-process ----------------------------------------------------------------------------------

def test_chat_process_reports_auth_verifies_keys_and_needs_one(app, upstream):
    client = app.test_client()
    assert client.post("/api/session").get_json()["data"]["auth"] is True
    key = new_key(app, *ANN)
    assert client.post("/api/verify", json={"token": key}).get_json()["status"] == "Success"
    bad = client.post("/api/verify", json={"token": key[:-2] + "xx"}).get_json()
    assert bad["status"] == "Fail" and "not valid" in bad["message"]
    refused = client.post("/api/chat-process", json={"prompt": "hi"}).get_json()
    assert refused["status"] == "Unauthorized"
    upstream.push(stream_scenario(["hello"]))
    response = client.post("/api/chat-process", json={"prompt": "hi"}, headers=bearer(key))
    assert response.status_code == 200 and '"text":"hello"' in response.get_data(as_text=True)


def test_another_users_message_id_starts_a_fresh_conversation(app, upstream):
    client = app.test_client()
    ann_key, bob_key = new_key(app, *ANN), new_key(app, *BOB)
    upstream.push(stream_scenario(["the secret is 42"]))
    first = client.post("/api/chat-process", json={"prompt": "my secret is 42"},
                        headers=bearer(ann_key)).get_data(as_text=True)
    import json
    reply_id = json.loads(first.strip().splitlines()[-1])["id"]
    upstream.push(stream_scenario(["?"]))
    client.post("/api/chat-process", headers=bearer(bob_key), json={
        "prompt": "what was it?", "options": {"parentMessageId": reply_id}}).get_data()
    sent = upstream.wait_for_request(2).json["messages"]
    assert [m["content"] for m in sent] == ["what was it?"]
    upstream.push(stream_scenario(["42"]))
    client.post("/api/chat-process", headers=bearer(ann_key), json={
        "prompt": "what was it?", "options": {"parentMessageId": reply_id}}).get_data()
    sent = upstream.wait_for_request(3).json["messages"]
    assert [m["content"] for m in sent] == ["my secret is 42", "the secret is 42",
                                            "what was it?"]


# --- /api/gpt/get -------------------------------------------------------------------------------------

def test_gpt_get_takes_a_session_or_a_key_and_not_the_admin_token(app, upstream):
    client = app.test_client()
    response = client.post("/api/gpt/get", json={"message": "hi"})
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    assert client.post("/api/gpt/get", json={"message": "hi"},
                       headers=bearer(PROXY_TOKEN)).status_code == 401
    key = new_key(app, *BOB)
    upstream.push(stream_scenario(["by key"]), stream_scenario(["by session"]))
    assert client.post("/api/gpt/get", json={"message": "hi"},
                       headers=bearer(key)).get_data(as_text=True) == "by key"
    sign_up(client, *ANN)
    assert client.post("/api/gpt/get", json={"message": "hi"}).get_data(
        as_text=True) == "by session"


def test_the_role_list_is_public_and_shows_own_roles_to_their_owner(app):
    client = app.test_client()
    names = [r["name"] for r in client.get("/api/roles").get_json()]
    assert "cli" in names
    sign_up(client, *ANN)
    client.post("/api/role/create", json={"keyword": "poet", "name": "Poet", "description": "d",
                                          "roleElementList": [{"name": "system",
                                                               "content": "Haiku."}]})
    listed = client.get("/api/roles").get_json()
    assert {"name": "poet", "title": "Poet", "description": "d", "examples": 0,
            "own": True} in listed
    assert "poet" not in [r["name"] for r in app.test_client().get("/api/roles").get_json()]


# --- keys and admin routes ------------------------------------------------------------------------------

def test_a_user_makes_lists_and_revokes_keys_from_a_session(app):
    client = app.test_client()
    sign_up(client, *ANN)
    made = client.post("/api/keys", json={"name": "laptop", "models": ["fake-model"],
                                          "expires_days": 30})
    assert made.status_code == 201 and made.headers["Cache-Control"] == "no-store"
    key = made.get_json()["key"]
    assert key.startswith(KEY_PREFIX) and made.get_json()["models"] == ["fake-model"]
    listed = client.get("/api/keys").get_json()["data"]
    assert len(listed) == 1 and key not in str(listed) and listed[0]["hint"] in made.get_json()["hint"]
    assert app.test_client().get("/v1/models", headers=bearer(key)).status_code == 200
    # a key never manages keys, and another user's key is unknown
    refused = app.test_client().post("/api/keys", json={"name": "more"}, headers=bearer(key))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "session_required"
    other = app.test_client()
    sign_up(other, *BOB)
    assert other.delete(f"/api/keys/{listed[0]['id']}").status_code == 404
    assert client.delete(f"/api/keys/{listed[0]['id']}").status_code == 200
    assert app.test_client().get("/v1/models", headers=bearer(key)).status_code == 401


@pytest.mark.parametrize("body,field", [({"name": ""}, "name"), ({"expires_days": 0}, "expires_days"),
                                        ({"models": []}, "models"), ({"models": "x"}, "models"),
                                        ({"colour": "red"}, "colour")])
def test_bad_key_requests_name_the_field(app, body, field):
    client = app.test_client()
    sign_up(client, *ANN)
    response = client.post("/api/keys", json=body)
    assert response.status_code == 400 and response.get_json()["error"]["field"] == field


def test_admin_routes_take_the_proxy_token_or_an_admin_session(app):
    client = app.test_client()
    assert client.get("/api/admin/users").status_code == 401
    sign_up(client, *ANN)
    assert client.get("/api/admin/users").status_code == 403
    admin = bearer(PROXY_TOKEN)
    made = client.post("/api/admin/users", headers=admin, json={
        "username": "carol", "password": "carol password", "admin": True})
    assert made.status_code == 201 and made.get_json()["admin"] is True
    assert "password" not in made.get_json()
    carol = app.test_client()
    carol.post("/api/user/login", json={"username": "carol", "password": "carol password"})
    users = carol.get("/api/admin/users").get_json()["data"]
    assert [u["username"] for u in users] == ["ann", "carol"]
    key = carol.post("/api/admin/keys", json={"user": "ann", "name": "for ann"}).get_json()
    assert key["user_id"] == users[0]["id"]
    assert app.test_client().get("/v1/models", headers=bearer(key["key"])).status_code == 200
    disabled = carol.patch(f"/api/admin/users/{users[0]['id']}", json={"disabled": True})
    assert disabled.get_json()["disabled"] is True
    assert app.test_client().get("/v1/models", headers=bearer(key["key"])).status_code == 401
    assert client.post("/api/user/current").get_json()["code"] == 40100  # her session ended
    invite = client.post("/api/admin/invites", headers=admin, json={"days": 1}).get_json()
    assert invite["code"].startswith("inv-")


def test_token_mode_and_open_mode_are_unchanged(users_app, upstream):
    open_client = users_app(auth="open").test_client()
    upstream.push(stream_scenario(["open"]))
    assert open_client.post("/api/gpt/get", json={"message": "hi"}).get_data(as_text=True) == "open"
    assert open_client.get("/api/admin/users").status_code == 403
    token_app = users_app(auth="token", proxy_token=PROXY_TOKEN)
    client = token_app.test_client()
    assert client.post("/api/gpt/get", json={"message": "hi"}).status_code == 401
    assert client.get("/api/roles").status_code == 401
    upstream.push(stream_scenario(["token"]))
    assert client.post("/api/gpt/get", json={"message": "hi"},
                       headers=bearer(PROXY_TOKEN)).get_data(as_text=True) == "token"
    assert client.get("/api/admin/users", headers=bearer(PROXY_TOKEN)).status_code == 200


@pytest.mark.parametrize("env,named", [
    ({"AUTH": "token"}, "AUTH=token needs PROXY_TOKEN"),
    ({"AUTH": "everyone"}, "AUTH='everyone'"),
    ({"REGISTRATION": "sometimes"}, "REGISTRATION"),
    ({"DATABASE_URL": "mysql://db/gp"}, "DATABASE_URL"),
    ({"SESSION_DAYS": "0"}, "SESSION_DAYS"),
    ({"LOGIN_LIMIT": "lots"}, "LOGIN_LIMIT"),
    ({"BUDGET_TZ": "Mars/Olympus"}, "BUDGET_TZ"),
    ({"DEFAULT_PRICE": "cheap"}, "DEFAULT_PRICE"),
    ({"PRICES_FILE": "nowhere.toml"}, "PRICES_FILE='nowhere.toml' cannot be read"),
])
def test_settings_the_user_service_cannot_run_with_stop_start_up_naming_them(env, named):
    from gpt_proxy.base.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace("'", "'")):
        load_config(env)


def test_auth_defaults_to_token_when_a_proxy_token_is_set_as_before():
    from gpt_proxy.base.config import load_config

    assert load_config({}).auth == "open"
    assert load_config({"PROXY_TOKEN": "x" * 20}).auth == "token"
    assert load_config({"PROXY_TOKEN": "x" * 20, "AUTH": "users"}).auth == "users"
