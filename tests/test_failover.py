"""Several upstreams: the upstream list, failover before the first byte, the circuit breaker,
connection retries (never once the request may have reached the upstream), Azure, against
real fake upstreams on 127.0.0.1 (the app in-process, a clock the test moves by hand; no
sleeps)."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import replace

import pytest

from gpt_proxy import create_app
from gpt_proxy.config import ConfigError, UpstreamSpec, load_config
from gpt_proxy.failover import Breaker, Upstreams
from gpt_proxy.upstream import new_session

from .conftest import TEST_DATABASE, TEST_KEY, FakeClock, access_lines, sse_events
from .fake_upstream import (
    FakeUpstream,
    Scenario,
    chunk_json,
    json_scenario,
    sse_bytes,
    stream_scenario,
)
from .processes import free_port

KEY_A, KEY_B, KEY_C = "sk-a-0123456789abcdef", "sk-b-0123456789abcdef", "sk-c-0123456789abcdef"


@pytest.fixture(scope="module")
def trio():
    servers = [FakeUpstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture()
def fakes(trio):
    for server in trio:
        server.reset()
    yield trio
    for server in trio:
        server.reset()


def spec(name, url, key=KEY_A, **kw) -> UpstreamSpec:
    return UpstreamSpec(name, url, key, **kw)


def service(specs, clock=None, sleep=lambda s: None, session=None, **overrides):
    """The app with these upstreams (in this order unless they name priorities, as in a
    file), a hand-moved clock, and no real backoff sleeps."""
    specs = [s if s.priority else replace(s, priority=i + 1) for i, s in enumerate(specs)]
    config = load_config({}, openai_model="fake-model", upstreams=tuple(specs),
                         database_url=TEST_DATABASE, **overrides)
    clock = clock or FakeClock()
    upstreams = Upstreams(config, session, clock=clock, sleep=sleep)
    return create_app(config, upstream=upstreams).test_client(), upstreams, clock


def ask(client, accept="text/event-stream", **body):
    body.setdefault("message", "hi")
    return client.post("/api/gpt/get", json=body, headers={"Accept": accept})


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


# --- the upstream list ----------------------------------------------------------------------

def write(tmp_path, text: str) -> str:
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    return str(path)


def test_an_upstreams_file_is_read_in_priority_order_with_keys_from_the_environment(tmp_path):
    path = write(tmp_path, """
[[upstream]]
name = "spare"
base_url = "https://b.example/v1/"
key_env = "KEY_B"
priority = 5

[[upstream]]
name = "main"
base_url = "https://a.example/v1"
key_env = "KEY_A"
models = ["m1", "m2"]

