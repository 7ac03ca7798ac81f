"""The guards of gpt_proxy/accounts.py that the mutation run (bench/mutation.py) found no test
holding: every write touches only the row it names (revoking, disabling, making an admin,
upgrading a password hash, a key's last use), an unknown id is a 404 with its code, an ended
session is refused at once, a key's last use is written once a minute across processes, an
invite's bounds and expiry, and a role found by its own keyword."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher

from gpt_proxy.base.errors import BadRequest, Conflict, NotFound
from gpt_proxy.identity.accounts import HASHER, INVITE_PREFIX, MAX_KEYWORD, Accounts


@pytest.fixture()
def accounts(db, clock):
    return Accounts(db, session_days=30, clock=clock)


def test_revoking_a_key_leaves_every_other_key_working(accounts):
    ann = accounts.create_user("ann", "correct horse")
    bob = accounts.create_user("bob", "battery staple")
    first, first_secret = accounts.create_key(ann.id, "one")
    _, second_secret = accounts.create_key(ann.id, "two")
    _, bobs_secret = accounts.create_key(bob.id, "bob's")
    assert accounts.revoke_key(first.id, user_id=ann.id).id == first.id
    assert accounts.key(first_secret) is None
    assert accounts.key(second_secret).user.id == ann.id
    assert accounts.key(bobs_secret).user.id == bob.id
    with pytest.raises(BadRequest) as again:
        accounts.revoke_key(first.id)
    assert again.value.code == "already_revoked"
    with pytest.raises(NotFound) as unknown:
        accounts.revoke_key(987654)
    assert unknown.value.code == "unknown_key" and "987654" in str(unknown.value)


def test_admin_and_disabled_change_only_the_user_named(accounts):
    ann = accounts.create_user("ann", "correct horse")
    bob = accounts.create_user("bob", "battery staple")
    bobs_session = accounts.new_session(bob)
    assert accounts.set_admin(ann.id, True).admin
    assert not accounts.get_user(bob.id).admin
    assert accounts.set_disabled(ann.id, True).disabled
    assert not accounts.get_user(bob.id).disabled
    assert accounts.session(bobs_session).user.id == bob.id  # only ann's sessions ended


@pytest.mark.parametrize("change", ["admin", "disabled", "password"])
def test_an_unknown_user_id_is_a_404_naming_it(accounts, change):
    accounts.create_user("ann", "correct horse")
    call = {"admin": lambda: accounts.set_admin(424242, True),
            "disabled": lambda: accounts.set_disabled(424242, True),
            "password": lambda: accounts.set_password(424242, "a new password")}[change]
    with pytest.raises(NotFound) as refused:
        call()
    assert refused.value.code == "unknown_user" and "424242" in str(refused.value)


def test_an_ended_session_is_refused_at_once_in_the_same_process(accounts):
    user = accounts.create_user("ann", "correct horse")
    token = accounts.new_session(user)
    found = accounts.session(token)  # now cached
    assert accounts.end_session(found.session_hash)
    assert accounts.session(token) is None  # the clock has not moved: not the cache's expiry
    other = accounts.new_session(user)
    hashed = accounts.session(other).session_hash
    accounts._sessions.clear()  # ending a session this process never cached
    assert accounts.end_session(hashed) and accounts.session(other) is None


def test_a_login_with_an_old_hash_upgrades_that_users_hash_only(accounts, db):
    ann = accounts.create_user("ann", "correct horse")
    bob = accounts.create_user("bob", "battery staple")
    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("correct horse")
    with db.write() as conn:
        conn.execute(sa.text("UPDATE users SET password_hash = :h WHERE id = :id"),
                     {"h": old, "id": ann.id})

    def stored(user):
        with db.read() as conn:
            return conn.execute(sa.text("SELECT password_hash FROM users WHERE id = :id"),
                                {"id": user.id}).scalar()
    bobs = stored(bob)
    assert accounts.authenticate("ann", "correct horse").id == ann.id
    assert stored(ann) != old and not HASHER.check_needs_rehash(stored(ann))
    assert accounts.authenticate("ann", "correct horse").id == ann.id
    assert stored(bob) == bobs


def test_users_are_counted(accounts):
    assert accounts.count_users() == 0
    accounts.create_user("ann", "correct horse")
    accounts.create_user("bob", "battery staple")
    assert accounts.count_users() == 2


def test_last_use_is_written_for_that_key_once_a_minute_across_processes(accounts, db, clock):
    user = accounts.create_user("ann", "correct horse")
    _, used = accounts.create_key(user.id, "used")
    _, idle = accounts.create_key(user.id, "idle")
    other_process = Accounts(db, session_days=30, clock=clock)  # its own memory of last uses

    def last_used():
        with db.read() as conn:
            return dict(conn.execute(sa.text("SELECT name, last_used FROM api_keys")).all())
    start = clock.now
    accounts.key(used)
    assert last_used() == {"used": start, "idle": None}
    clock.now = start + 30
    other_process.key(used)  # within the minute: the row says so, nothing written
    assert last_used()["used"] == start
    clock.now = start + 60  # a minute exactly: written again
    accounts.key(used)
    assert last_used() == {"used": start + 60, "idle": None}


def test_an_invite_lasts_from_a_moment_to_365_days(accounts, db, clock):
    admin = accounts.create_user("ann", "correct horse")
    code, expires = accounts.create_invite(admin.id)
    assert expires == clock.now + 7 * 86400  # a week unless told
    assert code.startswith(INVITE_PREFIX) and len(code) == len(INVITE_PREFIX) + 24
    with db.read() as conn:
        row = conn.execute(sa.text("SELECT created_by, expires FROM invites")).one()
    assert tuple(row) == (admin.id, expires)
    assert accounts.create_invite(None, days=365)[1] == clock.now + 365 * 86400
    assert accounts.create_invite(None, days=0.01)[1] == pytest.approx(clock.now + 864)
    for days in (0, -1, 365.01):
        with pytest.raises(BadRequest) as refused:
            accounts.create_invite(None, days=days)
        assert refused.value.field == "days" and "365 days" in str(refused.value)


def test_a_role_is_found_by_its_own_keyword_among_several(accounts):
    user = accounts.create_user("ann", "correct horse")
    longest = "k" * MAX_KEYWORD
    for keyword in ("alpha", "beta", longest):
        accounts.create_role(user.id, keyword, keyword.title(), "", [("system", keyword)])
    assert accounts.role(user.id, "beta").keyword == "beta"
    assert accounts.role(user.id, longest).keyword == longest
    assert accounts.role(user.id, 123) is None and accounts.role(user.id, "  ") is None
    with pytest.raises(Conflict) as twice:
        accounts.create_role(user.id, "Beta", "B", "", [("system", "b")])
    assert twice.value.field == "keyword"
    for change in (lambda: accounts.update_role(user.id, "gamma", name="G"),
                   lambda: accounts.delete_role(user.id, "gamma")):
        with pytest.raises(NotFound) as unknown:
            change()
        assert (unknown.value.code, unknown.value.field) == ("unknown_role", "keyword")
        assert "gamma" in str(unknown.value)


# --- keys and sessions at their bounds ------------------------------------------------------------

def test_a_key_lookup_names_the_key_and_its_own_times(accounts, clock):
    """The lookup joins the key to its user: the key's id and creation time are the key's,
    never the user's (here they differ: bob is user 2, his key is key 1)."""
    accounts.create_user("ann", "correct horse")
    clock.now += 100
    bob = accounts.create_user("bob", "battery staple")
    clock.now += 100
    made, secret = accounts.create_key(bob.id, "bob's", expires=clock.now + 3600)
    found = accounts.key(secret).key
    assert (found.id, found.user_id, found.name) == (made.id, bob.id, "bob's")
    assert found.id != bob.id and found.created == made.created == clock.now
    assert found.expires == clock.now + 3600


