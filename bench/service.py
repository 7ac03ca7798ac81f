"""The processes under test: the bench upstream and the service under gunicorn, with their CPU
time and memory read through psutil (master and workers added up)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import psutil

from tests.processes import free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent


def _raise_fd_limit() -> None:
    """1,000 streams need about 2,000 sockets in one worker (client side and upstream side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _conf_defaults(root: Path) -> dict:
    """gunicorn.conf.py's own values (the bench never sets these variables in its own env)."""
    import runpy
    try:
        return runpy.run_path(str(root / "gunicorn.conf.py"))
    except Exception:  # noqa: BLE001 - only used to label the results
        return {}


def _hubtrace_dir(log_path: Path, port: int) -> Path:
    """A fresh folder for one server's hub histograms (bench/hubtrace.py)."""
    folder = log_path.parent / f"hub-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    return folder


class Measured:
    """CPU seconds and RSS of a process and its children."""

    proc: subprocess.Popen
    _procs: list[psutil.Process] | None = None
    hubtrace: Path | None = None  # where its workers write their hub histograms, if they do

    def procs(self) -> list[psutil.Process]:
        if self._procs is None or any(not p.is_running() for p in self._procs):
            root = psutil.Process(self.proc.pid)
            self._procs = [root] + root.children(recursive=True)
        return self._procs

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.procs()[1:]]

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _stop(self) -> None:
        stop_process(self.proc, 15)


class BenchUpstream(Measured):
    """`python -m bench.upstream` in its own process, so its CPU is not the service's."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.upstream"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, preexec_fn=_raise_fd_limit)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError("the bench upstream did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.stdin.close()
        self._stop()


class Service(Measured):
    """gunicorn with the repo's gunicorn.conf.py, configured only through the environment."""

    def __init__(self, upstream_url: str, log_path: Path, *, worker_class: str = "",
                 workers: int = 0, threads: int = 0, connections: int = 0,
                 extra_env: dict | None = None, root: Path = ROOT, metrics: bool = True,
                 hubtrace: bool = False) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_"))}
        self.metrics_port = free_port()
        env.update({"BIND": f"127.0.0.1:{self.port}", "OPENAI_API_KEY": "sk-bench-not-a-key",
                    "METRICS_BIND": f"127.0.0.1:{self.metrics_port}" if metrics else "",
                    "OPENAI_BASE_URL": upstream_url, "HEARTBEAT_SECONDS": "15",
                    "LOG_LEVEL": "warning",
                    # the ledger of bench requests: never the project's own database
                    "DATABASE_URL": f"sqlite:///{log_path.parent}/bench-{self.port}.db"})
        if worker_class:
            env["WORKER_CLASS"] = worker_class
        if workers:
            env["WEB_CONCURRENCY"] = str(workers)
        if threads:
            env["THREADS"] = str(threads)
        if connections:
            env["WORKER_CONNECTIONS"] = str(connections)
        env.update(extra_env or {})
        conf = _conf_defaults(root)
        kind = env.get("WORKER_CLASS", conf.get("worker_class", "?"))
        self.describe = f"{kind} workers={env.get('WEB_CONCURRENCY', conf.get('workers', '?'))}"
        if not metrics:
            self.describe += ", metrics off"
        if kind == "gthread":
            self.describe += f" threads={env.get('THREADS', conf.get('threads', '?'))}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.hubtrace = _hubtrace_dir(log_path, self.port) if hubtrace else None
        if self.hubtrace is not None:  # the same app, with the hub's iterations timed
            env["HUBTRACE_DIR"] = str(self.hubtrace)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
             "bench.hubtrace:app" if self.hubtrace is not None else "app:app"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_raise_fd_limit)
        wait_port(self.port, self.proc, "gunicorn")

    def stop(self) -> None:
        self._stop()
        self.log.close()


class BareRelay(Measured):
    """bench/bare_relay.py under gunicorn with the service's worker settings (gevent, 2
    workers, 2,000 connections each, keep-alive 5 s, no access log; gunicorn.conf.py is not
    read: its hooks are the service's), its own process tree so its CPU is its own."""

    def __init__(self, upstream_url: str, log_path: Path, *, workers: int = 2,
                 worker_class: str = "gevent", connections: int = 2000,
                 hubtrace: bool = False) -> None:
        self.port = free_port()
        env = dict(os.environ, BARE_UPSTREAM=upstream_url)
        self.hubtrace = _hubtrace_dir(log_path, self.port) if hubtrace else None
        if self.hubtrace is not None:
            env["HUBTRACE_DIR"] = str(self.hubtrace)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
             "--worker-class", worker_class, "--workers", str(workers),
             "--worker-connections", str(connections), "--keep-alive", "5",
             "--timeout", "60", "--graceful-timeout", "10", "--log-level", "warning",
             "--no-control-socket",
             "bench.hubtrace:bare" if self.hubtrace is not None else "bench.bare_relay:app"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_raise_fd_limit)
        wait_port(self.port, self.proc, "gunicorn (bare relay)")
        self.describe = f"bare relay: {worker_class} workers={workers}"

    def stop(self) -> None:
        self._stop()
        self.log.close()
