"""Roles through the HTTP API: the upstream gets the role's messages, then the history."""

from __future__ import annotations

import os

import pytest

from gpt_proxy import create_app
from gpt_proxy.pipeline.roles import RoleRegistry

from .conftest import FakeClock, make_config
from .fake_upstream import stream_scenario

ROLE = """---
description: Test role
---
# SYSTEM
You run on ${OS}. Keep $HOME and ${UNKNOWN}.

# USER
ping

# ASSISTANT
pong
"""


@pytest.fixture()
def roles_dir(tmp_path):
    (tmp_path / "tester.md").write_text(ROLE)
    return tmp_path


@pytest.fixture()
def setup(upstream, roles_dir):
    app = create_app(make_config(openai_base_url=upstream.url, roles_dir=str(roles_dir)))
    clock = FakeClock()
    app.extensions["gpt_proxy"].roles = RoleRegistry(roles_dir, clock=clock)
    return app.test_client(), clock


def test_upstream_receives_role_messages_then_the_history(setup, upstream):
    client, _ = setup
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
               {"role": "user", "content": "q2"}]
    response = client.post("/api/gpt/get", json={"message": history, "role": "tester"})
    assert response.status_code == 200
    sent = upstream.wait_for_request().json["messages"]
    system = sent[0]
    assert system["role"] == "system" and "Keep $HOME and ${UNKNOWN}." in system["content"]
    assert "${OS}" not in system["content"]
    assert sent[1:] == [{"role": "user", "content": "ping"},
                        {"role": "assistant", "content": "pong"}] + history


def test_ad_hoc_system_field_comes_after_the_role(setup, upstream):
    client, _ = setup
    client.post("/api/gpt/get", json={"message": "hi", "role": "tester", "system": "Be brief."})
    sent = upstream.wait_for_request().json["messages"]
    assert sent[3] == {"role": "system", "content": "Be brief."}
    assert sent[4] == {"role": "user", "content": "hi"}


def test_default_role_sends_only_the_history(setup, upstream):
    client, _ = setup
    client.post("/api/gpt/get", json={"message": "hi"})
    assert upstream.wait_for_request().json["messages"] == [{"role": "user", "content": "hi"}]


def test_long_history_is_trimmed_oldest_first_keeping_the_newest(upstream, roles_dir):
    app = create_app(make_config(openai_base_url=upstream.url, roles_dir=str(roles_dir),
                                 max_history_chars=250))
    history = []
    for i in range(10):
        history += [{"role": "user", "content": f"q{i}" + "x" * 40},
                    {"role": "assistant", "content": f"a{i}" + "y" * 40}]
    history.append({"role": "user", "content": "newest"})
    assert app.test_client().post("/api/gpt/get", json={"message": history}).status_code == 200
    sent = upstream.wait_for_request().json["messages"]
    assert sent[-1] == {"role": "user", "content": "newest"}
    assert sent[0]["role"] == "user" and sum(len(m["content"]) for m in sent) <= 250
    assert sent == history[-len(sent):]


def test_a_message_longer_than_the_limit_is_a_413(upstream, roles_dir):
    app = create_app(make_config(openai_base_url=upstream.url, max_history_chars=100))
    response = app.test_client().post("/api/gpt/get", json={"message": "z" * 101})
    assert response.status_code == 413 and response.get_json()["error"]["field"] == "message"


def test_editing_a_role_file_changes_the_next_request_without_restart(setup, upstream, roles_dir):
    client, clock = setup
    client.post("/api/gpt/get", json={"message": "hi", "role": "tester"})
    assert "You run on" in upstream.wait_for_request(1).json["messages"][0]["content"]
    path = roles_dir / "tester.md"
    path.write_text(ROLE.replace("You run on", "Edited: you run on"))
    os.utime(path, (2_000_000_000, 2_000_000_000))
    clock.now += 5  # past the registry's re-check interval
    client.post("/api/gpt/get", json={"message": "hi", "role": "tester"})
    assert upstream.wait_for_request(2).json["messages"][0]["content"].startswith("Edited:")


def test_a_new_role_file_is_picked_up_and_a_removed_one_is_gone(setup, roles_dir):
    client, clock = setup
    (roles_dir / "fresh.md").write_text("# SYSTEM\nfresh\n")
    clock.now += 5
    assert "fresh" in [r["name"] for r in client.get("/api/roles").get_json()]
    (roles_dir / "fresh.md").unlink()
    clock.now += 5
    assert client.post("/api/gpt/get", json={"message": "hi", "role": "fresh"}).status_code == 404


@pytest.mark.parametrize("name", ["../tester", "..%2ftester", "%2e%2e", "/etc/passwd", "a" * 65,
                                  "a b", "-x"])
