"""Prometheus metrics: what a person running the service needs to see, from every worker.

The rules it follows:
- prometheus_client, the well-kept library, in its multiprocess mode under gunicorn:
  `gunicorn.conf.py` gives each server start a fresh directory (PROMETHEUS_MULTIPROC_DIR)
  before any worker starts, and tells the library when a worker dies, so that worker's live
  gauges (streams open) are dropped while its counters and histograms stay: counts are never
  lost when a worker is killed, and never doubled (its replacement writes files of its own).
  Without that directory (a single process, the tests) each app has a registry of its own.
- Served at GET /metrics on METRICS_BIND only: a listener of its own, off the public surface,
  so a scraper needs no proxy token and no client can read the operator's figures.
- Labels stay bounded: a model is its name only when the service is configured for it
  (ALLOWED_MODELS, OPENAI_MODEL, the models the upstreams name), else `other`; a role is a
  loaded role's name; routes are URL rules; outcomes and error kinds are the service's own
  codes; upstreams are the configured names. Nothing a client sends becomes a series.
- What the database knows is read from the database when scraped, not counted in each worker
  (`_Reservations`: the open budget reservations, and how far the counters are from them):
  every worker and instance agrees, and a killed worker or a failed settlement cannot skew it.
- Cheap: a relayed reply updates its counters once, when it ends (from the relay's outcome),
  plus one gauge step when it starts; nothing is done per token.
- Never a deadlock: prometheus_client updates under locks that are not re-entrant, and a
  garbage collection that runs inside one may finalize an abandoned relay, whose close counts
  its stream on that same thread. An update that begins while another is running on its
  thread is queued, and runs as soon as that one is done (`_one_at_a_time`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
FRAMINGS = {"text/event-stream": "sse", "text/plain": "text", "application/json": "json",
            "application/octet-stream": "ndjson"}
OTHER = "other"
IMAGE_SIZES = frozenset(("256x256", "512x512", "1024x1024", "1024x1536", "1536x1024",
                         "1792x1024", "1024x1792", "auto"))
_running = threading.local()  # the updates queued behind the one running on this thread


def _one_at_a_time(update):
    """Run `update` now, or after the update already running on this thread (see the module's
    docstring: one re-entered from a finalizer would wait for a lock its own thread holds)."""
    @functools.wraps(update)
    def run(self, *args, **kwargs):
        queue = getattr(_running, "queue", None)
        if queue is not None:
            queue.append((update, self, args, kwargs))
            return None
        _running.queue = queue = []
        try:
            result = update(self, *args, **kwargs)
            while queue:
                then, metrics, args_, kwargs_ = queue.pop(0)
                then(metrics, *args_, **kwargs_)
            return result
        finally:
            _running.queue = None
    return run


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class Metrics:
    """The service's metrics, in a registry of this app's own (single process) or in the
    shared multiprocess files (gunicorn)."""

    def __init__(self, models: tuple[str, ...] = ()) -> None:
        self.models = frozenset(models)
        self._children: dict[tuple, object] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gpt_proxy_requests", "Requests answered, by route, protocol, framing and "
            "outcome (ok, client_left, or the error code)",
            ["route", "protocol", "framing", "outcome"], registry=r)
        self.streams_open = Gauge(
            "gpt_proxy_streams_open", "Replies being relayed now", ["protocol"], registry=r,
            multiprocess_mode="livesum")
        self.ttft = Histogram(
            "gpt_proxy_time_to_first_token_seconds", "From the request to the first token "
            "relayed", ["protocol", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram(
            "gpt_proxy_stream_duration_seconds", "From the request to the end of its reply "
            "(outcome: ok, error, client_left)",
            ["protocol", "outcome"], buckets=DURATION_BUCKETS, registry=r)
        self.characters = Counter(
            "gpt_proxy_relayed_characters", "Characters of reply text relayed",
            ["model", "role"], registry=r)
        self.tokens = Counter(
            "gpt_proxy_upstream_tokens", "Tokens the upstream reported using (its usage)",
            ["model", "role", "kind"], registry=r)
        self.upstream_errors = Counter(
            "gpt_proxy_upstream_errors", "Upstream failures, before or after the first byte, "
            "by upstream and kind (our error code)", ["upstream", "kind"], registry=r)
        self.failovers = Counter(
            "gpt_proxy_failovers", "Requests moved on to another upstream, by the upstream "
            "that failed", ["upstream"], registry=r)
        self.benched_until = Gauge(
            "gpt_proxy_upstream_benched_until_seconds", "Unix time until which the circuit "
            "breaker skips the upstream (in the past: in use)", ["upstream"], registry=r,
            multiprocess_mode="livemax")
        self.failures_in_a_row = Gauge(
            "gpt_proxy_upstream_failures_in_a_row", "Failures in a row of the upstream "
            "(the breaker opens at UPSTREAM_FAILURES)", ["upstream"], registry=r,
            multiprocess_mode="livemax")
        self.rate_limited = Counter(
            "gpt_proxy_rate_limited", "Requests refused by RATE_LIMIT", ["route"], registry=r)
        self.images = Counter(
            "gpt_proxy_images", "Images the upstream made, by model and size (a size outside "
            "the usual ones is `other`)", ["model", "size"], registry=r)
        self.heartbeats = Counter(
            "gpt_proxy_heartbeats", "Heartbeat comments sent while an upstream was silent",
            ["protocol"], registry=r)
        self.budget_refusals = Counter(
            "gpt_proxy_budget_refusals", "Requests refused for want of budget, by the budget's "
            "kind (scope.unit.period: key.tokens.day, user.usd.month, ...)", ["budget"],
            registry=r)
        self.resumable = Counter(
            "gpt_proxy_resumable_replies", "Resumable replies by how they ended: attached (the "
            "client stayed), detached (the client left, the reply went on into its log), "
            "abandoned (nobody came back within RESUME_GRACE_SECONDS), cancelled (DELETE), "
            "unlogged (the reply store failed)", ["state"], registry=r)
        self.reply_log_failures = Counter(
            "gpt_proxy_reply_log_failures", "Resumable replies whose log could not be written "
            "(the reply store failed): they went on to their client, but cannot be resumed",
            registry=r)
        self.settlement_failures = Counter(
            "gpt_proxy_budget_settlement_failures", "Settlements that went wrong: a counter "
            "not there to settle, or a settlement that raised (each logged with its request "
            "id)", registry=r)
        self._reservations = _Reservations()
        r.register(self._reservations)

    # --- labels -------------------------------------------------------------------------

    def model(self, model: str) -> str:
        return model if model in self.models else OTHER

    def _of(self, metric, *labels: str):
        """`metric.labels(*labels)`, kept: label values are bounded, and looking a child up
        again costs more than the update itself."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- events -------------------------------------------------------------------------

    @_one_at_a_time
    def answered(self, route: str, protocol: str, framing: str, outcome: str) -> None:
        """A request that did not relay a reply (an error before the first byte, a listing)."""
        self._of(self.requests, route, protocol, FRAMINGS.get(framing, framing), outcome).inc()

    @_one_at_a_time
    def stream_started(self, protocol: str) -> None:
        self._of(self.streams_open, protocol).inc()

    @_one_at_a_time
    def stream_ended(self, *, route: str, protocol: str, framing: str, model: str, role: str,
                     outcome, started: float, upstream: str, role_model: bool = False) -> None:
        """Everything one relayed reply came to, counted once when it ended. `role_model`: the
        model is the one a role file names (bounded by the operator's files, so a label)."""
        now = time.monotonic()
        error = outcome.error
        result = ("client_left" if outcome.client_left else
                  error.code if error is not None else "ok")
        model = model if role_model else self.model(model)
        of = self._of
        of(self.streams_open, protocol).dec()
        of(self.requests, route, protocol, FRAMINGS.get(framing, framing), result).inc()
        ended = "client_left" if outcome.client_left else "error" if error is not None else "ok"
        of(self.duration, protocol, ended).observe(now - started)
        if outcome.first_token_at is not None:
            of(self.ttft, protocol, model).observe(outcome.first_token_at - started)
        chars = outcome.chars
        if chars:
            of(self.characters, model, role).inc(chars)
        measured = outcome.measured  # pipeline.Usage, read by the reply's operation
        if measured is not None:
            counts = (("prompt", measured.input_tokens), ("completion", measured.output_tokens))
            if measured.images:
                size = measured.image_size if measured.image_size in IMAGE_SIZES else OTHER
                of(self.images, model, size).inc(measured.images)
        else:
            usage = outcome.usage if isinstance(outcome.usage, dict) else {}
            counts = (("prompt", usage.get("prompt_tokens")),
                      ("completion", usage.get("completion_tokens")))
        for kind, count in counts:
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                of(self.tokens, model, role, kind).inc(count)
        if error is not None and not outcome.client_left and error.code.startswith("upstream"):
            of(self.upstream_errors, upstream, error.code).inc()
        if outcome.heartbeats:
            of(self.heartbeats, protocol).inc(outcome.heartbeats)
        if outcome.reply_state:
            of(self.resumable, outcome.reply_state).inc()

    @_one_at_a_time
    def upstream_failed(self, upstream: str, code: str, moved_on: bool) -> None:
        self.upstream_errors.labels(upstream, code).inc()
        if moved_on:
            self.failovers.labels(upstream).inc()

    @_one_at_a_time
    def breaker(self, upstream: str, benched_for: float, failures: int) -> None:
        """The breaker of `upstream` changed: benched for that many more seconds (0: in use)."""
        self.benched_until.labels(upstream).set(time.time() + benched_for if benched_for > 0
                                                else 0)
        self.failures_in_a_row.labels(upstream).set(failures)

    @_one_at_a_time
    def refused_by_rate_limit(self, route: str) -> None:
        self.rate_limited.labels(route).inc()

    @_one_at_a_time
    def budget_refused(self, kind: str) -> None:
        self._of(self.budget_refusals, kind).inc()

    @_one_at_a_time
    def reply_log_failed(self) -> None:
        self.reply_log_failures.inc()

    @_one_at_a_time
    def settlement_failed(self) -> None:
        self.settlement_failures.inc()

    def read_reservations(self, read: Callable[[], tuple[int, dict[str, int]]]) -> None:
        """Where the reservation figures come from when scraped (`Budgets.reservations`)."""
        self._reservations.read = read

    # --- exposition ---------------------------------------------------------------------

    @_one_at_a_time  # reading takes the same locks (a single process's registry)
    def exposition(self) -> tuple[bytes, str]:
        """The text format: every worker's figures under gunicorn, else this app's."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self._reservations)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Reservations:
    """The budget reservations, read from the database when scraped (not counted in each
    worker, which would miss a settlement that failed and die with a killed worker): every
    worker and instance says the same. A database that cannot be read leaves them out of
    that scrape."""

    def __init__(self) -> None:
        self.read: Callable[[], tuple[int, dict[str, int]]] | None = None

    def collect(self):
        if self.read is None:
            return []
        try:
            open_rows, drift = self.read()
        except Exception:  # noqa: BLE001 - a scrape must not fail for the database
            logging.getLogger("gpt_proxy.metrics").warning(
                "metrics: the budget reservations could not be read", exc_info=True)
            return []
        held = GaugeMetricFamily(
            "gpt_proxy_budget_reservations_open", "Budget reservations not yet settled "
            "(ledger rows open: replies under way, or left by a worker that died, until the "
            "sweep), read from the database")
        held.add_metric([], open_rows)
        apart = GaugeMetricFamily(
            "gpt_proxy_budget_reserved_drift", "How far the budget counters' reservations are "
            "from what the open ledger rows hold, summed over counters, per unit (0: they "
            "agree; `flask budgets check` compares the spend too)", labels=["unit"])
        for unit, amount in sorted(drift.items()):
            apart.add_metric([unit], amount)
        return [held, apart]


class NoMetrics:
    """The same calls doing nothing: METRICS_BIND is empty (metrics off cost nothing), or a
    piece runs without an app (the failover router's unit tests)."""

    def _nothing(self, *args, **kwargs) -> None:
        pass

    answered = stream_started = stream_ended = upstream_failed = breaker = _nothing
    refused_by_rate_limit = budget_refused = settlement_failed = reply_log_failed = _nothing
    read_reservations = _nothing