[[upstream]]
name = "azure"
kind = "azure"
base_url = "https://r.openai.azure.com"
key_env = "KEY_C"
deployments = { "m1" = "dep-1" }
""")
    config = load_config({"UPSTREAMS_FILE": path, "KEY_A": KEY_A, "KEY_B": KEY_B,
                          "KEY_C": KEY_C, "OPENAI_MODEL": "m1"})
    names = [s.name for s in config.endpoints()]
    assert names == ["main", "azure", "spare"]  # priorities 1 (position), 2, 5
    main, azure, spare = config.endpoints()
    assert (main.key, main.models, spare.base_url) == (KEY_A, ("m1", "m2"), "https://b.example/v1")
    assert azure.models == ("m1",) and azure.deployments == {"m1": "dep-1"}
    assert KEY_A not in repr(config) and not config.demo


@pytest.mark.parametrize("text,named", [
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "MISSING"', "#1 (a)"),
    ('[[upstream]]\nname = "a"\nkind = "gemini"\nbase_url = "https://a/v1"\nkey_env = "K"', "'kind'"),
    ('[[upstream]]\nname = "a"\nbase_url = "ftp://a"\nkey_env = "K"', "'base_url'"),
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "K"\nkey = "sk-x"', "'key'"),
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "K"\n'
     '[[upstream]]\nname = "a"\nbase_url = "https://b/v1"\nkey_env = "K"', "used twice"),
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "K"\napi_version = "x"',
     "azure"),
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "K"\nmodels = "m"',
     "'models'"),
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "K"\npriority = "1"',
     "'priority'"),
    ('[[upstream]]\nname = "a b"\nbase_url = "https://a/v1"\nkey_env = "K"', "'name'"),
    ('[upstream]\nname = "a"', "no [[upstream]]"),
    ("not toml [", "not valid TOML"),
    ('[[upstream]]\nname = "a"\nbase_url = "https://a/v1"\nkey_env = "K"\nmodels = ["x"]',
     "serves model 'gpt-4o-mini'"),
])
def test_a_bad_upstreams_file_stops_start_up_naming_the_entry(tmp_path, text, named):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config({"UPSTREAMS_FILE": path, "K": KEY_A})
    assert "UPSTREAMS_FILE" in str(caught.value) and named in str(caught.value)
    assert KEY_A not in str(caught.value)


def test_a_missing_upstreams_file_is_named():
    with pytest.raises(ConfigError, match="UPSTREAMS_FILE='nowhere.toml' cannot be read"):
        load_config({"UPSTREAMS_FILE": "nowhere.toml"})


def test_the_example_upstreams_file_loads():
    env = {"UPSTREAMS_FILE": "upstreams.example.toml", "OPENAI_API_KEY": KEY_A,
           "OPENAI_API_KEY_SPARE": KEY_B, "AZURE_OPENAI_API_KEY": KEY_C}
    assert [s.name for s in load_config(env).endpoints()] == ["openai-a", "openai-b", "azure-eu"]


# --- failover -------------------------------------------------------------------------------

def test_a_refused_connection_fails_over_to_the_next_upstream(fakes, caplog):
    _, b, _ = fakes
    client, _, _ = service([spec("dead", refused_url()), spec("b", b.url, KEY_B)],
                           connect_retries=0)
    with caplog.at_level(logging.INFO, logger="gpt_proxy.access"):
        response = ask(client, "*/*")
        assert response.get_data(as_text=True) == "Hello, world!"
    assert b.records[0].headers["authorization"] == f"Bearer {KEY_B}"
    assert "upstream=b tried=2" in access_lines(caplog)[-1]


@pytest.mark.parametrize("error,moves_on", [
    ({"error": {"message": "quota used up", "type": "insufficient_quota", "code": 429}}, True),
    ({"error": {"message": "overloaded"}}, True),  # no status named: a 502
    ({"error": {"message": "bad key", "code": 401}}, False),  # the key is wrong, not busy
])
def test_an_error_in_a_200_answer_fails_over_like_its_status(fakes, error, moves_on):
    a, b, _ = fakes
    a.push(json_scenario(200, error))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    response = ask(client, "*/*")
    if moves_on:
        assert response.get_data(as_text=True) == "Hello, world!" and len(b.records) == 1
    else:
        assert response.status_code == 502 and b.records == []
        assert response.get_json()["error"]["code"] == "upstream_auth"
    assert len(a.records) == 1


def test_a_connection_refused_before_sending_is_retried_on_the_same_upstream(fakes):
    port = free_port()
    started: list[FakeUpstream] = []

    def backoff(seconds: float) -> None:  # the upstream comes up while we wait
        assert 0 < seconds < 1
        if not started:
            started.append(FakeUpstream(port=port).start())

    client, _, _ = service([spec("a", f"http://127.0.0.1:{port}/v1")], sleep=backoff)
    try:
        assert ask(client, "*/*").get_data(as_text=True) == "Hello, world!"
        assert len(started) == 1 and len(started[0].records) == 1
    finally:
        for server in started:
            server.stop()


def test_a_refused_upstream_with_no_other_is_a_503_after_its_retries(fakes):
    naps = []
    client, _, _ = service([spec("dead", refused_url())], sleep=naps.append)
    response = ask(client, "application/json")
    assert response.status_code == 503 and len(naps) == 2 and naps[1] > naps[0]


class AfterTheRequest:
    """An upstream on 127.0.0.1 that reads each request whole (so it has reached the upstream),
    counts it, then fails: `how` is "close" (a FIN, no answer), "reset" (an RST) or "half"
    (half a status line, then a FIN)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    data += piece
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1
                if self.how == "reset":  # SO_LINGER 0: close() sends an RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif self.how == "half":
                    conn.sendall(b"HTTP/1.1 2")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("how", ["close", "reset", "half"])
