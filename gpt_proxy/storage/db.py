"""The service's own database: accounts, sessions, API keys, own roles, budgets and the usage
ledger. SQLAlchemy Core: the tables are defined once, here;
queries are expressions, so the same code runs on SQLite and PostgreSQL. Knows nothing of HTTP.

Rules it follows:
- One setting, DATABASE_URL: `sqlite:///relative/path.db` (relative to the project) or
  `sqlite:////absolute/path.db` (one machine: the default, `data/gpt_proxy.db`), or
  `postgresql://user:password@host:5432/name` (several instances share it). A PostgreSQL URL
  goes through psycopg 3, which notices gevent's monkey-patching and waits for the server in
  the event loop (from 3.1.14 on), so a slow query never stalls the worker's other streams.
- One engine per process, made after gunicorn's fork (the app factory runs in each worker).
- SQLite: WAL (readers never wait for the writer), `synchronous=NORMAL`, and a write
  transaction begins IMMEDIATE: it takes the write lock at its start, so two writers never
  deadlock upgrading a read lock halfway. A writer that finds the lock taken (another worker
  is writing) waits by sleeping in Python, a little longer each time, for at most
  BUSY_TIMEOUT_SECONDS: SQLite's own busy handler would sleep in C and stall the worker's
  other greenlets. A read never waits.
- PostgreSQL: READ COMMITTED, the server's default. A conditional UPDATE (`... WHERE spent +
  reserved + :cost <= :limit`) re-checks its condition on the newest row once the row's lock
  is free, so concurrent writers cannot both pass one check. (That re-check is also why a
  statement joining rows to a derived table can skip some without an error: money moves by
  one plain statement per row, see `budgets`.)
- A failure says whether trying again may help (`DatabaseError.kind`): a deadlock or a
  serialization failure, or a server that dropped the connection or cannot be reached. A
  connection the server dropped is never handed out again (SQLAlchemy invalidates its own;
  `raw_write` invalidates the driver's), and PostgreSQL's pool looks at a connection before
  lending it, so the first request after a restart gets a fresh one. The look costs no round
  trip (`_still_open`: a server that ended a connection has written its goodbye and closed the
  socket, which reading what waits there without blocking finds); SQLAlchemy's
  `pool_pre_ping` sent a query and waited for its answer before every transaction, a fifth of
  a budgeted request's CPU on PostgreSQL (issue 30). The app answers a
  DatabaseError with a 503 and Retry-After in the door's shape, never a 500.
- Migrations: numbered steps, each written out as it was when it shipped (never derived from
  the tables below, which describe the newest schema), applied at start in one transaction
  under a lock (PostgreSQL: an advisory lock; SQLite: the write lock), and recorded in
  `schema_version`. Several processes starting together apply each step once. A database
  whose version is newer than this code knows is refused: an old release must not write to a
  schema it does not understand.
- Every failure to open or migrate is a `DatabaseError` whose message names DATABASE_URL and
  never shows a password.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Connection, Engine

from ..base.config import without_password

log = logging.getLogger("gpt_proxy.db")

BUSY_TIMEOUT_SECONDS = 5.0
MIGRATION_LOCK = 7_345_001  # PostgreSQL advisory lock id for migrations (any constant)


class DatabaseError(Exception):
    """The database could not be opened, migrated, read or written; the message says why.
    `kind` says whether trying again may help: `conflict` (PostgreSQL chose this transaction
    to end a deadlock, 40P01, or a serialization failure, 40001: the same transaction again
    succeeds), `unavailable` (the server cannot be reached, is restarting, or dropped the
    connection: a new connection, a moment later, may succeed), or None (a fault that trying
    again will not cure)."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind is not None


CONFLICTS = frozenset(("40P01", "40001"))  # deadlock detected, serialization failure
# the server is going away or not there yet: admin/crash shutdown, cannot connect now
UNAVAILABLE = frozenset(("57P01", "57P02", "57P03"))


