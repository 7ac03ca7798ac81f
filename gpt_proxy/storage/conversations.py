"""Conversation memory for the chat-process protocol: messages chained by parent ids, kept in a
real store chosen by one setting (CONVERSATION_STORE). Knows nothing of HTTP.

Rules it follows:
- A message is a value: an id, its parent's id (None for the first message of a
  conversation), its role (`user` or `assistant`), its text, when it was written, and its
  owner (the caller who wrote it: a user, or '' when the service has no accounts). A parent
  id of another owner is unknown to a caller, exactly like an id that never existed. Ids are
  `secrets.token_urlsafe(18)`: 144 random bits, so a conversation cannot be found by guessing.
- Every message expires `ttl` seconds after it was written, counted with the store's clock
  (injectable, so tests move time by hand). An expired message is unknown, exactly like an id
  that never existed; a history walk stops at the first one.
- Two backends with the same behaviour, so the same tests run against both:
  `sqlite:///relative/path.db` or `sqlite:////absolute/path.db` (an embedded database file,
  WAL, shared by every process on the machine, created on first use), and
  `redis://host:port/db` (several instances share it; each key carries a TTL, so Redis itself
  forgets expired conversations; a history is read in one round trip by a server-side
  script, so a single server, not Redis Cluster). Each SQLite statement is small and
  indexed: the store is called from gevent workers, where a blocking call holds the worker.
- Any failure to read or write is a `StoreError` with a message naming the store, never a
  result that silently lost what was asked for. Text is stored as UTF-8: a lone UTF-16
  surrogate (which UTF-8 cannot hold) is stored as U+FFFD rather than failing the write.
- The walk (`history`) is bounded in messages and characters, newest kept first; it also
  follows a client that names a user message when it means that message's reply (see
  `resolve`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..base.config import without_password

log = logging.getLogger("gpt_proxy.conversations")

ROLES = ("user", "assistant")
BUSY_TIMEOUT_SECONDS = 2.0  # another process writing: wait this long, then fail clearly
PURGE_EVERY_SECONDS = 3600.0  # SQLite: delete expired rows at most this often per process
PURGE_BATCH = 500  # and at most this many per purge, so one request never waits long
REDIS_TIMEOUT_SECONDS = 2.0


class StoreError(Exception):
    """The conversation store could not be read or written; the message says which and why."""


@dataclass(frozen=True)
class Message:
    id: str
    parent_id: str | None
    role: str  # "user" | "assistant"
    text: str
    created: float  # the store clock's time when it was written
    expires: float  # unknown from this time on
    owner: str = ""  # who wrote it ("u<id>"; '' without accounts)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "parent_id": self.parent_id, "role": self.role,
                           "text": self.text, "created": self.created,
                           "expires": self.expires, "owner": self.owner}, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Message:
        value = json.loads(data)
        return cls(value["id"], value["parent_id"], value["role"], value["text"],
                   float(value["created"]), float(value["expires"]),
                   str(value.get("owner") or ""))


def storable(text: str) -> str:
    """`text` as UTF-8 can hold it: surrogate pairs joined, a lone surrogate as U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def new_id() -> str:
    """An unguessable message id (144 bits from the OS's random source, URL-safe)."""
    return secrets.token_urlsafe(18)


class Store(Protocol):
    """What every backend offers."""

    description: str  # for error messages and logs: never a password

    def add(self, id: str, parent_id: str | None, role: str, text: str,
            owner: str = "") -> Message:
        """Write a new message (it expires `ttl` seconds from now)."""

    def get(self, id: str) -> Message | None:
        """The message with this id, or None if it is unknown or expired."""

    def reply_to(self, id: str) -> Message | None:
        """The newest assistant message whose parent is `id`, or None."""

    def ancestors(self, id: str, limit: int, max_chars: int) -> list[Message]:
        """The message `id`, its parent, its parent's parent...: newest first, at most `limit`,
        ending at the first unknown or expired one, or once their text passed `max_chars`
        (the message that passed it included)."""

    def close(self) -> None:
        """Release the connection."""


# --- the walk ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    """Where a new message continues a conversation."""

    parent: Message | None  # the message the new one follows (None: a fresh conversation)
    history: list[Message]  # the conversation up to and including `parent`, oldest first
    unknown: bool = False  # an id was given but is unknown or expired
    followed_reply: bool = False  # the id named a user message; its reply was followed