def test_a_request_that_reached_the_upstream_is_never_sent_again_with_retries_on(fakes, how):
    """CONNECT_RETRIES=3: a connection refused before the request left is tried again, but
    one that failed after the upstream had the request is not, neither by us nor by urllib3
    (a chat request sent twice is paid twice): the one request, a clean error, no nap."""
    dead = AfterTheRequest(how)
    try:
        naps: list[float] = []
        client, _, _ = service([spec("flaky", dead.url)], sleep=naps.append, connect_retries=3)
        for accept in ("text/event-stream", "application/json"):
            before = dead.requests
            response = ask(client, accept)
            assert response.status_code in (502, 503), response.data
            assert response.get_json()["error"]["code"] in ("upstream_error",
                                                            "upstream_unavailable")
            assert dead.requests == before + 1 and naps == []
        refused, _, _ = service([spec("dead", refused_url())], sleep=naps.append,
                                connect_retries=3)
        assert ask(refused).status_code == 503 and len(naps) == 3  # retries are on
    finally:
        dead.close()


@pytest.mark.parametrize("scenario", [
    json_scenario(500, {"error": {"message": "boom"}}),
    json_scenario(503, {"error": {"message": "overloaded"}}),
    json_scenario(429, {"error": {"message": "slow down"}}),
])
def test_a_5xx_or_429_fails_over(fakes, scenario):
    a, b, _ = fakes
    a.push(scenario)
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    assert ask(client, "*/*").get_data(as_text=True) == "Hello, world!"
    assert len(a.records) == 1 and len(b.records) == 1


@pytest.mark.parametrize("status,expected", [(400, 400), (401, 502), (403, 502), (404, 502),
                                             (422, 400), (413, 413)])
def test_a_client_or_key_error_is_answered_without_failing_over(fakes, status, expected):
    a, b, _ = fakes
    a.push(json_scenario(status, {"error": {"message": "no"}}))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    assert ask(client).status_code == expected
    assert len(a.records) == 1 and b.records == []


def test_a_timeout_before_the_headers_fails_over_within_the_failover_budget(fakes):
    """The wait for the first upstream's headers is cut from the 120 s read timeout to the
    1 s budget (a would answer after 30 s: its "late" would be the reply); the last upstream
    tried gets its full timeouts."""
    a, b, _ = fakes
    a.push(Scenario(head_delay=30, parts=[sse_bytes(chunk_json("late"))]))
    session, timeouts = new_session(), []
    send = session.send

    def recording_send(request, **settings):
        timeouts.append(settings["timeout"])
        return send(request, **settings)

    session.send = recording_send
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)], session=session,
                           failover_seconds=1, upstream_read_timeout=120)
    assert ask(client, "*/*").get_data(as_text=True) == "Hello, world!"
    assert timeouts == [(1.0, 1.0), (10.0, 120.0)]
    assert a.records[0].disconnected.wait(10)


def test_a_retry_after_keeps_the_upstream_aside_until_it_passes(fakes):
    a, b, _ = fakes
    a.push(json_scenario(429, {"error": {"message": "slow"}}, headers={"Retry-After": "20"}))
    client, upstreams, clock = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    for _ in range(3):
        assert ask(client, "*/*").status_code == 200
    assert len(a.records) == 1 and len(b.records) == 3
    assert upstreams.health()[0] == {"name": "a", "state": "open"}
    clock.now += 21
    assert ask(client, "*/*").status_code == 200
    assert len(a.records) == 2


