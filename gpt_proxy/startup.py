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
"""

from __future__ import annotations

import errno
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

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
