"""Start-up checks: settings that are each valid alone but cannot work where the service runs,
found once, in gunicorn's master before any worker starts (`gunicorn.conf.py`'s on_starting),
each reported in one line that says what is wrong, why, and the fix.

Rules it follows:
- What cannot work stops start-up with a `StartupError`: a folder holding an SQLite file that
  this user cannot write (else every request needing it fails, one 503 at a time), no
  writable temporary folder anywhere. What may be meant is a warning, logged at start and
  never a stop: a loopback address chosen inside a container (unreachable from outside it,
  but a sidecar sharing its network namespace can still use it), a metrics listener that
  gunicorn's own `--bind` flag dropped.
- The start-up folder check is a real probe, a file created and removed there, since
  permission bits mislead on some mounts (root-squashed). `/healthz` asks the same question
  of the system (`access`: permissions and read-only mounts) without writing, so a folder that
  stops being writable later turns the health check red.
- Settings come in as a `Config`; only the questions about the process's surroundings (is
  this a container? which temporary folder?) look at the machine itself, each injectable for
  tests.
- The database and Redis may come up after the service (podman-compose ignores compose's
  `service_healthy`, and a cluster schedules pods in any order): they are awaited, each try
  one log line naming the service, its address and the setting (never a password), with a
  backoff of 0.5 s doubling to 5 s, for at most STARTUP_WAIT_SECONDS in all; then start-up
  stops with one line. What waiting cannot mend (a wrong password, a missing database) stops
  it at once.
- The start-up line says who may call, in the words of the AUTH in force (with AUTH=users,
  PROXY_TOKEN is no client's token but the admin's credential).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .config import ROOT, Config
from .conversations import sqlite_path
from .db import sqlite_file

SHARED_MEMORY = "/dev/shm"  # writable in a container even with --read-only (Docker and podman)


class StartupError(Exception):
    """The service cannot run as configured here; the message names the fix."""


# --- the data folder ----------------------------------------------------------------------

def sqlite_files(config: Config) -> dict[str, Path]:
    """The SQLite files the settings name, by setting: every one must be writable."""
    files = {}
    if config.conversation_store.startswith("sqlite:///"):
        files["CONVERSATION_STORE"] = sqlite_path(config.conversation_store, ROOT)
    database = sqlite_file(config.database_url, ROOT)
    if database is not None:
        files["DATABASE_URL"] = database
    return files


def _probe(folder: Path, *, create: bool = True) -> str | None:
    """None when this process can write in `folder`, else why not. `create`: make the folder
    if missing, then create and remove a file there (the real test); else only ask the
    system (`access`) about the folder, or its nearest existing parent, changing nothing."""
    try:
        if folder.exists() and not folder.is_dir():
            return "it is not a folder"
        if not create:
            nearest = folder
            while not nearest.exists() and nearest != nearest.parent:
                nearest = nearest.parent
            if not nearest.is_dir():
                return f"{nearest} is not a folder"
            return None if os.access(nearest, os.W_OK | os.X_OK) else "Permission denied"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".gpt_proxy-write-check-", dir=folder)
    except OSError as exc:  # a parent this user cannot enter, a read-only mount...
        return exc.strerror or str(exc)
    try:
        os.close(fd)
    finally:
        os.unlink(name)
    return None


def _unwritable_file(file: Path) -> Path | None:
    """The database file, or one of SQLite's files beside it, that exists but that this user
    cannot read and write (SQLite would open it read-only, then fail every write)."""
    for path in (file, Path(f"{file}-wal"), Path(f"{file}-shm")):
        try:
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                return path
        except OSError:
            return path
    return None


def storage_problems(files: Mapping[str, Path], *, container: bool | None = None,
                     create: bool = True) -> list[str]:
    """One line per SQLite file whose folder (or the file itself) this user cannot write,
    naming the setting, the folder, the user id and the fix; empty when all are fine.
    `create`: see `_probe`."""
    if container is None:
        container = in_container()
    uid, gid = os.geteuid(), os.getegid()
    problems = []
    for setting, file in files.items():
        folder = file.parent
        reason = _probe(folder, create=create)
        what = f"the folder {folder}"
        if reason is None:
            unwritable = _unwritable_file(file)
            if unwritable is None:
                continue
            what, reason = f"the file {unwritable}", "Permission denied"
        volume = f"mount a named volume there (-v gpt_proxy_data:{folder})"
        if reason == os.strerror(errno.EROFS):  # docker run --read-only, or a :ro mount
            fix = (f"{volume if container else 'make it a writable mount'}, or point "
                   f"{setting} elsewhere")
        elif container:
            fix = (f"give it to that user (for a bind mount, on the host: chown -R {uid}:{gid} "
                   f"<the host folder>), or {volume}, or point {setting} elsewhere")
        else:
            fix = (f"give it to that user (chown -R {uid}:{gid} {folder}), or point "
                   f"{setting} elsewhere")
        problems.append(f"{setting} keeps {file.name} in {folder}, but {what} cannot be "
                        f"written by user id {uid} (group {gid}): {reason}. Fix: {fix}")
    return problems


def check_writable(files: Mapping[str, Path], *, container: bool | None = None) -> None:
    """Raise a StartupError naming every SQLite file this user cannot write."""
    problems = storage_problems(files, container=container)
    if problems:
        raise StartupError("; ".join(problems))


def health_problems(config: Config) -> list[str]:
    """What `/healthz` reports as broken: the check of start-up again, asking the system
    rather than writing (a probe runs often, and must not make folders)."""
    return storage_problems(sqlite_files(config), create=False)


# --- where it runs ------------------------------------------------------------------------

def in_container(root: Path = Path("/"), environ: Mapping[str, str] | None = None) -> bool:
    """True in a Docker or podman container (their marker files), or wherever the runtime
    says so (`container=` as podman, systemd-nspawn and LXC set it; a Kubernetes pod)."""
    environ = os.environ if environ is None else environ
    return ((root / ".dockerenv").exists() or (root / "run/.containerenv").exists()
            or bool(environ.get("container")) or "KUBERNETES_SERVICE_HOST" in environ)


def _host_port(address: str) -> tuple[str, str] | None:
    """(host, port) of a gunicorn TCP bind address; None for a unix socket or an fd."""
    if address.startswith(("unix:", "fd://")):
        return None
    host, _, port = address.rpartition(":")
    if not host:  # "host" alone: gunicorn's default port
        return address, "8000"
    return host.strip("[]"), port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warnings(binds: Iterable[str], metrics_bind: str, *, container: bool,
                  defaults: Iterable[str] = ()) -> list[str]:
    """What is wrong with the addresses gunicorn listens on (`binds`, after its command line
    had its say): a loopback listener chosen in a container, a metrics listener missing.
    `defaults`: the addresses among `binds` that nobody chose (gunicorn.conf.py's built-in
    loopback ones): a development container forwards those itself, while a chosen loopback
    address is the trap (an env file replacing the Docker image's 0.0.0.0)."""
    binds = list(binds)
    defaults = set(defaults)
    metrics_port = metrics_bind.rpartition(":")[2] if metrics_bind else ""
    warnings = []
    if container:
        for address in binds:
            host_port = _host_port(address)
            if host_port is None or not _loopback(host_port[0]) or address in defaults:
                continue
            metrics = host_port[1] == metrics_port
            setting = "METRICS_BIND" if metrics else "BIND"
            fix = ("0.0.0.0:7346 (the image's default) and publish it only to the scraper"
                   if metrics else "0.0.0.0:7345 (the image's default)")
            warnings.append(
                f"{setting}={address} is this container's own loopback: nothing outside the "
                "container (a published port, another container, "
                f"{'Prometheus' if metrics else 'nginx'}) can reach it. Set {setting}={fix}, "
                "or drop the line from your env file; keep it only when a sidecar sharing "
                "this container's network is the one client")
    if metrics_port and not any((hp := _host_port(address)) and hp[1] == metrics_port
                                for address in binds):
        warnings.append(
            f"metrics are on (METRICS_BIND={metrics_bind}) but gunicorn does not listen there "
            f"(it listens on {', '.join(binds)}): its --bind flag replaces gunicorn.conf.py's "
            "list, so /metrics is served nowhere. Set BIND instead of passing --bind, or add "
            f"--bind {metrics_bind}; METRICS_BIND= (empty) turns metrics off")
    return warnings


def temp_dir(fallbacks: Iterable[str] = (SHARED_MEMORY,)) -> str:
    """A writable temporary folder for gunicorn's worker heartbeat files and the metrics
    files, in this process and every worker it starts. The usual ones first (TMPDIR, /tmp,
    ...); where none is writable (`docker run --read-only` without `--tmpfs /tmp`), the first
    writable fallback becomes TMPDIR."""
    try:
        return tempfile.gettempdir()  # checks each candidate by writing a file there
    except FileNotFoundError:
        pass
    for folder in fallbacks:
        if os.path.isdir(folder) and _probe(Path(folder)) is None:
            os.environ["TMPDIR"] = folder
            tempfile.tempdir = None  # look again, now with TMPDIR
            return tempfile.gettempdir()
    raise StartupError(
        "no writable temporary folder (TMPDIR, /tmp, /var/tmp, the working folder, "
        f"{', '.join(fallbacks)}): with docker run --read-only add --tmpfs /tmp, or set "
        "TMPDIR to a writable folder")


# --- the services it needs ----------------------------------------------------------------

class Unreachable(Exception):
    """A service did not answer yet: waiting may mend it (refused, unknown host, starting)."""


@dataclass(frozen=True)
class Awaited:
    """A server the service needs before it can start: what it is, where (host:port, never
    a password), the settings naming it, and a probe raising `Unreachable` while it cannot be
    used (and StartupError for what waiting cannot mend)."""

    what: str
    where: str
    settings: tuple[str, ...]
    probe: Callable[[float], None]  # the argument: seconds the probe may take

    def describe(self) -> str:
        return f"{self.what} at {self.where} ({', '.join(self.settings)})"


def _address(url: str, default_port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{f'[{host}]' if ':' in host else host}:{parts.port or default_port}"


def _first_line(exc: BaseException, secret: str | None) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    text = text.removeprefix("connection failed: ")
    return text.replace(secret, "***") if secret else text


# what waiting cannot mend: the server answered, and said no
_POSTGRES_FINAL = ("password authentication failed", "no pg_hba.conf entry", "does not exist")


def _postgres_probe(url: str, setting: str) -> Callable[[float], None]:
    def probe(seconds: float) -> None:
        import psycopg

        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        secret = urlsplit(url).password
        try:
            psycopg.connect(conninfo, connect_timeout=max(1, round(seconds))).close()
        except psycopg.Error as exc:
            reason = _first_line(exc, secret)
            if any(word in reason for word in _POSTGRES_FINAL):
                raise StartupError(f"PostgreSQL at {_address(url, 5432)} ({setting}) refused "
                                   f"the connection: {reason}. Check {setting}") from None
            raise Unreachable(reason) from None
    return probe


def _redis_probe(url: str, settings: tuple[str, ...]) -> Callable[[float], None]:
    def probe(seconds: float) -> None:
        import redis

        secret = urlsplit(url).password
        client = redis.Redis.from_url(url, socket_connect_timeout=seconds,
                                      socket_timeout=seconds)
        try:
            client.ping()
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            raise StartupError(f"Redis at {_address(url, 6379)} ({', '.join(settings)}) "
                               f"refused the connection: {_first_line(exc, secret)}. Check "
                               "the password in the URL") from None
        except redis.RedisError as exc:  # refused, unknown host, still loading its data...
            raise Unreachable(_first_line(exc, secret)) from None
        finally:
            client.close()
    return probe


def awaited_services(config: Config) -> list[Awaited]:
    """The servers the settings name: PostgreSQL (DATABASE_URL) and each Redis server
    (CONVERSATION_STORE, RATE_LIMIT_STORAGE, REPLY_STORE; one entry per server, naming
    every setting that uses it). SQLite files and memory:// need no waiting; Sentinel and
    Cluster URLs are left to their clients."""
    services = []
    if config.database_url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        services.append(Awaited("PostgreSQL", _address(config.database_url, 5432),
                                ("DATABASE_URL",),
                                _postgres_probe(config.database_url, "DATABASE_URL")))
    redis_urls: dict[str, tuple[str, list[str]]] = {}
    for setting, url in (("CONVERSATION_STORE", config.conversation_store),
                         ("RATE_LIMIT_STORAGE", config.rate_limit_storage),
                         ("REPLY_STORE", config.reply_store)):
        if urlsplit(url).scheme in ("redis", "rediss"):
            parts = urlsplit(url)
            server = f"{parts.scheme}://{_address(url, 6379)}"
            redis_urls.setdefault(server, (url, []))[1].append(setting)
    for url, settings in redis_urls.values():
        services.append(Awaited("Redis", _address(url, 6379), tuple(settings),
                                _redis_probe(url, tuple(settings))))
    return services


def wait_for(services: Iterable[Awaited], seconds: float, log: Callable[[str], None], *,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once every service answers; each failed try is one `log` line. Tries again
    after 0.5 s, doubling up to 5 s, until `seconds` have passed since the call (0: one try
    each), then raise StartupError naming what did not answer and why."""
    deadline = clock() + seconds
    for service in services:
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            left = deadline - clock()
            try:
                service.probe(min(5.0, max(1.0, left)))
                if attempt > 1:
                    log(f"{service.describe()} answers, after {attempt} tries")
                break
            except Unreachable as exc:
                left = deadline - clock()
                if left <= 0:
                    raise StartupError(
                        f"{service.describe()} did not answer within {seconds:g} s "
                        f"(STARTUP_WAIT_SECONDS): {exc}. Check that it runs and that the "
                        "address is right") from None
                wait = min(delay, left)
                log(f"waiting for {service.describe()}: {exc}; try {attempt}, next in "
                    f"{wait:.1f} s ({left:.0f} s left)")
                sleep(wait)
                delay = min(delay * 2, 5.0)


def access_summary(config: Config) -> str:
    """Who may call, for the start-up line, in the terms of the AUTH in force."""
    if config.auth == "users":
        return ("accounts and their keys (AUTH=users; PROXY_TOKEN is the admin's credential "
                "for /api/admin/*, no client's)" if config.proxy_token else
                "accounts and their keys (AUTH=users; /api/admin/* for admin accounts)")
    if config.auth == "token":
        return "clients send PROXY_TOKEN as a Bearer token (AUTH=token)"
    return "open to anyone who reaches it (AUTH=open; set AUTH or PROXY_TOKEN before exposing it)"