def test_the_breaker_skips_a_failing_upstream_then_probes_it_after_the_cool_down(fakes):
    a, b, _ = fakes
    for _ in range(3):
        a.push(json_scenario(500, {"error": {"message": "down"}}))
    client, upstreams, clock = service([spec("a", a.url), spec("b", b.url, KEY_B)],
                                       upstream_failures=2, upstream_cooldown=30)
    for _ in range(4):
        assert ask(client, "*/*").status_code == 200
    assert len(a.records) == 2  # tripped after two failures, then skipped
    clock.now += 31  # half-open: the next request probes it, and it fails again
    assert upstreams.health()[0]["state"] == "half_open"
    assert ask(client, "*/*").status_code == 200 and len(a.records) == 3
    clock.now += 31  # the cool-down doubled to 60 s
    assert ask(client, "*/*").status_code == 200 and len(a.records) == 3
    clock.now += 30
    assert ask(client, "*/*").status_code == 200 and len(a.records) == 4  # recovered
    assert upstreams.health()[0]["state"] == "closed"


def test_when_every_upstream_cools_down_the_first_to_recover_is_tried(fakes):
    a, b, _ = fakes
    a.push(json_scenario(429, {"error": {"message": "x"}}, headers={"Retry-After": "50"}))
    b.push(json_scenario(429, {"error": {"message": "y"}}, headers={"Retry-After": "10"}))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    first = ask(client)
    assert first.status_code == 429 and "tried 2 upstreams" in first.get_json()["error"]["message"]
    assert ask(client, "*/*").status_code == 200
    assert (len(a.records), len(b.records)) == (1, 2)


def test_a_failure_after_the_first_byte_is_an_error_event_never_another_upstream(fakes):
    a, b, _ = fakes
    a.push(Scenario(parts=[sse_bytes(chunk_json("partial")), b"data: {broken\n\n"]))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    events = sse_events(ask(client).get_data(as_text=True))
    assert events[0] == ("message", {"content": "partial"}) and events[-1][0] == "error"
    assert b.records == []


def test_once_the_failover_budget_is_spent_one_last_upstream_is_tried(fakes):
    a, b, c = fakes

    class Jumping(FakeClock):
        """Every reading is `step` seconds after the last."""

        def __init__(self, step: float) -> None:
            super().__init__()
            self.step = step

        def __call__(self) -> float:
            self.now += self.step
            return self.now

    for step, tried_c in ((1.0, True), (10.0, False)):
        for server in fakes:
            server.reset()
        a.push(json_scenario(500, {"error": {"message": "down"}}))
        b.push(json_scenario(500, {"error": {"message": "down"}}))
        client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B),
                                spec("c", c.url, KEY_C)], clock=Jumping(step),
                               failover_seconds=10)
        response = ask(client)
        assert len(b.records) == 1  # the budget spent after a: b is the last try
        assert (response.status_code == 200) is tried_c and (len(c.records) == 1) is tried_c


def test_equal_priorities_take_turns(fakes):
    a, b, c = fakes
    client, _, _ = service([spec("a", a.url, priority=1), spec("b", b.url, KEY_B, priority=1),
                            spec("c", c.url, KEY_C, priority=2)])
    for _ in range(4):
        assert ask(client, "*/*").status_code == 200
    assert (len(a.records), len(b.records), len(c.records)) == (2, 2, 0)
    assert [r.headers["authorization"][-20:] for r in a.records] == [f"Bearer {KEY_A}"[-20:]] * 2


