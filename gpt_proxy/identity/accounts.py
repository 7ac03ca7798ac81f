"""The user service: accounts, sessions, API keys, invites and own roles, over `db`. Knows
nothing of HTTP; raises the errors of `errors` for what a client did wrong.

Rules it follows:
- Usernames: 1-32 characters, letters of any script (with their combining marks), digits,
  `_`, `.` and `-`, starting with a letter or a digit; kept as typed (NFC) and compared case-insensitively (NFKC, then casefold),
  so `Ünal` and `ünal` are one account. `local` is refused: the GPT Terminal page reads that
  name as "signed out".
- Passwords: at least 8 characters, at most 1,024 bytes of UTF-8; hashed with argon2id
  (argon2-cffi: time cost 2, 19 MiB, one lane, a 16-byte random salt per hash: OWASP's first
  argon2id setting, about 30 ms here), verified in constant time by the library. A login for
  an unknown username verifies against a dummy hash of the same cost, so it takes as long as
  one for a known username. Under gevent the hashing runs in one real thread per worker at the
  lowest CPU priority (the library releases the GIL), so logins never stall the worker's
  streams: a burst of them queues and waits for idle CPU instead (one thread, not two: with
  two, 50 logins at once took the streams' p99 to 31 ms against 17-20 ms with one; README,
  Performance). A password or a hash never appears in a message, a log line or a reply.
- Sessions: a 256-bit random id, the cookie's value; only its SHA-256 is stored. A session
  lives SESSION_DAYS from its last refresh; using it refreshes it at most once an hour.
  Logout, a password change and disabling the user end it at once for every process, since
  every lookup reads the database (a lookup is cached for at most CACHE_SECONDS).
- API keys: `sk-gpx-` (several chat UIs refuse a key that does not start with `sk-`), 38
  random base62 characters (226 bits), then 6 base62 characters of the CRC-32 of all that
  came before: a secret scanner recognises a leaked key by its prefix and checksum, and a
  typo is refused before any database lookup. Only the key's SHA-256 is stored (a fast hash
  is right for a random secret of this length); the key itself is shown once. A key belongs
  to a user, may expire, may be limited to some models, and stops working within
  CACHE_SECONDS of its revocation or its user's disabling, in every process. Its last use is
  written at most once a minute.
- Invites: single use, with an expiry; redeeming one is one conditional write in the same
  transaction as the new account, so two registrations cannot share a code.
- Login attempts (the throttle's counts, `identity.LoginThrottle`): one row per counted
  subject ("login:user:<name>", "login:address:<ip>"; only its SHA-256 is stored, since a
  username field sometimes holds a password), counting attempts in a window that starts at the
  first attempt and lasts the limit's period. Counting is one atomic conditional write per
  subject (an upsert that adds one only while the count is under the limit, or starts a new
  window once the old one ended, and returns the count), so every worker and instance of one
  database counts together and a burst never slips between a read and a write. Rows whose
  window ended are deleted at most once a minute per process.
- Own roles: a keyword (1-64 letters of any script, digits, `_ . -`; unique per user,
  case-insensitively), a name, a description and up to MAX_ROLE_ELEMENTS messages
  (`system`, `user`, `assistant`).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..base.errors import BadRequest, Conflict, NotFound, Unauthorized
from ..storage.db import Database, api_keys, invites, login_attempts, own_roles, sessions, users

MAX_USERNAME = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 1024
MAX_EMAIL = 254
RESERVED_USERNAMES = frozenset(("local",))
SESSION_REFRESH_SECONDS = 3600.0
CACHE_SECONDS = 0.5  # how stale a cached session or key lookup may be (revocations: < 1 s)
CACHE_ENTRIES = 10_000
NAMES_AT_ONCE = 500  # ids in one IN (...) of `names`: far under any database's bound
LAST_USED_EVERY = 60.0
KEY_PREFIX = "sk-gpx-"
KEY_BODY = 38
KEY_CHECK = 6
MAX_KEY_NAME = 100
MAX_KEYS_PER_USER = 100
MAX_KEYWORD = 64
MAX_ROLE_NAME = 100
MAX_ROLE_DESCRIPTION = 500
MAX_ROLE_ELEMENTS = 11  # a system message and five example pairs: the GPT Terminal page's cap
ROLE_ELEMENT_KINDS = ("system", "user", "assistant")
INVITE_PREFIX = "inv-"

HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32,
                        salt_len=16)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + f"[0-9A-Za-z]{{{KEY_BODY + KEY_CHECK}}}")
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+")


# --- values ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str | None
    created: float
    disabled: bool = False
    admin: bool = False

    def public(self) -> dict:
        """What a reply may show of a user: never the password or its hash."""
        return {"id": self.id, "username": self.username, "email": self.email,
                "createTime": iso_time(self.created), "admin": self.admin,
                "disabled": self.disabled}


@dataclass(frozen=True)
class Key:
    """An API key's record (never the key itself)."""

    id: int
    user_id: int
    name: str
    hint: str
    created: float
    last_used: float | None = None
    expires: float | None = None
    models: tuple[str, ...] | None = None  # None: any model
    revoked: float | None = None

    def public(self) -> dict:
        return {"id": self.id, "user_id": self.user_id, "name": self.name, "hint": self.hint,
                "created": iso_time(self.created), "last_used": iso_time(self.last_used),
                "expires": iso_time(self.expires), "models": list(self.models)
                if self.models is not None else None, "revoked": iso_time(self.revoked)}


