"""The login throttle as a deployment runs it: real gunicorn with several workers, two
instances sharing one SQLite file or one PostgreSQL database, bursts of parallel wrong
passwords. LOGIN_LIMIT is left at its default (5 a minute): of any burst for one username (or
from one address), at most 5 passwords are checked; the rest are refused, in the GPT Terminal
protocol's envelope, with the wait and a 429 in the access line."""

from __future__ import annotations

import itertools
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import TEST_KEY, Gunicorn

ADMIN = "throttle-admin-token-0123456789"
PASSWORD = "ann password 123"
WAVES, PER_WAVE = 6, 8  # the reproduction: six waves of eight parallel guesses
LIMIT = 5  # LOGIN_LIMIT's default: 5 a minute


def instances(fake_upstream, folder, database_url: str, count: int, workers: int
              ) -> list[Gunicorn]:
    """`count` gunicorns of `workers` workers each, sharing `database_url`; the default
    LOGIN_LIMIT and RATE_LIMIT_STORAGE (memory); X-Forwarded-For believed (one proxy), so a
    test can send from many addresses."""
    servers: list[Gunicorn] = []
    try:
        for i in range(count):
            (folder / str(i)).mkdir()
            servers.append(Gunicorn({
                "OPENAI_API_KEY": TEST_KEY, "OPENAI_BASE_URL": fake_upstream.url,
                "OPENAI_MODEL": "fake-model", "WEB_CONCURRENCY": str(workers), "AUTH": "users",
                "DATABASE_URL": database_url, "PROXY_TOKEN": ADMIN, "TRUSTED_PROXIES": "1",
                "CONVERSATION_STORE": f"sqlite:///{folder / str(i)}/c.db"},
                folder / str(i) / "gunicorn.log"))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def make_user(url: str, name: str) -> None:
    made = requests.post(f"{url}/api/admin/users", json={"username": name, "password": PASSWORD},
                         headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert made.status_code == 201, made.text


def login(url: str, name: str, password: str, address: str) -> requests.Response:
    """One login on a connection of its own (so parallel ones reach different workers)."""
    with requests.Session() as session:
        return session.post(f"{url}/api/user/login",
                            json={"username": name, "password": password},
                            headers={"X-Forwarded-For": address, "Connection": "close"},
                            timeout=60)


def burst(servers: list[Gunicorn], name: str, addresses) -> tuple[int, int, list[dict]]:
    """Six waves of eight parallel wrong passwords for `name`, spread over `servers`, each
    from the next of `addresses`: (checked, refused, the refusals' bodies)."""
    urls = itertools.cycle([server.url for server in servers])
    checked, refused, refusals = 0, 0, []
    with ThreadPoolExecutor(PER_WAVE) as pool:
        for _ in range(WAVES):
            sent = [pool.submit(login, next(urls), name, "wrong password", next(addresses))
                    for _ in range(PER_WAVE)]
            for future in sent:
                answer = future.result()
                assert answer.status_code == 200, answer.text  # the protocol's envelope
                body = answer.json()
                if body["code"] == 40400:  # "wrong username or password": it was checked
                    checked += 1
                else:
                    assert body["code"] == 40000 and "too many login attempts" in body["message"]
                    wait = int(answer.headers["Retry-After"])
                    assert 1 <= wait <= 60 and f"retry in {wait} s" in body["message"]
                    refused += 1
                    refusals.append(body)
    return checked, refused, refusals


def refused_in_logs(servers: list[Gunicorn]) -> int:
    """Access lines of logins answered 429 (the envelope is HTTP 200; the line keeps 429)."""
    return sum(len(re.findall(r"path=/api/user/login status=429", server.logs()))
               for server in servers)


def test_one_instance_with_three_workers_checks_at_most_the_limit(fake_upstream, tmp_path):
    """The issue's reproduction: the defaults (memory rate-limit store), several workers, one
    address, one username: 10 of 48 were checked when each worker counted alone."""
    servers = instances(fake_upstream, tmp_path, f"sqlite:///{tmp_path}/gpt_proxy.db", 1, 3)
    try:
        make_user(servers[0].url, "ann")
        checked, refused, _ = burst(servers, "ann", itertools.repeat("203.0.113.7"))
        assert checked <= LIMIT and checked + refused == WAVES * PER_WAVE
        assert checked == LIMIT  # the limit is reached, not undershot
        assert refused_in_logs(servers) == refused
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_instances_sharing_a_database_count_one_username_together(
        fake_upstream, tmp_path, request, store):
    """Two instances of two workers each on one database; every guess from another address,
    so only the username's count can stop them."""
    url = (f"sqlite:///{tmp_path}/gpt_proxy.db" if store == "sqlite"
           else request.getfixturevalue("postgres").new_database())
    servers = instances(fake_upstream, tmp_path, url, 2, 2)
    try:
        make_user(servers[0].url, "ann")
        addresses = (f"198.51.100.{i}" for i in range(1, 250))
        checked, refused, _ = burst(servers, "ann", addresses)
        assert checked == LIMIT and refused == WAVES * PER_WAVE - LIMIT
        assert refused_in_logs(servers) == refused
        # one address, many usernames: the address's count is shared the same way
        guesses = [(servers[i % 2].url, f"nobody{i}") for i in range(3 * PER_WAVE)]
        with ThreadPoolExecutor(PER_WAVE) as pool:
            answers = list(pool.map(lambda g: login(g[0], g[1], "wrong password",
                                                    "192.0.2.50"), guesses))
        codes = [answer.json()["code"] for answer in answers]
        assert codes.count(40400) == LIMIT and codes.count(40000) == len(guesses) - LIMIT
    finally:
        for server in servers:
            server.stop()


# --- the rules, in one process -------------------------------------------------------------

def login_json(client, name: str, password: str) -> dict:
    return client.post("/api/user/login", json={"username": name, "password": password}
                       ).get_json()


def test_correct_logins_do_not_use_up_the_address(users_app):
    """The 11th correct login from one address within a minute is accepted (each used to be
    counted against the address: the 6th was refused)."""
    client = users_app(login_limit="5/minute").test_client()
    client.post("/api/user/register", json={"username": "ann", "password": PASSWORD})
    answers = [login_json(client, "ann", PASSWORD) for _ in range(11)]
    assert [answer["code"] for answer in answers] == [0] * 11
    # and the address still has all its attempts for wrong passwords
    codes = [login_json(client, "bob", "wrong password")["code"] for _ in range(6)]
    assert codes == [40400] * 5 + [40000]


def test_a_correct_login_clears_its_usernames_failures(users_app):
    """4 wrong, 1 right: the username starts again (5 more are checked, the 6th is refused).
    Each guess comes from another address, so only the username's count applies."""
    app = users_app(login_limit="5/minute", trusted_proxies=1)
    client = app.test_client()
    client.post("/api/user/register", json={"username": "ann", "password": PASSWORD})
    addresses = iter(f"198.51.100.{i}" for i in range(1, 100))

    def attempt(password: str) -> int:
        return client.post("/api/user/login", json={"username": "ann", "password": password},
                           headers={"X-Forwarded-For": next(addresses)}).get_json()["code"]

    assert [attempt("wrong password") for _ in range(4)] == [40400] * 4
    assert attempt(PASSWORD) == 0
    assert [attempt("wrong password") for _ in range(6)] == [40400] * 5 + [40000]
    assert attempt(PASSWORD) == 40000  # at its limit, even the right password waits


def test_a_refused_attempt_counts_nothing(users_app):
    """A guess refused for its username leaves its address's count as it was."""
    app = users_app(login_limit="3/minute", trusted_proxies=1)
    client = app.test_client()

    def attempt(name: str, address: str) -> int:
        return client.post("/api/user/login", json={"username": name, "password": "x" * 9},
                           headers={"X-Forwarded-For": address}).get_json()["code"]

    assert [attempt("ann", f"192.0.2.{i}") for i in range(3)] == [40400] * 3
    assert [attempt("ann", "192.0.2.99") for _ in range(4)] == [40000] * 4
    assert [attempt(f"other{i}", "192.0.2.99") for i in range(4)] == [40400] * 3 + [40000]


# --- the count in the database --------------------------------------------------------------

def test_parallel_attempts_are_admitted_exactly_up_to_the_limit(db, clock):
    """40 threads count one subject at once, on SQLite and PostgreSQL: exactly 5 pass."""
    from gpt_proxy.identity.accounts import Accounts

    accounts = Accounts(db, clock=clock)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: accounts.count_attempt(
            ["login:address:a", "login:user:ann"], 5, 60.0), range(40)))
    admitted = [r for r in results if r.refused is None]
    assert len(admitted) == 5
    assert all(r.refused == "login:address:a" and 0 < r.wait <= 60 for r in results
               if r.refused is not None)
    with db.read() as conn:
        counts = sorted(row[0] for row in conn.exec_driver_sql(
            "SELECT attempts FROM login_attempts"))
    assert counts == [5, 5]


