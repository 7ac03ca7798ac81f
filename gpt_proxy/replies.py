"""Resumable replies: the events of a reply kept in a log while they are relayed, so a client
whose connection dropped picks the reply up where it stopped, on any instance, and the
upstream is asked once. Knows nothing of Flask: the relay writes the log (`LiveReply`), the
`api` door serves it (`follow`, `cancel`).

Rules it follows:
- Asked for, never imposed: only a reply that asked for it (`X-Resumable: 1`) has a log; any
  other reply costs nothing here (no log, no store call).
- A reply's id is `secrets.token_urlsafe(24)`: 192 random bits, so it cannot be guessed. It
  goes out first (the `reply` event, numbered 0); every later event carries `id: <n>`, n = 1,
  2, ... The log holds exactly the bytes the live client was sent for events 1..n (never a
  heartbeat), so a client that comes back after its last id gets the rest, nothing twice. A
  logged event holds no blank line but the one that ends it (every framer writes one event
  per delta), which is how an entry holding several events is cut.
- Owned: the log names its owner (`Caller.owner`: `u<id>`, or '' without accounts). To any
  other caller a reply is unknown, exactly like an id that never existed or expired (404,
  the same words: what the store can know, `UNKNOWN`).
- Two stores, one behaviour. `memory://`: this worker process's memory, so only this worker
  can resume a reply (with several workers or instances, a resume that lands elsewhere finds
  nothing). `redis://`: Redis Streams, so any worker of any instance can: one stream per
  reply (`XADD` with explicit ids `0-<n>`, `MAXLEN ~`, a key expiry), a small hash for its
  owner and state, and short leases for "a worker still holds it" and "a client follows it".
- Known everywhere from its first byte: with Redis, `begin` writes the reply's owner and
  state (one round trip, the one wait a resumable reply has) before its id reaches its
  client, so a resume sent to any instance right after event 0 finds it, and follows its
  events as they reach Redis. A 404 then means unknown to every instance.
- The relay never waits for the store after that. Memory: an append is a copy into the
  log's buffer. Redis: the relay hands its events to this process's one writer (a thread, a
  greenlet under gevent), which sends everything waiting in one pipelined round trip every FLUSH_SECONDS
  while replies run, each reply's waiting events as one entry: never a round trip per token
  or per relay wake-up, and an append never wakes the writer. The same round trip carries,
  every POLL_SECONDS, the polls the worker holding replies needs: the signals sent to it (a
  cancel, a client following a reply), whether a client still follows each reply whose own
  client left, and the lease saying it still holds its replies.
- One reader drives a reply: a client that follows a reply whose first client is still
  attached takes it over (that first response ends, the reading goes on without it), so a
  connection that died without a word (a phone that changed networks) never holds it back.
- A store that fails never breaks a reply: the reply goes on to its client, unlogged; resuming
  it is then unavailable (a warning naming the request, `gpt_proxy_reply_log_failures_total`),
  its log is dropped, and when its client leaves the upstream is closed at once, since nobody
  could come back for it.
- Bounded: a log keeps at most MAX_LOG_ENTRIES entries (a resume from before the oldest kept
  one is a 410); it is kept RESUME_KEEP_SECONDS after the reply ended, and in Redis expires
  by itself at the latest MAX_STREAM_SECONDS + RESUME_KEEP_SECONDS after the reply started,
  should the worker holding it die; events waiting for the Redis writer are bounded too.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Iterator

from .errors import BadRequest, NotFound, ProxyError
from .sse import comment, encode_json

log = logging.getLogger("gpt_proxy.replies")

REPLY_ID = re.compile(r"[A-Za-z0-9_-]{32}")
REPLY_PATH = re.compile(r"^/api/replies/[^/]*")
MAX_LOG_ENTRIES = 50_000  # per reply; Redis trims approximately (MAXLEN ~)
MAX_PENDING_BYTES = 64 * 1024 * 1024  # waiting for the Redis writer, all replies together
MAX_FORGET = 10_000  # failed logs remembered for deletion (their keys expire anyway)
FLUSH_SECONDS = 0.05  # how often the Redis writer sends what waits (one round trip)
POLL_SECONDS = 0.25  # how often it asks for signals (cancels, followers) and leases
FOLLOW_WAIT = 1.0  # the longest a follower waits for news before it looks around
ATTACH_LEASE = 3.0  # a follower's "I am here", refreshed every second
ALIVE_LEASE, ALIVE_EVERY = 15.0, 5.0  # the holding worker's "I still hold it"
REDIS_TIMEOUT = 2.0
PING = comment("ping")
_writers: weakref.WeakSet = weakref.WeakSet()  # this process's Redis stores


def flush_all(timeout: float) -> bool:
    """Wait, at most `timeout` s, until every Redis store of this process has written what
    waits (a worker about to exit); whether all did."""
    deadline = time.monotonic() + timeout
    for store in list(_writers):
        while store.waiting() and time.monotonic() < deadline:
            time.sleep(FLUSH_SECONDS)  # the writer's own pace: one round trip per tick
    return not any(store.waiting() for store in list(_writers))


class UnknownReply(NotFound):
    """The same answer for an id that is unknown, expired or someone else's (nothing told);
    its message says what the store could know (`MemoryReplyStore.UNKNOWN`,
    `RedisReplyStore.UNKNOWN`)."""

    code = "unknown_reply"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ReplyGone(ProxyError):
    status = 410
    code = "reply_trimmed"


class ReplyStoreUnavailable(ProxyError):
    status = 503
    code = "reply_store_unavailable"


class ReplyStopped(ProxyError):
    """How a reply that nobody reads ended: cancelled, or abandoned after the grace period."""

    status = 499


def new_reply_id() -> str:
    """An unguessable reply id: 192 bits from the OS's random source, URL-safe."""
    return secrets.token_urlsafe(24)