@dataclass(frozen=True)
class Identity:
    """Who a credential names: the user, and the key or session it came by."""

    user: User
    key: Key | None = None
    session_hash: str | None = None
    refreshed: bool = False  # the session's expiry moved: the cookie should be sent again


@dataclass(frozen=True)
class OwnRole:
    id: int
    user_id: int
    keyword: str
    name: str
    description: str
    elements: tuple[tuple[str, str], ...]  # (role, content)
    created: float
    updated: float

    def public(self) -> dict:
        """The GPT Terminal page's shape of a role (`role/listByUserId`)."""
        return {"id": self.id, "userId": self.user_id, "keyword": self.keyword,
                "name": self.name, "description": self.description,
                "createTime": iso_time(self.created), "updateTime": iso_time(self.updated)}

    def messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.elements]


def iso_time(moment: float | None) -> str | None:
    """A time for a reply: ISO 8601 in UTC, to the second."""
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


# --- checking what a client sent --------------------------------------------------------------

def _name_chars_ok(text: str, extra: str) -> bool:
    """Letters of any script (with their marks), digits and `extra`, starting with a letter
    or a digit (a name starting with '-' would read as an option in a command line)."""
    if not text or not (unicodedata.category(text[0])[0] == "L"
                        or unicodedata.category(text[0]) == "Nd"):
        return False
    for char in text:
        kind = unicodedata.category(char)
        if not (kind[0] in "LM" or kind == "Nd" or char in extra):
            return False
    return True


def check_username(value: object) -> str:
    """A valid username as typed (NFC), or BadRequest naming the field."""
    if not isinstance(value, str):
        raise BadRequest("'username' must be a string", field="username")
    name = unicodedata.normalize("NFC", value.strip())
    if not 1 <= len(name) <= MAX_USERNAME or not _name_chars_ok(name, "_.-"):
        raise BadRequest(f"a username is 1-{MAX_USERNAME} characters: letters of any "
                         "script, digits, '_', '.' and '-'", field="username")
    if username_key(name) in RESERVED_USERNAMES:
        raise BadRequest(f"the username {name!r} is reserved", field="username")
    return name


def username_key(name: str) -> str:
    """How usernames are compared: NFKC, then casefold."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_password(value: object, field: str = "password") -> str:
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string", field=field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"'{field}' holds an invalid character", field=field) from None
    if len(value) < MIN_PASSWORD_CHARS:
        raise BadRequest(f"a password is at least {MIN_PASSWORD_CHARS} characters long",
                         field=field)
    if size > MAX_PASSWORD_BYTES:
        raise BadRequest(f"a password is at most {MAX_PASSWORD_BYTES} bytes long", field=field)
    return value


def check_email(value: object) -> str | None:
    """An address of the usual shape (`name@host.domain`), or None when none was given."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value):
        raise BadRequest("'email' must be an address such as name@example.com", field="email")
    return value


def keyword_ok(text: str) -> bool:
    """Whether `text` has the shape of an own role's keyword (as `check_keyword` wants it)."""
    return 1 <= len(text) <= MAX_KEYWORD and _name_chars_ok(text, "_.-")


