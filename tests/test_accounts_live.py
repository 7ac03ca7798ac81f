"""The user service under real gunicorn: two instances sharing a real PostgreSQL server, the
official openai SDK with user keys, and start-up refusing a database it cannot open."""

from __future__ import annotations

import subprocess
import sys
import time

import openai
import pytest
import requests

from .conftest import ROOT, TEST_KEY, Gunicorn, until
from .fake_upstream import stream_scenario

ADMIN = "live-admin-token-0123456789"
USER = [{"role": "user", "content": "hi"}]


def admin(url: str, method: str, path: str, **body) -> requests.Response:
    return requests.request(method, url + path, json=body or None, timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN}"})


def login(url: str, name: str, password: str) -> requests.Session:
    session = requests.Session()
    answer = session.post(f"{url}/api/user/login", json={"username": name, "password": password},
                          timeout=10).json()
    assert answer["code"] == 0, answer
    return session


@pytest.fixture(scope="module")
def pair(fake_upstream, postgres, tmp_path_factory):
    """Two instances of the service (one worker each) sharing one PostgreSQL database."""
    folder = tmp_path_factory.mktemp("accounts-live")
    url = postgres.new_database()
    servers = []
    try:
        for name in ("a", "b"):
            (folder / name).mkdir()
            servers.append(Gunicorn({
                "OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": fake_upstream.url,
                "OPENAI_MODEL": "fake-model", "ALLOWED_MODELS": "fake-model,big-model",
                "WEB_CONCURRENCY": "1", "AUTH": "users", "DATABASE_URL": url,
                "PROXY_TOKEN": ADMIN, "LOGIN_LIMIT": "1000/minute",
                "CONVERSATION_STORE": f"sqlite:///{folder / name}/c.db"},
                folder / name / "gunicorn.log"))
        yield servers
    finally:
        for server in servers:
            server.stop()


def seen_a_second_after(acknowledged: float, check) -> None:
    """The README's promise for revocations and disabled users: every request sent a second
    or more after the change was acknowledged (`acknowledged`: `time.monotonic()` when the
    change's answer arrived, the change being committed before it was sent) sees it. On a
    slow machine a request is only answered later, so this cannot fail from load: it waits
    for the moment the promise is due (that wait is what is tested, not synchronisation),
    then one request must see the change. Before that, the change must show at all, within
    a generous deadline."""
    until(check, "the change was never seen", timeout=15)
    due = acknowledged + 1.0 - time.monotonic()
    if due > 0:
        time.sleep(due)  # the promise is about time: reach the moment it is due
    assert check(), "a request sent a second after the change did not see it"


def test_a_login_on_one_instance_is_valid_on_the_other(pair):
    a, b = pair
    assert admin(a.url, "POST", "/api/admin/users", username="ann",
                 password="ann password 1").status_code == 201
    session = login(a.url, "ann", "ann password 1")
    answer = session.post(f"{b.url}/api/user/current", timeout=10).json()
    assert answer["code"] == 0 and answer["data"]["username"] == "ann"
    session.post(f"{b.url}/api/user/logout", timeout=10)
    assert session.post(f"{a.url}/api/user/current", timeout=10).json()["code"] == 40100


def test_a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second(pair, upstream):
    a, b = pair
    admin(a.url, "POST", "/api/admin/users", username="bob", password="bob password 1")
    made = admin(a.url, "POST", "/api/admin/keys", user="bob", name="laptop").json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    assert requests.get(f"{b.url}/v1/models", headers=headers, timeout=10).status_code == 200
    assert admin(a.url, "DELETE", f"/api/admin/keys/{made['id']}").status_code == 200
    acknowledged = time.monotonic()
    seen_a_second_after(acknowledged, lambda: requests.get(
        f"{b.url}/v1/models", headers=headers, timeout=30).status_code == 401)


def test_a_user_disabled_on_one_instance_is_refused_by_the_other_within_a_second(pair):
    a, b = pair
    made = admin(a.url, "POST", "/api/admin/users", username="carol",
                 password="carol password").json()
    key = admin(a.url, "POST", "/api/admin/keys", user="carol", name="k").json()["key"]
    session = login(a.url, "carol", "carol password")
    headers = {"Authorization": f"Bearer {key}"}
    assert requests.get(f"{a.url}/v1/models", headers=headers, timeout=10).status_code == 200
    assert session.post(f"{a.url}/api/user/current", timeout=10).json()["code"] == 0
    assert admin(b.url, "PATCH", f"/api/admin/users/{made['id']}",
                 disabled=True).status_code == 200
    acknowledged = time.monotonic()
    seen_a_second_after(acknowledged, lambda: requests.get(
        f"{a.url}/v1/models", headers=headers, timeout=30).status_code == 401)
    seen_a_second_after(acknowledged, lambda: session.post(
        f"{a.url}/api/user/current", timeout=30).json()["code"] == 40100)


def test_the_openai_sdk_with_user_keys(pair, upstream):
    """A user key works; a revoked key raises AuthenticationError; a key limited to other
    models raises PermissionDeniedError (403: the model exists, this key may not use it)."""
    a, _ = pair
    admin(a.url, "POST", "/api/admin/users", username="dave", password="dave password")
    good = admin(a.url, "POST", "/api/admin/keys", user="dave", name="any").json()
    narrow = admin(a.url, "POST", "/api/admin/keys", user="dave", name="narrow",
                   models=["big-model"]).json()
    client = openai.OpenAI(base_url=f"{a.url}/v1", api_key=good["key"], max_retries=0)
    upstream.push(stream_scenario(["Hello", " there"]))
    stream = client.chat.completions.create(model="fake-model", messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        "Hello there"
    limited = openai.OpenAI(base_url=f"{a.url}/v1", api_key=narrow["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        limited.chat.completions.create(model="fake-model", messages=USER)
    assert caught.value.code == "model_not_allowed_for_key"
    admin(a.url, "DELETE", f"/api/admin/keys/{good['id']}")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="fake-model", messages=USER)
    assert caught.value.code == "invalid_api_key"
    assert good["key"] not in a.logs() and narrow["key"] not in a.logs()


def test_start_up_refuses_a_database_it_cannot_open_naming_the_setting(tmp_path):
    env = {"AUTH": "users", "DATABASE_URL": "postgresql://gp:pw-very-secret@127.0.0.1:9/gp",
           "DOTENV_FILE": "/dev/null", "BIND": "127.0.0.1:0", "METRICS_BIND": "",
           "PATH": "/usr/bin:/bin",
           "STARTUP_WAIT_SECONDS": "0"}  # one try (the wait itself: tests/test_startup.py)
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                           "app:app"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    # the start-up wait's line: the server, where it is and the setting naming it
    assert "PostgreSQL at 127.0.0.1:9 (DATABASE_URL)" in done.stderr
    assert "pw-very-secret" not in done.stderr + done.stdout
