"""The load generator: many concurrent streaming requests, each token's arrival time recorded.

A bare asyncio Protocol per connection (no HTTP library: the floor must stay low on a 2-core
machine shared with the service). It speaks just enough HTTP/1.1: one request per connection,
a chunked, sized or close-delimited body. In the body it looks only for the token tags
`~NNNNNN~` that bench.upstream puts in every token, and stamps each with time.monotonic_ns()
of the read that brought it; the same code reads the service's SSE and the upstream's own
stream, so the two paths cost the generator the same.

`users` clients start spread evenly over `stagger` seconds and each runs `rounds` streams one
after another, so the middle of a phase holds about `users` open streams at a steady rate of
new ones, the way real traffic arrives (not all at the same instant).
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from .upstream import MARK_RE

KEEP = 512  # bytes of the body kept after the last tag: enough to see how the stream ended


@dataclass
class Target:
    """Where a stream's request goes and how its reply ends."""

    name: str
    host: str
    port: int
    path: str
    headers: dict
    body: Callable[[int, int, float], dict]  # (sid, tokens, rate) -> JSON body
    end_marker: bytes  # must be in the last bytes of a complete reply

    def request(self, sid: int, tokens: int, rate: float) -> bytes:
        body = json.dumps(self.body(sid, tokens, rate)).encode()
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                "Content-Type: application/json", f"Content-Length: {len(body)}",
                "Connection: close"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def service_target(port: int, accept: str = "text/event-stream", host: str = "127.0.0.1",
                   name: str = "service") -> Target:
    headers = {"Accept": accept} if accept else {}
    end = b"event: done" if accept == "text/event-stream" else b""
    return Target(name, host, port, "/api/gpt/get", headers,
                  lambda sid, n, rate: {"message": f"bench sid={sid} n={n} rate={rate:g}"}, end)


def resumable_target(port: int, host: str = "127.0.0.1") -> Target:
    """The service's /api/gpt/get, asking for resumable replies (`X-Resumable: 1`)."""
    target = service_target(port, host=host, name="service resumable")
    target.headers["X-Resumable"] = "1"
    return target


def openai_target(port: int, host: str = "127.0.0.1") -> Target:
    """The service's OpenAI API (/v1/chat/completions), streamed."""
    return Target("service /v1", host, port, "/v1/chat/completions", {},
                  lambda sid, n, rate: {"model": "bench-model", "stream": True, "messages": [
                      {"role": "user", "content": f"bench sid={sid} n={n} rate={rate:g}"}]},
                  b"[DONE]")


def direct_target(port: int, name: str = "direct") -> Target:
    """The upstream's own chat-completions stream (or the bare relay's: the same route)."""
    return Target(name, "127.0.0.1", port, "/v1/chat/completions",
                  {"Accept": "text/event-stream"},
                  lambda sid, n, rate: {"model": "bench-model", "stream": True, "messages": [
                      {"role": "user", "content": f"bench sid={sid} n={n} rate={rate:g}"}]},
                  b"[DONE]")


@dataclass
class Stream:
    """One request's record: when it started, when each token came, how it ended."""

    sid: int
    tokens: int
    start: int = 0
    first: int = 0
    end: int = 0
    status: int = 0
    error: str | None = None
    seqs: array = field(default_factory=lambda: array("i"))
    times: array = field(default_factory=lambda: array("q"))
    tail: bytes = b""