def check_keyword(value: object, field: str = "keyword") -> str:
    """An own role's keyword: 1-64 letters of any script, digits, '_', '.' or '-'."""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string", field=field)
    keyword = unicodedata.normalize("NFC", value.strip())
    if not keyword_ok(keyword):
        raise BadRequest(f"a role keyword is 1-{MAX_KEYWORD} characters: letters, digits, "
                         "'_', '.' and '-'", field=field)
    return keyword


def check_text(value: object, field: str, limit: int, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"'{field}' must be a non-empty string", field=field)
    if len(value) > limit:
        raise BadRequest(f"'{field}' is at most {limit} characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{field}' holds an invalid character", field=field) from None
    return value


# --- keys ------------------------------------------------------------------------------------

def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(reversed(chars))


def _checksum(text: str) -> str:
    return _base62(binascii.crc32(text.encode("ascii")), KEY_CHECK)


def new_key() -> str:
    body = "".join(secrets.choice(_BASE62) for _ in range(KEY_BODY))
    head = KEY_PREFIX + body
    return head + _checksum(head)


def looks_like_key(text: str) -> bool:
    """Our key's shape with a right checksum (no database needed to refuse a typo)."""
    if not _KEY_SHAPE.fullmatch(text):
        return False
    return secrets.compare_digest(_checksum(text[:-KEY_CHECK]), text[-KEY_CHECK:])


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key_hint(key: str) -> str:
    return f"{key[:len(KEY_PREFIX) + 4]}...{key[-4:]}"


# --- passwords -------------------------------------------------------------------------------

_HASHING_THREADS = 1  # per worker: a burst of logins queues instead of taking every core
_hashing_pool: list = []


def _low_priority(function: Callable, *args):
    """Run `function` at the lowest CPU priority (Linux: nice applies to the calling thread,
    one of the hashing pool's own), so a stream's next token never waits behind a login."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except (AttributeError, OSError):
        pass
    return function(*args)


def _offload(function: Callable, *args):
    """Run a CPU-heavy call that releases the GIL (argon2) in a small pool of real threads at
    the lowest priority when under gevent, so the worker's greenlets keep running and keep
    the CPU; else call it here."""
    try:
        from gevent import monkey
    except ImportError:
        return function(*args)
    if not monkey.is_module_patched("threading"):
        return function(*args)
    from gevent.threadpool import ThreadPool

    if not _hashing_pool or _hashing_pool[0][0] != os.getpid():  # one per process (forks)
        _hashing_pool[:] = [(os.getpid(), ThreadPool(_HASHING_THREADS))]
    return _hashing_pool[0][1].apply(_low_priority, (function, *args))


def hash_password(password: str) -> str:
    return _offload(HASHER.hash, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_dummy: list[str] = []
_dummy_lock = threading.Lock()


def _dummy_hash() -> str:
    with _dummy_lock:
        if not _dummy:
            _dummy.append(HASHER.hash(secrets.token_hex(16)))
        return _dummy[0]


# --- a small cache of lookups ------------------------------------------------------------------

class _Cache:
    """Lookups remembered for at most CACHE_SECONDS (so a revocation holds within that)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.entries: dict[str, tuple[float, object]] = {}

    def get(self, key: str):
        found = self.entries.get(key)
        if found is None:
            return None, False
        at, value = found
        if self.clock() - at >= CACHE_SECONDS:
            self.entries.pop(key, None)
            return None, False
        return value, True

    def put(self, key: str, value: object) -> None:
        if len(self.entries) >= CACHE_ENTRIES:
            self.entries.clear()
        self.entries[key] = (self.clock(), value)

    def clear(self) -> None:
        self.entries.clear()


# --- the service --------------------------------------------------------------------------------

def _user(row) -> User:
    return User(row.id, row.username, row.email, row.created, bool(row.disabled),
                bool(row.admin))


def _key(row, key_id: int | None = None, created: float | None = None) -> Key:
    """A key's record from an `api_keys` row (or a join, whose id and created are given)."""
    models = tuple(json.loads(row.models)) if row.models else None
    return Key(row.id if key_id is None else key_id, row.user_id, row.name, row.hint,
               row.created if created is None else created, row.last_used, row.expires,
               models, row.revoked)


def _role(row) -> OwnRole:
    elements = tuple((item["role"], item["content"]) for item in json.loads(row.elements))
    return OwnRole(row.id, row.user_id, row.keyword, row.name, row.description, elements,
                   row.created, row.updated)


