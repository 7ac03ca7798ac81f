"""The user service's store (`accounts`, `db`) on a real SQLite file and a real PostgreSQL
server: the same tests on both."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from gpt_proxy.base.errors import BadRequest, Conflict, NotFound, Unauthorized
from gpt_proxy.identity import accounts as accounts_module
from gpt_proxy.identity.accounts import (
    CACHE_SECONDS,
    KEY_PREFIX,
    MAX_PASSWORD_BYTES,
    Accounts,
    check_email,
    check_keyword,
    check_username,
    looks_like_key,
)
from gpt_proxy.storage.db import VERSION, Database, DatabaseError, metadata, open_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def accounts(db, clock):
    return Accounts(db, session_days=30, clock=clock)


# --- the schema -------------------------------------------------------------------------------

def test_a_fresh_database_is_migrated_to_the_schema_the_code_queries(db):
    inspector = sa.inspect(db.engine)
    for table in metadata.sorted_tables:
        found = {column["name"] for column in inspector.get_columns(table.name)}
        assert found == {column.name for column in table.columns}, table.name
    with db.read() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version")).scalar() == VERSION


def test_migrating_again_changes_nothing_and_a_newer_schema_is_refused(database_url):
    first = Database(database_url, ROOT)
    try:
        assert first.migrate() == VERSION
        assert first.migrate() == VERSION
        with first.write() as conn:
            conn.execute(sa.text("UPDATE schema_version SET version = :v"), {"v": VERSION + 1})
        with pytest.raises(DatabaseError, match="newer than this release"):
            first.migrate()
    finally:
        first.close()


def test_processes_starting_together_migrate_once(database_url):
    databases = [Database(database_url, ROOT) for _ in range(4)]
    results, errors = [], []

    def run(database):
        try:
            results.append(database.migrate())
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == [] and results == [VERSION] * 4
    finally:
        for database in databases:
            database.close()


def test_a_database_that_cannot_be_opened_names_the_setting_without_its_password():
    with pytest.raises(DatabaseError) as caught:
        open_database("postgresql://gp:hunter2-secret@127.0.0.1:9/none", ROOT)
    assert "DATABASE_URL=postgresql://gp:***@127.0.0.1:9/none" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_postgresql_database_made_as_sql_ascii_still_keeps_text_as_text(postgres, clock):
    """A cluster made without a UTF-8 locale makes SQL_ASCII databases, on which psycopg
    hands out bytes unless the connection asks for UTF-8: the service must still migrate
    and keep every script's text intact."""
    url = postgres.new_database("ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    database = Database(url, ROOT)
    try:
        assert database.migrate() == VERSION
        store = Accounts(database, clock=clock)
        made = store.create_user("Ünal王", "a good password", "ü@example.com")
        assert store.authenticate("ünal王", "a good password").username == "Ünal王"
        assert store.get_user(made.id).email == "ü@example.com"
    finally:
        database.close()


# --- usernames, passwords, e-mail ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["ann", "Ünal", "Мария", "王小明", "हिन्दी", "a.b-c_d", "x" * 32,
                                  "7of9"])
def test_usernames_of_any_script_are_accepted(name):
    assert check_username(f"  {name} ") == name


@pytest.mark.parametrize("name", ["", " ", "x" * 33, "a b", "a@b", "-ann", ".ann", "_ann",
                                  "local", "LOCAL", "a';DROP TABLE users;--", "x" * 1_000_000,
                                  "a\u0000b", "a\nb", 42, None])
def test_bad_usernames_are_plain_bad_input(name):
    with pytest.raises(BadRequest) as caught:
        check_username(name)
    assert caught.value.field == "username" and caught.value.status == 400


def test_usernames_are_unique_whatever_their_case(accounts):
    accounts.create_user("Ünal", "password-1")
    with pytest.raises(Conflict):
        accounts.create_user("üNAL", "password-2")
    assert [u.username for u in accounts.list_users()] == ["Ünal"]


def test_password_length_rules(accounts):
    with pytest.raises(BadRequest, match="at least 8"):
        accounts.create_user("ann", "seven77")
    with pytest.raises(BadRequest, match="1024 bytes"):
        accounts.create_user("ann", "é" * 513)  # 1,026 bytes
    assert accounts.create_user("ann", "é" * 512).username == "ann"  # 1,024 bytes
    assert accounts.create_user("bob", "eight888").username == "bob"


