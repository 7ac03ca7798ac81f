"""The start-up checks (gpt_proxy/storage/startup.py): alone, then under the real gunicorn with the
repo's gunicorn.conf.py, including a whole file system made read-only around it (as `docker
run --read-only` does) in a mount namespace of its own. The Docker traps they close are
listed in the README's Docker section.

Root writes anywhere, and CI runs as root: a folder another user cannot write is tested in a
child process that drops to `nobody`, and a read-only folder through a read-only mount."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from gpt_proxy import create_app
from gpt_proxy.base.config import load_config
from gpt_proxy.storage import startup

from .conftest import ROOT, TEST_DATABASE, until
from .processes import free_port, stop_process, wait_port
from .skip_report import missing

NOBODY = 65534


def as_another_user(fn):
    """`fn()` (its result JSON-able) as a user that is not root: in a child process that
    becomes `nobody` when the tests run as root, else right here."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, answer through the pipe, never return into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, json.dumps({"result": fn()}).encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
            os.write(write, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "error" not in answer, answer["error"]
    return answer["result"]


@pytest.fixture()
def shared_folder():
    """A folder under /tmp that every user may enter but only root (or, not as root, nobody
    but us after a chmod) may write."""
    folder = Path(tempfile.mkdtemp(prefix="gpt_proxy-startup-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder, ignore_errors=True)


def store_url(file: Path) -> str:
    return f"sqlite:///{file}"  # an absolute path: sqlite:////...


# --- the data folder ------------------------------------------------------------------------

def test_the_sqlite_files_are_the_conversation_store_and_the_database_none_for_servers():
    config = load_config({}, conversation_store="sqlite:///data/conversations.db")
    assert startup.sqlite_files(config) == {
        "CONVERSATION_STORE": ROOT / "data" / "conversations.db",
        "DATABASE_URL": ROOT / "data" / "gpt_proxy.db"}
    assert startup.sqlite_files(config.replace(
        conversation_store="sqlite:////srv/c.db", database_url="sqlite:////srv/g.db")) == {
        "CONVERSATION_STORE": Path("/srv/c.db"), "DATABASE_URL": Path("/srv/g.db")}
    assert startup.sqlite_files(config.replace(
        conversation_store="redis://r:6379/0", database_url="postgresql://p/gp")) == {}


def test_a_writable_folder_passes_and_is_made_without_leaving_a_file(tmp_path):
    folder = tmp_path / "data" / "deeper"
    startup.check_writable({"CONVERSATION_STORE": folder / "conversations.db"})
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_folder_this_user_cannot_write_stops_start_up_naming_folder_user_and_fix(shared_folder):
    data = shared_folder / "data"
    data.mkdir()
    if os.geteuid() != 0:
        data.chmod(0o555)
    files = {"CONVERSATION_STORE": data / "conversations.db"}

    def check():
        try:
            startup.check_writable(files, container=False)
        except startup.StartupError as exc:
            return [str(exc), os.geteuid(), os.getegid()]
        return None

    answer = as_another_user(check)
    assert answer is not None, "an unwritable folder passed the check"
    message, uid, gid = answer
    assert f"the folder {data} cannot be written by user id {uid} (group {gid})" in message
    assert "Permission denied" in message
    assert message.startswith("CONVERSATION_STORE keeps conversations.db in ")
    assert f"chown -R {uid}:{gid} {data}" in message and "point CONVERSATION_STORE" in message


def test_in_a_container_the_fix_names_the_host_folder_and_a_named_volume(shared_folder):
    data = shared_folder / "data"
    data.mkdir()
    if os.geteuid() != 0:
        data.chmod(0o555)
    files = {"CONVERSATION_STORE": data / "conversations.db"}
    problems = as_another_user(lambda: startup.storage_problems(files, container=True))
    assert len(problems) == 1
    assert "on the host: chown -R" in problems[0] and "<the host folder>" in problems[0]
    assert f"-v gpt_proxy_data:{data}" in problems[0]


def test_a_database_file_this_user_cannot_write_is_named(shared_folder):
    data = shared_folder / "data"
    data.mkdir()
    data.chmod(0o777)  # the folder is fine, the file is not
    database = data / "conversations.db"
    database.write_bytes(b"")
    database.chmod(0o444 if os.geteuid() != 0 else 0o644)  # root owns it: nobody cannot write
    problems = as_another_user(
        lambda: startup.storage_problems({"CONVERSATION_STORE": database}, container=False))
    assert len(problems) == 1 and f"the file {database} cannot be written" in problems[0]


def test_a_path_through_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "afile").write_text("x")
    files = {"CONVERSATION_STORE": tmp_path / "afile" / "data" / "conversations.db"}
    with pytest.raises(startup.StartupError, match="cannot be written by user id"):
        startup.check_writable(files)
    (tmp_path / "data").write_text("a file where the folder should be")
    problems = startup.storage_problems({"CONVERSATION_STORE": tmp_path / "data" / "c.db"})
    assert problems and "it is not a folder" in problems[0]


# --- /healthz -------------------------------------------------------------------------------

def test_healthz_is_503_naming_the_problem_when_the_store_folder_cannot_be_written(tmp_path):
    (tmp_path / "data").write_text("a file where the folder should be")
    app = create_app(load_config({}, conversation_store=store_url(tmp_path / "data" / "c.db"),
                                 database_url=TEST_DATABASE))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable" and body["upstream"] == "demo"
    assert len(body["problems"]) == 1 and "CONVERSATION_STORE" in body["problems"][0]
    assert str(tmp_path / "data") in body["problems"][0]


def test_healthz_is_ok_and_makes_no_folder_when_the_folder_can_be_made(tmp_path):
    folder = tmp_path / "not-yet" / "data"
    app = create_app(load_config({}, conversation_store=store_url(folder / "c.db"),
                                 database_url=TEST_DATABASE))
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"
    assert "problems" not in response.get_json()
    assert not (tmp_path / "not-yet").exists()  # a probe asks, it does not make folders


def test_healthz_reports_a_folder_another_user_cannot_write(shared_folder):
    data = shared_folder / "data"
    data.mkdir()
    if os.geteuid() != 0:
        data.chmod(0o555)
    app = create_app(load_config({}, conversation_store=store_url(data / "c.db"),
                                 database_url=TEST_DATABASE))

    def probe():
        response = app.test_client().get("/healthz")
        return [response.status_code, response.get_json()]

    status, body = as_another_user(probe)
    assert status == 503 and "Permission denied" in body["problems"][0]


# --- where it runs ------------------------------------------------------------------------

def test_a_container_is_told_by_its_marker_files_or_its_environment(tmp_path):
    assert not startup.in_container(tmp_path, {})
    assert startup.in_container(tmp_path, {"container": "podman"})
    assert startup.in_container(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    (tmp_path / ".dockerenv").write_text("")
    assert startup.in_container(tmp_path, {})
    (tmp_path / ".dockerenv").unlink()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").write_text("")
    assert startup.in_container(tmp_path, {})


def test_a_loopback_listener_in_a_container_is_warned_about_with_its_fix():
    binds = ["127.0.0.1:7345", "127.0.0.1:7346"]
    warnings = startup.bind_warnings(binds, "127.0.0.1:7346", container=True)
    assert len(warnings) == 2
    assert warnings[0].startswith("BIND=127.0.0.1:7345 is this container's own loopback")
    assert "Set BIND=0.0.0.0:7345" in warnings[0]
    assert warnings[1].startswith("METRICS_BIND=127.0.0.1:7346 is this container's own")
    for host in ("localhost", "[::1]", "127.0.0.2"):
        assert startup.bind_warnings([f"{host}:8000"], "", container=True)
    assert startup.bind_warnings(binds, "127.0.0.1:7346", container=False) == []
    assert startup.bind_warnings(["0.0.0.0:7345", "[::]:7346"], "0.0.0.0:7346",
                                 container=True) == []
    assert startup.bind_warnings(["unix:/run/gp.sock"], "", container=True) == []


def test_the_built_in_loopback_defaults_are_no_trap_in_a_development_container():
    binds = ["127.0.0.1:7345", "127.0.0.1:7346"]
    assert startup.bind_warnings(binds, "127.0.0.1:7346", container=True, defaults=binds) == []
    chosen = startup.bind_warnings(binds, "127.0.0.1:7346", container=True,
                                   defaults=["127.0.0.1:7346"])
    assert len(chosen) == 1 and chosen[0].startswith("BIND=127.0.0.1:7345")


def test_a_metrics_listener_missing_from_the_binds_is_reported():
    warnings = startup.bind_warnings(["0.0.0.0:8000"], "127.0.0.1:7346", container=False)
    assert len(warnings) == 1
    assert "gunicorn does not listen there (it listens on 0.0.0.0:8000)" in warnings[0]
    assert "--bind 127.0.0.1:7346" in warnings[0] and "METRICS_BIND=" in warnings[0]
    assert startup.bind_warnings(["0.0.0.0:8000"], "", container=False) == []  # metrics off
    assert startup.bind_warnings(["0.0.0.0:8000", "10.0.0.2:7346"], "127.0.0.1:7346",
                                 container=False) == []  # the port is there


# --- under gunicorn -------------------------------------------------------------------------

def gunicorn_env(tmp_path: Path, **env: str) -> dict:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "GPT_", "PROMETHEUS_")) and k != "container"}
    full.update(DOTENV_FILE=os.devnull, WEB_CONCURRENCY="1", BIND=f"127.0.0.1:{free_port()}",
                METRICS_BIND=f"127.0.0.1:{free_port()}",
                CONVERSATION_STORE=store_url(tmp_path / "data" / "conversations.db"),
                DATABASE_URL=store_url(tmp_path / "data" / "gpt_proxy.db"),
                NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    full.update(env)
    return full


class Server:
    """gunicorn with the repo's config, its output in a file, stopped by `stop()`."""

    def __init__(self, env: dict, log: Path, *, args: tuple = (), prefix: tuple = ()) -> None:
        self.env, self.log_path = env, log
        self.port = int(env["BIND"].rpartition(":")[2])
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *args,
                 "app:app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self) -> Server:
        """Until a worker answers (gunicorn opens the port before its workers have loaded the
        app, and a SIGTERM in that moment is not acted on for a long while)."""
        try:
            wait_port(self.port, self.proc, "gunicorn", 30)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {self.log()[-3000:]}") from None
        until(lambda: self._answers(), "no worker answered /healthz", timeout=30)
        return self

    def _answers(self) -> bool:
        try:
            requests.get(f"{self.url}/healthz", timeout=2)
        except requests.RequestException:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


def run_to_exit(env: dict, prefix: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                           "app:app"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_gunicorn_refuses_to_start_when_the_store_folder_cannot_be_made(tmp_path):
    (tmp_path / "afile").write_text("x")
    env = gunicorn_env(tmp_path, CONVERSATION_STORE=store_url(tmp_path / "afile" / "d" / "c.db"))
    result = run_to_exit(env)
    assert result.returncode != 0
    assert "gpt_proxy: cannot start: CONVERSATION_STORE keeps c.db in" in result.stderr
    assert f"user id {os.geteuid()}" in result.stderr
    assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr


def test_a_bind_flag_that_drops_the_metrics_listener_is_reported_at_start(tmp_path):
    env = gunicorn_env(tmp_path)
    port = free_port()
    server = Server({**env, "BIND": f"127.0.0.1:{port}"}, tmp_path / "gunicorn.log",
                    args=("--bind", f"127.0.0.1:{port}"))
    try:
        server.wait()
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        log = server.log()
        assert (f"WARNING: metrics are on (METRICS_BIND={env['METRICS_BIND']}) but gunicorn "
                f"does not listen there (it listens on 127.0.0.1:{port})") in log
        assert "metrics on http" not in log  # the start line does not claim them either
    finally:
        server.stop()


def test_a_loopback_bind_in_a_container_is_warned_about_at_start(tmp_path):
    server = Server(gunicorn_env(tmp_path, container="podman"), tmp_path / "gunicorn.log")
    try:
        server.wait()
        log = server.log()
        assert f"WARNING: BIND={server.env['BIND']} is this container's own loopback" in log
        assert f"WARNING: METRICS_BIND={server.env['METRICS_BIND']} is this container" in log
    finally:
        server.stop()


def test_the_health_check_script_follows_healthz(tmp_path):
    data = tmp_path / "data"
    server = Server(gunicorn_env(tmp_path), tmp_path / "gunicorn.log").wait()
    try:
        check = [sys.executable, str(ROOT / "healthcheck.py")]
        healthy = subprocess.run(check, env={**server.env}, capture_output=True, text=True,
                                 timeout=30)
        assert healthy.returncode == 0 and json.loads(healthy.stdout)["status"] == "ok"
        shutil.rmtree(data)
        data.write_text("the folder is gone, a file took its place")
        sick = subprocess.run(check, env={**server.env}, capture_output=True, text=True,
                              timeout=30)
        assert sick.returncode == 1
        assert "503" in sick.stdout and "CONVERSATION_STORE" in sick.stdout
        assert "not a folder" in sick.stdout
    finally:
        server.stop()
    gone = subprocess.run(check, env={**server.env}, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "Connection refused" in gone.stdout


# --- a read-only root, as docker run --read-only ------------------------------------------

# Runs its arguments with every mount read-only except /dev, /proc and /sys (so /dev/shm stays
# writable, as in a container), in a mount namespace of its own: nothing outside changes.
READ_ONLY = r"""
mount --make-rprivate / || exit 96
for target in $(awk '{print $2}' /proc/self/mounts | sort -u); do
  case "$target" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) ;;
    *) mount -o remount,bind,ro "$target" 2>/dev/null ;; esac
done
if ( : > /tmp/.gpt_proxy-rw-check ) 2>/dev/null; then echo "/tmp stayed writable" >&2; exit 97; fi
exec "$@"
"""


def read_only_env(tmp_path: Path, **env: str) -> dict:
    """`gunicorn_env` for a process on a read-only root: not measured by `make coverage`
    (its data file could not be written there, and the traceback saying so would be taken
    for the service's)."""
    return {key: value for key, value in gunicorn_env(tmp_path, **env).items()
            if not key.startswith("COVERAGE_")}


@pytest.fixture()
def read_only_root():
    """The prefix that runs a command on a read-only root (root only: `unshare -m`)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        missing("a mount namespace needs root and util-linux's unshare (CI runs as root)")
    shm = Path(tempfile.mkdtemp(prefix="gpt_proxy-ro-", dir="/dev/shm"))
    yield ("unshare", "--mount", "sh", "-c", READ_ONLY, "read-only"), shm
    shutil.rmtree(shm, ignore_errors=True)


def test_on_a_read_only_root_it_serves_with_its_files_in_shared_memory(read_only_root, tmp_path):
    prefix, shm = read_only_root
    env = read_only_env(tmp_path, container="docker",
                       CONVERSATION_STORE=store_url(shm / "data" / "conversations.db"),
                       DATABASE_URL=store_url(shm / "data" / "gpt_proxy.db"))
    def metric_folders() -> set[Path]:
        return set(Path("/dev/shm").glob("gpt_proxy-metrics-*"))

    before = metric_folders()
    server = Server(env, tmp_path / "gunicorn.log", prefix=prefix)
    try:
        server.wait()
        assert requests.get(f"{server.url}/healthz", timeout=5).json()["status"] == "ok"
        reply = requests.post(f"{server.url}/api/chat-process", json={"prompt": "hi"},
                              timeout=30)
        assert reply.status_code == 200 and '"text"' in reply.text
        metrics = requests.get(f"http://{env['METRICS_BIND']}/metrics", timeout=5)
        assert 'gpt_proxy_requests_total{' in metrics.text
        assert len(metric_folders() - before) == 1  # its temporary folder, in shared memory
        assert (shm / "data" / "conversations.db").exists()
    finally:
        server.stop()
    assert metric_folders() - before == set()  # removed when gunicorn exits
    assert "Traceback" not in server.log()


def test_on_a_read_only_root_a_store_without_a_volume_stops_start_up(read_only_root, tmp_path):
    prefix, _ = read_only_root
    env = read_only_env(tmp_path, container="docker",
                       CONVERSATION_STORE=store_url(tmp_path / "data" / "conversations.db"),
                       DATABASE_URL=store_url(tmp_path / "data" / "gpt_proxy.db"))
    result = run_to_exit(env, prefix)
    assert result.returncode != 0
    assert f"the folder {tmp_path / 'data'} cannot be written" in result.stderr
    assert "Read-only file system" in result.stderr
    assert f"mount a named volume there (-v gpt_proxy_data:{tmp_path / 'data'})" in result.stderr
    assert "chown" not in result.stderr  # ownership is not the problem here
    assert "Traceback" not in result.stderr


# --- waiting for the database and Redis -----------------------------------------------------

class Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def refusing(times: int, clock: Clock | None = None):
    """A probe that is unreachable `times` times, then answers."""
    calls = []

    def probe(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) <= times:
            raise startup.Unreachable("Connection refused")
    probe.calls = calls
    return probe


def test_a_late_service_is_awaited_with_a_doubling_backoff_each_try_one_line():
    clock, lines = Clock(), []
    service = startup.Awaited("PostgreSQL", "db:5432", ("DATABASE_URL",), refusing(6))
    startup.wait_for([service], 60, lines.append, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(lines) == 7 and all("\n" not in line for line in lines)
    assert lines[0] == ("waiting for PostgreSQL at db:5432 (DATABASE_URL): Connection refused; "
                        "try 1, next in 0.5 s (60 s left)")
    assert lines[-1] == "PostgreSQL at db:5432 (DATABASE_URL) answers, after 7 tries"


def test_a_service_that_never_answers_stops_start_up_at_the_bound_with_one_line():
    clock, lines = Clock(), []
    service = startup.Awaited("Redis", "redis:6379", ("CONVERSATION_STORE", "REPLY_STORE"),
                              refusing(10**6))
    with pytest.raises(startup.StartupError) as raised:
        startup.wait_for([service], 20, lines.append, clock=clock, sleep=clock.sleep)
    assert clock.now == 20  # the last wait is cut to the bound
    assert str(raised.value) == (
        "Redis at redis:6379 (CONVERSATION_STORE, REPLY_STORE) did not answer within 20 s "
        "(STARTUP_WAIT_SECONDS): Connection refused. Check that it runs and that the address "
        "is right")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 2.5] and len(lines) == 7


def test_what_waiting_cannot_mend_stops_start_up_at_once():
    clock = Clock()

    def wrong_password(seconds: float) -> None:
        raise startup.StartupError("PostgreSQL at db:5432 (DATABASE_URL) refused the "
                                   "connection: password authentication failed")
    with pytest.raises(startup.StartupError):
        startup.wait_for([startup.Awaited("PostgreSQL", "db:5432", ("DATABASE_URL",),
                                          wrong_password)], 60, print, clock=clock,
                         sleep=clock.sleep)
    assert clock.sleeps == []


def test_the_awaited_services_are_named_by_address_and_setting_never_password():
    config = load_config({}).replace(
        database_url="postgresql://gp:pg-SECRET@db.internal:6543/gp",
        conversation_store="redis://:r-SECRET@cache:6379/0",
        rate_limit_storage="redis://:r-SECRET@cache:6379/1",
        reply_store="redis://other:6380/2")
    named = [(s.what, s.where, s.settings) for s in startup.awaited_services(config)]
    assert named == [("PostgreSQL", "db.internal:6543", ("DATABASE_URL",)),
                     ("Redis", "cache:6379", ("CONVERSATION_STORE", "RATE_LIMIT_STORAGE")),
                     ("Redis", "other:6380", ("REPLY_STORE",))]
    assert startup.awaited_services(load_config({})) == []  # SQLite and memory://: nothing


def test_a_refused_postgres_probe_is_unreachable_without_its_password():
    port = free_port()
    probe = startup._postgres_probe(f"postgresql://gp:pg-SECRET@127.0.0.1:{port}/gp",
                                    "DATABASE_URL")
    with pytest.raises(startup.Unreachable) as raised:
        probe(2)
    assert "refused" in str(raised.value).lower() and "SECRET" not in str(raised.value)


class LateListener:
    """A port that refuses connections until `open()`; then it carries them to `target_port`
    (a real PostgreSQL or Redis that, to the service, comes up only now)."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target_port = free_port(), target_port
        self.listener = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            server.settimeout(None)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            sink.close()

    def close(self) -> None:
        if self.listener:
            self.listener.close()


def test_gunicorn_waits_for_a_postgres_and_a_redis_that_come_up_later_then_serves(
        postgres, redis_url, tmp_path):
    """The trap: podman-compose started an instance before PostgreSQL listened; it died
    (`cannot be migrated: connection refused`) and relied on the restart policy. Now it waits,
    one line per try, and serves once both answer."""
    database = urlsplit(postgres.new_database())
    late_db, late_redis = LateListener(database.port), LateListener(urlsplit(redis_url).port)
    env = gunicorn_env(
        tmp_path, STARTUP_WAIT_SECONDS="60",
        DATABASE_URL=f"postgresql://postgres:pg-SECRET@127.0.0.1:{late_db.port}"
                     f"{database.path}",
        CONVERSATION_STORE=f"redis://127.0.0.1:{late_redis.port}/7",
        REPLY_STORE=f"redis://127.0.0.1:{late_redis.port}/8")
    server = Server(env, tmp_path / "gunicorn.log")
    try:
        waiting = f"waiting for PostgreSQL at 127.0.0.1:{late_db.port} (DATABASE_URL): "
        until(lambda: server.log().count(waiting) >= 2, "it never waited for PostgreSQL", 30)
        late_db.open()
        waiting = (f"waiting for Redis at 127.0.0.1:{late_redis.port} (CONVERSATION_STORE, "
                   "REPLY_STORE): ")
        until(lambda: server.log().count(waiting) >= 2, "it never waited for Redis", 30)
        late_redis.open()
        server.wait()
        assert requests.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"
        log = server.log()
        assert f"PostgreSQL at 127.0.0.1:{late_db.port} (DATABASE_URL) answers, after" in log
        assert "SECRET" not in log and "Traceback" not in log
    finally:
        server.stop()
        late_db.close()
        late_redis.close()


def test_gunicorn_stops_with_one_line_when_the_database_never_comes(tmp_path):
    port = free_port()
    env = gunicorn_env(tmp_path, STARTUP_WAIT_SECONDS="2",
                       DATABASE_URL=f"postgresql://gp:pg-SECRET@127.0.0.1:{port}/gp")
    result = run_to_exit(env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gpt_proxy: cannot start: PostgreSQL at 127.0.0.1:{port} "
                           "(DATABASE_URL) did not answer within 2 s (STARTUP_WAIT_SECONDS): ")
    assert result.stderr.count(f"waiting for PostgreSQL at 127.0.0.1:{port}") >= 2
    assert "Traceback" not in result.stderr and "SECRET" not in result.stderr
    assert "Booting worker" not in result.stderr


@pytest.mark.parametrize(("env", "said", "not_said"), [
    ({"AUTH": "users", "PROXY_TOKEN": "admin-token-123"},
     "accounts and their keys (AUTH=users; PROXY_TOKEN is the admin's credential for "
     "/api/admin/*, no client's)", "proxy token required"),
    ({"PROXY_TOKEN": "client-token-123"},
     "clients send PROXY_TOKEN as a Bearer token (AUTH=token)", "accounts"),
    ({}, "open to anyone who reaches it (AUTH=open", "PROXY_TOKEN as"),
])
def test_the_start_line_says_who_may_call_in_the_terms_of_auth(tmp_path, env, said, not_said):
    server = Server(gunicorn_env(tmp_path, **env), tmp_path / "gunicorn.log")
    try:
        server.wait()
        [line] = [line for line in server.log().splitlines() if "gpt_proxy: upstream" in line]
        assert said in line and not_said not in line
        assert "admin-token-123" not in line and "client-token-123" not in line
    finally:
        server.stop()
