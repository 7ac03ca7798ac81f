"""Starting and stopping the helper processes of tests and benchmarks (gunicorn, nginx,
redis-server, the bench upstream): a free port, waiting for it to open, a clean stop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    """Return once `port` on 127.0.0.1 accepts connections; raise if `proc` exits first or
    the port stays closed for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling for the port to open; not synchronising a test
    raise RuntimeError(f"{what} did not open port {port}")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def redis_binary() -> str | None:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    return found if os.path.exists(found) else None


class RedisServer:
    """Debian's redis-server on a free 127.0.0.1 port, no persistence, in a folder of its own
    (a test that must stop Redis mid-reply, the bench, or the session's shared one)."""

    def __init__(self) -> None:
        import redis

        binary = redis_binary()
        if not binary:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc, "redis-server", 10)
            redis.Redis.from_url(self.url, socket_timeout=2).ping()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


NGINX = "/usr/sbin/nginx"
_NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ text/html html; text/javascript js; }}
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{server}
}}
"""


def nginx_binary() -> str | None:
    return NGINX if os.path.exists(NGINX) else shutil.which("nginx")


class Nginx:
    """Debian's nginx on a free 127.0.0.1 port with one `server` block (its `{port}` and
    `{dir}` are filled in; nginx's own braces doubled), in a folder of its own; `files`, if
    given, are copied to `{dir}/dist`."""

    def __init__(self, server: str, files: Path | None = None) -> None:
        binary = nginx_binary()
        if not binary:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.proc = None
        try:
            self.dir.chmod(0o755)  # nginx's workers run as nobody
            if files is not None:
                shutil.copytree(files, self.dir / "dist")
            self.port = free_port()
            conf = self.dir / "nginx.conf"
            conf.write_text(_NGINX_CONF.format(
                dir=self.dir, server=server.format(port=self.port, dir=self.dir)))
            self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(self.dir)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(self.port, self.proc, "nginx")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
