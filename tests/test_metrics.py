"""Prometheus metrics: each outcome moves its counter, labels stay bounded, the exposition
parses, and under gunicorn with two workers every request is counted once, a killed worker's
counts included."""

from __future__ import annotations

import concurrent.futures
import glob
import os
import signal
import threading
import time
import uuid

import psutil
import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpt_proxy import create_app
from gpt_proxy.base.metrics import Metrics
from gpt_proxy.pipeline.relay import Outcome

from .conftest import TEST_KEY, make_config, serve
from .fake_upstream import Scenario, chunk_json, json_scenario, sse_bytes, stream_scenario

METRICS = "http://localhost:7346"  # the metrics listener, as the test client addresses it


def samples(text: str) -> dict[tuple, float]:
    """{(name, sorted labels): value} of an exposition, read by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    return sum(v for (n, ls), v in metrics.items() if n == name
               and all(dict(ls).get(k) == w for k, w in labels.items()))


@pytest.fixture()
def app(upstream):
    return create_app(make_config(openai_base_url=upstream.url, metrics_bind="localhost:7346",
                                  heartbeat_seconds=0.2))


@pytest.fixture()
def client(app):
    return app.test_client()


def scrape(client) -> dict:
    response = client.get("/metrics", base_url=METRICS)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def test_metrics_live_on_their_own_listener_only(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 404
    assert client.get("/healthz", base_url=METRICS).status_code == 404
    assert client.get("/api/roles", base_url=METRICS).status_code == 404
    m = scrape(client)  # what it serves: the counts of the requests above
    assert value(m, "gpt_proxy_requests_total", route="/healthz", outcome="ok") == 1
    assert value(m, "gpt_proxy_requests_total", outcome="not_found") == 2  # on its listener


def test_a_relayed_reply_counts_once_with_its_tokens_characters_and_timings(client, upstream):
    upstream.push(stream_scenario(["Hello", " world"]))
    response = client.post("/api/gpt/get", json={"message": "hi", "role": "cli"})
    assert response.get_data(as_text=True) == "Hello world"
    m = scrape(client)
    assert value(m, "gpt_proxy_requests_total", route="/api/gpt/get", protocol="gpt",
                 framing="text", outcome="ok") == 1
    assert value(m, "gpt_proxy_relayed_characters_total", model="fake-model", role="cli") == 11
    assert value(m, "gpt_proxy_upstream_tokens_total", kind="prompt") == 5
    assert value(m, "gpt_proxy_upstream_tokens_total", kind="completion") == 2
    assert value(m, "gpt_proxy_time_to_first_token_seconds_count", model="fake-model") == 1
    assert value(m, "gpt_proxy_stream_duration_seconds_count", outcome="ok") == 1
    assert value(m, "gpt_proxy_streams_open") == 0


def test_a_client_leaving_before_and_after_the_first_token_counts_as_client_left(client, upstream):
    upstream.push(Scenario(parts=[30.0]), Scenario(parts=[sse_bytes(chunk_json("one"))],
                                                   hold_open=True))
    before = client.post("/api/gpt/get", json={"message": "a"}, buffered=False,
                         headers={"Accept": "text/event-stream"})
    before.close()  # only the opening was read
    after = client.post("/api/gpt/get", json={"message": "b"}, buffered=False)
    chunks = iter(after.response)
    assert b"one" in next(chunks) + next(chunks, b"")
    after.close()
    m = scrape(client)
    assert value(m, "gpt_proxy_requests_total", outcome="client_left") == 2
    assert value(m, "gpt_proxy_time_to_first_token_seconds_count") == 1
    assert value(m, "gpt_proxy_stream_duration_seconds_count", outcome="client_left") == 2
    assert value(m, "gpt_proxy_streams_open") == 0


def test_upstream_errors_before_and_after_the_first_byte_count_by_kind(client, upstream):
    upstream.push(json_scenario(500, {"error": {"message": "boom"}}),
                  Scenario(parts=[sse_bytes(chunk_json("part")), b"data: {broken\n\n"]))
    assert client.post("/api/gpt/get", json={"message": "a"}).status_code == 502
    assert "[error]" in client.post("/api/gpt/get", json={"message": "b"}).get_data(True)
    m = scrape(client)
    assert value(m, "gpt_proxy_requests_total", outcome="upstream_error") == 2
    assert value(m, "gpt_proxy_upstream_errors_total", upstream="openai",
                 kind="upstream_error") == 2
    assert value(m, "gpt_proxy_failovers_total") == 0  # one upstream: nowhere to go


def test_rate_limit_refusals_and_bad_requests_are_counted(upstream):
    client = create_app(make_config(openai_base_url=upstream.url, rate_limit="2/minute",
                                    metrics_bind="localhost:7346")).test_client()
    assert client.post("/api/gpt/get", json={"message": 5}).status_code == 400
    assert client.get("/api/roles").status_code == 200
    assert client.get("/api/roles").status_code == 200
    assert client.get("/api/roles").status_code == 429
    m = scrape(client)
    assert value(m, "gpt_proxy_requests_total", route="/api/gpt/get", outcome="bad_request") == 1
    assert value(m, "gpt_proxy_requests_total", route="/api/roles", outcome="ok") == 2
    assert value(m, "gpt_proxy_requests_total", route="/api/roles", outcome="rate_limited") == 1
    assert value(m, "gpt_proxy_rate_limited_total", route="/api/roles") == 1


def test_heartbeats_are_counted(client, upstream):
    upstream.push(stream_scenario(["late"], first_delay=0.7))
    client.post("/api/gpt/get", json={"message": "a"},
                headers={"Accept": "text/event-stream"}).get_data()
    assert value(scrape(client), "gpt_proxy_heartbeats_total", protocol="gpt") >= 2


def test_random_models_and_roles_create_no_new_series(client, upstream):
    upstream.push(*[stream_scenario(["x"]) for _ in range(6)])
    client.post("/api/gpt/get", json={"message": "warm", "model": "seed"}).get_data()
    series = set(scrape(client))
    for _ in range(3):
        name = uuid.uuid4().hex
        client.post("/api/gpt/get", json={"message": "x", "model": name}).get_data()
        client.post("/v1/chat/completions", json={"model": name, "messages": [
            {"role": "user", "content": "x"}], "stream": True}).get_data()
        client.post("/api/gpt/get", json={"message": "x", "role": name[:20]})
    grown = {key for key in set(scrape(client)) - series}
    names = {dict(labels).get(k) for _, labels in grown for k in ("model", "role")}
    assert not any(n and len(n) >= 20 for n in names), grown
    assert all(dict(labels).get("model") in (None, "other", "fake-model") for _, labels in grown)


def test_an_unknown_model_is_other_and_the_configured_one_keeps_its_name(client, upstream):
    upstream.push(stream_scenario(["x"]), stream_scenario(["y"]))
    client.post("/api/gpt/get", json={"message": "a"}).get_data()
    client.post("/api/gpt/get", json={"message": "a", "model": "gpt-unlisted"}).get_data()
    m = scrape(client)
    assert value(m, "gpt_proxy_relayed_characters_total", model="fake-model") == 1
    assert value(m, "gpt_proxy_relayed_characters_total", model="other") == 1


def test_a_model_a_role_file_names_keeps_its_name(upstream, tmp_path):
    (tmp_path / "cheap.md").write_text("---\nmodel: cheap-model\n---\n# SYSTEM\nBe cheap.\n")
    client = create_app(make_config(openai_base_url=upstream.url, metrics_bind="localhost:7346",
                                    roles_dir=str(tmp_path))).test_client()
    upstream.push(stream_scenario(["x"]), stream_scenario(["yz"]))
    client.post("/api/gpt/get", json={"message": "a", "role": "cheap"}).get_data()
    # the same name asked for by a client is not a configured model: `other`
    client.post("/api/gpt/get", json={"message": "a", "model": "cheap-model"}).get_data()
    m = scrape(client)
    assert value(m, "gpt_proxy_relayed_characters_total", model="cheap-model", role="cheap") == 1
    assert value(m, "gpt_proxy_relayed_characters_total", model="other") == 2


class _CollectionInside:
    """A metric's lock that, once taken, runs `finalize` while holding it: what a garbage
    collection that starts inside prometheus_client's update does when it finalizes an
    abandoned relay (its close counts the stream on this same thread)."""

    def __init__(self, lock, finalize) -> None:
        self.lock, self.finalize, self.fired = lock, finalize, False

    def __enter__(self):
        self.lock.acquire()
        if not self.fired:
            self.fired = True
            self.finalize()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def test_a_relay_finalized_inside_a_metric_update_is_counted_after_it_not_deadlocked():
    metrics = Metrics(models=("m",))

    def ended(role: str) -> None:
        metrics.stream_ended(route="/r", protocol="gpt", framing="text/plain", model="m",
                             role=role, outcome=Outcome(content=["abc"]),
                             started=time.monotonic(), upstream="u")

    metrics.characters._lock = _CollectionInside(metrics.characters._lock,
                                                 lambda: ended("abandoned"))
    finished = threading.Event()

    def update() -> None:
        ended("live")
        finished.set()

    # A thread of its own, so a deadlock fails this test instead of hanging the suite.
    threading.Thread(target=update, daemon=True).start()
    assert finished.wait(10), "the update deadlocked on its own lock"
    m = samples(generate_latest(metrics.registry).decode())
    assert value(m, "gpt_proxy_relayed_characters_total", role="live") == 3
    assert value(m, "gpt_proxy_relayed_characters_total", role="abandoned") == 3
    assert value(m, "gpt_proxy_requests_total", outcome="ok") == 2


# --- under gunicorn, two workers --------------------------------------------------------

def ask(url: str, i: int) -> int:
    return requests.post(f"{url}/api/gpt/get", json={"message": f"m{i}"}, timeout=20).status_code


def test_two_workers_count_every_request_once_and_a_killed_workers_counts_stay(
        fake_upstream, tmp_path):
    fake_upstream.reset()
    fake_upstream.default = stream_scenario(["a", "b"], pause=0.02)
    folder = tmp_path / "metrics"
    try:
        with serve(fake_upstream, tmp_path, WEB_CONCURRENCY="2",
                   PROMETHEUS_MULTIPROC_DIR=str(folder)) as server:
            sent = 0
            pool = concurrent.futures.ThreadPoolExecutor(16)
            for _ in range(10):  # until both workers have served (bounded)
                statuses = list(pool.map(lambda i: ask(server.url, i), range(sent, sent + 32)))
                assert statuses == [200] * 32
                sent += 32
                if len(glob.glob(str(folder / "counter_*.db"))) >= 2:
                    break
            assert len(glob.glob(str(folder / "counter_*.db"))) >= 2, "one worker took everything"
            m = samples(requests.get(server.metrics_url, timeout=10).text)
            assert value(m, "gpt_proxy_requests_total", outcome="ok") == sent
            assert value(m, "gpt_proxy_relayed_characters_total") == 2 * sent
            assert value(m, "gpt_proxy_streams_open") == 0

            victim = psutil.Process(server.proc.pid).children()[0]
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            statuses = list(pool.map(lambda i: ask(server.url, i), range(10)))
            assert statuses == [200] * 10
            m = samples(requests.get(server.metrics_url, timeout=10).text)
            assert value(m, "gpt_proxy_requests_total", outcome="ok") == sent + 10
            pool.shutdown()
    finally:
        fake_upstream.default = stream_scenario(["Hello", ", ", "world", "!"])


def test_the_public_listener_does_not_serve_metrics(live):
    assert requests.get(f"{live.url}/metrics", timeout=5).status_code == 404
    assert requests.get(live.metrics_url.replace("/metrics", "/healthz"), timeout=5
                        ).status_code == 404
    text = requests.get(live.metrics_url, timeout=5).text
    assert "gpt_proxy_requests_total" in text and TEST_KEY not in text


def test_the_dashboard_and_alert_rules_ask_only_for_metrics_the_service_exposes(client, upstream):
    import json
    import re

    from .conftest import ROOT

    text = client.get("/metrics", base_url=METRICS).get_data(as_text=True)
    families = {family.name for family in text_string_to_metric_families(text)}
    dashboard = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs.append((ROOT / "monitoring" / "alerts.yml").read_text())
    wanted = {re.sub(r"_(total|bucket|count|sum)$", "", name) for text in exprs
              for name in re.findall(r"gpt_proxy_[a-z_]+", text)}
    assert len(wanted) >= 8 and wanted <= families, wanted - families
    assert {"Streams open", "Time to first token", "Tokens per minute by model",
            "Errors per minute by kind"} <= {panel["title"] for panel in dashboard["panels"]}


def test_with_metrics_off_nothing_is_kept_or_served(upstream):
    from gpt_proxy.base.metrics import NoMetrics

    app = create_app(make_config(openai_base_url=upstream.url, metrics_bind=""))
    assert isinstance(app.extensions["gpt_proxy"].metrics, NoMetrics)
    client = app.test_client()
    upstream.push(stream_scenario(["x"]))
    assert client.post("/api/gpt/get", json={"message": "a"}).get_data(as_text=True) == "x"
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", base_url=METRICS).status_code == 404