def resolve(store: Store, parent_id: str | None, *, max_messages: int,
            max_chars: int, owner: str = "") -> Resolved:
    """The conversation a new message continues, rebuilt by walking parent ids back from
    `parent_id`: at most `max_messages` messages and `max_chars` characters, the newest kept.

    A `parent_id` naming a user message whose reply is stored continues after that reply:
    some clients send the id of their own last message rather than of the answer to it, and
    followed literally their follow-ups would reach the upstream as two user messages in a row
    with every answer lost. A message of another `owner` is unknown: nothing of it is read
    or told."""
    if not parent_id:
        return Resolved(None, [])
    start = store.get(parent_id)
    if start is None or start.owner != owner:
        return Resolved(None, [], unknown=True)
    followed = False
    if start.role == "user":
        reply = store.reply_to(start.id)
        if reply is not None:
            start, followed = reply, True
    chain: list[Message] = []
    chars = 0
    cut = False
    for message in store.ancestors(start.id, max_messages + 1, max_chars):
        chars += len(message.text)
        if len(chain) == max_messages or (chain and chars > max_chars):
            cut = True
            break
        chain.append(message)
    if cut:  # cut short: start at a question, never at an answer to nothing
        while len(chain) > 1 and chain[-1].role != "user":
            chain.pop()
    chain.reverse()
    return Resolved(start, chain, followed_reply=followed)


# --- SQLite --------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages ("
    " id TEXT PRIMARY KEY, parent_id TEXT, role TEXT NOT NULL, text TEXT NOT NULL,"
    " created REAL NOT NULL, expires REAL NOT NULL, owner TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS messages_parent ON messages (parent_id, created)",
    "CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires)",
)
_COLUMNS = "id, parent_id, role, text, created, expires, owner"


