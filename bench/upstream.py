"""A fast fake OpenAI-compatible upstream for the benchmark, run in its own process.

`python -m bench.upstream [--port N]` prints its port on the first line of stdout, then serves
until stdin closes or it gets SIGTERM. POST /v1/chat/completions answers a chat-completions
stream whose last user message reads `bench sid=<int> n=<tokens> rate=<tokens per second>`:
a role chunk, then `n` content chunks, a finish chunk, a usage chunk and `[DONE]`, chunked.
Token `i` carries the tag `~<i, 6 digits>~` in its content, so a client can tell which token
arrived when, through the proxy or straight from here. rate=0 means as fast as the socket
takes them. Each token's send time (time.monotonic_ns, right before the write) is recorded per
stream, and the moment its request arrived; POST /_bench/collect returns them all as JSON
`{"sent": {sid: [ns, ...]}, "received": {sid: ns}}` and forgets them.

Chunks are pre-encoded once and the server is a bare asyncio Protocol (uvloop when it is
installed), so the floor it adds to every figure stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from array import array

MAX_TOKENS = 100_000
REQUEST_RE = re.compile(r"bench sid=(\d+) n=(\d+) rate=([0-9.]+)")
TAG = "~%06d~"
MARK_RE = re.compile(rb"~(\d{6})~")  # what clients look for; tokens are the only place it occurs

_CHUNK = ('{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
          '"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,'
          '"delta":%s,"logprobs":null,"finish_reason":%s}]}')


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(data: str) -> bytes:
    return _chunked(f"data: {data}\n\n".encode())


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
ROLE = _event(_CHUNK % ('{"role":"assistant","content":""}', "null"))
TAIL = (_event(_CHUNK % ("{}", '"stop"'))
        + _event('{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
                 '"model":"bench-model","choices":[],"usage":{"prompt_tokens":5,'
                 '"completion_tokens":0,"total_tokens":5}}')
        + _event("[DONE]") + b"0\r\n\r\n")


class Frames:
    """Pre-encoded token frames, built once up to the largest `n` asked for."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def upto(self, n: int) -> list[bytes]:
        for i in range(len(self.frames), n):
            content = json.dumps({"content": TAG % i + " "}, separators=(",", ":"))
            self.frames.append(_event(_CHUNK % (content, "null")))
        return self.frames


FRAMES = Frames()
SENT: dict[int, array] = {}  # sid -> send time of each token, ns
RECEIVED: dict[int, int] = {}  # sid -> when its request was read, ns


def _response(status: int, body: bytes, ctype: str = "application/json") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Status")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Upstream(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests one after another (keep-alive)."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.closed = False
        self.can_write: asyncio.Future | None = None
        self.arrived = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)

    def pause_writing(self) -> None:
        self.can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.can_write is not None and not self.can_write.done():
            self.can_write.set_result(None)
        self.can_write = None

    def data_received(self, data: bytes) -> None:
        self.arrived = time.monotonic_ns()
        self.buf += data
        if self.task is None or self.task.done():
            self._next()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        method, path = head.split(" ", 2)[:2]
        self.task = asyncio.ensure_future(self._answer(method, path, body))
        self.task.add_done_callback(lambda _t: self._next() if not self.closed else None)

    async def _answer(self, method: str, path: str, body: bytes) -> None:
        write = self.transport.write
        if path == "/_bench/collect":
            data = {"sent": {str(sid): list(times) for sid, times in SENT.items()},
                    "received": {str(sid): ns for sid, ns in RECEIVED.items()}}
            SENT.clear()
            RECEIVED.clear()
            write(_response(200, json.dumps(data).encode()))
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            write(_response(404, b'{"error":{"message":"not found"}}'))
            return
        try:
            messages = json.loads(body)["messages"]
            match = REQUEST_RE.search(messages[-1]["content"])
            sid, n, rate = int(match[1]), int(match[2]), float(match[3])
            if not 0 < n <= MAX_TOKENS:
                raise ValueError
        except (ValueError, KeyError, IndexError, TypeError):
            write(_response(400, b'{"error":{"message":"not a bench request"}}'))
            return
        RECEIVED[sid] = self.arrived
        frames = FRAMES.upto(n)
        sent = SENT[sid] = array("q", bytes(8 * n))
        clock = time.monotonic_ns
        write(HEAD + ROLE)
        if rate > 0:
            step = 1e9 / rate
            start = clock()
            for i in range(n):
                wait = start + i * step - clock()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                if self.closed:
                    return
                sent[i] = clock()
                write(frames[i])
        else:
            for i in range(n):
                if self.can_write is not None:
                    await self.can_write
                if self.closed:
                    return
                sent[i] = clock()
                write(frames[i])
        write(TAIL)


async def serve(port: int, certfile: str = "", keyfile: str = "") -> None:
    loop = asyncio.get_running_loop()
    context = None
    if certfile:  # HTTPS, to exercise the service's TLS path
        import ssl
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile or None)
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certfile", default="", help="serve HTTPS with this certificate")
    parser.add_argument("--keyfile", default="")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.port, args.certfile, args.keyfile))


def loop_factory():
    """uvloop's event loop when it is installed (a leaner floor), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