def loggable_path(path: str) -> str:
    """A request path for a log line: a reply's id is a credential (with AUTH=open, holding
    it is enough to read the reply), so it never reaches a log."""
    return REPLY_PATH.sub("/api/replies/<id>", path) if path.startswith("/api/replies/") else path


def parse_after(header: str | None, query: str | None) -> int:
    """The id of the last event a client has: `Last-Event-ID`, or `?after=`; 0 (none) when
    neither is given. BadRequest when it is not a number, or when the two disagree."""
    given = [value.strip() for value in (header, query) if value is not None]
    if not given:
        return 0
    if len(given) == 2 and given[0] != given[1]:
        raise BadRequest(f"Last-Event-ID ({given[0][:20]!r}) and ?after= ({given[1][:20]!r}) "
                         "disagree: send one of them", field="Last-Event-ID")
    text = given[0]
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise BadRequest(f"Last-Event-ID must be the id of the last event received, a number "
                         f"such as 12, not {text[:20]!r}", field="Last-Event-ID")
    return int(text)


def past_end(after: int, last: int) -> BadRequest:
    return BadRequest(f"Last-Event-ID {after} is past the end of this reply: its last event "
                      f"is {last}", field="Last-Event-ID")


def _error_event(err: ProxyError) -> bytes:
    """A follower's own last words, in the shape of the `api` door's error event."""
    return encode_json(err.to_dict(), "error")


# --- the reply, where it is relayed ---------------------------------------------------------

