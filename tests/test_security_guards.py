"""The guards of gpt_proxy/security.py that the mutation run (bench/mutation.py) found no test
holding: the host check without a Host header, which CORS answers carry credentials and what
a preflight allows, what the rate limit leaves out (preflights, pages) and what it says when
its storage fails, the proxies believed (more than one), the HSTS value, and the log bound."""

from __future__ import annotations

import pytest

from gpt_proxy import create_app
from gpt_proxy.identity import security

from .conftest import TEST_KEY, make_config
from .test_security import CHAT, TOKEN, assert_json_error, auth, chat_as, make_client

LISTED = "https://chat.example.com"


def preflight(client, path, origin=LISTED):
    return client.options(path, headers={
        "Origin": origin, "Sec-Fetch-Site": "cross-site", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


# --- host -----------------------------------------------------------------------------------

def test_without_a_host_header_the_server_name_is_checked(upstream):
    """An HTTP/1.0 request has no Host: the WSGI server's own name (SERVER_NAME) is what
    ALLOWED_HOSTS judges, never an empty or made-up name."""
    no_host = {"HTTP_HOST": ""}
    allowed = make_client(upstream, allowed_hosts=("chat.example.com",))
    response = allowed.get("/api/roles", environ_overrides={
        **no_host, "SERVER_NAME": "chat.example.com"})
    assert response.status_code == 200, response.get_data(as_text=True)
    refused = allowed.get("/api/roles", environ_overrides={**no_host, "SERVER_NAME": "other"})
    assert "'other'" in assert_json_error(refused, 400, "bad_host")["message"]


# --- CORS -----------------------------------------------------------------------------------

def users_client(upstream, tmp_path, origins):
    return create_app(make_config(
        openai_base_url=upstream.url, auth="users", cors_origins=origins,
        database_url=f"sqlite:///{tmp_path}/gpt_proxy.db",
        conversation_store=f"sqlite:///{tmp_path}/conversations.db")).test_client()


def test_with_accounts_a_listed_origin_may_send_the_cookie(upstream, tmp_path):
    client = users_client(upstream, tmp_path, (LISTED,))
    answer = preflight(client, "/api/user/session")
    assert answer.headers["Access-Control-Allow-Origin"] == LISTED
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize("mode", ["users-star", "token-listed"])
def test_credentials_only_with_accounts_and_an_origin_listed_by_name(upstream, tmp_path, mode):
    """With `*` any site could read a signed-in user's answers; without accounts there is no
    cookie to send."""
    if mode == "users-star":
        client = users_client(upstream, tmp_path, ("*",))
    else:
        client = make_client(upstream, cors_origins=(LISTED,), proxy_token=TOKEN)
    answer = preflight(client, CHAT)
    assert answer.headers["Access-Control-Allow-Origin"] in ("*", LISTED)
    assert "Access-Control-Allow-Credentials" not in answer.headers


@pytest.mark.parametrize("path", [CHAT, "/v1/chat/completions"])
def test_a_preflight_names_the_methods_and_is_cached_ten_minutes(upstream, path):
    client = make_client(upstream, cors_origins=(LISTED,), proxy_token=TOKEN)
    answer = preflight(client, path)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == LISTED
    methods = {m.strip() for m in answer.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"GET", "POST", "PATCH", "DELETE", "OPTIONS"}
    assert answer.headers["Access-Control-Max-Age"] == "600"


def test_a_cross_origin_page_may_read_the_service_headers(upstream):
    client = make_client(upstream, cors_origins=(LISTED,), proxy_token=TOKEN)
    response = client.post(CHAT, json={"message": "hi"},
                           headers={"Origin": LISTED, "Sec-Fetch-Site": "cross-site", **auth()})
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"]
               .split(",")}
    assert exposed >= {"x-request-id", "retry-after", "x-budget-remaining", "x-reply-id"}


def test_a_cross_site_request_without_an_origin_is_refused_even_with_star(upstream):
    """A browser that says cross-site but names no origin cannot be matched to the list."""
    client = make_client(upstream, cors_origins=("*",))
    response = client.post(CHAT, json={"message": "hi"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert_json_error(response, 403, "forbidden_origin")
    assert upstream.records == []


# --- rate limits ----------------------------------------------------------------------------

def test_preflights_and_pages_do_not_count_against_the_rate_limit(upstream):
    client = make_client(upstream, rate_limit="2/minute", cors_origins=(LISTED,))
    address = {"REMOTE_ADDR": "10.0.0.3"}
    for _ in range(4):
        assert client.options(CHAT, headers={"Origin": LISTED, "Access-Control-Request-Method":
                                             "POST"}, environ_base=address).status_code == 200
        assert client.get("/", environ_base=address).status_code == 200
    assert [chat_as(client, "10.0.0.3").status_code for _ in range(3)] == [200, 200, 429]


def test_the_rate_limit_sends_no_headers_of_its_own(upstream):
    """Retry-After on a refusal only: no X-RateLimit-* header telling every client the count."""
    client = make_client(upstream, rate_limit="2/minute")
    for response in [chat_as(client, "10.0.0.4") for _ in range(3)]:
        assert not [name for name in response.headers.keys()
                    if name.lower().startswith("x-ratelimit")]


def test_retry_after_is_the_whole_window_when_the_storage_fails():
    from types import SimpleNamespace

    from limits import parse

    class Failing:
        @property
        def current_limit(self):
            raise ConnectionError("redis went away")

    minute = SimpleNamespace(limit=parse("2/minute"))
    assert security._retry_after(Failing(), SimpleNamespace(limit=minute)) == 60


# --- proxies, headers, logs -----------------------------------------------------------------

def test_behind_two_trusted_proxies_the_client_is_the_second_last_address(upstream):
    client = make_client(upstream, rate_limit="2/minute", trusted_proxies=2)
    codes = [chat_as(client, "127.0.0.1", {"X-Forwarded-For": f"6.6.6.{i}, 192.0.2.1, 10.0.0.{i}"})
             .status_code for i in range(3)]
    assert codes == [200, 200, 429]  # one client (192.0.2.1), whatever the nearer proxy says
    secure = {"X-Forwarded-Proto": "https, http", "X-Forwarded-For": "192.0.2.9, 10.0.0.1"}
    assert client.get("/", headers=secure).headers["Strict-Transport-Security"] == (
        "max-age=31536000")  # the scheme the client used, as the outer proxy saw it


def test_hsts_is_one_year(upstream):
    client = make_client(upstream, trusted_proxies=1)
    headers = client.get("/", headers={"X-Forwarded-Proto": "https"}).headers
    assert headers["Strict-Transport-Security"] == "max-age=31536000"


def test_a_log_value_is_cut_at_200_characters():
    assert security.loggable("x" * 500) == "x" * 200
    assert security.loggable("a\nb" * 100, 7) == "a\\nba\\nba"  # cut, then escaped


def test_the_token_comparison_is_exact(upstream):
    assert security.token_matches(TOKEN, TOKEN)
    assert not security.token_matches(TOKEN, TOKEN + "x")
    assert not security.token_matches("", TEST_KEY)


def test_a_redis_that_never_answers_holds_no_request_for_long(upstream):
    """A rate-limit store that accepts connections and then says nothing (a hung Redis): the
    client is given 1 s to connect and 1 s per answer (redis-py waits longer without them),
    then the limits in memory apply."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the connections; nobody ever reads or answers
    try:
        app = create_app(make_config(
            openai_base_url=upstream.url, rate_limit="2/minute",
            rate_limit_storage=f"redis://127.0.0.1:{silent.getsockname()[1]}/0"))
        [limiter] = app.extensions["limiter"]
        options = limiter._storage.storage.connection_pool.connection_kwargs
        assert (options["socket_connect_timeout"], options["socket_timeout"]) == (1, 1)
        client = app.test_client()
        codes: list[int] = []

        def ask():
            codes.extend(chat_as(client, "10.0.0.8").status_code for _ in range(3))
        worker = threading.Thread(target=ask, daemon=True)
        worker.start()
        worker.join(timeout=120)  # generous: a few seconds each even on a loaded machine
        assert not worker.is_alive(), "a request is still waiting for the silent Redis"
        assert codes == [200, 200, 429]
    finally:
        silent.close()