def test_a_key_stops_at_its_expiry_exactly(accounts, clock):
    user = accounts.create_user("ann", "correct horse")
    with pytest.raises(BadRequest) as refused:
        accounts.create_key(user.id, "now", expires=clock.now)
    assert refused.value.field == "expires"
    _, cached = accounts.create_key(user.id, "cached", expires=clock.now + 10)
    _, fresh = accounts.create_key(user.id, "fresh", expires=clock.now + 10)
    assert accounts.key(cached) is not None  # now in this process's cache
    clock.now += 10
    assert accounts.key(cached) is None  # from the cache
    assert accounts.key(fresh) is None  # from the database


def test_a_session_stops_at_its_expiry_exactly(db, clock):
    accounts = Accounts(db, session_days=1, clock=clock)
    token = accounts.new_session(accounts.create_user("ann", "correct horse"))
    clock.now += 86400
    assert accounts.session(token) is None


def test_a_session_moves_on_after_an_hour_exactly_and_then_not_again_for_an_hour(accounts,
                                                                               clock):
    from gpt_proxy.identity.accounts import CACHE_SECONDS, SESSION_REFRESH_SECONDS

    token = accounts.new_session(accounts.create_user("ann", "correct horse"))
    clock.now += SESSION_REFRESH_SECONDS
    assert accounts.session(token).refreshed
    clock.now += CACHE_SECONDS + 1  # past this process's cache, within the hour
    assert not accounts.session(token).refreshed