def test_a_request_goes_only_to_upstreams_serving_its_model(fakes):
    a, b, _ = fakes
    client, _, _ = service([spec("a", a.url, models=("fake-model",)),
                            spec("b", b.url, KEY_B, models=("other",))],
                           allowed_models=("fake-model", "other"))
    assert ask(client, "*/*", model="other").status_code == 200
    assert len(b.records) == 1 and a.records == []
    listed = [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    assert listed[:2] == ["fake-model", "other"]


def test_a_model_no_upstream_serves_is_refused_on_both_doors(fakes):
    a, _, _ = fakes
    client, _, _ = service([spec("a", a.url, models=("fake-model",))])
    response = ask(client, model="gpt-x")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "model_not_served"
    response = client.post("/v1/chat/completions", json={
        "model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404 and a.records == []


def test_the_key_of_each_upstream_stays_out_of_replies(fakes):
    a, b, _ = fakes
    a.push(json_scenario(503, {"error": {"message": f"bad key {KEY_A}"}}))
    b.push(json_scenario(500, {"error": {"message": f"bad key {KEY_B}"}}))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    text = ask(client).get_data(as_text=True)
    assert KEY_A not in text and KEY_B not in text and "tried 2" in text


# --- the breaker alone ----------------------------------------------------------------------

def test_the_breaker_opens_after_failures_in_a_row_and_a_success_resets_it():
    breaker = Breaker(threshold=3, cooldown=10)
    breaker.failed(0)
    breaker.failed(1)
    breaker.succeeded()
    breaker.failed(2)
    breaker.failed(3)
    assert breaker.state(3) == "closed"
    breaker.failed(4)
    assert breaker.state(4) == "open" and breaker.state(14.5) == "half_open"
    breaker.attempt(15)
    assert not breaker.available(15)  # one probe at a time
    breaker.released()
    assert breaker.available(15)
    for now in range(20, 30):
        breaker.failed(now)
    assert breaker.cooldown == 600  # doubling, capped


# --- Azure ----------------------------------------------------------------------------------

def test_azure_gets_its_deployment_url_api_version_and_api_key_header(fakes):
    a, _, _ = fakes
    base = a.url[:-len("/v1")]
    client, _, _ = service([spec("az", base, KEY_C, kind="azure", models=("fake-model",),
                                 deployments={"fake-model": "prod-mini"})])
    assert ask(client, "*/*").get_data(as_text=True) == "Hello, world!"
    record = a.records[0]
    assert record.method == "POST"
    assert record.path == "/openai/deployments/prod-mini/chat/completions?api-version=2024-10-21"
    assert record.headers["api-key"] == KEY_C and "authorization" not in record.headers
    assert record.json["messages"][-1] == {"role": "user", "content": "hi"}


def test_an_azure_model_without_a_deployment_entry_uses_its_own_name(fakes):
    a, _, _ = fakes
    client, _, _ = service([spec("az", a.url[:-3], KEY_C, kind="azure", api_version="2025-01-01")])
    ask(client, "*/*").get_data()
    assert a.records[0].path == "/openai/deployments/fake-model/chat/completions?api-version=2025-01-01"


def test_the_access_line_names_the_upstream_that_answered_and_how_many_were_tried(fakes, caplog):
    a, b, _ = fakes
    a.push(json_scenario(500, {"error": {"message": "down"}}),
           json_scenario(500, {"error": {"message": "down"}}))
    b.push(json_scenario(502, {"error": {"message": "down too"}}))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)], upstream_failures=5)
    with caplog.at_level(logging.INFO, logger="gpt_proxy.access"):
        assert ask(client, "*/*").status_code == 502
        ask(client, "*/*").get_data()
    failed, answered = access_lines(caplog)[-2:]
    assert "status=502" in failed and "upstream=b tried=2" in failed
    assert "upstream=b tried=2" in answered and "result=ok" in answered


def test_stream_json_upstream_events_pass_through_failover_untouched(fakes):
    """The body sent to each upstream is the same bytes."""
    a, b, _ = fakes
    a.push(json_scenario(500, {"error": {"message": "down"}}))
    b.push(stream_scenario(["ok"]))
    client, _, _ = service([spec("a", a.url), spec("b", b.url, KEY_B)])
    ask(client, "*/*", message="你好 🙂").get_data()
    assert a.records[0].body == b.records[0].body
    assert json.loads(b.records[0].body)["messages"][-1]["content"] == "你好 🙂"
    assert TEST_KEY not in a.records[0].body.decode()