def _upsert(dialect: str):
    """The INSERT ... ON CONFLICT construct of the database's dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


ATTEMPTS_SWEEP_EVERY = 60.0  # seconds between deletions of ended windows, per process


@dataclass(frozen=True)
class Counted:
    """An attempt counted against `subjects` (their window ends), or refused: `wait` seconds
    until the subject that refused it has room again."""

    subjects: tuple[tuple[str, float], ...] = ()
    refused: str | None = None  # the subject that refused the attempt
    wait: float = 0.0


class _AtLimit(Exception):
    """Inside `count_attempt`: a subject is at its limit (rolls the transaction back)."""

    def __init__(self, subject: str, ends: float) -> None:
        super().__init__(subject)
        self.subject, self.ends = subject, float(ends)


_USER_COLUMNS = (users.c.id, users.c.username, users.c.email, users.c.created,
                 users.c.disabled, users.c.admin)


class Accounts:
    """Accounts, sessions, keys, invites and own roles in one database."""

    def __init__(self, db: Database, *, session_days: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.session_seconds = session_days * 86400
        self.clock = clock
        self._sessions = _Cache(clock)
        self._keys = _Cache(clock)
        self._last_used: dict[int, float] = {}
        self._attempts_swept = float("-inf")

    # users

    def create_user(self, username: str, password: str, email: str | None = None, *,
                    admin: bool = False, invite: str | None = None) -> User:
        """A new account; with `invite`, only if that code is unused and unexpired."""
        username = check_username(username)
        password = check_password(password)
        email = check_email(email)
        hashed = hash_password(password)
        now = self.clock()
        try:
            with self.db.write() as conn:
                user_id = conn.execute(users.insert().values(
                    username=username, username_key=username_key(username),
                    password_hash=hashed, email=email, created=now, disabled=False,
                    admin=admin)).inserted_primary_key[0]
                if invite is not None:
                    used = conn.execute(invites.update().where(
                        invites.c.code_hash == digest(invite), invites.c.used_at.is_(None),
                        invites.c.expires > now).values(used_by=user_id, used_at=now))
                    if used.rowcount != 1:
                        raise BadRequest("the invite code is unknown, used or expired",
                                         field="invite", code="bad_invite")
        except sa.exc.IntegrityError:
            raise Conflict(f"the username {username!r} is taken", field="username") from None
        return User(user_id, username, email, now, False, admin)

    def authenticate(self, username: object, password: object) -> User | None:
        """The user these credentials name, or None; as slow for an unknown name as for a
        known one. A disabled user is refused (Unauthorized) only after a right password."""
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        key = username_key(unicodedata.normalize("NFC", username.strip()))
        with self.db.read() as conn:
            row = conn.execute(sa.select(*_USER_COLUMNS, users.c.password_hash)
                               .where(users.c.username_key == key)).first()
        stored = row.password_hash if row is not None else _dummy_hash()
        if len(password.encode("utf-8", "replace")) > MAX_PASSWORD_BYTES:
            password = ""  # never hash an unbounded input; still spend the same time
        good = _offload(_verify, stored, password)
        if row is None or not good:
            return None
        user = _user(row)
        if user.disabled:
            raise Unauthorized("this account is disabled; ask the operator",
                               code="account_disabled")
        if HASHER.check_needs_rehash(row.password_hash):
            self._store_hash(user.id, hash_password(password))
        return user

    def _store_hash(self, user_id: int, hashed: str) -> None:
        with self.db.write() as conn:
            conn.execute(users.update().where(users.c.id == user_id)
                         .values(password_hash=hashed))

    def get_user(self, user_id: int) -> User | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(*_USER_COLUMNS).where(users.c.id == user_id)).first()
        return _user(row) if row is not None else None

    def find_user(self, username: str) -> User | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(*_USER_COLUMNS).where(
                users.c.username_key == username_key(username.strip()))).first()
        return _user(row) if row is not None else None

    def list_users(self, q: str | None = None, *, offset: int = 0,
                   limit: int | None = None) -> list[User]:
        """Users by id; with `q`, those whose name holds it (compared as usernames are:
        NFKC, casefolded; LIKE's wildcards in `q` are plain characters), the exact name first."""
        query = sa.select(*_USER_COLUMNS)
        if q:
            wanted = username_key(q.strip())
            query = query.where(users.c.username_key.contains(wanted, autoescape=True)).order_by(
                sa.case((users.c.username_key == wanted, 0), else_=1))
        query = query.order_by(users.c.id).offset(offset).limit(limit)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [_user(row) for row in rows]

    def count_users(self) -> int:
        with self.db.read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(users)).scalar() or 0

    def set_disabled(self, user_id: int, disabled: bool) -> User:
        """Disable (every session ends, every key stops) or enable an account."""
        with self.db.write() as conn:
            done = conn.execute(users.update().where(users.c.id == user_id)
                                .values(disabled=disabled))
            if done.rowcount != 1:
                raise NotFound(f"no user with id {user_id}", code="unknown_user")
            if disabled:
                conn.execute(sessions.delete().where(sessions.c.user_id == user_id))
        self._forget()
        return self.get_user(user_id)

    def set_admin(self, user_id: int, admin: bool) -> User:
        with self.db.write() as conn:
            done = conn.execute(users.update().where(users.c.id == user_id).values(admin=admin))
            if done.rowcount != 1:
                raise NotFound(f"no user with id {user_id}", code="unknown_user")
        self._forget()
        return self.get_user(user_id)

    def set_password(self, user_id: int, password: str, *, keep_session: str | None = None
                     ) -> None:
        """A new password; every session of the user ends (but `keep_session`, the one that
        asked for the change, if given)."""
        hashed = hash_password(check_password(password))
        with self.db.write() as conn:
            done = conn.execute(users.update().where(users.c.id == user_id)
                                .values(password_hash=hashed))
            if done.rowcount != 1:
                raise NotFound(f"no user with id {user_id}", code="unknown_user")
            ending = sessions.delete().where(sessions.c.user_id == user_id)
            if keep_session is not None:
                ending = ending.where(sessions.c.id_hash != keep_session)
            conn.execute(ending)
        self._forget()

    def _forget(self) -> None:
        """Drop this process's cached lookups (other processes' expire within a second)."""
        self._sessions.clear()
        self._keys.clear()

    # sessions

    def new_session(self, user: User) -> str:
        """A new session for `user`; the value for its cookie (shown only here)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(sessions.insert().values(
                id_hash=digest(token), user_id=user.id, created=now,
                expires=now + self.session_seconds, refreshed=now))
            # a good moment to drop this user's expired sessions
            conn.execute(sessions.delete().where(sessions.c.user_id == user.id,
                                                 sessions.c.expires <= now))
        return token

    def session(self, token: str) -> Identity | None:
        """The identity of a session cookie's value, or None (unknown, ended, expired, or its
        user disabled). Moves the expiry on at most once an hour."""
        if not token or len(token) > 100:
            return None
        hashed = digest(token)
        cached, hit = self._sessions.get(hashed)
        if hit:
            return cached
        now = self.clock()
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(*_USER_COLUMNS, sessions.c.expires, sessions.c.refreshed)
                .join(users, users.c.id == sessions.c.user_id)
                .where(sessions.c.id_hash == hashed, sessions.c.expires > now)).first()
        if row is None or row.disabled:
            self._sessions.put(hashed, None)
            return None
        refreshed = False
        if now - row.refreshed >= SESSION_REFRESH_SECONDS:
            with self.db.write() as conn:
                conn.execute(sessions.update().where(sessions.c.id_hash == hashed).values(
                    expires=now + self.session_seconds, refreshed=now))
            refreshed = True
        identity = Identity(_user(row), session_hash=hashed, refreshed=refreshed)
        self._sessions.put(hashed, Identity(identity.user, session_hash=hashed))
        return identity

    def end_session(self, session_hash: str) -> bool:
        with self.db.write() as conn:
            done = conn.execute(sessions.delete().where(sessions.c.id_hash == session_hash))
        self._sessions.entries.pop(session_hash, None)
        return done.rowcount == 1

    # keys

    def create_key(self, user_id: int, name: str, *, expires: float | None = None,
                   models: tuple[str, ...] | None = None) -> tuple[Key, str]:
        """A new key for `user_id`: its record, and the key itself (shown only now)."""
        name = check_text(name, "name", MAX_KEY_NAME)
        if expires is not None and expires <= self.clock():
            raise BadRequest("the key would expire before it is made", field="expires")
        if self.get_user(user_id) is None:
            raise NotFound(f"no user with id {user_id}", code="unknown_user")
        if len(self.list_keys(user_id)) >= MAX_KEYS_PER_USER:
            raise BadRequest(f"a user has at most {MAX_KEYS_PER_USER} keys: revoke one first",
                             code="too_many_keys")
        secret = new_key()
        now = self.clock()
        with self.db.write() as conn:
            key_id = conn.execute(api_keys.insert().values(
                user_id=user_id, name=name, key_hash=digest(secret), hint=key_hint(secret),
                created=now, expires=expires,
                models=json.dumps(list(models)) if models is not None else None,
            )).inserted_primary_key[0]
        return Key(key_id, user_id, name, key_hint(secret), now, None, expires, models), secret

    def key(self, secret: str) -> Identity | None:
        """The identity of an API key, or None (not ours, unknown, revoked, expired, or its
        user disabled)."""
        if not looks_like_key(secret):
            return None
        hashed = digest(secret)
        cached, hit = self._keys.get(hashed)
        if hit:
            identity = cached
        else:
            now = self.clock()
            with self.db.read() as conn:
                row = conn.execute(
                    sa.select(*_USER_COLUMNS, api_keys.c.id.label("key_id"), api_keys.c.user_id,
                              api_keys.c.name, api_keys.c.hint,
                              api_keys.c.created.label("key_created"), api_keys.c.last_used,
                              api_keys.c.expires, api_keys.c.models, api_keys.c.revoked)
                    .join(users, users.c.id == api_keys.c.user_id)
                    .where(api_keys.c.key_hash == hashed)).first()
            identity = None
            if (row is not None and row.revoked is None and not row.disabled
                    and (row.expires is None or row.expires > now)):
                identity = Identity(_user(row), key=_key(row, row.key_id, row.key_created))
            self._keys.put(hashed, identity)
        if identity is not None:
            key = identity.key
            if key.expires is not None and key.expires <= self.clock():
                return None
            self._touch(key.id)
        return identity

    def _touch(self, key_id: int) -> None:
        """Write the key's last use, at most once a minute (per process, and in the row)."""
        now = self.clock()
        if now - self._last_used.get(key_id, float("-inf")) < LAST_USED_EVERY:
            return
        self._last_used[key_id] = now
        if len(self._last_used) > CACHE_ENTRIES:
            self._last_used.clear()
        with self.db.write() as conn:
            conn.execute(api_keys.update().where(
                api_keys.c.id == key_id,
                sa.or_(api_keys.c.last_used.is_(None),
                       api_keys.c.last_used <= now - LAST_USED_EVERY)).values(last_used=now))

    def list_keys(self, user_id: int | None = None) -> list[Key]:
        query = sa.select(api_keys).order_by(api_keys.c.id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with self.db.read() as conn:
            return [_key(row) for row in conn.execute(query).all()]

    def find_keys(self, user_id: int | None = None, q: str | None = None, *, offset: int = 0,
                  limit: int | None = None) -> list[tuple[Key, str]]:
        """Keys by id with their owner's username; with `q`, those whose name holds it
        (case-insensitively: every letter on PostgreSQL, A-Z only on SQLite, whose lower()
        knows no other; LIKE's wildcards in `q` are plain characters)."""
        query = (sa.select(api_keys, users.c.username.label("owner"))
                 .join(users, users.c.id == api_keys.c.user_id).order_by(api_keys.c.id))
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        if q:
            query = query.where(sa.func.lower(api_keys.c.name).contains(q.lower(),
                                                                        autoescape=True))
        with self.db.read() as conn:
            rows = conn.execute(query.offset(offset).limit(limit)).all()
        return [(_key(row), row.owner) for row in rows]

    def names(self, user_ids: Iterable[int], key_ids: Iterable[int]
              ) -> tuple[dict[int, str], dict[int, tuple[str, str]]]:
        """The usernames of `user_ids`, and the name and owner's username of `key_ids`: one
        query each per NAMES_AT_ONCE ids (a list of budgets names its subjects without
        reading every user and key). Ids that name nobody are left out."""
        found_users: dict[int, str] = {}
        found_keys: dict[int, tuple[str, str]] = {}
        wanted_users, wanted_keys = sorted(set(user_ids)), sorted(set(key_ids))
        with self.db.read() as conn:
            for at in range(0, len(wanted_users), NAMES_AT_ONCE):
                part = wanted_users[at:at + NAMES_AT_ONCE]
                for row in conn.execute(sa.select(users.c.id, users.c.username)
                                        .where(users.c.id.in_(part))):
                    found_users[row.id] = row.username
            for at in range(0, len(wanted_keys), NAMES_AT_ONCE):
                part = wanted_keys[at:at + NAMES_AT_ONCE]
                for row in conn.execute(
                        sa.select(api_keys.c.id, api_keys.c.name, users.c.username)
                        .join(users, users.c.id == api_keys.c.user_id)
                        .where(api_keys.c.id.in_(part))):
                    found_keys[row.id] = (row.name, row.username)
        return found_users, found_keys

    def key_exists(self, key_id: int) -> bool:
        with self.db.read() as conn:
            return conn.execute(sa.select(api_keys.c.id).where(
                api_keys.c.id == key_id)).first() is not None

    def revoke_key(self, key_id: int, *, user_id: int | None = None) -> Key:
        """Revoke a key (only `user_id`'s, when given: another user's key is "unknown")."""
        query = api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked.is_(None))
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        with self.db.write() as conn:
            done = conn.execute(query.values(revoked=self.clock()))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None or (user_id is not None and row.user_id != user_id):
            raise NotFound(f"no key with id {key_id}", code="unknown_key")
        if done.rowcount != 1:
            raise BadRequest(f"key {key_id} is already revoked", code="already_revoked")
        self._keys.clear()
        return _key(row)

    # login attempts

    def count_attempt(self, subjects: list[str], limit: int, seconds: float) -> Counted:
        """Count one attempt against every subject (in this order, which every caller keeps:
        an address before a username), in one transaction: each an upsert that adds one only
        if its count is under `limit` in its window (or starts a new window of `seconds` when
        the last one ended). If any subject is at its limit nothing is counted, and the
        answer says which and how long until it has room."""
        if limit < 1 or not subjects:
            raise ValueError("a login limit counts at least one attempt of something")
        now = self.clock()
        table = login_attempts
        ended = table.c.ends <= now
        counted: list[tuple[str, float]] = []
        try:
            with self.db.write() as conn:
                for subject in subjects:
                    key = digest(subject)
                    statement = _upsert(self.db.dialect)(table).values(
                        key_hash=key, attempts=1, ends=now + seconds)
                    statement = statement.on_conflict_do_update(
                        index_elements=[table.c.key_hash],
                        set_={"attempts": sa.case((ended, 1), else_=table.c.attempts + 1),
                              "ends": sa.case((ended, now + seconds), else_=table.c.ends)},
                        where=sa.or_(ended, table.c.attempts < limit),
                    ).returning(table.c.attempts, table.c.ends)
                    row = conn.execute(statement).first()
                    if row is None:  # at its limit: roll back what this attempt counted
                        ends = conn.execute(sa.select(table.c.ends).where(
                            table.c.key_hash == key)).scalar()
                        raise _AtLimit(subject, now + seconds if ends is None else ends)
                    counted.append((subject, float(row.ends)))
        except _AtLimit as full:
            # `now` was read before the write lock was ours: another process may have begun
            # the window a moment later, so the wait is at most the period
            return Counted(refused=full.subject, wait=min(seconds, max(0.0, full.ends - now)))
        self._sweep_attempts(now)
        return Counted(tuple(counted))

    def uncount_attempt(self, subject: str, ends: float) -> None:
        """Take back one attempt counted against `subject` in the window ending at `ends`
        (a login that succeeded does not use up its address's attempts)."""
        with self.db.write() as conn:
            conn.execute(login_attempts.update().where(
                login_attempts.c.key_hash == digest(subject), login_attempts.c.ends == ends,
                login_attempts.c.attempts > 0).values(attempts=login_attempts.c.attempts - 1))

    def clear_attempts(self, subject: str) -> None:
        """Forget every attempt counted against `subject` (a username whose password was
        right)."""
        with self.db.write() as conn:
            conn.execute(login_attempts.delete().where(
                login_attempts.c.key_hash == digest(subject)))

    def _sweep_attempts(self, now: float) -> None:
        """Delete the rows whose window ended, at most once every ATTEMPTS_SWEEP_EVERY."""
        if now - self._attempts_swept < ATTEMPTS_SWEEP_EVERY:
            return
        self._attempts_swept = now
        with self.db.write() as conn:
            conn.execute(login_attempts.delete().where(login_attempts.c.ends <= now))

    # invites

    def create_invite(self, created_by: int | None, days: float = 7.0) -> tuple[str, float]:
        """A single-use invite code, and when it expires."""
        if not 0 < days <= 365:
            raise BadRequest("an invite lasts from a moment to 365 days", field="days")
        code = INVITE_PREFIX + secrets.token_urlsafe(18)
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(invites.insert().values(code_hash=digest(code), created_by=created_by,
                                                 created=now, expires=now + days * 86400))
        return code, now + days * 86400

    # own roles

    def create_role(self, user_id: int, keyword: str, name: str, description: str,
                    elements: list[tuple[str, str]]) -> OwnRole:
        keyword = check_keyword(keyword)
        now = self.clock()
        data = json.dumps([{"role": r, "content": c} for r, c in elements], ensure_ascii=False)
        try:
            with self.db.write() as conn:
                role_id = conn.execute(own_roles.insert().values(
                    user_id=user_id, keyword=keyword, keyword_key=username_key(keyword),
                    name=name, description=description, elements=data, created=now,
                    updated=now)).inserted_primary_key[0]
        except sa.exc.IntegrityError:
            raise Conflict(f"you already have a role called {keyword!r}",
                           field="keyword") from None
        return OwnRole(role_id, user_id, keyword, name, description, tuple(elements), now, now)

    def roles(self, user_id: int) -> list[OwnRole]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(own_roles).where(own_roles.c.user_id == user_id)
                                .order_by(own_roles.c.id)).all()
        return [_role(row) for row in rows]

    def role(self, user_id: int, keyword: str) -> OwnRole | None:
        if not isinstance(keyword, str) or not keyword.strip() or len(keyword) > MAX_KEYWORD * 2:
            return None
        key = username_key(unicodedata.normalize("NFC", keyword.strip()))
        with self.db.read() as conn:
            row = conn.execute(sa.select(own_roles).where(
                own_roles.c.user_id == user_id, own_roles.c.keyword_key == key)).first()
        return _role(row) if row is not None else None

    def update_role(self, user_id: int, keyword: str, *, name: str | None = None,
                    description: str | None = None,
                    elements: list[tuple[str, str]] | None = None) -> OwnRole:
        role = self.role(user_id, keyword)
        if role is None:
            raise NotFound(f"you have no role called {keyword!r}", code="unknown_role",
                           field="keyword")
        changes: dict = {"updated": self.clock()}
        if name is not None:
            changes["name"] = name
        if description is not None:
            changes["description"] = description
        if elements is not None:
            changes["elements"] = json.dumps([{"role": r, "content": c} for r, c in elements],
                                             ensure_ascii=False)
        with self.db.write() as conn:
            conn.execute(own_roles.update().where(own_roles.c.id == role.id).values(**changes))
        return self.role(user_id, keyword)

    def delete_role(self, user_id: int, keyword: str) -> None:
        role = self.role(user_id, keyword)
        if role is None:
            raise NotFound(f"you have no role called {keyword!r}", code="unknown_role",
                           field="keyword")
        with self.db.write() as conn:
            conn.execute(own_roles.delete().where(own_roles.c.id == role.id))


