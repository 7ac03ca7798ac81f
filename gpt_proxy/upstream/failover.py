"""Several upstreams: which one to try, failover before the first byte, a circuit breaker.

The rules it follows:
- Candidates: the upstreams that serve the request's model, by priority; upstreams of equal
  priority take turns (round robin), so several keys for one provider share the load.
- Failover: a connection that fails (refused, TLS, DNS: 503), a timeout before the headers
  (504), a 429 or a 5xx moves the request to the next candidate. A 400/422, 401/403, 404 or 413
  is the request's or the key's fault, not a busy upstream: it is answered at once.
- Once `open()` has returned, nothing is retried: the stream belongs to the client, so a reply
  is never sent twice or spliced from two upstreams.
- Circuit breaker, per upstream and per worker process: after UPSTREAM_FAILURES failures in a
  row an upstream is skipped for UPSTREAM_COOLDOWN seconds (doubling while it keeps failing,
  at most ten minutes), then one request at a time probes it; a 429's Retry-After skips it for
  that long. When every candidate is cooling down, the one that recovers first is tried anyway:
  a try that may work beats a refusal that cannot.
- Time: an attempt's connect and header waits are cut to what is left of FAILOVER_SECONDS
  (counted from the first try); once it is spent, one last upstream is tried with its full
  timeouts, and no other. A request so waits at most FAILOVER_SECONDS plus one attempt.
- The client: a client that leaves stops the failover; under gevent (the default worker) it
  also cancels the attempt in flight, connecting or waiting for headers, within `TICK` seconds
  (the upstream sees its connection close).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..base.config import Config
from ..base.errors import (
    BadRequest,
    ClientLeft,
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..base.metrics import NoMetrics
from .client import CHAT_PATH, Endpoint, UpstreamStream, new_session

TICK = 0.25  # how often a request waiting for an upstream looks at its client
MAX_COOLDOWN = 600.0


class Breaker:
    """One upstream's health: closed (in use), open (skipped until `until`), half-open (one
    probe at a time). Times come from the clock the router was given."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.base = self.cooldown = cooldown
        self.failures = 0  # in a row
        self.until = 0.0  # skipped until then
        self.probing = False

    def state(self, now: float) -> str:
        if self.until > now:
            return "open"
        return "half_open" if self.failures >= self.threshold else "closed"

    def available(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half_open" and not self.probing)

    def attempt(self, now: float) -> None:
        if self.state(now) != "closed":
            self.probing = True

    def succeeded(self) -> None:
        self.failures, self.until, self.cooldown, self.probing = 0, 0.0, self.base, False

    def failed(self, now: float, retry_after: float | None = None) -> None:
        self.probing = False
        self.failures += 1
        if retry_after:
            self.until = max(self.until, now + min(retry_after, MAX_COOLDOWN))
        if self.failures >= self.threshold:
            self.until = max(self.until, now + self.cooldown)
            self.cooldown = min(self.cooldown * 2, MAX_COOLDOWN)

    def released(self) -> None:
        """The attempt was abandoned (the client left): it proved nothing either way."""
        self.probing = False


def worth_failover(err: ProxyError) -> bool:
    """Whether another upstream may succeed where this one failed."""
    status = getattr(err, "upstream_status", None)
    if status is None:
        return isinstance(err, (UpstreamUnavailable, UpstreamTimeout, UpstreamError))
    return status >= 500 or status in (408, 429)


def _retry_after(err: ProxyError) -> float | None:
    try:
        return float(err.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class Upstreams:
    """The configured upstreams behind one `open()`: what the pipeline calls."""

    mode = "openai"

    def __init__(self, config: Config, session=None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, metrics=None) -> None:
        specs = config.endpoints()
        self.config = config
        self.clock = clock
        self.metrics = metrics or NoMetrics()
        self.session = session or new_session(len({spec.base_url for spec in specs}))
        self.endpoints = [Endpoint(spec, config, self.session, sleep) for spec in specs]
        self.breakers = {ep.name: Breaker(config.upstream_failures, config.upstream_cooldown)
                         for ep in self.endpoints}
        self._turns: dict[int, Iterator[int]] = {}  # priority -> a counter, for round robin

    def serves(self, model: str) -> bool:
        return any(ep.spec.serves(model) for ep in self.endpoints)

    def models(self) -> list[str]:
        """The models the upstreams name (an upstream that serves any model names none)."""
        return list(dict.fromkeys(m for ep in self.endpoints for m in ep.spec.models))

    def candidates(self, model: str) -> list[Endpoint]:
        """The upstreams to try for `model`, in order: available ones by priority (equal
        priorities rotated); if none is available, the one whose cool-down ends first."""
        now = self.clock()
        serving = [ep for ep in self.endpoints if ep.spec.serves(model)]
        ordered: list[Endpoint] = []
        for priority, group in itertools.groupby(serving, key=lambda ep: ep.spec.priority):
            group = list(group)
            if len(group) > 1:
                turn = next(self._turns.setdefault(priority, itertools.count())) % len(group)
                group = group[turn:] + group[:turn]
            ordered += group
        ready = [ep for ep in ordered if self.breakers[ep.name].available(now)]
        if ready or not ordered:
            return ready
        return [min(ordered, key=lambda ep: self.breakers[ep.name].until)]

    def open(self, payload: dict, gone: Callable[[], bool] | None = None,
             path: str = CHAT_PATH) -> UpstreamStream:
        """Open the reply's stream (posted to `path` after each upstream's base URL) on the
        first upstream that answers it (see the rules)."""
        model = payload.get("model", "")
        try:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("the request holds an invalid character (a lone UTF-16 "
                             "surrogate)") from None
        candidates = self.candidates(model)
        if not candidates:
            raise BadRequest(f"no upstream here serves model {model[:200]!r}", field="model",
                             code="model_not_served")
        config = self.config
        deadline = self.clock() + config.failover_seconds
        full = (config.upstream_connect_timeout, config.upstream_read_timeout)
        tried: list[str] = []
        error: ProxyError | None = None
        with cancel_on(gone):
            for index, endpoint in enumerate(candidates):
                now = self.clock()
                if tried and gone is not None and gone():
                    break
                last = index == len(candidates) - 1 or (bool(tried) and now >= deadline)
                timeout = full
                if not last:
                    left = max(deadline - now, 0.1)
                    timeout = (min(full[0], left), min(full[1], left))
                breaker = self.breakers[endpoint.name]
                breaker.attempt(now)
                tried.append(endpoint.name)
                try:
                    stream = endpoint.open(payload, data, timeout, path)
                except ClientLeft as err:
                    err.upstream, err.tried = endpoint.name, len(tried)
                    breaker.released()
                    raise
                except ProxyError as err:
                    err.upstream, err.tried = endpoint.name, len(tried)
                    if not worth_failover(err):
                        self._succeeded(endpoint, breaker)  # it answered: the request erred
                        raise
                    now = self.clock()
                    breaker.failed(now, _retry_after(err))
                    self.metrics.upstream_failed(endpoint.name, err.code, moved_on=not last)
                    self.metrics.breaker(endpoint.name, breaker.until - now, breaker.failures)
                    error = err
                    if last:
                        break
                    continue
                except BaseException:
                    breaker.released()
                    raise
                self._succeeded(endpoint, breaker)
                stream.upstream, stream.tried = endpoint.name, len(tried)
                return stream
        if gone is not None and gone():
            raise ClientLeft("the client left while the upstreams were failing")
        assert error is not None
        if len(tried) > 1:
            error.message = f"{error.message} (tried {len(tried)} upstreams)"
            error.args = (error.message,)
        raise error

    def _succeeded(self, endpoint: Endpoint, breaker: Breaker) -> None:
        if breaker.failures:
            self.metrics.breaker(endpoint.name, 0, 0)
        breaker.succeeded()

    def health(self) -> list[dict]:
        """Each upstream's name and breaker state (for metrics and operators)."""
        now = self.clock()
        return [{"name": ep.name, "state": self.breakers[ep.name].state(now)}
                for ep in self.endpoints]


_gevent_patched: bool | None = None


def _under_gevent() -> bool:
    """Whether this process runs on gevent's patched sockets (looked up once: the worker
    patches before it loads the app)."""
    global _gevent_patched
    if _gevent_patched is None:
        try:
            from gevent import monkey
        except ImportError:
            _gevent_patched = False
        else:
            _gevent_patched = monkey.is_module_patched("socket")
    return _gevent_patched


@contextmanager
def cancel_on(gone: Callable[[], bool] | None) -> Iterator[None]:
    """While the block runs, raise `ClientLeft` in it as soon as `gone()` says the client
    left (looked at every `TICK` seconds), wherever it waits: connecting, sending, waiting for
    headers, backing off. Under gevent only (a thread cannot be interrupted); elsewhere the
    block runs to its end and the relay notices the client afterwards.

    A timer of the hub, not a watching greenlet: most upstreams answer within the first tick,
    and then the block has cost a timer started and stopped instead of a greenlet spawned and
    killed (on every request). The look itself runs in a greenlet of its own, started only
    when a tick comes (the hub may not wait on a socket)."""
    if gone is None or not _under_gevent():
        yield
        return
    import gevent

    target = gevent.getcurrent()
    hub = gevent.get_hub()
    timer = hub.loop.timer(TICK, TICK)
    state = {"active": True, "pending": None, "looking": False}

    def look() -> None:
        try:
            if state["active"] and gone():
                timer.stop()
                # Delivered by the hub like gevent.Timeout; cancelled below if the block ends
                # first, so it can never land anywhere else.
                state["pending"] = hub.loop.run_callback(
                    target.throw, ClientLeft("the client left before the upstream answered"))
        finally:
            state["looking"] = False

    def tick() -> None:
        if state["active"] and not state["looking"]:
            state["looking"] = True
            gevent.spawn_raw(look)

    timer.start(tick)
    try:
        yield
    finally:
        state["active"] = False
        timer.close()
        pending = state["pending"]
        if pending is not None and pending.pending:
            pending.stop()
