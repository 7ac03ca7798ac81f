"""The conversation store alone, the same tests against both backends: a real SQLite file in a
temporary folder and a real redis-server. Time is an injected clock, never a sleep."""

from __future__ import annotations

import collections
import sqlite3
import string
import uuid

import pytest
import redis

from gpt_proxy.base.config import ConfigError, load_config
from gpt_proxy.storage.conversations import (
    PURGE_BATCH,
    RedisStore,
    SQLiteStore,
    StoreError,
    new_id,
    open_store,
    resolve,
    sqlite_path,
)

from .conftest import FakeClock, free_port

DAY = 86400.0


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    """`make(clock, ttl)`: a new store over the same data (another worker, a restart)."""
    opened = []
    if request.param == "sqlite":
        path = tmp_path / "data" / "conversations.db"

        def make(clock, ttl=30 * DAY):
            opened.append(SQLiteStore(path, ttl, clock))
            return opened[-1]
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{uuid.uuid4().hex}"

        def make(clock, ttl=30 * DAY):
            opened.append(RedisStore(url, ttl, clock, prefix=prefix))
            return opened[-1]
    make.kind = request.param
    yield make
    for store in opened:
        store.close()


@pytest.fixture()
def clock():
    return FakeClock()


def chain(store, *texts):
    """Store alternating user/assistant messages, each the child of the one before."""
    parent = None
    messages = []
    for i, text in enumerate(texts):
        message = store.add(new_id(), parent, ("user", "assistant")[i % 2], text)
        messages.append(message)
        parent = message.id
    return messages


def texts(resolved):
    return [m.text for m in resolved.history]


def test_a_message_is_stored_and_read_back_as_it_was(backend, clock):
    store = backend(clock)
    message = store.add("id-1", None, "user", "你好 🙂 \"quoted\"\nsecond line")
    assert store.get("id-1") == message
    assert (message.parent_id, message.role, message.created) == (None, "user", clock.now)
    assert message.expires == clock.now + 30 * DAY
    assert store.get("id-2") is None


def test_text_utf8_cannot_hold_is_stored_with_a_replacement_character(backend, clock):
    store = backend(clock)
    message = store.add("odd", None, "assistant", "cut \ud83d here, whole \ud83d\ude00")
    assert message.text == "cut \ufffd here, whole \U0001F600"
    assert store.get("odd") == message


def test_the_history_is_rebuilt_by_walking_parent_ids(backend, clock):
    store = backend(clock)
    messages = chain(store, "u1", "a1", "u2", "a2")
    resolved = resolve(store, messages[-1].id, max_messages=10, max_chars=1000)
    assert texts(resolved) == ["u1", "a1", "u2", "a2"]
    assert [m.role for m in resolved.history] == ["user", "assistant"] * 2
    assert resolved.parent == messages[-1] and not resolved.unknown
    assert texts(resolve(store, messages[1].id, max_messages=10, max_chars=1000)) == ["u1", "a1"]


def test_the_walk_keeps_the_newest_within_the_message_and_character_budgets(backend, clock):
    store = backend(clock)
    messages = chain(store, "a" * 10, "b" * 10, "c" * 10, "d" * 10, "e" * 10)
    newest = messages[-1].id
    assert texts(resolve(store, newest, max_messages=3, max_chars=1000)) == [
        "c" * 10, "d" * 10, "e" * 10]
    assert texts(resolve(store, newest, max_messages=10, max_chars=35)) == [
        "c" * 10, "d" * 10, "e" * 10]
    # cut short, the history starts at a user message, never at an answer to nothing
    assert texts(resolve(store, newest, max_messages=2, max_chars=1000)) == ["e" * 10]
    assert texts(resolve(store, newest, max_messages=10, max_chars=25)) == ["e" * 10]
    assert texts(resolve(store, messages[-2].id, max_messages=2, max_chars=1000)) == [
        "c" * 10, "d" * 10]
    # the newest message is kept even alone over the budget: the shared trimming decides
    assert texts(resolve(store, newest, max_messages=10, max_chars=5)) == ["e" * 10]


def test_ancestors_stop_at_the_limit_or_just_past_the_characters(backend, clock):
    store = backend(clock)
    messages = chain(store, *[f"m{i:02}" + "é" * 6 for i in range(30)])  # 9 characters each
    newest = messages[-1].id
    assert [m.text[:3] for m in store.ancestors(newest, 4, 10_000)] == ["m29", "m28", "m27",
                                                                         "m26"]
    enough = store.ancestors(newest, 100, 20)  # 27 characters: the one that passed 20 is in
    assert len(enough) >= 3 and [m.text[:3] for m in enough[:3]] == ["m29", "m28", "m27"]
    assert len(enough) <= 12  # and not the whole chain (Redis counts bytes: up to 4 each)
    assert store.ancestors("unknown", 10, 100) == []