class LiveReply:
    """One resumable reply, in the worker relaying it: numbers and logs its events, and
    tells the relay whether to go on once its client left."""

    def __init__(self, store, reply_id: str, owner: str, *, grace: float, heartbeat: float,
                 request_id: str = "-", clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.id = reply_id
        self.owner = owner
        self.grace = grace
        self.heartbeat = heartbeat
        self.request_id = request_id  # what a log line names (never the reply's id)
        self.clock = clock
        self.last = 0  # the id of the last event framed
        self.state = "attached"  # attached | detached (its client left, the reading goes on)
        self.seen_at = 0.0  # the last moment a client was known to be attached
        self.followers = 0  # clients following it in this process (the memory store)
        self.cancelled = False
        self.taken_over = False  # a client followed it while its first client was attached
        self.logging = True  # False once its log failed: it cannot be resumed
        self.stored = False  # the store set up what it keeps for it (Redis: the expiry)

    def opening(self) -> bytes:
        """The first event: the reply's id, and how long a client has to come back."""
        return b"id: 0\n" + encode_json({"reply_id": self.id, "grace_seconds": self.grace,
                                         "heartbeat_seconds": self.heartbeat}, "reply")

    def frame(self, framer, deltas: list) -> bytes:
        """The framer's events for one wake-up, each with its id, logged as one piece."""
        events = []
        n = self.last
        for d in deltas:
            data = framer.delta(d)
            if data:
                n += 1
                events.append(b"id: %d\n%s" % (n, data))
        if not events:
            return b""
        first, self.last = self.last + 1, n
        data = events[0] if len(events) == 1 else b"".join(events)
        if self.logging:
            self.store.append(self, first, events, data)
        return data

    def frame_error(self, framer, err: ProxyError, outcome) -> bytes:
        """The framer's error event, with its id, logged (a follower gets it too)."""
        data = framer.error(err, outcome)
        if not data:
            return b""
        self.last += 1
        event = b"id: %d\n%s" % (self.last, data)
        if self.logging:
            self.store.append(self, self.last, [event], event)
        return event

    def may_go_on(self) -> bool:
        """Whether the reply may go on without its client: it has a log to resume from, it
        was not cancelled, and it has not been handed over already."""
        return self.state == "attached" and self.logging and not self.cancelled

    def client_gone(self, watcher: Callable[[], bool]) -> Callable[[], bool]:
        """The relay's question while the first client is attached: has it left, or was the
        reply cancelled or taken over by a client that follows it?"""
        return lambda: self.cancelled or self.taken_over or watcher()

    def detach(self) -> None:
        """Its client left: from now on `abandoned` decides when the reading stops."""
        self.state = "detached"
        self.seen_at = self.clock()
        self.store.detached(self)

    def abandoned(self) -> bool:
        """Give up the reply: cancelled, unlogged, or no client attached for `grace` s."""
        if self.cancelled or not self.logging:
            return True
        now = self.clock()
        if self.followers:
            self.seen_at = now
        return now - self.seen_at >= self.grace

    def unlogged(self, reason: str) -> None:
        """Its log failed: it goes on to its client, never to be resumed."""
        if self.logging:
            self.logging = False
            log.warning("request id=%s: the log of this resumable reply could not be written "
                        "(%s): the reply goes on to its client, but cannot be resumed",
                        self.request_id, reason)
            self.store.metrics.reply_log_failed()

    def end(self, outcome) -> None:
        """The reply is over: how it ended goes into its log (kept RESUME_KEEP_SECONDS) and
        into the outcome (the access line, the metrics)."""
        if not self.logging:
            state = "unlogged"
        elif self.cancelled:
            state = "cancelled"
        elif self.state == "detached":
            state = "abandoned" if outcome.client_left else "detached"
        else:
            state = "attached"
        outcome.reply_state = state
        self.store.end(self, state)


# --- the memory store -------------------------------------------------------------------------

class _MemoryLog:
    """A reply's events as one buffer and the end offset of each event."""

    __slots__ = ("owner", "data", "ends", "first", "last", "ended", "expires", "live", "cond")

    def __init__(self, owner: str, live: LiveReply) -> None:
        self.owner = owner
        self.data = bytearray()
        self.ends = array("I")  # 4 bytes an event: a log stays far below 4 GiB
        self.first = 1  # the id of the oldest event kept
        self.last = 0
        self.ended = False
        self.expires = float("inf")
        self.live: LiveReply | None = live
        self.cond: threading.Condition | None = None  # made when a follower first waits

    def add(self, events: list[bytes]) -> None:
        for event in events:
            self.data += event
            self.ends.append(len(self.data))
        self.last += len(events)
        if len(self.ends) > MAX_LOG_ENTRIES:  # drop the older half
            half = len(self.ends) // 2
            cut = self.ends[half - 1]
            del self.data[:cut]
            self.ends = array("I", (end - cut for end in self.ends[half:]))
            self.first += half

    def after(self, n: int) -> bytes:
        """The events after id `n` (at least `first - 1`)."""
        skip = n - self.first + 1
        return bytes(self.data[self.ends[skip - 1] if skip > 0 else 0:])


class MemoryReplyStore:
    """Logs in this worker process's memory: only this worker can resume its replies."""

    description = "memory:// (this worker process)"
    # Another worker process may hold the reply: "unknown" only to this one.
    UNKNOWN = ("no reply with this id is kept by this worker process: it never existed, has "
               "expired, or is not yours (with REPLY_STORE=memory:// only the worker process "
               "that relayed a reply can resume it)")

    def __init__(self, keep: float, metrics=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from .metrics import NoMetrics

        self.keep = keep
        self.metrics = metrics or NoMetrics()
        self.clock = clock
        self._logs: dict[str, _MemoryLog] = {}
        self._ended: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()

    def begin(self, owner: str, *, grace: float, heartbeat: float,
              request_id: str = "-") -> LiveReply:
        reply = LiveReply(self, new_reply_id(), owner, grace=grace, heartbeat=heartbeat,
                          request_id=request_id, clock=self.clock)
        with self._lock:
            self._purge()
            self._logs[reply.id] = _MemoryLog(owner, reply)
        return reply

    def append(self, reply: LiveReply, first: int, events: list[bytes], data: bytes) -> None:
        with self._lock:
            entry = self._logs.get(reply.id)
            if entry is not None:
                entry.add(events)
                if entry.cond is not None:
                    entry.cond.notify_all()

    def detached(self, reply: LiveReply) -> None:
        """Followers in this process count themselves on the reply (`followers`)."""

    def end(self, reply: LiveReply, state: str) -> None:
        with self._lock:
            entry = self._logs.get(reply.id)
            if entry is None:
                return
            if not reply.logging:  # nothing to resume from
                del self._logs[reply.id]
            else:
                entry.ended, entry.live = True, None
                entry.expires = self.clock() + self.keep
                self._ended.append((entry.expires, reply.id))
            if entry.cond is not None:
                entry.cond.notify_all()

    def _purge(self) -> None:
        now = self.clock()
        while self._ended and self._ended[0][0] <= now:
            self._logs.pop(self._ended.popleft()[1], None)

    def _entry(self, reply_id: str, owner: str) -> _MemoryLog:
        if not REPLY_ID.fullmatch(reply_id):
            raise UnknownReply(self.UNKNOWN)
        with self._lock:
            self._purge()
            entry = self._logs.get(reply_id)
        if entry is None or entry.owner != owner:
            raise UnknownReply(self.UNKNOWN)
        return entry

    def cancel(self, reply_id: str, owner: str) -> str:
        """Stop a running reply ("cancelling"), or say it had ended already ("ended")."""
        entry = self._entry(reply_id, owner)
        live = entry.live
        if entry.ended or live is None:
            return "ended"
        live.cancelled = True
        return "cancelling"

    def check(self, reply_id: str, owner: str, after: int) -> _MemoryLog:
        """What `follow` would answer before its first byte (unknown 404, past the end 400,
        trimmed 410), and nothing else: the reply is not claimed (a HEAD)."""
        entry = self._entry(reply_id, owner)
        with self._lock:
            if after > entry.last:
                raise past_end(after, entry.last)
            if after + 1 < entry.first:
                raise ReplyGone(f"the events after {after} are no longer kept (this reply keeps "
                                f"its last {MAX_LOG_ENTRIES} events)")
        return entry

    def follow(self, reply_id: str, owner: str, after: int, client_gone: Callable[[], bool],
               heartbeat: float) -> Follow:
        """The events after `after`, then the live reply to its end (errors before the first
        byte: unknown 404, past the end 400, trimmed 410)."""
        entry = self.check(reply_id, owner, after)
        follow = Follow(after)
        follow.body = self._follow(follow, entry, after, client_gone, heartbeat)
        return follow

    def _follow(self, follow: Follow, entry: _MemoryLog, after: int, client_gone,
                heartbeat: float) -> Iterator[bytes]:
        with self._lock:
            live = entry.live
            if live is not None:
                live.followers += 1
                live.taken_over = True
        try:
            yield b": resumed\n\n"
            cursor, sent_at = after, self.clock()
            while True:
                with self._lock:
                    if entry.last <= cursor and not entry.ended:
                        if entry.cond is None:
                            entry.cond = threading.Condition(self._lock)
                        entry.cond.wait(min(FOLLOW_WAIT, heartbeat))
                    if cursor + 1 < entry.first:
                        data, follow.result = _error_event(ReplyGone(
                            "this client fell too far behind the reply")), "behind"
                    else:
                        data = entry.after(cursor) if entry.last > cursor else b""
                    events, cursor = entry.last - cursor, entry.last
                    ended = entry.ended
                if data:
                    follow.events += max(events, 0)
                    sent_at = self.clock()
                    yield data
                if follow.result == "behind":
                    return
                if ended:
                    follow.result = "ok"
                    return
                if client_gone():
                    follow.result = "client_left"
                    return
                if self.clock() - sent_at >= heartbeat:
                    sent_at = self.clock()
                    yield PING
        finally:
            if live is not None:
                with self._lock:
                    live.followers -= 1
                    live.seen_at = self.clock()

    def close(self) -> None:
        with self._lock:
            self._logs.clear()
            self._ended.clear()


class Follow:
    """A follower's body (an iterator of bytes), and what it came to, for its access line."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.events = 0
        self.result = "client_left"  # until it says otherwise
        self.body: Iterator[bytes] = iter(())

    def __iter__(self) -> Iterator[bytes]:
        return self.body

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


# --- the Redis store --------------------------------------------------------------------------

# Everything a flush writes, in one command (a reply's owner is not among it: `begin` writes
# that before the reply's id goes out). ARGV: the key prefix, MAXLEN, the expiry (ms) of a
# running reply's keys, of an ended reply's, and the records, one after another in one
# argument (redis-py packs one argument, not six for each record: it copies what it has
# packed so far, up to 6 KB, for each small argument, which cost the writer most of its
# time), each a header line and, for events, their bytes:
#   a <id> <first id> <last id> <size> <new>\n<events>   one entry (a new stream expires)
#   e <id> <last id> <state>\n                       its end: a marker entry, both kept `keep`
# A record Redis refuses does not stop the others: their numbers (1-based) come back. The
# keys are named by the data, so a single Redis server (not Redis Cluster).
_WRITE = """
local prefix, maxlen, live, keep, records = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local failed, at, n = {}, 1, 0
local function bad(result) return type(result) == 'table' and result.err end
while at <= #records do
  n = n + 1
  local kind, stop = string.sub(records, at, at), string.find(records, '\\n', at, true)
  local head, ok = string.sub(records, at + 2, stop - 1), nil
  at = stop + 1
  if kind == 'a' then
    local id, first, last, size, new = string.match(head, '^(%S+) (%d+) (%d+) (%d+) (%d)$')
    local events, log = string.sub(records, at, at + size - 1), prefix .. id .. ':log'
    at = at + size
    ok = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, '0-' .. last, 'f', first, 'd', events)
    if not bad(ok) and new == '1' then redis.call('PEXPIRE', log, live) end
  else
    local id, last, state = string.match(head, '^(%S+) (%d+) (%S+)$')
    local log = prefix .. id .. ':log'
    ok = redis.pcall('XADD', log, 'MAXLEN', '~', maxlen, '0-' .. (tonumber(last) + 1),
                     'e', state)
    if not bad(ok) then
      redis.call('HSET', prefix .. id, 'state', 'ended', 'last', last, 'end', state)
      redis.call('PEXPIRE', prefix .. id, keep)
      redis.call('PEXPIRE', log, keep)
    end
  end
  if bad(ok) then failed[#failed + 1] = n end
end
return failed
"""


def _seen(reply: LiveReply, found: object, now: float) -> None:
    if found:
        reply.seen_at = now


def _signalled(reply: LiveReply, what: str, now: float) -> None:
    if what == "cancel":
        reply.cancelled = True
    elif what == "follow":
        reply.taken_over = True
        reply.seen_at = now


class RedisReplyStore:
    """Logs in Redis Streams: any worker of any instance can resume a reply. Keys, under
    `<prefix>:<id>`: the hash (owner, state, the worker holding it; at the end the last id),
    `:log` (the stream), `:attached` (a follower's lease); per worker,
    `<prefix>:worker:<worker>` (its lease: it still holds its replies) and
    `<prefix>:signals:<worker>` (`cancel:<id>` and `follow:<id>` sent to it)."""

    # Every reply is in Redis before its id reaches its client (`begin`): one Redis does not
    # have is unknown everywhere, or was never logged (Redis failed as it began).
    UNKNOWN = ("no reply with this id: it never existed, has expired, could not be logged, "
               "or is not yours")

    def __init__(self, url: str, *, keep: float, live_seconds: float, metrics=None,
                 prefix: str = "gpt_proxy:reply",
                 clock: Callable[[], float] = time.monotonic) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from .config import without_password
        from .metrics import NoMetrics

        self._errors = (redis.RedisError, OSError)
        self.description = f"Redis {without_password(url)}"
        self.keep_ms = max(1, int(keep * 1000))
        self.live_ms = max(1, int((live_seconds + keep) * 1000))
        self.metrics = metrics or NoMetrics()
        self.prefix = prefix
        self.clock = clock
        # One retry, at once: a pooled connection Redis closed is opened again; a Redis that
        # is down fails fast (redis-py's default would retry ten times, for seconds).
        options = dict(socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 1))
        self._redis = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, **options)
        # followers block in XREAD for up to FOLLOW_WAIT: a socket timeout beyond that
        self._reader = redis.Redis.from_url(url, socket_timeout=FOLLOW_WAIT + REDIS_TIMEOUT,
                                            **options)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[LiveReply, list] = {}
        self._pending_bytes = 0
        self._live: dict[str, LiveReply] = {}
        self._ending: dict[str, LiveReply] = {}  # ended here, their end not yet in Redis
        self._forget: set[str] = set()  # ids whose keys are to go (their log failed)
        self._pid = 0
        self._worker = ""
        _writers.add(self)

    def waiting(self) -> bool:
        """Whether anything waits to be written."""
        return bool(self._pending or self._forget)

    # --- keys ---

    def _key(self, reply_id: str, part: str = "") -> str:
        return f"{self.prefix}:{reply_id}{part}"

    def _signals(self, worker: str) -> str:
        return f"{self.prefix}:signals:{worker}"

    def _holder(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}"

    def _signal(self, worker: str, what: str, reply_id: str) -> None:
        """Tell the worker holding a reply (it reads its signals every POLL_SECONDS)."""
        live = self._live.get(reply_id) if worker == self._worker else None
        if live is not None:  # held by this worker: at once
            _signalled(live, what, self.clock())
            return
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self._signals(worker), f"{what}:{reply_id}")
            pipe.pexpire(self._signals(worker), 60_000)
            pipe.execute()

    # --- the side of the worker relaying ---

    def _started(self) -> None:
        """This process's writer and name (after a fork, a new one of each)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._worker = f"{self._pid}-{secrets.token_hex(6)}"
            self._pending, self._pending_bytes, self._live = {}, 0, {}
            self._ending = {}
            threading.Thread(target=self._write, name="reply-log-writer", daemon=True).start()

    def begin(self, owner: str, *, grace: float, heartbeat: float,
              request_id: str = "-") -> LiveReply:
        """A new reply, in Redis before it is returned (so before its id reaches its client):
        its owner, that it runs, the worker holding it, and that worker's lease, in one round
        trip; from event 0 on, any worker of any instance finds it, and may follow its events
        as they reach Redis. A store that fails leaves the reply unlogged: it goes on to its
        client, not resumable."""
        self._started()
        reply = LiveReply(self, new_reply_id(), owner, grace=grace, heartbeat=heartbeat,
                          request_id=request_id, clock=self.clock)
        key = self._key(reply.id)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping={"owner": owner, "state": "live", "worker": self._worker})
                pipe.pexpire(key, self.live_ms)
                pipe.set(self._holder(self._worker), 1, px=int(ALIVE_LEASE * 1000))
                pipe.execute()
        except self._errors as exc:
            reply.unlogged(f"{type(exc).__name__}: {exc}")
            with self._lock:  # best effort: its hash may have been written
                if len(self._forget) < MAX_FORGET:
                    self._forget.add(reply.id)
            return reply
        with self._lock:
            self._live[reply.id] = reply
        self._wake.set()  # the writer may be asleep (no reply was running)
        return reply

    def append(self, reply: LiveReply, first: int, events: list[bytes], data: bytes) -> None:
        with self._lock:
            waiting = self._pending.get(reply)
            if waiting is None:
                waiting = self._pending[reply] = []
            waiting.append(("a", first, first + len(events) - 1, data))
            self._pending_bytes += len(data)
            over = self._pending_bytes > MAX_PENDING_BYTES
        if over:
            self._fail([reply], "the reply store is too slow: too much waits to be written")

    def detached(self, reply: LiveReply) -> None:
        """The writer polls for its followers (it runs while any reply does)."""

    def end(self, reply: LiveReply, state: str) -> None:
        with self._lock:
            self._live.pop(reply.id, None)
            if reply.logging:
                self._pending.setdefault(reply, []).append(("e", reply.last, state))
                # until its end is written, a client resuming here must still find it
                self._ending[reply.id] = reply

    def _fail(self, replies, reason: str) -> None:
        with self._lock:
            for reply in replies:
                dropped = self._pending.pop(reply, ())
                self._pending_bytes -= sum(len(item[3]) for item in dropped if item[0] == "a")
                if len(self._forget) < MAX_FORGET:  # best effort: they expire by themselves
                    self._forget.add(reply.id)
        for reply in replies:
            reply.unlogged(reason)

    def _write(self) -> None:
        """The writer: every FLUSH_SECONDS while replies run, whatever waits and the polls
        due, in one round trip; asleep while none does (`begin` wakes it)."""
        polled = refreshed = float("-inf")
        while True:
            with self._lock:
                idle = not (self._pending or self._live or self._forget)
            self._wake.wait(None if idle else FLUSH_SECONDS)
            self._wake.clear()
            try:
                now = self.clock()
                with self._lock:
                    pending, self._pending, self._pending_bytes = self._pending, {}, 0
                    live = list(self._live.values())
                    forget, self._forget = self._forget, set()
                poll = bool(live) and now - polled >= POLL_SECONDS
                refresh = bool(live) and now - refreshed >= ALIVE_EVERY
                if not (pending or poll or refresh or forget):
                    continue
                polled = now if poll else polled
                refreshed = now if refresh else refreshed
                self._round_trip(pending, live if poll else [], refresh, forget)
            except Exception:  # noqa: BLE001 - the writer must outlive any one surprise
                log.exception("the reply log writer failed")
            finally:
                pending = live = forget = None  # written: nothing held while it waits

    def _round_trip(self, pending: dict, polled: list[LiveReply], refresh: bool,
                    forget: set[str]) -> None:
        """One pipeline: everything waiting in one _WRITE (each reply's new events as one
        entry), the logs to drop, then the polls; each answer goes where it belongs."""
        records: list[bytes] = []  # the pieces of _WRITE's one argument
        written: list[LiveReply] = []  # whose each record is
        for reply, items in pending.items():
            name = reply.id.encode()
            batch: list = []
            for item in [*items, None]:
                if item is not None and item[0] == "a":
                    batch.append(item)
                    continue
                if batch:  # the events waiting, as one entry named by its last id
                    records.append(b"a %s %d %d %d %d\n" % (
                        name, batch[0][1], batch[-1][2], sum(len(i[3]) for i in batch),
                        0 if reply.stored else 1))
                    records += [i[3] for i in batch]
                    written.append(reply)
                    reply.stored = True
                    batch = []
                if item is None:
                    continue
                records.append(b"e %s %d %s\n" % (name, item[1], item[2].encode()))  # the end
                written.append(reply)
        pipe = self._redis.pipeline(transaction=False)
        handlers: list[Callable[[object], None] | None] = []  # what each answer is for
        if written:
            pipe.execute_command("EVAL", _WRITE, 0, f"{self.prefix}:", MAX_LOG_ENTRIES,
                                 self.live_ms, self.keep_ms, b"".join(records))
            handlers.append(lambda failed: self._refused(failed, written))
        for reply_id in forget:
            pipe.delete(self._key(reply_id), self._key(reply_id, ":log"))
            handlers.append(None)
        if refresh:
            pipe.set(self._holder(self._worker), 1, px=int(ALIVE_LEASE * 1000))
            handlers.append(None)
        if polled:
            pipe.spop(self._signals(self._worker), 1000)
            handlers.append(self._signalled)
            now = self.clock()
            for reply in polled:
                if reply.state == "detached":
                    pipe.exists(self._key(reply.id, ":attached"))
                    handlers.append(lambda found, reply=reply: _seen(reply, found, now))
        try:
            results = pipe.execute(raise_on_error=False)
        except self._errors as exc:
            self._fail(list(pending), f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._forget |= set(list(forget)[:max(0, MAX_FORGET - len(self._forget))])
            return
        finally:
            pipe.reset()
            with self._lock:  # their ends were written (or never will be): Redis answers now
                for reply, items in pending.items():
                    if any(item[0] == "e" for item in items):
                        self._ending.pop(reply.id, None)
        for index, (handle, result) in enumerate(zip(handlers, results, strict=True)):
            if isinstance(result, Exception):
                if index == 0 and written:  # the whole write failed: every reply in it
                    self._fail(list(dict.fromkeys(written)), f"Redis refused it: {result}")
            elif handle is not None:
                handle(result)

    def _refused(self, numbers, written: list[LiveReply]) -> None:
        """The records Redis refused (1-based): their replies' logs have a hole now."""
        if numbers:
            self._fail(list(dict.fromkeys(written[int(n) - 1] for n in numbers)),
                       "Redis refused a write")

    def _signalled(self, signals) -> None:
        now = self.clock()
        for raw in signals or ():
            what, _, reply_id = (raw.decode() if isinstance(raw, bytes) else str(raw)
                                 ).partition(":")
            reply = self._live.get(reply_id)
            if reply is not None:
                _signalled(reply, what, now)

    # --- the side of the clients ---

    def _meta(self, reply_id: str, owner: str, *fields: str) -> list:
        if not REPLY_ID.fullmatch(reply_id):
            raise UnknownReply(self.UNKNOWN)
        try:
            values = self._redis.hmget(self._key(reply_id), "owner", *fields)
        except self._errors as exc:
            raise self._unavailable(exc) from None
        if values[0] is None or values[0].decode() != owner:
            raise UnknownReply(self.UNKNOWN)
        return [None if v is None else v.decode() for v in values[1:]]

    def _unavailable(self, exc: BaseException) -> ReplyStoreUnavailable:
        log.warning("the reply store (%s) failed: %s: %s", self.description,
                    type(exc).__name__, exc)
        return ReplyStoreUnavailable(f"the reply store ({self.description}) cannot be reached "
                                     "right now, so replies cannot be resumed or cancelled; "
                                     "try again later")

    def _held(self, reply_id: str, owner: str) -> LiveReply | None:
        """The reply, if this worker holds it (answered without asking Redis, and knowing
        events framed here but not yet written), or has just ended it (known here before its
        end reaches Redis)."""
        live = None
        if self._pid == os.getpid():
            live = self._live.get(reply_id) or self._ending.get(reply_id)
        if live is not None and live.owner != owner:
            raise UnknownReply(self.UNKNOWN)
        return live

    def cancel(self, reply_id: str, owner: str) -> str:
        live = self._held(reply_id, owner)
        if live is not None and reply_id in self._ending:
            return "ended"
        if live is not None:  # held by this worker: at once
            live.cancelled = True
            return "cancelling"
        state, worker = self._meta(reply_id, owner, "state", "worker")
        if state == "ended":
            return "ended"
        try:
            self._signal(worker or "", "cancel", reply_id)
        except self._errors as exc:
            raise self._unavailable(exc) from None
        return "cancelling"

    def check(self, reply_id: str, owner: str, after: int) -> tuple[str | None, str]:
        """What `follow` would answer before its first byte (unknown 404, past the end 400,
        trimmed 410, the store unreachable 503), read only: the reply is not claimed (a HEAD);
        its state and the worker holding it."""
        live = self._held(reply_id, owner)
        if live is not None:  # held by this worker: it has an owner, it is running
            state, last, worker = "live", None, self._worker
            if after > live.last:  # its events are framed here before they are sent
                raise past_end(after, live.last)
        else:
            state, last, worker = self._meta(reply_id, owner, "state", "last", "worker")
        if state == "ended" and last is not None and after > int(last):
            raise past_end(after, int(last))
        try:
            oldest = self._redis.xrange(self._key(reply_id, ":log"), "-", "+", count=1)
        except self._errors as exc:
            raise self._unavailable(exc) from None
        if oldest and b"f" in oldest[0][1] and after + 1 < int(oldest[0][1][b"f"]):
            raise ReplyGone(f"the events after {after} are no longer kept (a log keeps about "
                            f"its last {MAX_LOG_ENTRIES} entries)")
        return state, worker or ""

    def follow(self, reply_id: str, owner: str, after: int, client_gone: Callable[[], bool],
               heartbeat: float) -> Follow:
        state, worker = self.check(reply_id, owner, after)
        if state != "ended":  # this client is attached now, and takes the reply over
            try:
                self._reader.set(self._key(reply_id, ":attached"), 1,
                                 px=int(ATTACH_LEASE * 1000))
                self._signal(worker, "follow", reply_id)
            except self._errors as exc:
                raise self._unavailable(exc) from None
        follow = Follow(after)
        follow.body = self._follow(follow, reply_id, worker, after, client_gone, heartbeat)
        return follow

    def _follow(self, follow: Follow, reply_id: str, worker: str, after: int, client_gone,
                heartbeat: float) -> Iterator[bytes]:
        log_key = self._key(reply_id, ":log")
        attached = self._key(reply_id, ":attached")
        wait = min(FOLLOW_WAIT, heartbeat)
        cursor = after
        leased = self.clock()  # by `follow`
        yield b": resumed\n\n"
        sent_at = self.clock()
        while True:
            now = self.clock()
            try:
                if now - leased >= ATTACH_LEASE / 3:
                    self._reader.set(attached, 1, px=int(ATTACH_LEASE * 1000))
                    leased = now
                found = self._reader.xread({log_key: f"0-{cursor}"}, count=256,
                                           block=max(1, int(wait * 1000)))
                if not found:
                    with self._reader.pipeline(transaction=False) as pipe:
                        pipe.hmget(self._key(reply_id), "state", "last")
                        pipe.exists(self._holder(worker))
                        (state, last), alive = pipe.execute()
            except self._errors as exc:
                follow.result = "store_unavailable"
                yield _error_event(self._unavailable(exc))
                return
            if found:
                out = []
                for entry_id, fields in found[0][1]:
                    seq = int(entry_id.split(b"-")[1])
                    if b"e" in fields:  # the end
                        if out:
                            yield b"".join(out)
                        follow.result = "ok"
                        return
                    first = int(fields[b"f"])
                    if first > cursor + 1:
                        out.append(_error_event(ReplyGone(
                            "this client fell too far behind the reply")))
                        yield b"".join(out)
                        follow.result = "behind"
                        return
                    data = fields[b"d"]
                    if first <= cursor:  # an entry that began before: drop what was had
                        data = b"\n\n".join(data.split(b"\n\n")[cursor - first + 1:])
                    follow.events += seq - cursor
                    cursor = seq
                    out.append(data)
                sent_at = self.clock()
                yield b"".join(out)
            elif state is None:
                follow.result = "expired"
                yield _error_event(ProxyError(
                    "this reply can no longer be followed: its log expired or was dropped",
                    status=404, code="reply_expired"))
                return
            elif state == b"ended" and cursor >= int(last):
                follow.result = "ok" if cursor == int(last) else "past_end"
                if cursor > int(last):
                    yield _error_event(past_end(cursor, int(last)))
                return
            elif state != b"ended" and not alive:
                follow.result = "lost"
                yield _error_event(ProxyError(
                    "the instance relaying this reply stopped before the reply ended",
                    status=502, code="reply_lost"))
                return
            if client_gone():
                follow.result = "client_left"
                return
            if self.clock() - sent_at >= heartbeat:
                sent_at = self.clock()
                yield PING

    def close(self) -> None:
        self._redis.close()
        self._reader.close()


def open_reply_store(config, metrics=None):
    """The store REPLY_STORE names (validated by `config`)."""
    keep = config.resume_keep_seconds
    if config.reply_store == "memory://":
        return MemoryReplyStore(keep, metrics)
    return RedisReplyStore(config.reply_store, keep=keep, live_seconds=config.max_stream_seconds,
                           metrics=metrics)
