"""Schemathesis against a live gunicorn (AUTH=users, a fake upstream): requests generated from
/api/openapi.json, valid and invalid, every check (not_a_server_error, status_code_,
content_type_, response_schema_, response_headers_conformance, negative_data_rejection,
ignored_auth, unsupported_method, ...; exceptions in tests/schemathesis.toml, each with its
reason), signed in as a user by session cookie, as the same user by API key, and as an admin
by session cookie. Zero server errors and zero answers that contradict the document.

Bounded and deterministic: a fixed seed, deterministic generation, at most MAX_EXAMPLES
cases per operation and phase; the three runs take about a minute on a quiet machine."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import requests

from .conftest import ROOT, serve
from .fake_upstream import FakeUpstream

PROXY_TOKEN = "fuzz-admin-token-" + "0123456789abcdef"
MAX_EXAMPLES = {"session": 10, "key": 6, "admin": 10}
PASSWORD = "fuzzing password 1"
CONFIG = ROOT / "tests" / "schemathesis.toml"
ADMIN_PATHS = "^/api/admin/"
KEY_PATHS = "^/api/(gpt/get|replies/|usage$|chat-process$|config$|role/|gpt/getImage$)"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """A gunicorn of its own (its database is changed by the generated requests), with the
    proxy token as the admin credential, and a fake upstream answering every request."""
    folder = tmp_path_factory.mktemp("openapi-live")
    upstream = FakeUpstream().start()
    try:
        with serve(upstream, folder, AUTH="users", REGISTRATION="open",
                   PROXY_TOKEN=PROXY_TOKEN, LOGIN_LIMIT="100000/minute",
                   # small limits: the document says them, and strings at a limit are
                   # generated (and sent) at that length
                   MAX_HISTORY_CHARS="2000", MAX_SYSTEM_CHARS="500", MAX_MESSAGES="20",
                   CONVERSATION_STORE=f"sqlite:///{folder}/conversations.db") as server:
            yield server
    finally:
        upstream.stop()


def _identity(server, *, admin: bool) -> dict:
    http = requests.Session()
    http.trust_env = False
    name = f"{'admin' if admin else 'user'}{uuid.uuid4().hex[:6]}"
    made = http.post(server.url + "/api/admin/users", headers={
        "Authorization": f"Bearer {PROXY_TOKEN}"},
        json={"username": name, "password": PASSWORD, "admin": admin})
    assert made.status_code == 201, made.text
    logged = http.post(server.url + "/api/user/login",
                       json={"username": name, "password": PASSWORD})
    assert logged.json()["code"] == 0, logged.text
    key = http.post(server.url + "/api/keys", json={"name": "fuzz"})
    assert key.status_code == 201, key.text
    return {"FUZZ_AS": name, "FUZZ_PASSWORD": PASSWORD, "FUZZ_USER_ID": str(made.json()["id"]),
            "FUZZ_ADMIN": "1" if admin else "0", "FUZZ_KEY": key.json()["key"]}


def schemathesis_run(server, env: dict, *filters: str, max_examples: int,
                     folder) -> subprocess.CompletedProcess:
    """`schemathesis run` against the server's document, every check, deterministic; run in
    `folder`, where it keeps its replay files (`.schemathesis/`) and its events."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
        f"{server.url}/api/openapi.json", "--max-examples",
        str(max_examples), "--seed", "20261206", "--generation-deterministic",
        "--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-color",
        "--request-timeout", "30",
        "--suppress-health-check", "all", "--output-truncate", "false",
        "--report", "ndjson", "--report-ndjson-path", str(folder / "events.ndjson"), *filters]
    full_env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.openapi_hooks",
                "PYTHONPATH": str(ROOT), "FUZZ_URL": server.url,
                "FUZZ_PROXY_TOKEN": PROXY_TOKEN, "NO_PROXY": "127.0.0.1,localhost", **env}
    return subprocess.run(command, cwd=folder, env=full_env, capture_output=True, text=True,
                          timeout=300)


RUNS = {
    # (who, credential, the operations)
    "user-session": (False, "session", ("--exclude-path-regex", ADMIN_PATHS)),
    "user-key": (False, "key", ("--include-path-regex", KEY_PATHS)),
    "admin-session": (True, "session", ("--include-path-regex", ADMIN_PATHS)),
}


@pytest.mark.parametrize("run", RUNS)
def test_schemathesis_finds_no_server_error_and_no_contradiction(fuzz_server, tmp_path, run):
    admin, credential, filters = RUNS[run]
    env = {**_identity(fuzz_server, admin=admin), "FUZZ_CREDENTIAL": credential}
    result = schemathesis_run(fuzz_server, env, *filters,
                              max_examples=MAX_EXAMPLES["admin" if admin else credential],
                              folder=tmp_path)
    (tmp_path / "schemathesis.txt").write_text(result.stdout)  # the whole report, kept
    print(result.stdout[-20000:])
    assert result.returncode == 0, (
        f"schemathesis found failures ({run}):\n{result.stdout[-20000:]}\n{result.stderr[-3000:]}"
        f"\nserver log tail:\n{fuzz_server.logs()[-4000:]}")
    assert "Traceback" not in fuzz_server.logs(), fuzz_server.logs()[-4000:]


class _Answer:
    """What the envelope check reads of a response: its headers (lower case) and JSON."""

    def __init__(self, body: dict) -> None:
        self.headers = {"content-type": ["application/json"]}
        self.body = body

    def json(self) -> dict:
        return self.body


def test_the_envelope_check_fails_on_an_internal_error_answered_with_200():
    from .openapi_hooks import envelope_not_a_server_error

    failure = {"code": 50000, "message": "internal error (request ab12); see the server log",
               "msg": "internal error (request ab12); see the server log", "data": None}
    with pytest.raises(AssertionError, match="internal error"):
        envelope_not_a_server_error(None, _Answer(failure), None)
    upstream = {"status": "Fail", "message": "the upstream answered 500", "data": None}
    assert envelope_not_a_server_error(None, _Answer(upstream), None) is None