def test_an_unknown_or_missing_id_is_a_fresh_conversation(backend, clock):
    store = backend(clock)
    chain(store, "u1", "a1")
    for forged in ("nope", new_id(), "' OR 1=1 --", "a" * 128, "gpt_proxy:conversation:*"):
        resolved = resolve(store, forged, max_messages=10, max_chars=1000)
        assert resolved.history == [] and resolved.parent is None and resolved.unknown
    fresh = resolve(store, None, max_messages=10, max_chars=1000)
    assert fresh.history == [] and not fresh.unknown


def test_a_user_message_id_continues_after_its_stored_reply(backend, clock):
    """GPT Terminal sends its last reply's parentMessageId (the user message's id)."""
    store = backend(clock)
    user, reply = chain(store, "question", "answer")
    resolved = resolve(store, user.id, max_messages=10, max_chars=1000)
    assert resolved.parent == reply and resolved.followed_reply
    assert texts(resolved) == ["question", "answer"]
    # without a stored reply the user message itself is the parent
    lonely = store.add(new_id(), reply.id, "user", "no answer yet")
    resolved = resolve(store, lonely.id, max_messages=10, max_chars=1000)
    assert resolved.parent == lonely and not resolved.followed_reply
    assert texts(resolved) == ["question", "answer", "no answer yet"]


def test_the_newest_reply_to_a_user_message_is_followed(backend, clock):
    store = backend(clock)
    user = store.add(new_id(), None, "user", "q")
    store.add(new_id(), user.id, "assistant", "first answer")
    clock.now += 1
    second = store.add(new_id(), user.id, "assistant", "second answer")
    assert store.reply_to(user.id) == second


def test_messages_expire_after_the_ttl(backend, clock):
    store = backend(clock, ttl=2 * DAY)
    old = chain(store, "old question", "old answer")
    clock.now += DAY
    newer = store.add(new_id(), old[-1].id, "user", "newer question")
    assert texts(resolve(store, newer.id, max_messages=10, max_chars=1000)) == [
        "old question", "old answer", "newer question"]
    clock.now += DAY  # the old pair is now exactly 2 days old: gone
    assert store.get(old[0].id) is None and store.get(old[1].id) is None
    assert store.reply_to(old[0].id) is None
    resolved = resolve(store, newer.id, max_messages=10, max_chars=1000)
    assert texts(resolved) == ["newer question"]  # the walk stops at the expired parent
    clock.now += DAY
    assert resolve(store, newer.id, max_messages=10, max_chars=1000).unknown


def test_two_stores_over_the_same_data_see_each_others_messages(backend, clock):
    """Two workers (two connections to one file), or two instances on one Redis."""
    first, second = backend(clock), backend(clock)
    user, reply = chain(first, "asked in worker one", "answered")
    follow = second.add(new_id(), reply.id, "user", "followed up in worker two")
    assert texts(resolve(first, follow.id, max_messages=10, max_chars=1000)) == [
        "asked in worker one", "answered", "followed up in worker two"]
    assert second.reply_to(user.id) == reply


def test_messages_survive_closing_and_reopening_the_store(backend, clock):
    store = backend(clock)
    messages = chain(store, "before", "the restart")
    store.close()
    reopened = backend(clock)
    assert texts(resolve(reopened, messages[-1].id, max_messages=10, max_chars=1000)) == [
        "before", "the restart"]


def test_ids_are_unguessable(backend, clock):
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert all(len(i) == 24 and set(i) <= alphabet for i in ids)
    # every position takes many values (no counter, no timestamp prefix)
    for position in range(24):
        assert len({i[position] for i in ids}) > 50
    counts = collections.Counter("".join(ids))
    assert max(counts.values()) / min(counts.values()) < 1.5  # about uniform over 64 symbols
    store = backend(clock)
    message = store.add(new_id(), None, "user", "secret")
    neighbour = message.id[:-1] + ("A" if message.id[-1] != "A" else "B")
    assert store.get(neighbour) is None


def test_sqlite_file_is_created_on_first_use_in_wal_mode(tmp_path, clock):
    path = tmp_path / "new" / "folder" / "conversations.db"
    store = SQLiteStore(path, DAY, clock)
    try:
        assert path.exists()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            plan = " ".join(str(row) for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE parent_id = ? "
                "AND role = 'assistant' ORDER BY created DESC LIMIT 1", ("x",)))
            assert "messages_parent" in plan  # the reply lookup is indexed
    finally:
        store.close()


def test_sqlite_deletes_expired_rows_in_bounded_batches(tmp_path, clock):
    store = SQLiteStore(tmp_path / "c.db", DAY, clock)
    try:
        for _ in range(PURGE_BATCH + 10):
            store.add(new_id(), None, "user", "x")
        clock.now += DAY
        assert store.purge() == PURGE_BATCH
        assert store.purge() == 10
        with sqlite3.connect(tmp_path / "c.db") as db:
            assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    finally:
        store.close()