def test_role_names_that_are_not_names_are_refused(setup, name):
    client, _ = setup
    response = client.post("/api/gpt/get", json={"message": "hi", "role": name})
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "role"


@pytest.mark.parametrize("name", ["tester.md", "TESTER", "Tester"])
def test_a_keyword_shaped_name_is_an_unknown_role_never_a_file(setup, name):
    """Own roles' keywords may hold capitals and dots; such a name is looked up among the
    caller's own roles only, never as a file, so tester.md is not the server's tester."""
    client, _ = setup
    response = client.post("/api/gpt/get", json={"message": "hi", "role": name})
    assert response.status_code == 404 and response.get_json()["error"]["field"] == "role"


def test_an_empty_role_is_the_default_role_as_the_gpt_terminal_page_sends_it(setup, upstream):
    client, _ = setup
    upstream.push(stream_scenario(["ok"]))
    response = client.post("/api/gpt/get", json={"message": "hi", "role": ""})
    assert response.status_code == 200 and response.get_data(as_text=True) == "ok"
    assert [m["role"] for m in upstream.wait_for_request().json["messages"]] == ["user"]


def test_symlink_escaping_the_roles_folder_is_not_a_role(upstream, tmp_path):
    inside = tmp_path / "roles"
    inside.mkdir()
    (tmp_path / "secret.md").write_text("# SYSTEM\nsecret\n")
    (inside / "leak.md").symlink_to(tmp_path / "secret.md")
    app = create_app(make_config(openai_base_url=upstream.url, roles_dir=str(inside)))
    response = app.test_client().post("/api/gpt/get", json={"message": "hi", "role": "leak"})
    assert response.status_code == 404


def test_api_roles_lists_the_shipped_roles_sorted_with_descriptions(upstream):
    client = create_app(make_config(openai_base_url=upstream.url)).test_client()
    roles = client.get("/api/roles").get_json()
    names = [r["name"] for r in roles]
    assert names == sorted(names)
    assert {"cli", "ikun", "sql", "translator"} <= set(names)
    for role in roles:
        if role["name"] != "default":
            assert role["description"] and role["examples"] >= 1


@pytest.mark.parametrize("name", ["cli", "ikun", "sql", "translator"])
def test_each_shipped_role_works_end_to_end(upstream, name):
    client = create_app(make_config(openai_base_url=upstream.url)).test_client()
    response = client.post("/api/gpt/get", json={"message": "hello", "role": name})
    assert response.status_code == 200 and response.get_data(as_text=True) == "Hello, world!"
    sent = upstream.wait_for_request().json["messages"]
    assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": "hello"}
    assert "${" not in sent[0]["content"]


# --- a role's own model ---------------------------------------------------------------------

CHEAP = """---
description: Answers with a cheaper model
model: cheap-model
---
# SYSTEM
Be cheap.
"""


@pytest.fixture()
def model_roles(upstream, tmp_path):
    (tmp_path / "cheap.md").write_text(CHEAP)
    (tmp_path / "plain.md").write_text("# SYSTEM\nBe plain.\n")
    app = create_app(make_config(openai_base_url=upstream.url, roles_dir=str(tmp_path),
                                 chat_process_role="cheap"))
    return app.test_client()


@pytest.mark.parametrize("body,model", [
    ({"message": "hi", "role": "cheap"}, "cheap-model"),  # no model named: the role's
    ({"message": "hi", "role": "cheap", "model": "fake-model"}, "fake-model"),  # named: that one
    ({"message": "hi", "role": "plain"}, "fake-model"),  # a role without one: OPENAI_MODEL
    ({"message": "hi"}, "fake-model"),
])
def test_a_role_may_name_the_model_a_request_without_one_gets(model_roles, upstream, body, model):
    response = model_roles.post("/api/gpt/get", json=body, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.get_data()
    assert upstream.wait_for_request().json["model"] == model


def test_the_role_model_on_the_other_doors_and_in_the_role_list(model_roles, upstream):
    # /v1: role:<name> as the model asks for the role's model.
    response = model_roles.post("/v1/chat/completions", json={
        "model": "role:cheap", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.get_data()
    assert upstream.records[-1].json["model"] == "cheap-model"
    # chat-process: its role (CHAT_PROCESS_ROLE) is this one, and no model is named.
    response = model_roles.post("/api/chat-process", json={"prompt": "hi"})
    assert response.status_code == 200 and b'"text"' in response.get_data()
    sent = upstream.records[-1].json
    assert sent["model"] == "cheap-model" and sent["messages"][0]["content"] == "Be cheap."
    roles = {role["name"]: role for role in model_roles.get("/api/roles").get_json()}
    assert roles["cheap"]["model"] == "cheap-model" and "model" not in roles["plain"]