def role_elements(value: object, field: str, max_chars: int) -> list[tuple[str, str]]:
    """A role's messages as the GPT Terminal page sends them (`[{name, content}]`, `name`
    being system, user or assistant), or as `[{role, content}]`: at most MAX_ROLE_ELEMENTS,
    a system message only first, each content a non-empty string within `max_chars`."""
    if not isinstance(value, list) or not value:
        raise BadRequest(f"'{field}' must be a non-empty list of {{name, content}}", field=field)
    if len(value) > MAX_ROLE_ELEMENTS:
        raise BadRequest(f"a role has at most {MAX_ROLE_ELEMENTS} messages", field=field)
    elements: list[tuple[str, str]] = []
    total = 0
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object with 'name' and 'content'",
                             field=where)
        kind = item.get("name", item.get("role"))
        if kind not in ROLE_ELEMENT_KINDS:
            raise BadRequest(f"'{where}.name' must be system, user or assistant",
                             field=f"{where}.name")
        if kind == "system" and i > 0:
            raise BadRequest("a role's system message comes first", field=f"{where}.name")
        content = check_text(item.get("content"), f"{where}.content", max_chars)
        total += len(content)
        elements.append((kind, content))
    if total > max_chars:
        raise BadRequest(f"a role's messages are at most {max_chars} characters in all "
                         "(MAX_SYSTEM_CHARS)", field=field, code="system_too_long")
    return elements