def test_redis_keys_carry_the_ttl(redis_url, clock):
    store = RedisStore(redis_url, 3 * DAY, clock, prefix=f"test:{uuid.uuid4().hex}")
    try:
        user, reply = chain(store, "q", "a")
        client = redis.Redis.from_url(redis_url)
        for key in (f"{store.prefix}:msg:{user.id}", f"{store.prefix}:msg:{reply.id}",
                    f"{store.prefix}:reply:{user.id}"):
            assert 3 * DAY - 60 < client.ttl(key) <= 3 * DAY
        client.close()
    finally:
        store.close()


def test_a_broken_sqlite_file_is_a_clear_error(tmp_path, clock):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError, match=r"SQLite .*garbage\.db.*not a database"):
        SQLiteStore(garbage, DAY, clock)
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    with pytest.raises(StoreError, match="cannot be opened"):
        SQLiteStore(folder, DAY, clock)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot be opened"):
        SQLiteStore(blocker / "conversations.db", DAY, clock)


def test_a_store_that_breaks_after_opening_is_a_clear_error(tmp_path, clock):
    store = SQLiteStore(tmp_path / "c.db", DAY, clock)
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("DROP TABLE messages")
    try:
        with pytest.raises(StoreError, match="cannot be written.*no such table"):
            store.add(new_id(), None, "user", "x")
        with pytest.raises(StoreError, match="cannot be read"):
            store.get("x")
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("x")


def test_an_unreachable_redis_is_a_clear_error_without_its_password(clock):
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", DAY, clock)
    try:
        with pytest.raises(StoreError) as caught:
            store.add(new_id(), None, "user", "x")
        assert "cannot be written" in str(caught.value)
        assert "Redis redis://***@127.0.0.1" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        with pytest.raises(StoreError, match="cannot be read"):
            store.get("x")
    finally:
        store.close()


def test_the_setting_picks_the_backend_and_resolves_relative_paths(tmp_path, redis_url, clock):
    assert sqlite_path("sqlite:///data/c.db", tmp_path) == tmp_path / "data" / "c.db"
    assert sqlite_path(f"sqlite:///{tmp_path}/x.db", tmp_path / "other") == tmp_path / "x.db"
    sqlite_store = open_store("sqlite:///data/c.db", DAY, tmp_path, clock)
    redis_store = open_store(redis_url, DAY, tmp_path, clock)
    try:
        assert isinstance(sqlite_store, SQLiteStore) and isinstance(redis_store, RedisStore)
        assert (tmp_path / "data" / "c.db").exists()
    finally:
        sqlite_store.close()
        redis_store.close()


@pytest.mark.parametrize("name,value", [
    ("CONVERSATION_STORE", "postgres://db/x"), ("CONVERSATION_STORE", "sqlite://x.db"),
    ("CONVERSATION_STORE", "sqlite:///"), ("CONVERSATION_STORE", "redis://"),
    ("CONVERSATION_STORE", "data/conversations.db"), ("CONVERSATION_TTL_DAYS", "0"),
    ("CONVERSATION_TTL_DAYS", "forever"), ("CHAT_PROCESS_ROLE", "../etc"),
    ("CHAT_PROCESS_ROLE", "Big Role"),
])
def test_a_bad_store_setting_stops_start_up_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


def test_the_store_settings_and_their_defaults():
    config = load_config({})
    assert config.conversation_store == "sqlite:///data/conversations.db"
    assert (config.conversation_ttl_days, config.chat_process_role) == (30.0, "default")
    config = load_config({"CONVERSATION_STORE": "rediss://:pw@cache.example:6380/2",
                          "CONVERSATION_TTL_DAYS": "0.5", "CHAT_PROCESS_ROLE": "cli"})
    assert config.conversation_store == "rediss://:pw@cache.example:6380/2"
    assert (config.conversation_ttl_days, config.chat_process_role) == (0.5, "cli")
    assert load_config({"CONVERSATION_STORE": "sqlite:////var/lib/gpt/c.db"}).conversation_store \
        == "sqlite:////var/lib/gpt/c.db"


def test_a_redis_that_fails_during_the_history_walk_is_a_clear_error(redis_without_scripts,
                                                                   clock):
    store = RedisStore(redis_without_scripts, DAY, clock, prefix=f"test:{uuid.uuid4().hex}")
    try:
        first, second = chain(store, "hello", "hi")  # single keys are read and written
        assert store.get(second.id) == second
        with pytest.raises(StoreError) as caught:
            resolve(store, second.id, max_messages=10, max_chars=1000)  # the walk: a script
        assert "cannot be read" in str(caught.value) and "NoPermission" in str(caught.value)
    finally:
        store.close()


def test_a_broken_redis_entry_is_a_clear_error_wherever_it_is_met(redis_url, clock):
    prefix = f"test:{uuid.uuid4().hex}"
    store = RedisStore(redis_url, DAY, clock, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{prefix}:msg:broken", "not json", ex=60)
        child = store.add("child", "broken", "user", "hello")
        with pytest.raises(StoreError, match="holds a broken entry for 'broken'"):
            store.get("broken")
        with pytest.raises(StoreError, match="holds a broken entry"):  # met on the walk
            store.ancestors(child.id, 10, 1000)
    finally:
        client.close()
        store.close()