def failure_kind(exc: BaseException) -> str | None:
    """`DatabaseError.kind` for a driver's (or SQLAlchemy's) exception."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return "unavailable"
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None)
    if state in CONFLICTS:
        return "conflict"
    if state in UNAVAILABLE or (state or "").startswith("08"):
        return "unavailable"
    module = type(orig).__module__.split(".")[0]
    name = type(orig).__name__
    if module == "psycopg" and name in ("OperationalError", "InterfaceError") and not state:
        return "unavailable"  # no answer from the server at all: refused, reset, closed
    if module == "sqlite3" and ("locked" in str(orig) or "busy" in str(orig)):
        return "conflict"  # another process held the write lock past BUSY_TIMEOUT_SECONDS
    return None


# --- the tables (the newest schema) ---------------------------------------------------------

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False),  # as typed (NFC)
    Column("username_key", String(128), nullable=False, unique=True),  # compared: NFKC casefold
    Column("password_hash", String(255), nullable=False),
    Column("email", String(254)),
    Column("created", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("admin", Boolean, nullable=False, default=False),
)

sessions = Table(
    "sessions", metadata,
    Column("id_hash", String(64), primary_key=True),  # SHA-256 of the cookie's value
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False, index=True),
    Column("refreshed", Float, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 of the key
    Column("hint", String(32), nullable=False),  # its start and end, to recognise it in a list
    Column("created", Float, nullable=False),
    Column("last_used", Float),
    Column("expires", Float),
    Column("models", Text),  # JSON list, or NULL for any model
    Column("revoked", Float),
)

invites = Table(
    "invites", metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("created_by", Integer, ForeignKey("users.id", ondelete="SET NULL")),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("used_by", Integer, ForeignKey("users.id", ondelete="SET NULL")),
    Column("used_at", Float),
)

own_roles = Table(
    "own_roles", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("keyword", String(64), nullable=False),
    Column("keyword_key", String(128), nullable=False),
    Column("name", String(100), nullable=False),
    Column("description", String(500), nullable=False),
    Column("elements", Text, nullable=False),  # JSON list of {"role", "content"}
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    UniqueConstraint("user_id", "keyword_key", name="own_roles_user_keyword"),
)

budgets = Table(
    "budgets", metadata,
    Column("id", Integer, primary_key=True),
    Column("scope", String(16), nullable=False),  # service | user | key
    Column("subject_id", Integer, nullable=False),  # the user's or key's id; 0: the service
    Column("unit", String(16), nullable=False),  # tokens | usd (in nanodollars) | requests
    Column("period", String(16), nullable=False),  # minute | day | month | total
    Column("amount_limit", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    UniqueConstraint("scope", "subject_id", "unit", "period", name="budgets_one_per_kind"),
)

budget_counters = Table(
    "budget_counters", metadata,
    Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"),
           primary_key=True),
    Column("window_key", String(24), primary_key=True),  # the period it counts: d:2026-11-30
    Column("spent", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("ends", Float),  # when the window ends (NULL: total)
    # charged by ledger rows since deleted (older than LEDGER_DAYS): the budget check adds it
    Column("carried", BigInteger, nullable=False, default=0),
)
sa.Index("budget_counters_reserved", budget_counters.c.budget_id,
         sqlite_where=budget_counters.c.reserved != 0,
         postgresql_where=budget_counters.c.reserved != 0)

ledger = Table(
    "ledger", metadata,
    Column("id", Integer, primary_key=True),
    Column("request_id", String(64), nullable=False),
    Column("created", Float, nullable=False, index=True),
    Column("finished", Float),
    Column("user_id", Integer),
    Column("key_id", Integer),
    Column("door", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("role", String(64)),
    Column("upstream", String(64)),
    Column("prompt_tokens", BigInteger),
    Column("completion_tokens", BigInteger),
    Column("images", Integer),
    Column("cost", BigInteger),  # nanodollars; NULL: the model has no price
    Column("outcome", String(64)),
    Column("duration_ms", Integer),
    Column("state", String(8), nullable=False),  # open (reserved) | settled
    Column("expires", Float),  # an open row left by a dead worker is settled after this
    Column("holds", Text),  # JSON: what was reserved, per budget and window
    Column("charges", Text),  # JSON: what was charged, per budget and window (settled rows)
    Column("ttft_ms", Integer),  # to the first token relayed; NULL: none was
)
sa.Index("ledger_open", ledger.c.state, ledger.c.expires)
# newest first within one user's, key's or model's rows (the console's ledger and charts)
sa.Index("ledger_user_created", ledger.c.user_id, ledger.c.created)
sa.Index("ledger_key_created", ledger.c.key_id, ledger.c.created)
sa.Index("ledger_model_created", ledger.c.model, ledger.c.created)


def _usage_table(name: str, metadata_: MetaData, *dims: Column) -> Table:
    """A rollup of settled ledger rows per BUDGET_TZ day (`usage`): the sums of one day and
    one combination of `dims` (a missing user or key is 0)."""
    return Table(
        name, metadata_,
        Column("day", Integer, primary_key=True),  # days since 1970-01-01 of the local date
        *dims,
        Column("requests", BigInteger, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost", BigInteger, nullable=False))  # nanodollars (an unpriced row: 0)


usage_days = _usage_table("usage_days", metadata, Column("user_id", Integer, primary_key=True),
                          Column("key_id", Integer, primary_key=True),
                          Column("model", String(200), primary_key=True))
sa.Index("usage_days_by_user", usage_days.c.user_id, usage_days.c.day)
sa.Index("usage_days_by_key", usage_days.c.key_id, usage_days.c.day)
usage_days_model = _usage_table("usage_days_model", metadata,
                                Column("model", String(200), primary_key=True))
usage_days_user = _usage_table("usage_days_user", metadata,
                               Column("user_id", Integer, primary_key=True))
usage_days_key = _usage_table("usage_days_key", metadata,
                              Column("key_id", Integer, primary_key=True),
                              Column("user_id", Integer, primary_key=True))
sa.Index("usage_days_key_by_user", usage_days_key.c.user_id, usage_days_key.c.day)
sa.Index("usage_days_key_by_key", usage_days_key.c.key_id, usage_days_key.c.day)
sa.Index("usage_days_user_by_user", usage_days_user.c.user_id, usage_days_user.c.day)
# the same sums per week (day // 7), to rank keys and users over a long range in few rows
usage_weeks_key = _usage_table("usage_weeks_key", metadata,
                               Column("key_id", Integer, primary_key=True),
                               Column("user_id", Integer, primary_key=True))
usage_weeks_user = _usage_table("usage_weeks_user", metadata,
                                Column("user_id", Integer, primary_key=True))
usage_state = Table(
    "usage_state", metadata,
    Column("name", String(16), primary_key=True),  # "days"
    Column("tz", String(64), nullable=False),  # the BUDGET_TZ the days are counted in
    Column("watermark", BigInteger, nullable=False),  # every ledger row up to it is in
    Column("candidate", BigInteger, nullable=False),  # the highest id when last looked
    Column("candidate_at", Float, nullable=False),  # ... and when
)

login_attempts = Table(  # the login throttle's counts, shared by every process (identity)
    "login_attempts", metadata,
    Column("key_hash", String(64), primary_key=True),  # SHA-256 of "login:user:<name>" etc.
    Column("attempts", Integer, nullable=False),  # counted in the window that ends at `ends`
    Column("ends", Float, nullable=False, index=True),
)

schema_version = Table("schema_version", MetaData(), Column("version", Integer, nullable=False))


# --- migrations -----------------------------------------------------------------------------

def _v1_accounts(conn: Connection) -> None:
    """Accounts, sessions, API keys, invites, own roles (issue 17)."""
    m = MetaData()
    Table("users", m,
          Column("id", Integer, primary_key=True),
          Column("username", String(64), nullable=False),
          Column("username_key", String(128), nullable=False, unique=True),
          Column("password_hash", String(255), nullable=False),
          Column("email", String(254)),
          Column("created", Float, nullable=False),
          Column("disabled", Boolean, nullable=False, default=False),
          Column("admin", Boolean, nullable=False, default=False))
    Table("sessions", m,
          Column("id_hash", String(64), primary_key=True),
          Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"),
                 nullable=False, index=True),
          Column("created", Float, nullable=False),
          Column("expires", Float, nullable=False, index=True),
          Column("refreshed", Float, nullable=False))
    Table("api_keys", m,
          Column("id", Integer, primary_key=True),
          Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"),
                 nullable=False, index=True),
          Column("name", String(100), nullable=False),
          Column("key_hash", String(64), nullable=False, unique=True),
          Column("hint", String(32), nullable=False),
          Column("created", Float, nullable=False),
          Column("last_used", Float),
          Column("expires", Float),
          Column("models", Text),
          Column("revoked", Float))
    Table("invites", m,
          Column("code_hash", String(64), primary_key=True),
          Column("created_by", Integer, ForeignKey("users.id", ondelete="SET NULL")),
          Column("created", Float, nullable=False),
          Column("expires", Float, nullable=False),
          Column("used_by", Integer, ForeignKey("users.id", ondelete="SET NULL")),
          Column("used_at", Float))
    Table("own_roles", m,
          Column("id", Integer, primary_key=True),
          Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"),
                 nullable=False),
          Column("keyword", String(64), nullable=False),
          Column("keyword_key", String(128), nullable=False),
          Column("name", String(100), nullable=False),
          Column("description", String(500), nullable=False),
          Column("elements", Text, nullable=False),
          Column("created", Float, nullable=False),
          Column("updated", Float, nullable=False),
          UniqueConstraint("user_id", "keyword_key", name="own_roles_user_keyword"))
    m.create_all(conn)


def _v2_budgets(conn: Connection) -> None:
    """Budgets, their counters per period, and the usage ledger (issue 18)."""
    m = MetaData()
    Table("users", m, Column("id", Integer, primary_key=True))
    Table("budgets", m,
          Column("id", Integer, primary_key=True),
          Column("scope", String(16), nullable=False),
          Column("subject_id", Integer, nullable=False),
          Column("unit", String(16), nullable=False),
          Column("period", String(16), nullable=False),
          Column("amount_limit", BigInteger, nullable=False),
          Column("created", Float, nullable=False),
          UniqueConstraint("scope", "subject_id", "unit", "period", name="budgets_one_per_kind"))
    Table("budget_counters", m,
          Column("budget_id", Integer, ForeignKey("budgets.id", ondelete="CASCADE"),
                 primary_key=True),
          Column("window_key", String(24), primary_key=True),
          Column("spent", BigInteger, nullable=False),
          Column("reserved", BigInteger, nullable=False),
          Column("ends", Float))
    Table("ledger", m,
          Column("id", Integer, primary_key=True),
          Column("request_id", String(64), nullable=False),
          Column("created", Float, nullable=False, index=True),
          Column("finished", Float),
          Column("user_id", Integer, index=True),
          Column("key_id", Integer, index=True),
          Column("door", String(32), nullable=False),
          Column("model", String(200), nullable=False),
          Column("role", String(64)),
          Column("upstream", String(64)),
          Column("prompt_tokens", BigInteger),
          Column("completion_tokens", BigInteger),
          Column("images", Integer),
          Column("cost", BigInteger),
          Column("outcome", String(64)),
          Column("duration_ms", Integer),
          Column("state", String(8), nullable=False),
          Column("expires", Float),
          Column("holds", Text))
    m.create_all(conn, tables=[m.tables["budgets"], m.tables["budget_counters"],
                               m.tables["ledger"]])
    conn.execute(sa.text("CREATE INDEX ledger_open ON ledger (state, expires)"))


def _v3_login_attempts(conn: Connection) -> None:
    """The login throttle's counts per username and per address (issue 26)."""
    m = MetaData()
    Table("login_attempts", m,
          Column("key_hash", String(64), primary_key=True),
          Column("attempts", Integer, nullable=False),
          Column("ends", Float, nullable=False, index=True))
    m.create_all(conn)