@pytest.mark.parametrize("email,ok", [("a@b.co", True), ("first.last+tag@sub.example.org", True),
                                      ("用户@例子.中国", True), (None, True), ("", True),
                                      ("no-at.example", False), ("a@b", False),
                                      ("a b@c.de", False), ("a@b@c.de", False),
                                      ("x" * 250 + "@a.de", False)])
def test_email_shapes(email, ok):
    if ok:
        check_email(email)
    else:
        with pytest.raises(BadRequest):
            check_email(email)


# --- logging in ---------------------------------------------------------------------------------

def test_only_a_hash_of_the_password_is_stored_and_it_is_argon2id(accounts, db):
    accounts.create_user("ann", "correct horse")
    with db.read() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM users")).scalar()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert "$m=19456,t=2,p=1$" in stored


def test_authenticate_right_wrong_unknown_and_disabled(accounts):
    user = accounts.create_user("ann", "correct horse")
    assert accounts.authenticate("ann", "correct horse") == user
    assert accounts.authenticate(" ANN ", "correct horse") == user
    assert accounts.authenticate("ann", "wrong horse") is None
    assert accounts.authenticate("nobody", "correct horse") is None
    accounts.set_disabled(user.id, True)
    assert accounts.authenticate("ann", "wrong horse") is None
    with pytest.raises(Unauthorized, match="disabled"):
        accounts.authenticate("ann", "correct horse")


def test_an_unknown_username_costs_one_full_verification_as_a_known_one(accounts, monkeypatch):
    """The work done is the same: one argon2 verification with the same parameters."""
    accounts.create_user("ann", "correct horse")
    seen = []
    real = accounts_module._verify

    def spy(stored, password):
        seen.append(stored.split("$")[3])  # the parameters: m=...,t=...,p=...
        return real(stored, password)
    monkeypatch.setattr(accounts_module, "_verify", spy)
    accounts.authenticate("ann", "wrong horse")
    accounts.authenticate("nobody", "wrong horse")
    accounts.authenticate("nobody", "x" * 5000)  # too long: never hashed, still verified
    assert seen == ["m=19456,t=2,p=1"] * 3


def test_an_unknown_username_is_not_measurably_cheaper_than_a_known_one(accounts):
    """What an attacker could time: without the dummy verification an unknown name would
    answer in microseconds against tens of milliseconds. The parameters being the same is
    asserted above (one full verification each); here only that no shortcut shows, with
    bounds a busy 2-core machine keeps (the fastest of interleaved samples: load only adds
    to a sample). The figures are printed."""
    accounts.create_user("ann", "correct horse")
    accounts.authenticate("nobody", "warm up")  # the dummy hash is made once
    known, unknown = [], []
    for _ in range(10):  # interleaved, so a busy moment hits both
        for name, samples in (("ann", known), ("nobody", unknown)):
            started = time.perf_counter()
            accounts.authenticate(name, "wrong horse")
            samples.append(time.perf_counter() - started)
    print(f"login with a known name: {min(known) * 1000:.1f} ms, unknown: "
          f"{min(unknown) * 1000:.1f} ms (fastest of 10; medians "
          f"{statistics.median(known) * 1000:.1f} and {statistics.median(unknown) * 1000:.1f})")
    assert min(unknown) >= 0.3 * min(known) and min(known) >= 0.3 * min(unknown)


def test_an_over_long_password_never_reaches_the_hasher(accounts, monkeypatch):
    """A password over MAX_PASSWORD_BYTES is refused before argon2 sees it (registration,
    a new password), and a login with one verifies an empty password instead (as long, and
    bounded): the hasher is never handed more than 1,024 bytes."""
    user = accounts.create_user("ann", "correct horse")
    real, given = accounts_module.HASHER, []

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def hash(self, password, **options):
            given.append(("hash", password))
            return real.hash(password, **options)

        def verify(self, stored, password):
            given.append(("verify", password))
            return real.verify(stored, password)

    monkeypatch.setattr(accounts_module, "HASHER", Spy())
    long = "x" * (MAX_PASSWORD_BYTES + 1)
    assert accounts.authenticate("ann", long) is None
    assert accounts.authenticate("nobody", "é" * 5000) is None
    for make in (lambda: accounts.create_user("bob", long),
                 lambda: accounts.set_password(user.id, "é" * 600)):
        with pytest.raises(BadRequest, match="1024 bytes"):
            make()
    assert [kind for kind, _ in given] == ["verify", "verify"]  # each login still verified
    assert all(len(password.encode()) <= MAX_PASSWORD_BYTES for _, password in given)


