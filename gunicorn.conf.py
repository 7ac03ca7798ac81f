"""gunicorn settings for gpt_proxy; every value can be overridden from the environment.

gevent: one process holds hundreds of long streams, each a greenlet (measured in the README
against sync and gthread). `timeout` is the worker's liveness heartbeat, not a request limit,
under gevent, so a long stream is never killed by it; `graceful_timeout` lets running
streams finish on reload (HUP) or shutdown (TERM).
"""

import os

from dotenv import load_dotenv
from gunicorn.glogging import Logger

# .env first, so BIND and the rest below can come from it too (the environment still wins).
load_dotenv(os.environ.get("DOTENV_FILE", ".env"))

_DEFAULTS = {"BIND": "127.0.0.1:7345", "METRICS_BIND": "127.0.0.1:7346"}
_metrics_bind = os.environ.get("METRICS_BIND", _DEFAULTS["METRICS_BIND"]).strip()
bind = [os.environ.get("BIND", _DEFAULTS["BIND"])] + ([_metrics_bind] if _metrics_bind else [])
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "2000"))
threads = int(os.environ.get("THREADS", "64"))  # used by the gthread worker only
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "120"))
keepalive = 5
# gunicorn 25+ opens a control socket at one shared default path, so two instances on one
# machine would fight over it; off unless CONTROL_SOCKET names a path for `gunicornc`.
control_socket = os.environ.get("CONTROL_SOCKET", "") or None
control_socket_disable = control_socket is None
if control_socket is None:
    del control_socket
accesslog = None  # the app writes its own access line, with stream outcomes


class _NoAccessLog(Logger):
    """gunicorn's access line stays off: with a logging config given, gunicorn otherwise
    formats its atoms for every request even though no handler prints them."""

    def access(self, resp, req, environ, request_time):
        pass


logger_class = _NoAccessLog
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "stream": "ext://sys.stderr"}},
    "loggers": {
        "gpt_proxy": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}


def on_starting(server):
    """Check the configuration once, in the master, before any worker starts: a bad value, or
    one that cannot work here (gpt_proxy/startup.py), stops start-up with one line naming the
    variable and the fix instead of a traceback per worker or a 503 per request; what may be
    meant is a warning."""
    import sys

    from gpt_proxy import startup
    from gpt_proxy.config import ConfigError, load_config

    _raise_open_files_limit(server)
    try:
        config = load_config()
    except ConfigError as exc:
        sys.exit(f"gpt_proxy: configuration error: {exc}")
    try:
        startup.temp_dir()  # before the metrics folder and gunicorn's worker files
        _metrics_directory(server)
        startup.check_writable(startup.sqlite_files(config))
    except startup.StartupError as exc:
        sys.exit(f"gpt_proxy: cannot start: {exc}")
    try:  # PostgreSQL and Redis may come up after this service: wait, boundedly
        startup.wait_for(startup.awaited_services(config), config.startup_wait_seconds,
                         lambda line: server.log.warning("gpt_proxy: %s", line))
    except startup.StartupError as exc:
        sys.exit(f"gpt_proxy: cannot start: {exc}")
    _check_database(config)
    unset = [address for name, address in _DEFAULTS.items() if name not in os.environ]
    for warning in startup.bind_warnings(server.cfg.bind, config.metrics_bind,
                                         container=startup.in_container(), defaults=unset):
        server.log.warning("gpt_proxy: WARNING: %s", warning)
    metrics = config.metrics_bind and any(address.rpartition(":")[2] == config.metrics_port
                                          for address in server.cfg.bind)
    upstreams = ", ".join(f"{spec.name} ({spec.base_url})" for spec in config.endpoints())
    server.log.info("gpt_proxy: upstream %s, model %s, %s%s", upstreams or "demo (no key)",
                    config.openai_model, startup.access_summary(config),
                    f", metrics on http://{config.metrics_bind}/metrics" if metrics else "")


def _check_database(config) -> None:
    """Open the database and bring its schema up to date once, in the master, before any
    worker starts: a database that cannot be opened stops start-up with one line naming
    DATABASE_URL (and never its password), instead of every request failing."""
    import sys
    from pathlib import Path

    from gpt_proxy.db import Database, DatabaseError

    try:
        database = Database(config.database_url, Path(__file__).resolve().parent)
        try:
            database.migrate()
        finally:
            database.engine.dispose()  # the workers open their own after the fork
    except DatabaseError as exc:
        sys.exit(f"gpt_proxy: {exc}")


_created_metrics_dir = ""


def _metrics_directory(server) -> None:
    """prometheus_client's multiprocess mode: one directory of metric files for this server
    start, set before any worker imports the library. A directory given in
    PROMETHEUS_MULTIPROC_DIR is emptied (counts start at zero with the server); else a fresh
    one is made and removed on exit."""
    global _created_metrics_dir
    import glob
    import tempfile

    from gpt_proxy.startup import StartupError

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    try:
        if given:
            os.makedirs(given, exist_ok=True)
            for path in glob.glob(os.path.join(given, "*.db")):
                os.remove(path)
        else:
            _created_metrics_dir = tempfile.mkdtemp(prefix="gpt_proxy-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = _created_metrics_dir
    except OSError as exc:
        raise StartupError(f"the metrics folder {given or tempfile.gettempdir()} cannot be "
                           f"written ({exc.strerror}): set PROMETHEUS_MULTIPROC_DIR to a "
                           "writable folder") from None


def post_worker_init(worker):
    """Every MALLOC_TRIM_SECONDS, hand the C heap's free pages back to the system (glibc's
    malloc_trim): without it a worker's RSS creeps up slowly under constant load, its freed
    memory kept by the allocator (see README, Soak)."""
    seconds = float(os.environ.get("MALLOC_TRIM_SECONDS", "60") or 0)
    if seconds <= 0 or worker_class != "gevent":
        return
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return  # not glibc: nothing to do
    import gevent

    def loop():
        while True:
            gevent.sleep(seconds)
            trim(0)

    gevent.spawn(loop)


def worker_exit(server, worker):
    """gunicorn's graceful stop (HUP, TERM) waits for open connections only: a resumable reply
    whose client left is read on by a greenlet of its own, so let those end too (the arbiter
    still stops a worker that outlives graceful_timeout), and let their ends reach the reply
    store; then write the ledger rows still waiting for their batch (atexit would too)."""
    from gpt_proxy import budgets
    from gpt_proxy.relay import detached_count, wait_detached
    from gpt_proxy.replies import flush_all

    running = detached_count()
    if running:
        server.log.info("gpt_proxy: letting %d resumable replies whose client left finish",
                        running)
    left = wait_detached(graceful_timeout)
    if left:
        server.log.warning("gpt_proxy: %d resumable replies still running at exit", left)
    flush_all(2.0)
    budgets.flush_all()


def child_exit(server, worker):
    """A worker ended (or was killed): its live gauges (streams open) no longer count; its
    counters and histograms stay, so nothing it counted is lost."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _created_metrics_dir:
        import shutil

        shutil.rmtree(_created_metrics_dir, ignore_errors=True)


def _raise_open_files_limit(server) -> None:
    """Each open stream holds two sockets (the client's and the upstream's), so a worker with
    1,000 streams needs more than the usual soft limit of 1,024 files: raise it to the hard
    limit (workers inherit it), or a burst of clients fails with 'too many open files'."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            server.log.warning("gpt_proxy: cannot raise the open files limit from %d", soft)