def test_a_window_ends_and_ended_windows_are_deleted(db, clock):
    from gpt_proxy.identity.accounts import ATTEMPTS_SWEEP_EVERY, Accounts

    accounts = Accounts(db, clock=clock)
    for _ in range(2):
        assert accounts.count_attempt(["s"], 2, 60.0).refused is None
    refused = accounts.count_attempt(["s"], 2, 60.0)
    assert refused.refused == "s" and refused.wait == 60.0
    clock.now += 30
    assert accounts.count_attempt(["s"], 2, 60.0).wait == 30.0
    clock.now += 30  # the window has ended: a new one starts with this attempt
    assert accounts.count_attempt(["s"], 2, 60.0).refused is None
    accounts.count_attempt(["other"], 2, 60.0)
    clock.now += max(60.0, ATTEMPTS_SWEEP_EVERY) + 1  # both ended; the next sweep is due
    accounts.count_attempt(["third"], 2, 60.0)
    with db.read() as conn:
        rows = conn.exec_driver_sql("SELECT key_hash FROM login_attempts").all()
    assert len(rows) == 1  # only the window just begun


def test_only_digests_of_usernames_and_addresses_are_stored(db, clock):
    """A username field sometimes holds a password: the table never holds the text."""
    from gpt_proxy.identity.accounts import Accounts

    Accounts(db, clock=clock).count_attempt(["login:address:192.0.2.1",
                                             "login:user:my secret pass"], 5, 60.0)
    with db.read() as conn:
        stored = " ".join(str(v) for row in conn.exec_driver_sql(
            "SELECT * FROM login_attempts").all() for v in row)
    assert "secret" not in stored and "192.0.2.1" not in stored