# --- sessions -------------------------------------------------------------------------------------

def test_a_session_is_stored_as_a_hash_and_slides(accounts, db, clock):
    user = accounts.create_user("ann", "correct horse")
    token = accounts.new_session(user)
    assert len(token) >= 43  # 256 bits, URL-safe base64
    with db.read() as conn:
        stored = conn.execute(sa.text("SELECT id_hash FROM sessions")).scalar()
    assert token not in stored and len(stored) == 64
    assert accounts.session(token).user == user
    clock.now += 29 * 86400  # used again before it expires: it slides
    identity = accounts.session(token)
    assert identity.user == user and identity.refreshed
    clock.now += 29 * 86400
    assert accounts.session(token).user == user
    clock.now += 31 * 86400  # unused for longer than SESSION_DAYS
    assert accounts.session(token) is None


def test_logout_password_change_and_disabling_end_sessions(accounts, clock):
    user = accounts.create_user("ann", "correct horse")
    first, second, third = (accounts.new_session(user) for _ in range(3))
    assert accounts.end_session(accounts.session(first).session_hash)
    keep = accounts.session(second).session_hash
    accounts.set_password(user.id, "new password", keep_session=keep)
    assert accounts.session(first) is None and accounts.session(third) is None
    assert accounts.session(second).user == user
    accounts.set_disabled(user.id, True)
    assert accounts.session(second) is None


def test_another_process_sees_a_logout_within_a_second(db, clock):
    here, there = Accounts(db, clock=clock), Accounts(db, clock=clock)
    user = here.create_user("ann", "correct horse")
    token = here.new_session(user)
    assert there.session(token).user == user  # now cached there
    here.end_session(here.session(token).session_hash)
    clock.now += CACHE_SECONDS
    assert there.session(token) is None


# --- keys -------------------------------------------------------------------------------------------

def test_a_key_has_our_prefix_a_checksum_and_only_its_hash_is_stored(accounts, db):
    user = accounts.create_user("ann", "correct horse")
    key, secret = accounts.create_key(user.id, "laptop")
    assert secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + 44
    assert looks_like_key(secret)
    typo = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert not looks_like_key(typo)
    with db.read() as conn:
        row = conn.execute(sa.text("SELECT key_hash, hint FROM api_keys")).first()
    assert secret not in row.key_hash and secret not in row.hint
    assert accounts.key(secret).user == user and accounts.key(secret).key.id == key.id


def test_a_mistyped_key_is_refused_without_asking_the_database(accounts, monkeypatch):
    user = accounts.create_user("ann", "correct horse")
    _, secret = accounts.create_key(user.id, "laptop")
    calls = []
    monkeypatch.setattr(accounts.db, "read", lambda: calls.append(1))
    for wrong in (secret[:-1] + "0" if secret[-1] != "0" else secret[:-1] + "1",
                  "sk-something-else", "", "sk-gpx-short"):
        assert accounts.key(wrong) is None
    assert calls == []


def test_revoking_expiry_and_disabling_stop_a_key(accounts, db, clock):
    user = accounts.create_user("ann", "correct horse")
    key, secret = accounts.create_key(user.id, "laptop")
    elsewhere = Accounts(db, clock=clock)
    assert elsewhere.key(secret) is not None  # cached in the other process
    accounts.revoke_key(key.id)
    assert accounts.key(secret) is None
    clock.now += CACHE_SECONDS
    assert elsewhere.key(secret) is None
    with pytest.raises(BadRequest, match="already revoked"):
        accounts.revoke_key(key.id)
    _, short = accounts.create_key(user.id, "short", expires=clock.now + 60)
    assert accounts.key(short) is not None
    clock.now += 61
    assert accounts.key(short) is None
    _, other = accounts.create_key(user.id, "other")
    accounts.set_disabled(user.id, True)
    assert accounts.key(other) is None


