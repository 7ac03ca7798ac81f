"""A real PostgreSQL server for tests: a throwaway cluster made with Debian's `initdb` and
started with `pg_ctl` on a free 127.0.0.1 port, in a folder of its own; a fresh database per
test from `new_database()`; `restart()` (a fast restart: every connection is ended, as
`pg_ctl restart -m fast` does in a deployment), `halt()` and `resume()` for a database that
goes away and comes back. PostgreSQL refuses to run as root: as root the cluster belongs to
the `postgres` user the Debian package creates, and its commands run as that user."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .processes import free_port


def statements_in(trace: str) -> list[str]:
    """The statements a psycopg connection sent the server, in order, read from libpq's own
    trace of the protocol (`pgconn.trace(fd)`)."""
    return re.findall(r'\tF\t\d+\t(?:Query|Parse)\s+(?:"[^"]*"\s+)?"([^"]*)"', trace)


def postgres_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL's server programs."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit()
                   else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgreSQL:
    def __init__(self) -> None:
        folder = postgres_bin()
        if folder is None:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = folder
        self.dir = Path(tempfile.mkdtemp(prefix="postgres-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.count = 0
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "-E", "UTF8", "--locale=C", "--no-sync")
            self.resume()
        except BaseException:
            self.stop()
            raise

    def _options(self) -> str:
        return (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=300")

    def resume(self) -> None:
        """Start the server (again); returns once it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l",
                  str(self.dir / "server.log"), "-w", "-t", "30", "start")  # -w: ready

    def halt(self) -> None:
        """Stop the server as an operator does (`-m fast`: sessions are ended at once)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session ended, the server back when it returns."""
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l",
                  str(self.dir / "server.log"), "-m", "fast", "-w", "-t", "30", "restart")

    def _run(self, program: str, *args: str) -> None:
        def as_postgres() -> None:
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        subprocess.run([str(self.bin / program), *args], check=True, cwd=self.dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       preexec_fn=as_postgres, timeout=60)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def new_database(self, options: str = "") -> str:
        """The URL of a new, empty database (`options`: more of CREATE DATABASE's)."""
        import psycopg

        self.count += 1
        name = f"test_{os.getpid()}_{self.count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 {options}')
        return self.url(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