def test_failovers_and_benched_upstreams_show_in_the_metrics(fakes):
    from prometheus_client import generate_latest

    from gpt_proxy.metrics import Metrics

    from .test_metrics import samples, value

    a, b, _ = fakes
    a.push(json_scenario(429, {"error": {"message": "slow"}}, headers={"Retry-After": "20"}))
    metrics = Metrics()
    config = load_config({}, openai_model="fake-model", upstreams=(
        spec("a", a.url, priority=1), spec("b", b.url, KEY_B, priority=2)))
    upstreams = Upstreams(config, clock=FakeClock(), sleep=lambda s: None, metrics=metrics)
    before = time.time()
    upstreams.open({"model": "fake-model", "messages": []}).close()
    after = time.time()
    m = samples(generate_latest(metrics.registry).decode())
    assert value(m, "gpt_proxy_failovers_total", upstream="a") == 1
    assert value(m, "gpt_proxy_upstream_errors_total", upstream="a",
                 kind="upstream_rate_limited") == 1
    benched_until = value(m, "gpt_proxy_upstream_benched_until_seconds", upstream="a")
    assert before + 20 <= benched_until <= after + 20  # its Retry-After, as a Unix time
    assert value(m, "gpt_proxy_upstream_failures_in_a_row", upstream="a") == 1


def test_the_environments_proxy_is_used_and_netrc_never(fakes, monkeypatch, tmp_path):
    a, _, _ = fakes
    proxy = a.url[:-len("/v1")]
    (tmp_path / ".netrc").write_text("machine upstream.invalid login me password netrc-secret\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client, _, _ = service([spec("via-proxy", "http://upstream.invalid/v1")])
    assert ask(client, "*/*").get_data(as_text=True) == "Hello, world!"
    record = a.records[0]
    assert record.path == "http://upstream.invalid/v1/chat/completions"  # proxy form
    assert record.headers["authorization"] == f"Bearer {KEY_A}"

    monkeypatch.setenv("NO_PROXY", "upstream.invalid")
    client, _, _ = service([spec("direct", "http://upstream.invalid/v1")], connect_retries=0)
    assert ask(client).status_code == 503  # straight to a name that does not resolve
    assert len(a.records) == 1


def test_a_cookie_an_upstream_sets_never_rides_along_with_later_requests(fakes):
    a, _, _ = fakes
    scenario = stream_scenario(["one"])
    scenario.headers = {**scenario.headers, "Set-Cookie": "__cf_bm=user-one; Path=/"}
    a.push(scenario)
    client, _, _ = service([spec("a", a.url)])
    ask(client, "*/*").get_data()
    ask(client, "*/*").get_data()
    assert len(a.records) == 2 and "cookie" not in a.records[1].headers


def test_a_request_built_from_the_template_is_what_requests_would_prepare():
    """`_with_body` copies requests' PreparedRequest by hand (skipping its cookie jar): if
    requests adds a field to it, this says so."""
    import requests

    from gpt_proxy.upstream import HEADERS, BearerAuth, _with_body, new_session

    session = new_session()
    made = session.prepare_request(requests.Request(
        "POST", "https://api.example/v1/chat/completions", headers=HEADERS,
        auth=BearerAuth(KEY_A), data=b'{"x": 1}'))
    template = session.prepare_request(requests.Request(
        "POST", "https://api.example/v1/chat/completions", headers=HEADERS,
        auth=BearerAuth(KEY_A), data=b"{}"))
    built = _with_body(template, b'{"x": 1}')
    fields = set(vars(requests.PreparedRequest()))
    assert fields == {"method", "url", "headers", "_cookies", "body", "hooks",
                      "_body_position"}, fields
    for name in ("method", "url", "body", "hooks", "_body_position"):
        assert getattr(built, name) == getattr(made, name), name
    assert dict(built.headers) == dict(made.headers)