def test_a_user_cannot_revoke_another_users_key(accounts):
    ann = accounts.create_user("ann", "correct horse")
    bob = accounts.create_user("bob", "battery staple")
    key, secret = accounts.create_key(ann.id, "laptop")
    with pytest.raises(NotFound):
        accounts.revoke_key(key.id, user_id=bob.id)
    assert accounts.key(secret) is not None


def test_last_use_is_written_at_most_once_a_minute(accounts, db, clock):
    user = accounts.create_user("ann", "correct horse")
    key, secret = accounts.create_key(user.id, "laptop")

    def last_used():
        with db.read() as conn:
            return conn.execute(sa.text("SELECT last_used FROM api_keys")).scalar()
    accounts.key(secret)
    first = last_used()
    assert first == clock.now
    clock.now += 30
    accounts.key(secret)
    assert last_used() == first
    clock.now += 31
    accounts.key(secret)
    assert last_used() == clock.now


def test_a_key_may_be_limited_to_some_models(accounts):
    user = accounts.create_user("ann", "correct horse")
    _, secret = accounts.create_key(user.id, "cheap", models=("gpt-4o-mini",))
    assert accounts.key(secret).key.models == ("gpt-4o-mini",)


# --- invites ----------------------------------------------------------------------------------------

def test_an_invite_is_used_once_and_expires(accounts, clock):
    code, _ = accounts.create_invite(None, days=1)
    accounts.create_user("ann", "correct horse", invite=code)
    with pytest.raises(BadRequest, match="unknown, used or expired"):
        accounts.create_user("bob", "battery staple", invite=code)
    assert [u.username for u in accounts.list_users()] == ["ann"]  # bob was rolled back
    late, _ = accounts.create_invite(None, days=1)
    clock.now += 86401
    with pytest.raises(BadRequest):
        accounts.create_user("carol", "battery staple", invite=late)


def test_two_registrations_at_once_cannot_share_an_invite(accounts):
    code, _ = accounts.create_invite(None, days=1)
    results = []

    def register(name):
        try:
            accounts.create_user(name, "battery staple", invite=code)
            results.append(name)
        except BadRequest:
            results.append(None)
    threads = [threading.Thread(target=register, args=(f"user{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len([r for r in results if r]) == 1 and len(results) == 6
    assert len(accounts.list_users()) == 1


# --- own roles --------------------------------------------------------------------------------------

def test_own_roles_are_per_user_and_unique_per_user(accounts):
    ann = accounts.create_user("ann", "correct horse")
    bob = accounts.create_user("bob", "battery staple")
    made = accounts.create_role(ann.id, "Poet", "Haiku poet", "answers in haiku",
                                [("system", "You answer in haiku."), ("user", "sea"),
                                 ("assistant", "waves / fold / light")])
    with pytest.raises(Conflict):
        accounts.create_role(ann.id, "poet", "again", "", [("system", "x")])
    assert accounts.role(ann.id, "POET") == made
    assert accounts.role(bob.id, "Poet") is None and accounts.roles(bob.id) == []
    accounts.create_role(bob.id, "poet", "Bob's poet", "", [("system", "Rhymes.")])
    changed = accounts.update_role(ann.id, "poet", name="Poet 2",
                                   elements=[("system", "Shorter.")])
    assert changed.name == "Poet 2" and changed.elements == (("system", "Shorter."),)
    accounts.delete_role(ann.id, "poet")
    assert accounts.role(ann.id, "poet") is None
    assert accounts.role(bob.id, "poet").name == "Bob's poet"
    with pytest.raises(NotFound):
        accounts.delete_role(ann.id, "poet")


@pytest.mark.parametrize("keyword", ["poet", "Poet", "诗人", "a.b-c_d", "x" * 64])
def test_role_keywords_of_any_script(keyword):
    assert check_keyword(keyword) == keyword


@pytest.mark.parametrize("keyword", ["", "x" * 65, "a b", "../etc", "-x", "a/b", 7])
def test_bad_role_keywords(keyword):
    with pytest.raises(BadRequest):
        check_keyword(keyword)
