"""The relay: upstream deltas in, client frames out, with heartbeats and cleanup.

The response side reads the upstream with a timeout, so it can send `: ping` while the upstream
is silent and notice a client that left, even before the first token, and then close the
upstream at once. A real upstream stream times its own reads (`Inline`: no helper, the cheapest
path per token); any other stream (the demo, a test's fake) is read by a helper thread (a
greenlet under gevent) that hands deltas over a queue (`Pump`). Every exit path closes the
upstream in `finally`.

It knows nothing of client protocols: each protocol hands it a `Framer` (its bytes for a
batch of deltas, an error, a heartbeat), and a framer that relays the upstream's own chunks
says so with `raw`. Nor of upstream operations: the pipeline hands it the reader that turns
the upstream's events into deltas (`ChunkReader` for completions, `EventReader` for the
Responses API).

A resumable reply (`reply`: a `replies.LiveReply`) numbers its events and logs them as it
frames them. When its client leaves (the watcher sees the socket close, or the server closes
the body because a write failed), the reading is not stopped: the response ends, and the
very same reading (the `batches` generator, which owns the upstream) is handed to a thread of
its own (a greenlet under gevent) that goes on framing into the log until the reply ends, is
cancelled, or nobody has been attached for the grace period. Whoever ends the reading, the
response or that thread, closes the upstream and calls `on_close` (settlement, the access
line) once.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..base.errors import ProxyError, UpstreamError, UpstreamTimeout
from ..base.sse import ServerSentEvent, SSEDecoder, SSEError, comment
from ..storage.replies import LiveReply, ReplyStopped
from ..upstream.chunks import ChunkReader, Delta
from ..upstream.client import redact

TICK_SECONDS = 0.25  # how often an idle relay looks at its client
QUEUE_BATCHES = 64  # batches a reader thread may run ahead of a slow client
DRAIN_SECONDS = 0.5  # how long to wait for the body's end after the final chunk
_END = object()
DETACH = object()  # from `batches`: a resumable reply's client left; hand the reading over
log = logging.getLogger("gpt_proxy.relay")
_detached: set[threading.Thread] = set()  # resumable replies read on without their client


def detached_count() -> int:
    """How many resumable replies are read on without their client now."""
    return sum(1 for thread in list(_detached) if thread.is_alive())


def wait_detached(timeout: float) -> int:
    """Wait, at most `timeout` s, for the resumable replies read on without their client to
    end (a worker stopping gracefully lets them finish, as gunicorn lets its open connections
    finish); how many are still running."""
    deadline = time.monotonic() + timeout
    for thread in list(_detached):
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(1 for thread in list(_detached) if thread.is_alive())


@dataclass
class Outcome:
    """What one relayed reply came to, for the access log and the JSON framing."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict | None = None
    model: str | None = None
    error: ProxyError | None = None
    first_token_at: float | None = None
    client_left: bool = False
    chunks: list[Delta] = field(default_factory=list)  # the upstream's own, when collected raw
    heartbeats: int = 0  # pings sent while the upstream was silent
    measured: object = None  # what the reply used, as its operation reads it (pipeline sets it)
    reply_state: str | None = None  # a resumable reply: how it ended (see LiveReply.end)

    @property
    def chars(self) -> int:
        """Characters of reply text relayed (counted once, for the access line)."""
        return sum(map(len, self.content))


def read_deltas(stream, max_event_bytes: int, raw: bool = False,
                reader_type: type[ChunkReader] = ChunkReader) -> Iterator[list[Delta] | None]:
    """The upstream's deltas, a batch per network read (one read often holds several chunks),
    or None for a read that brought none (or a timed read that gave up: see `Inline`).
    A failure raises only after the deltas that came before it were handed out. `raw`: the
    upstream's chunks come out too (see `ChunkReader`); `reader_type`: what reads them."""
    reader = reader_type(raw)
    if stream.is_json:  # an upstream that ignored stream=true: one completion object
        parts, size = [], 0
        for data in stream.chunks():
            if data is None:
                yield None
                continue
            size += len(data)
            if size > max_event_bytes:
                raise UpstreamError(f"upstream sent a JSON body larger than {max_event_bytes} bytes")
            parts.append(data)
        yield reader.read(_json_event(b"".join(parts)), whole=True)
        yield [reader.finish()]
        return
    decoder = SSEDecoder(max_event_bytes)
    batch: list[Delta] = []
    try:
        for data in stream.chunks():
            if data is not None:
                for event in decoder.feed(data):
                    batch.extend(reader.read(event))
                    if reader.done:
                        return
            if batch:
                out, batch = batch, []  # emptied first: a close() here must not yield again
                yield out
            else:
                yield None
        for event in decoder.close():
            batch.extend(reader.read(event))
            if reader.done:
                return
        batch.append(reader.end())
    finally:
        if batch:
            yield batch


