"""Shared fixtures: an app per test, a real fake upstream, and gunicorn when a test needs it."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpt_proxy import create_app
from gpt_proxy.config import load_config

from .fake_upstream import FakeUpstream
from .processes import RedisServer, free_port, redis_binary, stop_process, wait_port
from .skip_report import (  # noqa: F401 - pytest's hooks: no silent skip (see the module)
    missing,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-test-SECRET-0123456789abcdef"
# The database of in-process apps that need no database of their own: one file for the
# session, never the project's data/ folder.
_DB_DIR = tempfile.mkdtemp(prefix="gpt_proxy-tests-")
atexit.register(shutil.rmtree, _DB_DIR, True)
TEST_DATABASE = f"sqlite:///{_DB_DIR}/gpt_proxy.db"
TEST_CONVERSATIONS = f"sqlite:///{_DB_DIR}/conversations.db"


@pytest.fixture(scope="session", autouse=True)
def _project_data_untouched():
    """No test writes the project's own database or conversations (each names its own, or
    TEST_DATABASE and TEST_CONVERSATIONS): a developer's accounts, ledger and
    conversations live there."""
    files = [ROOT / "data" / "gpt_proxy.db", ROOT / "data" / "conversations.db"]

    def stamps():
        return [path.stat().st_mtime_ns if path.exists() else None for path in files]
    before = stamps()
    yield
    assert stamps() == before, f"a test wrote {files}: give it TEST_DATABASE / _CONVERSATIONS"


@pytest.fixture(scope="session")
def fake_upstream():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture()
def upstream(fake_upstream):
    """The session's fake upstream, emptied of scenarios and records for this test."""
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


def make_config(**overrides):
    base = dict(openai_api_key=TEST_KEY, openai_base_url="http://127.0.0.1:9/v1",
                openai_model="fake-model", heartbeat_seconds=15.0, database_url=TEST_DATABASE,
                conversation_store=TEST_CONVERSATIONS)
    base.update(overrides)
    return load_config({}, **base)


@pytest.fixture()
def app(upstream):
    return create_app(make_config(openai_base_url=upstream.url))


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def compare_digest_calls(monkeypatch):
    """The argument types of every hmac.compare_digest call the security module makes (a
    token must be compared in constant time, as bytes)."""
    from gpt_proxy import security

    calls = []
    real = security.hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)
    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    return calls


class FakeClock:
    """A monotonic clock the test moves by hand, so reload checks are deterministic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sse_blocks(text: str) -> list[tuple[str | None, str, str | None, int]]:
    """Each block of an SSE text: (id, event name, data, comment lines), data None for a
    block without data lines. The spec's field rules: LF or CRLF, one optional space after
    the colon, a line without a colon a field with an empty value, data lines joined by LF."""
    blocks = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event_id, name, data, comments = None, "message", [], 0
        for line in filter(None, block.split("\n")):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if not field:
                comments += 1
            elif field == "id":
                event_id = value
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)
        blocks.append((event_id, name, "\n".join(data) if data else None, comments))
    return blocks


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event name, parsed JSON data) for each event of an SSE body written by the relay."""
    return [(name, json.loads(data)) for _, name, data, _ in sse_blocks(text)
            if data is not None]