class SQLiteStore:
    """One database file shared by every worker on the machine (WAL: readers never wait for
    the writer). One connection per process, opened after the fork; statements are tiny and
    each runs on its own (autocommit), under a lock so a thread-based worker is safe too."""

    def __init__(self, path: str | os.PathLike[str], ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.ttl = ttl
        self.clock = clock
        self.description = f"SQLite {self.path}"
        self._lock = threading.Lock()
        self._last_purge = float("-inf")
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise self._error("cannot be opened", exc) from None
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal mode is %s, not WAL", self.description, mode)
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if "owner" not in columns:  # a file from before accounts: its messages are ''
                db.execute("ALTER TABLE messages ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        except sqlite3.Error as exc:
            db.close()
            raise self._error("cannot be opened", exc) from None
        self._db = db

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"the conversation store ({self.description}) {what}: {exc}")

    def _run(self, what: str, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._db is None:
                raise StoreError(f"the conversation store ({self.description}) is closed")
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(what, exc) from None

    def add(self, id: str, parent_id: str | None, role: str, text: str,
            owner: str = "") -> Message:
        now = self.clock()
        text = storable(text)
        message = Message(id, parent_id, role, text, now, now + self.ttl, owner)
        self._run("cannot be written",
                  f"INSERT INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (id, parent_id, role, text, message.created, message.expires, owner))
        if now - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = now
            self.purge(now)
        return message

    def get(self, id: str) -> Message | None:
        rows = self._run("cannot be read", f"SELECT {_COLUMNS} FROM messages "
                         "WHERE id = ? AND expires > ?", (id, self.clock()))
        return Message(*rows[0]) if rows else None

    def reply_to(self, id: str) -> Message | None:
        rows = self._run("cannot be read",
                         f"SELECT {_COLUMNS} FROM messages WHERE parent_id = ? AND role = "
                         "'assistant' AND expires > ? ORDER BY created DESC, rowid DESC LIMIT 1",
                         (id, self.clock()))
        return Message(*rows[0]) if rows else None

    def ancestors(self, id: str, limit: int, max_chars: int) -> list[Message]:
        found: list[Message] = []
        chars = 0
        message = self.get(id)
        while message is not None and len(found) < limit and chars <= max_chars:
            found.append(message)
            chars += len(message.text)
            message = self.get(message.parent_id) if message.parent_id else None
        return found

    def purge(self, now: float | None = None) -> int:
        """Delete up to PURGE_BATCH expired messages; how many went."""
        now = self.clock() if now is None else now
        rows = self._run("cannot be cleaned", "DELETE FROM messages WHERE id IN (SELECT id FROM"
                         " messages WHERE expires <= ? LIMIT ?) RETURNING id", (now, PURGE_BATCH))
        return len(rows)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --- Redis ---------------------------------------------------------------------------------

# Follows parent ids from ARGV[2] under the key prefix ARGV[1]: at most ARGV[3] messages,
# stopping after the one whose text brings the total past ARGV[4] bytes. The keys are named
# by the data, so this needs a single Redis server (not Redis Cluster).
_WALK = """
local prefix, id, limit, max_bytes = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local found, total = {}, 0
while #found < limit and total <= max_bytes do
  local value = redis.call('GET', prefix .. id)
  if not value then break end
  found[#found + 1] = value
  local ok, message = pcall(cjson.decode, value)
  if not ok or type(message.parent_id) ~= 'string' then break end
  total = total + string.len(message.text or '')
  id = message.parent_id
end
return found
"""


class RedisStore:
    """Messages as JSON strings under `<prefix>:msg:<id>`, and for each user message the id of
    its newest reply under `<prefix>:reply:<id>`; every key has a TTL (Redis forgets them), and
    the expiry written in the value is checked against the store's clock as well."""

    def __init__(self, url: str, ttl: float, clock: Callable[[], float] = time.time,
                 prefix: str = "gpt_proxy:conversation") -> None:
        import redis

        self._errors = (redis.RedisError, OSError)
        self.ttl = ttl
        self.clock = clock
        self.prefix = prefix
        self.description = f"Redis {without_password(url)}"
        try:
            self._redis = redis.Redis.from_url(
                url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                socket_timeout=REDIS_TIMEOUT_SECONDS, decode_responses=True)
        except (ValueError, *self._errors) as exc:
            raise StoreError(f"the conversation store ({self.description}) cannot be opened: "
                             f"{exc}") from None
        self._walk = self._redis.register_script(_WALK)

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"the conversation store ({self.description}) {what}: "
                          f"{type(exc).__name__}: {exc}")

    def _seconds(self) -> int:
        return max(1, int(self.ttl + 0.999))

    def add(self, id: str, parent_id: str | None, role: str, text: str,
            owner: str = "") -> Message:
        now = self.clock()
        message = Message(id, parent_id, role, storable(text), now, now + self.ttl, owner)
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{self.prefix}:msg:{id}", message.to_json(), ex=self._seconds())
                if role == "assistant" and parent_id:
                    pipe.set(f"{self.prefix}:reply:{parent_id}", id, ex=self._seconds())
                pipe.execute()
        except self._errors as exc:
            raise self._error("cannot be written", exc) from None
        return message

    def get(self, id: str) -> Message | None:
        try:
            data = self._redis.get(f"{self.prefix}:msg:{id}")
        except self._errors as exc:
            raise self._error("cannot be read", exc) from None
        if data is None:
            return None
        try:
            message = Message.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise self._error(f"holds a broken entry for {id!r}", exc) from None
        return message if message.expires > self.clock() else None

    def reply_to(self, id: str) -> Message | None:
        try:
            reply_id = self._redis.get(f"{self.prefix}:reply:{id}")
        except self._errors as exc:
            raise self._error("cannot be read", exc) from None
        if reply_id is None:
            return None
        reply = self.get(reply_id)
        return reply if reply is not None and reply.parent_id == id else None

    def ancestors(self, id: str, limit: int, max_chars: int) -> list[Message]:
        """One round trip: a server-side script follows the parent ids (bounded by `limit` and
        by bytes, at most 4 per character, so it never stops before `max_chars` would)."""
        try:
            values = self._walk(args=[f"{self.prefix}:msg:", id, limit, 4 * max_chars])
        except self._errors as exc:
            raise self._error("cannot be read", exc) from None
        found: list[Message] = []
        now = self.clock()
        for value in values:
            try:
                message = Message.from_json(value)
            except (ValueError, KeyError, TypeError) as exc:
                raise self._error("holds a broken entry", exc) from None
            if message.expires <= now:
                break
            found.append(message)
        return found

    def close(self) -> None:
        self._redis.close()


# --- choosing one --------------------------------------------------------------------------

def sqlite_path(url: str, root: Path) -> Path:
    """The file of a `sqlite:///relative` (to `root`) or `sqlite:////absolute` URL."""
    path = Path(url[len("sqlite:///"):])
    return path if path.is_absolute() else root / path


def open_store(url: str, ttl: float, root: Path,
               clock: Callable[[], float] = time.time) -> Store:
    """The store a CONVERSATION_STORE value names (validated by `config`)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(sqlite_path(url, root), ttl, clock)
    return RedisStore(url, ttl, clock)