def _json_event(body: bytes) -> ServerSentEvent:
    try:
        return ServerSentEvent(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise UpstreamError("upstream sent a body that is not UTF-8") from None


def _as_error(exc: Exception, stream) -> ProxyError:
    """What a failed read hands the client: our own error with its text redacted (it may quote
    the upstream, and so the key), a decoding failure, or any other failure by its name."""
    if isinstance(exc, ProxyError):
        exc.message = redact(exc.message, getattr(stream, "secret", ""))
        exc.args = (exc.message,)
        return exc
    if isinstance(exc, SSEError):
        return UpstreamError(f"upstream sent a broken event stream: {exc}")
    return UpstreamError(f"reading the upstream failed ({type(exc).__name__})")


class Pump:
    """Runs `read_deltas` in a helper thread; the queue carries batches, an error, or the end.

    The queue is bounded: when the client reads slower than the upstream writes, the reader
    waits (and TCP pushes back on the upstream) instead of piling the reply up in memory."""

    def __init__(self, stream, max_event_bytes: int, raw: bool = False,
                 reader_type: type[ChunkReader] = ChunkReader) -> None:
        self.stream = stream
        self.max_event_bytes = max_event_bytes
        self.raw = raw
        self.reader_type = reader_type
        self.queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="upstream-reader", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """The relay is done: a reader waiting for room in the queue gives up."""
        self.stopped = True

    def _put(self, item) -> bool:
        while not self.stopped:
            try:
                self.queue.put(item, timeout=TICK_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        put = self._put
        try:
            for batch in read_deltas(self.stream, self.max_event_bytes, self.raw,
                                     self.reader_type):
                if batch is not None and not put(batch):
                    return
            self.stream.drain()
        except Exception as exc:  # noqa: BLE001 - the relay must always get an ending
            put(_as_error(exc, self.stream))
        finally:
            put(_END)

    def get(self, timeout: float):
        """A batch, an error, `_END`, or None when `timeout` passed with nothing."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self):
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return None


class Inline:
    """What `Pump` does, in the relay's own thread (greenlet): no helper, no queue, two fewer
    switches per token. For a stream whose reads give up after `stream.wait` seconds."""

    def __init__(self, stream, max_event_bytes: int, raw: bool = False,
                 reader_type: type[ChunkReader] = ChunkReader) -> None:
        self.stream = stream
        self.deltas = read_deltas(stream, max_event_bytes, raw, reader_type)
        self.ended = False

    def get(self, timeout: float):
        """A batch, an error, `_END`, or None when `timeout` passed with nothing."""
        if self.ended:
            return _END
        self.stream.wait = timeout
        try:
            return next(self.deltas)
        except StopIteration:
            self.ended = True
            try:
                self.stream.drain(max_reads=1)
            except ProxyError:
                pass  # the reply is whole; only the connection is not reused
            return _END
        except Exception as exc:  # noqa: BLE001 - the relay must always get an ending
            self.ended = True
            return _as_error(exc, self.stream)

    def get_nowait(self):
        return _END if self.ended else None

    def close(self) -> None:
        """Nothing runs on its own here."""


def reader_for(stream, max_event_bytes: int, raw: bool = False,
               reader_type: type[ChunkReader] = ChunkReader):
    """`Inline` when the stream can time its reads, else a `Pump` thread."""
    timed = getattr(stream, "timed_reads", None)
    if timed is not None and timed():
        return Inline(stream, max_event_bytes, raw, reader_type)
    return Pump(stream, max_event_bytes, raw, reader_type)


def client_watcher(environ: dict) -> Callable[[], bool]:
    """A cheap check of whether the client closed its connection (gunicorn gives us the socket)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError, ValueError):
            return False  # nothing to read yet, or a TLS socket that cannot peek
        except OSError:
            return True
    return gone


class Framer:
    """How one client protocol writes a reply: bytes for a batch of deltas, for an error after
    the first byte, for a heartbeat. A protocol subclasses it (see `api`, `openai_api`)."""

    heartbeats = True  # send `ping()` while the upstream is silent
    raw = False  # wants the upstream's own chunks as `chunk` / `completion` deltas
    opening = b""  # written at once, before the upstream's first byte

    def batch(self, deltas: list[Delta]) -> bytes:
        """Everything that arrived by one wake-up: written with one write."""
        return b"".join([self.delta(d) for d in deltas])

    def delta(self, d: Delta) -> bytes:
        return b""

    def error(self, err: ProxyError, outcome: Outcome) -> bytes:
        return b""

    def ping(self) -> bytes:
        return comment("ping")


class Relay:
    """Joins an open upstream stream to one client; iterate `frames()` for the response body."""

    def __init__(self, stream, *, heartbeat: float, max_event_bytes: int,
                 client_gone: Callable[[], bool] = lambda: False,
                 max_seconds: float = 3600.0, tick: float = TICK_SECONDS,
                 on_close: Callable[[Outcome], None] | None = None,
                 reader_type: type[ChunkReader] = ChunkReader,
                 reply: LiveReply | None = None) -> None:
        self.stream = stream
        self.reply = reply  # resumable: numbered, logged, and going on when its client leaves
        self.reader_type = reader_type
        self.heartbeat = heartbeat
        self.max_event_bytes = max_event_bytes
        self.client_gone = client_gone
        self.max_seconds = max_seconds
        self.tick = min(tick, heartbeat)
        self.on_close = on_close
        self.outcome = Outcome()
        self.raw = False  # read the upstream's chunks too (set from the framer)
        self.keep_chunks = False  # and keep them in the outcome (collect)

    def batches(self) -> Iterator[list[Delta] | None]:
        """Deltas as they come, all that arrived by one wake-up in one list; None when a
        heartbeat is due. Ends quietly if the client left (a resumable reply that may go on
        yields DETACH instead, once, and goes on for whoever reads it next); sets
        `outcome.error` if the upstream failed. Always closes the upstream."""
        outcome = self.outcome
        pump = reader_for(self.stream, self.max_event_bytes, self.raw, self.reader_type)
        start = last_sent = last_check = time.monotonic()
        deadline = start + self.max_seconds
        try:
            while True:
                item = pump.get(self.tick)
                now = time.monotonic()
                if now - last_check >= self.tick:
                    last_check = now
                    if self.client_gone():
                        if self.reply is None or not self.reply.may_go_on():
                            outcome.client_left = True
                            return
                        yield DETACH  # the reading goes on elsewhere, with `item` as it is
                    if now >= deadline:
                        outcome.error = UpstreamTimeout(
                            f"the reply took longer than {self.max_seconds:g} s and was cut off")
                        return
                if item is None:
                    if now - last_sent >= self.heartbeat:
                        last_sent = now
                        yield None
                    continue
                batch: list[Delta] = []
                ended = False
                while item is not None:
                    if item is _END:
                        ended = True
                        break
                    if isinstance(item, ProxyError):
                        outcome.error = item
                        ended = True
                        break
                    batch.extend(item)
                    item = pump.get_nowait()
                for d in batch:
                    self._note(d, now)
                if batch:
                    last_sent = now
                    yield batch
                    if batch[-1].kind == "done" and not ended:
                        # Give the reader a moment to finish the body so the connection can be
                        # reused; an upstream that never ends its body is not waited for.
                        pump.get(DRAIN_SECONDS)
                        return
                if ended:
                    return
        finally:
            pump.close()
            self.stream.close()

    def _note(self, d: Delta, now: float) -> None:
        outcome = self.outcome
        if d.kind == "content":
            if outcome.first_token_at is None:
                outcome.first_token_at = now
            outcome.content.append(d.text)
        elif d.kind == "reasoning":
            if outcome.first_token_at is None:
                outcome.first_token_at = now
            outcome.reasoning.append(d.text)
        elif d.kind == "done":
            outcome.finish_reason, outcome.usage, outcome.model = d.finish_reason, d.usage, d.model
        elif d.kind == "error":  # an upstream error event, relayed already (see EventReader)
            outcome.error = _as_error(UpstreamError(d.text), self.stream)
            outcome.usage, outcome.model = d.usage, d.model
        elif self.keep_chunks:
            outcome.chunks.append(d)

    def frames(self, framer: Framer) -> Iterator[bytes]:
        """The response body for one framing: one write per wake-up, not one per token.
        Closed early (the server could not write to the client): the upstream is closed too,
        unless the reply is resumable (see the module's docstring)."""
        if self.reply is not None:
            return self._resumable_frames(framer)
        return self._frames(framer)

    def _frames(self, framer: Framer) -> Iterator[bytes]:
        outcome = self.outcome
        self.raw = framer.raw
        batches = self.batches()
        try:
            yield framer.opening
            for batch in batches:
                if batch is None:
                    if framer.heartbeats:
                        outcome.heartbeats += 1
                        yield framer.ping()
                    continue
                data = framer.batch(batch)
                if data:
                    yield data
            if outcome.error is not None and not outcome.client_left:
                yield framer.error(outcome.error, outcome)
        except GeneratorExit:
            outcome.client_left = True
            raise
        finally:
            batches.close()
            self.stream.close()  # also when the body was abandoned before the first read
            if self.on_close is not None:
                self.on_close(outcome)

    def _resumable_frames(self, framer: Framer) -> Iterator[bytes]:
        """`_frames` for a resumable reply: the reply's id first, every event numbered and
        logged; its client leaving (or a client following it, which takes it over) hands the
        reading over (`_hand_over`) instead of ending it; a cancel ends it with an error
        event."""
        reply, outcome = self.reply, self.outcome
        self.raw = framer.raw
        self.client_gone = reply.client_gone(self.client_gone)
        batches = self.batches()
        handed_over = ended = False
        try:
            yield reply.opening()
            for batch in batches:
                if batch is DETACH:
                    handed_over = self._hand_over(batches, framer)
                    return
                if batch is None:
                    if framer.heartbeats:
                        outcome.heartbeats += 1
                        yield framer.ping()
                    continue
                data = reply.frame(framer, batch)
                if data:
                    yield data
            ended = True
            data = self._last_words(framer)
            if data:
                yield data
        except GeneratorExit:  # the server could not write to the client
            if not ended:
                handed_over = self._hand_over(batches, framer)
            raise
        finally:
            if not handed_over:
                self._finish(batches)

    def _hand_over(self, batches: Iterator, framer: Framer) -> bool:
        """The client left: go on reading into the log in a thread of its own, if the reply
        may (else it ends here, as any reply whose client left)."""
        reply = self.reply
        if not reply.may_go_on():
            self.outcome.client_left = True
            return False
        reply.detach()
        self.client_gone = reply.abandoned
        thread = threading.Thread(target=self._go_on, args=(batches, framer),
                                  name="reply-reader", daemon=True)
        _detached.add(thread)
        thread.start()
        return True

    def _go_on(self, batches: Iterator, framer: Framer) -> None:
        """A resumable reply without its client: read on into the log until it ends."""
        try:
            for batch in batches:
                if batch is not None and batch is not DETACH:
                    self.reply.frame(framer, batch)
            self._last_words(framer)
        except Exception:  # noqa: BLE001 - the upstream must still be closed, the reply settled
            log.exception("a resumable reply failed after its client left")
        finally:
            try:
                self._finish(batches)
            finally:
                _detached.discard(threading.current_thread())

    def _last_words(self, framer: Framer) -> bytes:
        """A resumable reply's last event when it did not end well: cancelled, abandoned
        (nobody came back within the grace period), or failed; logged like the rest."""
        reply, outcome = self.reply, self.outcome
        if reply.cancelled:
            err = ReplyStopped("the reply was cancelled (DELETE /api/replies/<id>)",
                               code="cancelled")
        elif outcome.client_left:
            err = ReplyStopped(f"nobody came back for the reply within {reply.grace:g} s "
                               "(RESUME_GRACE_SECONDS), so it was stopped", code="abandoned")
        elif outcome.error is not None:
            err = outcome.error
        else:
            return b""
        return reply.frame_error(framer, err, outcome)

    def _finish(self, batches: Iterator) -> None:
        """The end of a resumable reply, wherever it came: the upstream closed, the log's end
        written, then `on_close` (once)."""
        try:
            batches.close()
        finally:
            self.stream.close()
            try:
                self.reply.end(self.outcome)
            finally:
                if self.on_close is not None:
                    self.on_close(self.outcome)

    def collect(self, raw: bool = False) -> Outcome:
        """Run to the end without streaming (a whole-reply framing); `raw`: keep the upstream's
        own chunks in `outcome.chunks`."""
        self.raw = self.keep_chunks = raw
        try:
            for _ in self.batches():
                pass
            return self.outcome
        finally:
            if self.on_close is not None:
                self.on_close(self.outcome)