def _v4_charges(conn: Connection) -> None:
    """What each settled ledger row charged each counter, what deleted rows had charged, and
    an index of the counters holding reservations (issue 26: the budget check and the
    reservations metric)."""
    conn.execute(sa.text("ALTER TABLE ledger ADD COLUMN charges TEXT"))
    conn.execute(sa.text("ALTER TABLE budget_counters ADD COLUMN carried BIGINT NOT NULL "
                         "DEFAULT 0"))
    conn.execute(sa.text("CREATE INDEX budget_counters_reserved ON budget_counters "
                         "(budget_id) WHERE reserved <> 0"))


def _v5_console(conn: Connection) -> None:
    """The console (issue 27): the ledger's time to first token; indexes for a user's, key's
    or model's rows newest first (in place of the plain user and key indexes); rollups of
    settled rows per day (`usage`)."""
    conn.execute(sa.text("ALTER TABLE ledger ADD COLUMN ttft_ms INTEGER"))
    conn.execute(sa.text("DROP INDEX ix_ledger_user_id"))
    conn.execute(sa.text("DROP INDEX ix_ledger_key_id"))
    conn.execute(sa.text("CREATE INDEX ledger_user_created ON ledger (user_id, created)"))
    conn.execute(sa.text("CREATE INDEX ledger_key_created ON ledger (key_id, created)"))
    conn.execute(sa.text("CREATE INDEX ledger_model_created ON ledger (model, created)"))
    m = MetaData()

    def rollup(name: str, *dims: Column) -> Table:
        return Table(name, m, Column("day", Integer, primary_key=True), *dims,
                     Column("requests", BigInteger, nullable=False),
                     Column("prompt_tokens", BigInteger, nullable=False),
                     Column("completion_tokens", BigInteger, nullable=False),
                     Column("cost", BigInteger, nullable=False))
    days = rollup("usage_days", Column("user_id", Integer, primary_key=True),
                  Column("key_id", Integer, primary_key=True),
                  Column("model", String(200), primary_key=True))
    sa.Index("usage_days_by_user", days.c.user_id, days.c.day)
    sa.Index("usage_days_by_key", days.c.key_id, days.c.day)
    rollup("usage_days_model", Column("model", String(200), primary_key=True))
    keys = rollup("usage_days_key", Column("key_id", Integer, primary_key=True),
                  Column("user_id", Integer, primary_key=True))
    sa.Index("usage_days_key_by_user", keys.c.user_id, keys.c.day)
    sa.Index("usage_days_key_by_key", keys.c.key_id, keys.c.day)
    users_ = rollup("usage_days_user", Column("user_id", Integer, primary_key=True))
    sa.Index("usage_days_user_by_user", users_.c.user_id, users_.c.day)
    rollup("usage_weeks_key", Column("key_id", Integer, primary_key=True),
           Column("user_id", Integer, primary_key=True))
    rollup("usage_weeks_user", Column("user_id", Integer, primary_key=True))
    Table("usage_state", m,
          Column("name", String(16), primary_key=True),
          Column("tz", String(64), nullable=False),
          Column("watermark", BigInteger, nullable=False),
          Column("candidate", BigInteger, nullable=False),
          Column("candidate_at", Float, nullable=False))
    m.create_all(conn)


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _v1_accounts, _v2_budgets, _v3_login_attempts, _v4_charges, _v5_console)
VERSION = len(MIGRATIONS)