def until(condition: Callable[[], object], message: str = "the condition never held",
          timeout: float = 10.0) -> None:
    """Poll `condition` until it holds. The deadline is generous (many times what the event
    needs): a slow machine makes a test wait longer, never fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)  # polling for an event; not synchronising a test


def sent_messages(upstream, index: int = -1) -> list[dict]:
    """The role and content of each message the upstream got in request `index`."""
    return [{"role": m["role"], "content": m["content"]}
            for m in upstream.records[index].json["messages"]]


def access_lines(caplog, request_id: str | None = None) -> list[str]:
    """The access lines logged in-process (those of request `request_id` when given)."""
    return [r.getMessage() for r in caplog.records if r.name == "gpt_proxy.access"
            and (request_id is None or f"id={request_id} " in r.getMessage())]


def access_line(caplog, response) -> str:
    """The one access line of an in-process `response` (read to its end first: a stream's
    line is written when it ends)."""
    response.get_data()
    found = access_lines(caplog, response.headers["X-Request-Id"])
    assert len(found) == 1, found
    return found[0]


class Gunicorn:
    """The real service under gunicorn (the repo's gunicorn.conf.py), on a free port."""

    def __init__(self, env: dict, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_"))}
        full_env.update(env)
        full_env["BIND"] = f"127.0.0.1:{self.port}"
        full_env.setdefault("METRICS_BIND", self.metrics_url[len("http://"):-len("/metrics")])
        full_env["DOTENV_FILE"] = os.devnull  # a developer's .env must not change the tests
        full_env.setdefault("DATABASE_URL", f"sqlite:///{log_path.parent}/gpt_proxy.db")
        full_env["NO_PROXY"] = full_env["no_proxy"] = "127.0.0.1,localhost"  # fakes are local
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        try:
            wait_port(self.port, self.proc, "gunicorn", timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.log_path.read_text()[-2000:]}") from None

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *parts: str, timeout: float = 5.0) -> str:
        """The first log line holding every one of `parts` (say, a request's `id=`), once the
        server wrote it: an access line is written when a request ends, which may be after
        its client saw the end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.logs().splitlines():
                if all(part in line for part in parts):
                    return line
            time.sleep(0.05)  # polling the log file for a line; not synchronising a test
        raise AssertionError(f"no log line with {parts} within {timeout} s")


@contextlib.contextmanager
def serve(upstream, folder: Path, **env: str) -> Iterator[Gunicorn]:
    """A gunicorn of its own, for a fixture or a test: one worker against `upstream` (a fake
    upstream, or anything with a base `url`), `env` on top, its log in `folder`; stopped
    afterwards."""
    server = Gunicorn({"OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": upstream.url,
                       "OPENAI_MODEL": "fake-model", "WEB_CONCURRENCY": "1", **env},
                      folder / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gunicorn_server(fake_upstream, tmp_path_factory):
    """gunicorn serving the app against the session's fake upstream (1 s heartbeats), its
    conversations in a temporary SQLite file (never the project's data/)."""
    folder = tmp_path_factory.mktemp("gunicorn")
    with serve(fake_upstream, folder, HEARTBEAT_SECONDS="1",
               CONVERSATION_STORE=f"sqlite:///{folder}/conversations.db") as server:
        yield server


@pytest.fixture(scope="session")
def users_server(fake_upstream, tmp_path_factory):
    """gunicorn with accounts (AUTH=users, open registration) against the session's fake
    upstream, its database (DATABASE_URL) and conversations in a temporary folder; logins
    throttled loosely enough for many tests from one address. Tests share it, each with
    users of its own."""
    folder = tmp_path_factory.mktemp("gunicorn-users")
    with serve(fake_upstream, folder, AUTH="users", REGISTRATION="open",
               LOGIN_LIMIT="1000/minute", HEARTBEAT_SECONDS="1",
               CONVERSATION_STORE=f"sqlite:///{folder}/conversations.db") as server:
        yield server


@pytest.fixture()
def live(gunicorn_server, upstream):
    """The running gunicorn, with the fake upstream emptied for this test."""
    return gunicorn_server


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory) -> tuple[Path, Path]:
    """(certificate, key): a self-signed certificate for 127.0.0.1, trusted by no one unless
    a test names it (REQUESTS_CA_BUNDLE)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on a free port, 127.0.0.1 only, no persistence; shared by the
    session (each test uses its own keys, or empties the database first)."""
    server = redis_server()
    yield server.url
    server.stop()


def redis_server() -> RedisServer:
    """A redis-server of a test's own; without redis-server installed, a skip (a failure in
    CI)."""
    if redis_binary() is None:
        missing("redis-server is not installed (apt-get install redis-server)")
    return RedisServer()


@pytest.fixture()
def own_redis():
    """A redis-server for this test alone (one it may stop mid-test), stopped afterwards."""
    server = redis_server()
    yield server
    server.stop()


@pytest.fixture()
def redis_without_scripts(redis_url):
    """A URL of the session's redis-server for a user who may do everything but run scripts:
    a store that reads single keys but fails its history walk (a server-side script)."""
    import redis

    user, password = f"noscripts-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                      commands=["+@all", "-@scripting"])
    try:
        yield redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    finally:
        admin.acl_deluser(user)
        admin.close()


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the whole session (Playwright's sync API runs one instance
    per thread, so every browser test shares it); each test opens a fresh context."""
    from .browser_helpers import CHROMIUM, CHROMIUM_ARGS

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (Debian's postgresql: initdb + pg_ctl)."""
    from .databases import PostgreSQL, postgres_bin

    if postgres_bin() is None:
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgreSQL()
    yield server
    server.stop()


@pytest.fixture()
def db(database_url):
    """The service's database (`db.Database`) in `database_url`, migrated."""
    from gpt_proxy.db import open_database

    database = open_database(database_url, ROOT)
    yield database
    from gpt_proxy.budgets import flush_all

    flush_all()  # ledger rows still waiting for their batch, while the database is there
    database.close()


@pytest.fixture()
def clock():
    """A clock the test moves by hand (`clock.now`), at a Unix time of today's magnitude."""
    clock = FakeClock()
    clock.now = 1_800_000_000.0
    return clock


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database: an SQLite file, then a PostgreSQL database (the same tests
    run on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/gpt_proxy.db"
    else:
        yield request.getfixturevalue("postgres").new_database()


# --- the user service ---------------------------------------------------------------------------

ANN = ("ann", "correct horse battery")  # a user's name and password in tests
BOB = ("bob", "staple paper clip")


@pytest.fixture()
def users_app(upstream, tmp_path):
    """An app with AUTH=users, open registration and a database of its own (SQLite); call it
    with overrides for another configuration."""
    made = []

    def make(**overrides):
        settings = dict(openai_base_url=upstream.url, auth="users", registration="open",
                        login_limit="1000/minute", conversation_store=(
                            f"sqlite:///{tmp_path}/conversations-{len(made)}.db"),
                        database_url=f"sqlite:///{tmp_path}/gpt_proxy-{len(made)}.db")
        settings.update(overrides)
        app = create_app(make_config(**settings))
        made.append(app)
        return app
    yield make
    for app in made:
        app.extensions["gpt_proxy"].accounts.db.close()


def sign_up(client, name: str, password: str, *, email: str | None = None) -> dict:
    """Register and log in through the GPT Terminal user protocol; the client keeps the
    cookie. Returns the signed-in user."""
    body = {"username": name, "password": password}
    if email:
        body["email"] = email
    registered = client.post("/api/user/register", json=body).get_json()
    assert registered["code"] == 0, registered
    logged = client.post("/api/user/login", json={"username": name, "password": password})
    assert logged.get_json()["code"] == 0, logged.get_json()
    return logged.get_json()["data"]


def new_key(app, name: str, password: str, **options) -> str:
    """A new API key of user `name` (made if missing), through the admin's store."""
    accounts = app.extensions["gpt_proxy"].accounts
    user = accounts.find_user(name) or accounts.create_user(name, password)
    return accounts.create_key(user.id, "test", **options)[1]