class Client(asyncio.Protocol):
    def __init__(self, request: bytes, stream: Stream, done: asyncio.Future,
                 end_marker: bytes) -> None:
        self.request = request
        self.stream = stream
        self.done = done
        self.end_marker = end_marker
        self.transport = None
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.length = -1
        self.pending = b""  # chunked framing not yet parsed
        self.remaining = 0  # bytes left in the current chunk; -1: its CRLF is due

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4:]
            self.head = b""
            self.in_body = True
            self.stream.status = int(head[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    self.length = int(line[15:])
            if self.stream.status != 200:
                self.stream.error = f"HTTP {self.stream.status}"
        if self.chunked:
            self._dechunk(data, now)
        else:
            self._body(data, now)
            if self.length >= 0:
                self.length -= len(data)
                if self.length <= 0:
                    self._finish(now)

    def _dechunk(self, data: bytes, now: int) -> None:
        buf = self.pending + data if self.pending else data
        pos, size, parts = 0, len(buf), []
        while pos < size:
            if self.remaining > 0:
                piece = buf[pos:pos + self.remaining]
                parts.append(piece)
                pos += len(piece)
                self.remaining -= len(piece)
                if self.remaining == 0:
                    self.remaining = -1
                continue
            if self.remaining == -1:
                if size - pos < 2:
                    break
                pos += 2
                self.remaining = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if length == 0:
                self._body(b"".join(parts), now)
                self._finish(now)
                return
            self.remaining = length
        self.pending = buf[pos:]
        if parts:
            self._body(parts[0] if len(parts) == 1 else b"".join(parts), now)

    def _body(self, data: bytes, now: int) -> None:
        stream = self.stream
        text = stream.tail + data if stream.tail else data
        last = 0
        for match in MARK_RE.finditer(text):
            stream.seqs.append(int(match[1]))
            stream.times.append(now)
            last = match.end()
        if last and not stream.first:
            stream.first = now
        stream.tail = text[max(last, len(text) - KEEP):]

    def _finish(self, now: int, error: str | None = None) -> None:
        if self.done.done():
            return
        stream = self.stream
        stream.end = now
        if stream.error is None:
            if error is not None:
                stream.error = error
            elif (b"event: error" in stream.tail or b"[error]" in stream.tail
                  or b'data: {"error"' in stream.tail):
                stream.error = "error event: " + stream.tail[-200:].decode("utf-8", "replace")
            elif self.end_marker and self.end_marker not in stream.tail:
                stream.error = "reply ended without its end marker"
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        now = time.monotonic_ns()
        if not self.in_body:
            self._finish(now, f"connection lost before the reply ({exc or 'closed'})")
        elif self.chunked or self.length > 0:
            self._finish(now, "connection lost mid-reply")
        else:
            self._finish(now)  # a close-delimited body ends here


@dataclass
class Phase:
    """What one run of streams against one target came to."""

    target: str
    streams: list[Stream]
    started: int
    ended: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (open streams, sampler value)


class Load:
    def __init__(self) -> None:
        self.next_sid = 1
        self.open = 0

    async def one(self, target: Target, tokens: int, rate: float, timeout: float) -> Stream:
        loop = asyncio.get_running_loop()
        stream = Stream(self.next_sid, tokens)
        self.next_sid += 1
        done = loop.create_future()
        request = target.request(stream.sid, tokens, rate)
        self.open += 1
        stream.start = time.monotonic_ns()
        transport = None
        try:
            transport, _ = await asyncio.wait_for(loop.create_connection(
                lambda: Client(request, stream, done, target.end_marker),
                target.host, target.port), timeout)
            await asyncio.wait_for(done, timeout)
        except (TimeoutError, OSError) as exc:
            stream.error = stream.error or f"{type(exc).__name__}: {exc}"
            stream.end = time.monotonic_ns()
            if transport is not None:
                transport.abort()
        finally:
            self.open -= 1
        return stream

    async def run(self, target: Target, *, users: int, rounds: int, tokens: int, rate: float,
                  stagger: float, sampler: Callable[[], int] | None = None,
                  sample_every: float = 0.25) -> Phase:
        """`users` clients, each `rounds` streams of `tokens` tokens at `rate` tokens/s."""
        timeout = 30.0 + (tokens / rate if rate else tokens / 2000.0)
        streams: list[Stream] = []

        async def user(k: int) -> None:
            await asyncio.sleep(stagger * k / users)
            for _ in range(rounds):
                streams.append(await self.one(target, tokens, rate, timeout))

        samples: list[tuple[int, int]] = []

        async def sample() -> None:
            while True:
                await asyncio.sleep(sample_every)
                samples.append((self.open, sampler()))

        started = time.monotonic_ns()
        sampling = asyncio.ensure_future(sample()) if sampler else None
        try:
            await asyncio.wait_for(asyncio.gather(*(user(k) for k in range(users))),
                                   stagger + rounds * timeout + 30)
        finally:
            if sampling is not None:
                sampling.cancel()
        return Phase(target.name, streams, started, time.monotonic_ns(), samples)


@dataclass
class Arrived:
    """What an arrivals run came to: the replies already running and the ones that arrived at
    once, and the window from the first arrival until the last arrived reply ended."""

    running: Phase
    arrived: Phase
    window: tuple[int, int]  # monotonic ns


async def arrivals(load: Load, target: Target, *, running: int, running_tokens: int,
                   running_rate: float, arriving: int, tokens: int, rate: float,
                   lead: float = 1.5, timeout: float = 60.0,
                   sampler: Callable[[], int] | None = None) -> Arrived:
    """`running` clients stream `running_tokens`-token replies at `running_rate` back to back
    (they start spread over one second); `lead` seconds in, when all are mid-reply,
    `arriving` clients each send one `tokens`-token reply (at `rate`) at the same moment.
    Once the last of those has ended the running clients finish the reply they are in and
    stop, so every token of the window is relayed while replies keep running."""
    stop = asyncio.Event()
    running_streams: list[Stream] = []
    stream_timeout = 30.0 + running_tokens / running_rate

    async def runner(k: int) -> None:
        await asyncio.sleep(k / running)
        for _ in range(10_000):  # bounded: stopped long before
            if stop.is_set():
                return
            running_streams.append(await load.one(target, running_tokens, running_rate,
                                                  stream_timeout))

    samples: list[tuple[int, int]] = []

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.25)
            samples.append((load.open, sampler()))

    started = time.monotonic_ns()
    sampling = asyncio.ensure_future(sample()) if sampler else None
    runners = [asyncio.ensure_future(runner(k)) for k in range(running)]
    try:
        await asyncio.sleep(lead)
        first = time.monotonic_ns()
        arrived = await asyncio.wait_for(asyncio.gather(*(
            load.one(target, tokens, rate, timeout) for _ in range(arriving))), timeout + 30)
        last = time.monotonic_ns()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runners), stream_timeout + 30)
    finally:
        stop.set()
        for task in runners:
            task.cancel()
        if sampling is not None:
            sampling.cancel()
    ended = time.monotonic_ns()
    return Arrived(Phase(target.name, running_streams, started, ended, samples),
                   Phase(target.name, list(arrived), first, last), (first, last))


async def fetch_json(host: str, port: int, path: str, timeout: float = 30.0) -> object:
    """POST `path` (no body) and return the JSON reply: how the upstream's records are read."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
        return json.loads(body)
    finally:
        writer.close()