# --- opening ----------------------------------------------------------------------------------

def sqlite_file(url: str, root: Path) -> Path | None:
    """The file of a `sqlite:///relative` (to `root`) or `sqlite:////absolute` URL, else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url[len("sqlite:///"):])
    return path if path.is_absolute() else root / path


def engine_url(url: str, root: Path) -> str:
    """The SQLAlchemy URL for a DATABASE_URL: SQLite paths made absolute, PostgreSQL through
    psycopg 3."""
    path = sqlite_file(url, root)
    if path is not None:
        return f"sqlite:///{path}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url  # postgresql+psycopg:// as given


class Database:
    """The engine of one process, and the two ways to use it: `read()` and `write()`."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.description = without_password(url)
        self.sqlite = sqlite_file(url, root)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        try:
            if self.sqlite is not None:
                self.sqlite.parent.mkdir(parents=True, exist_ok=True)
                # LIFO: the connection used last is the one handed out next. Each SQLite
                # connection has its own page cache, valid until another writes; handed out in
                # turn (FIFO) every transaction read its pages anew (+0.05 ms per budgeted
                # request with 8 connections, `bench/README.md`, issue 30)
                self.engine = sa.create_engine(
                    engine_url(url, root), pool_size=8, max_overflow=24, pool_use_lifo=True,
                    connect_args={"timeout": 0, "check_same_thread": False})
                _sqlite_setup(self.engine)
            else:
                self.engine = sa.create_engine(
                    engine_url(url, root), pool_size=8, max_overflow=24,
                    # text as UTF-8 whatever the database's own encoding (on a SQL_ASCII
                    # database psycopg would hand out bytes, and fail SQLAlchemy's first look)
                    connect_args={"connect_timeout": 5, "client_encoding": "utf8"})
                _postgresql_setup(self.engine)
        except (OSError, ImportError, sa.exc.SQLAlchemyError, ValueError) as exc:
            raise DatabaseError(self._message("cannot be opened", exc)) from None

    def _message(self, what: str, exc: BaseException) -> str:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        detail = detail[0] if detail else type(exc).__name__
        return f"the database (DATABASE_URL={self.description}) {what}: {detail}"

    def _error(self, what: str, exc: BaseException) -> DatabaseError:
        return DatabaseError(self._message(what, exc), failure_kind(exc))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (on SQLite each statement reads on its own: it never
        waits for a writer)."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("cannot be read", exc) from None

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection whose reads all see one moment of the database (PostgreSQL:
        REPEATABLE READ; SQLite: one read transaction), for comparing tables that change
        together (the budget check)."""
        try:
            with self.engine.connect() as conn:
                if self.sqlite is None:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                    with conn.begin():
                        yield conn
                    return
                conn.exec_driver_sql("BEGIN")
                try:
                    yield conn
                finally:
                    conn.exec_driver_sql("ROLLBACK")
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("cannot be read", exc) from None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed at the end of the block (rolled back if it
        raises). On SQLite it holds the write lock from its first statement."""
        try:
            with self._transaction() as conn:
                yield conn
        except sa.exc.IntegrityError:
            raise  # a uniqueness conflict: the caller knows what it means
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("cannot be written", exc) from None

    def migrate(self) -> int:
        """Apply the steps this database lacks; return its version."""
        try:
            with self._transaction() as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"),
                                 {"id": MIGRATION_LOCK})
                schema_version.create(conn, checkfirst=True)
                found = conn.execute(sa.select(schema_version.c.version)).scalar()
                if found is None:
                    conn.execute(schema_version.insert().values(version=0))
                    found = 0
                if found > VERSION:
                    raise DatabaseError(
                        f"the database (DATABASE_URL={self.description}) has schema version "
                        f"{found}, newer than this release knows ({VERSION}): run the newer "
                        "release, or restore a backup")
                for number in range(found + 1, VERSION + 1):
                    log.info("database %s: applying migration %d (%s)", self.description,
                             number, MIGRATIONS[number - 1].__doc__ or "")
                    MIGRATIONS[number - 1](conn)
                    conn.execute(schema_version.update().values(version=number))
                return max(found, VERSION)
        except DatabaseError:
            raise
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise DatabaseError(self._message("cannot be migrated", exc)) from None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction: SQLite's begins IMMEDIATE here (no engine event: any engine
        listener would make SQLAlchemy dispatch events around every statement)."""
        if self.sqlite is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            _when_unlocked(lambda: conn.exec_driver_sql("BEGIN IMMEDIATE"))
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextmanager
    def raw_write(self, autocommit: bool = False) -> Iterator[Raw]:
        """One write transaction on the driver's own connection (from the same pool), for the
        few statements every request runs (budgets and the ledger): SQLAlchemy's execution
        layer costs several times what SQLite does for them. The statements are SQL text with
        `:name` parameters, written to run on SQLite and PostgreSQL alike. `autocommit`
        (PostgreSQL only): no BEGIN and COMMIT around them, each statement is a transaction
        of its own (one round trip for a block that runs one statement).
        A connection the server dropped (a restart) is invalidated, not put back in the pool:
        the next transaction gets a fresh one."""
        try:
            conn = self.engine.raw_connection()
        except Exception as exc:
            # SQLAlchemy's errors, or the driver's own: a pre-ping that finds the connection
            # dead reconnects at checkout, and a failure to reconnect comes out unwrapped
            if not isinstance(exc, sa.exc.SQLAlchemyError) and not _from_driver(exc):
                raise
            raise DatabaseError(self._message("cannot be written", exc),
                                failure_kind(exc) or "unavailable") from None
        try:
            cursor = conn.cursor()
        except Exception as exc:  # noqa: BLE001 - a connection the driver cannot use
            conn.invalidate()
            raise self._error("cannot be written", exc) from None
        broken = False
        dbapi = conn.dbapi_connection
        try:
            if self.sqlite is not None:
                _when_unlocked(lambda: cursor.execute("BEGIN IMMEDIATE"))
            elif autocommit:
                dbapi.autocommit = True
            yield Raw(cursor, self.dialect)
            conn.commit()
        except BaseException as exc:
            driver = _from_driver(exc)
            broken = driver and self._disconnected(exc, conn, cursor)
            if not broken:
                try:
                    conn.rollback()
                except Exception:  # noqa: BLE001 - the first failure is the one to tell
                    broken = True
            if driver:
                raise self._error("cannot be written", exc) from None
            raise
        finally:
            try:
                cursor.close()
                if autocommit and self.sqlite is None and not broken:
                    dbapi.autocommit = False  # as every other user of the pool expects
            except Exception:  # noqa: BLE001 - a dropped connection's cursor
                broken = True
            if broken:
                conn.invalidate()  # closed, and never handed out again
            else:
                conn.close()  # back to the pool

    def _disconnected(self, exc: BaseException, conn, cursor) -> bool:
        """Whether `exc` means the connection itself is gone (as SQLAlchemy decides for its
        own connections, plus psycopg's own word)."""
        dbapi = conn.dbapi_connection
        if getattr(dbapi, "broken", False) or getattr(dbapi, "closed", False):
            return True
        try:
            return bool(self.engine.dialect.is_disconnect(exc, dbapi, cursor))
        except Exception:  # noqa: BLE001 - undecided: treat as gone
            return True

    def close(self) -> None:
        """Close every connection; the next `open_database` of this URL opens it anew."""
        with _opened_lock:
            for key, database in list(_opened.items()):
                if database is self:
                    del _opened[key]
        self.engine.dispose()


class Raw:
    """Statements on a driver cursor, in one transaction (see `Database.raw_write`)."""

    _converted: dict[str, str] = {}

    def __init__(self, cursor, dialect: str) -> None:
        self.cursor = cursor
        self.pyformat = dialect == "postgresql"  # psycopg: %(name)s; sqlite3 takes :name

    def _sql(self, sql: str) -> str:
        if not self.pyformat:
            return sql
        converted = self._converted.get(sql)
        if converted is None:
            converted = self._converted[sql] = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)
        return converted

    def execute(self, sql: str, params: dict) -> list[tuple]:
        """Run `sql`; the rows it returned (RETURNING), if any."""
        self.cursor.execute(self._sql(sql), params)
        return self.cursor.fetchall() if self.cursor.description else []

    def executemany(self, sql: str, rows: list[dict]) -> None:
        """Run `sql` once per parameter set (no RETURNING)."""
        self.cursor.executemany(self._sql(sql), rows)

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount


def _from_driver(exc: BaseException) -> bool:
    """An exception of the database driver itself (sqlite3, psycopg)."""
    return isinstance(exc, Exception) and type(exc).__module__.split(".")[0] in (
        "sqlite3", "psycopg")


def _when_unlocked(action: Callable[[], object]):
    """Run `action` (take SQLite's write lock, say), waiting for another process's lock to
    go by sleeping in Python (under gevent: letting the worker's other greenlets run), never
    in SQLite's own busy handler, which would sleep in C and hold every stream of the worker.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    pause = 0.0005
    while True:
        try:
            return action()
        except (sa.exc.OperationalError, sqlite3.OperationalError) as exc:
            text = str(getattr(exc, "orig", exc))
            if "locked" not in text and "busy" not in text:
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # gevent's sleep under the gevent worker
        pause = min(pause * 2, 0.02)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, no busy timeout of SQLite's own (writers wait in `_when_unlocked`), foreign keys;
    pysqlite's own transaction handling off (writes begin IMMEDIATE in `Database._transaction`
    and `Database.raw_write`)."""

    @sa.event.listens_for(engine, "connect")
    def connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # pysqlite: we say when a transaction begins
        cursor = dbapi_connection.cursor()
        try:
            # a write waits for the lock in `_when_unlocked`, not here (see there); in WAL
            # a reader does not wait for writers
            cursor.execute("PRAGMA busy_timeout=0")
            mode = _when_unlocked(  # another process may be making the file WAL right now
                lambda: cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                log.warning("SQLite database: journal mode is %s, not WAL", mode)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()


def _postgresql_setup(engine: Engine) -> None:
    """A pooled connection is looked at before it is lent (`_still_open`); one the server has
    ended is thrown away, and the pool opens a fresh one in its place."""

    @sa.event.listens_for(engine, "checkout")
    def checkout(dbapi_connection, _record, _proxy) -> None:
        if not _still_open(dbapi_connection):
            raise sa.exc.DisconnectionError("the server ended the connection")


def _still_open(connection) -> bool:
    """Whether an idle psycopg connection is still one the server serves, without a round
    trip: what the server sent since (an idle connection is sent nothing, unless the server
    ends it: its FATAL message, then the socket's end) is read without waiting, libpq's own
    `PQconsumeInput` on the connection's non-blocking socket, twice (one read takes the
    message, the next finds the end); a connection that read its end, or is not idle outside
    a transaction, is not lent."""
    if connection.closed or connection.broken:
        return False
    pgconn = connection.pgconn
    try:
        pgconn.consume_input()
        pgconn.consume_input()
    except Exception:  # noqa: BLE001 - the driver's word that the connection is gone
        return False
    from psycopg import pq

    return (pgconn.status == pq.ConnStatus.OK
            and pgconn.transaction_status == pq.TransactionStatus.IDLE)


_opened: dict[tuple[str, int], Database] = {}
_opened_lock = threading.RLock()  # close() may run inside open_database()


def open_database(url: str, root: Path) -> Database:
    """The database DATABASE_URL names, its schema brought up to date: one per URL in each
    process (an app made twice in one process, as tests do, shares it)."""
    key = (engine_url(url, root), os.getpid())
    with _opened_lock:
        database = _opened.get(key)
        if database is None:
            database = Database(url, root)
            try:
                database.migrate()
            except BaseException:
                database.close()
                raise
            _opened[key] = database
        return database