def test_a_user_has_at_most_100_keys(accounts):
    user = accounts.create_user("ann", "correct horse")
    for number in range(100):
        accounts.create_key(user.id, f"key {number}")
    with pytest.raises(BadRequest) as refused:
        accounts.create_key(user.id, "one more")
    assert refused.value.code == "too_many_keys" and "100" in str(refused.value)


def test_a_key_for_an_unknown_user_is_a_404(accounts):
    with pytest.raises(NotFound) as refused:
        accounts.create_key(31337, "nobody's")
    assert refused.value.code == "unknown_user" and "31337" in str(refused.value)


def test_text_fields_bounds_and_their_field():
    from gpt_proxy.identity.accounts import check_keyword, check_text

    assert check_text(None, "note", 10, required=False) == ""
    assert check_text("x" * 10, "note", 10) == "x" * 10
    for value in (None, "", "  ", 5, "x" * 11, "bad\ud800"):
        with pytest.raises(BadRequest) as refused:
            check_text(value, "note", 10)
        assert refused.value.field == "note" and "'note'" in str(refused.value)
    assert [check_keyword(k) for k in ("a", "x_y.z-1")] == ["a", "x_y.z-1"]
    for value in (7, "", "a b", "k" * (MAX_KEYWORD + 1)):
        with pytest.raises(BadRequest) as refused:
            check_keyword(value)
        assert refused.value.field == "keyword" and str(refused.value)


def test_a_cached_key_stops_at_its_expiry_exactly(accounts, clock):
    """Within the half second a lookup is cached, the key's own expiry still counts."""
    user = accounts.create_user("ann", "correct horse")
    _, secret = accounts.create_key(user.id, "brief", expires=clock.now + 0.25)
    assert accounts.key(secret) is not None  # cached for 0.5 s
    clock.now += 0.25
    assert accounts.key(secret) is None


def test_enabling_a_user_again_does_not_bring_old_sessions_back(accounts):
    user = accounts.create_user("ann", "correct horse")
    token = accounts.new_session(user)
    accounts.set_disabled(user.id, True)
    accounts.set_disabled(user.id, False)
    assert accounts.session(token) is None


def test_a_role_update_changes_what_it_names_and_nothing_else(accounts):
    user = accounts.create_user("ann", "correct horse")
    accounts.create_role(user.id, "tutor", "Tutor", "helps", [("system", "teach")])
    changed = accounts.update_role(user.id, "tutor", description="explains")
    assert (changed.name, changed.description) == ("Tutor", "explains")
    changed = accounts.update_role(user.id, "tutor", name="Teacher")
    assert (changed.name, changed.description) == ("Teacher", "explains")


def test_a_bad_key_name_names_its_field(accounts):
    user = accounts.create_user("ann", "correct horse")
    for name in ("", "x" * 101, 5):
        with pytest.raises(BadRequest) as refused:
            accounts.create_key(user.id, name)
        assert refused.value.field == "name"
