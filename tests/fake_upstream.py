"""A real OpenAI-compatible upstream on 127.0.0.1, for integration tests and benchmarks.

An asyncio HTTP/1.1 server in a background thread. Each request is answered by the next
`Scenario` queued with `push()` (or the default one): a status, headers, and body parts written
exactly as given — so an event, a CRLF or a UTF-8 character can be cut across writes — with
pauses between them, or gates the test opens. It records every request (headers, JSON body) and the moment the client
disconnected, which is how tests see that the proxy closed its upstream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Scenario:
    status: int = 200
    headers: dict = field(default_factory=lambda: {"Content-Type": "text/event-stream"})
    # bytes to write, a float: pause that long, or a threading.Event: wait until the test
    # sets it (so a test decides when the upstream goes on, whatever the machine's speed)
    parts: list = field(default_factory=list)
    chunked: bool = True  # False: no length, the end of the body is the connection closing
    hold_open: bool = False  # after the parts, keep the connection open until the client leaves
    close_after: bool = False  # close the connection after the body (no keep-alive)
    head_delay: float = 0.0  # seconds before the status line (an upstream queueing the request)


@dataclass
class Record:
    method: str
    path: str
    headers: dict
    body: bytes
    received_at: float
    peer: tuple = ()
    disconnected: threading.Event = field(default_factory=threading.Event)
    disconnected_at: float | None = None
    completed: threading.Event = field(default_factory=threading.Event)

    @property
    def json(self):
        return json.loads(self.body)

    def seconds_to_close(self, since: float, wait: float = 3.0) -> float:
        """How long after `since` (time.monotonic()) the client closed this request; fails
        if it is still open after `wait` seconds."""
        assert self.disconnected.wait(wait), "the upstream request was never closed"
        return self.disconnected_at - since


def chunk_json(content=None, *, finish=None, role=None, reasoning=None, usage=None,
               choices=True, model="fake-model", **extra) -> dict:
    """One `chat.completion.chunk` object."""
    body = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": model}
    if choices:
        delta = {}
        if role is not None:
            delta["role"] = role
        if content is not None:
            delta["content"] = content
        if reasoning is not None:
            delta["reasoning_content"] = reasoning
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    else:
        body["choices"] = []
    if usage is not None:
        body["usage"] = usage
    body.update(extra)
    return body


def sse_bytes(obj, newline: str = "\n") -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}{newline}{newline}".encode()


def openai_stream(tokens, *, newline="\n", comments=True, empty_choices=True, usage=True,
                  done=True, finish="stop", reasoning=()) -> bytes:
    """The whole body an OpenAI-style upstream would send for these tokens."""
    out = [f": keep-alive comment{newline}{newline}".encode()] if comments else []
    out.append(sse_bytes(chunk_json("", role="assistant"), newline))
    for r in reasoning:
        out.append(sse_bytes(chunk_json(reasoning=r), newline))
    if empty_choices:  # Azure sends content-filter results with no choices first
        out.append(sse_bytes(chunk_json(choices=False, prompt_filter_results=[]), newline))
    for token in tokens:
        out.append(sse_bytes(chunk_json(token), newline))
        if comments and len(out) % 5 == 0:
            out.append(f": ping{newline}{newline}".encode())
    if finish is not None:
        out.append(sse_bytes(chunk_json(finish=finish), newline))
    if usage:
        out.append(sse_bytes(chunk_json(choices=False, usage={
            "prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)}),
            newline))
    if done:
        out.append(sse_bytes("[DONE]", newline))
    return b"".join(out)


def cut(data: bytes, size: int = 7, pause: float = 0.0) -> list:
    """Cut bytes into pieces of `size` (mid-character, mid-CRLF), with optional pauses."""
    parts: list = []
    for i in range(0, len(data), size):
        if pause and parts:
            parts.append(pause)
        parts.append(data[i:i + size])
    return parts


def stream_scenario(tokens, *, size=7, pause=0.0, first_delay=0.0, chunked=True,
                    hold_open=False, **kw) -> Scenario:
    """An OpenAI-style stream of `tokens`, written in pieces of `size` bytes."""
    parts = cut(openai_stream(tokens, **kw), size, pause)
    if first_delay:
        parts.insert(0, first_delay)
    return Scenario(parts=parts, chunked=chunked, hold_open=hold_open)


def response_object(text: str, *, status: str = "completed", usage=True,
                    model: str = "fake-model") -> dict:
    """One Responses API `response` object holding `text` (no output while in progress)."""
    output = [] if status == "in_progress" else [
        {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status,
            "error": None, "model": model, "output": output, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 7, "output_tokens": len(text.split()) or 1,
                      "total_tokens": 7 + (len(text.split()) or 1)}
            if usage and status != "in_progress" else None}


def responses_events(tokens, *, end: str = "completed", model: str = "fake-model",
                     reasoning=()) -> list[tuple[str, dict]]:
    """The (event name, data) of a Responses API stream of `tokens`, as OpenAI sends them;
    `end`: completed, incomplete, failed, or "" (the stream stops before its end)."""
    text = "".join(tokens)
    events: list[tuple[str, dict]] = []

    def add(name: str, **fields) -> None:
        events.append((name, {"type": name, "sequence_number": len(events), **fields}))

    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    add("response.created", response=response_object("", status="in_progress", model=model))
    add("response.in_progress", response=response_object("", status="in_progress", model=model))
    for piece in reasoning:
        add("response.reasoning_summary_text.delta", item_id="rs_1", output_index=0,
            summary_index=0, delta=piece)
    add("response.output_item.added", output_index=0,
        item={"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant",
              "content": []})
    add("response.content_part.added", **where,
        part={"type": "output_text", "text": "", "annotations": []})
    for token in tokens:
        add("response.output_text.delta", **where, delta=token, logprobs=[])
    if not end:
        return events
    add("response.output_text.done", **where, text=text, logprobs=[])
    if end == "failed":
        failed = response_object(text, status="failed", model=model)
        failed["error"] = {"code": "server_error", "message": "the model broke down"}
        add("response.failed", response=failed)
    else:
        add(f"response.{end}", response=response_object(text, status=end, model=model))
    return events


def responses_stream(tokens, *, newline: str = "\n", comments: bool = True, **kw) -> bytes:
    """The whole body of a Responses API stream of `tokens` (see `responses_events`)."""
    out = [f": keep-alive{newline}{newline}".encode()] if comments else []
    for name, data in responses_events(tokens, **kw):
        out.append(f"event: {name}{newline}data: {json.dumps(data, ensure_ascii=False)}"
                   f"{newline}{newline}".encode())
    return b"".join(out)


def responses_scenario(tokens, *, size: int = 7, pause: float = 0.0, hold_open: bool = False,
                       **kw) -> Scenario:
    return Scenario(parts=cut(responses_stream(tokens, **kw), size, pause), hold_open=hold_open)


def image_answer(images=None, *, urls=None) -> dict:
    """An image generation answer: base64 `images` (bytes), or `urls`."""
    data = ([{"url": url, "revised_prompt": "revised"} for url in urls] if urls is not None
            else [{"b64_json": base64.b64encode(image).decode(), "revised_prompt": "revised"}
                  for image in images])
    return {"created": 1, "data": data,
            "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}}


def embeddings_answer(vectors, *, encoded: bool = False, model: str = "fake-embed") -> dict:
    """An embeddings answer: float vectors, or (`encoded`) their float32 bytes in base64."""
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
             if encoded else v} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": 4, "total_tokens": 4}}


def json_scenario(status: int, body, headers=None) -> Scenario:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Scenario(status=status, headers={"Content-Type": "application/json", **(headers or {})},
                    parts=[data], chunked=False, close_after=False)


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable"}


class FakeUpstream:
    """Start with `start()`, stop with `stop()`; `url` is the base URL (ending in /v1)."""

    def __init__(self, default: Scenario | None = None, tls: tuple[str, str] | None = None,
                 port: int = 0) -> None:
        self.tls = tls  # (certificate file, key file): serve HTTPS
        self.default = default or stream_scenario(["Hello", ", ", "world", "!"])
        self.scenarios: deque[Scenario] = deque()
        self.records: list[Record] = []
        self.received = threading.Condition()
        self.port = port  # 0: any free port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def push(self, *scenarios: Scenario) -> None:
        self.scenarios.extend(scenarios)

    def reset(self) -> None:
        self.scenarios.clear()
        self.records.clear()

    def wait_for_request(self, count: int = 1, timeout: float = 5.0) -> Record:
        """Block until `count` requests have arrived; return the newest."""
        with self.received:
            if not self.received.wait_for(lambda: len(self.records) >= count, timeout):
                raise TimeoutError(f"the fake upstream saw {len(self.records)} requests, "
                                   f"expected {count}")
            return self.records[count - 1]

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            context = None
            if self.tls:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(*self.tls)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=2048,
                                     ssl=context))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                record = await self._read_request(reader)
                if record is None:
                    return
                record.peer = writer.get_extra_info("peername") or ()
                scenario = self.scenarios.popleft() if self.scenarios else self.default
                with self.received:
                    self.records.append(record)
                    self.received.notify_all()
                keep = await self._respond(reader, writer, record, scenario)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                RuntimeError):
            return
        finally:
            writer.close()

    async def _read_request(self, reader) -> Record | None:
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Record(method, path, headers, body, time.monotonic())

    async def _respond(self, reader, writer, record: Record, scenario: Scenario) -> bool:
        watcher = asyncio.ensure_future(self._watch(reader, record))
        try:
            if scenario.head_delay:
                await asyncio.wait([watcher], timeout=scenario.head_delay)
                if record.disconnected.is_set():
                    return False
            head = [f"HTTP/1.1 {scenario.status} {REASONS.get(scenario.status, 'Status')}"]
            head += [f"{k}: {v}" for k, v in scenario.headers.items()]
            if scenario.chunked:
                head.append("Transfer-Encoding: chunked")
            else:
                head.append("Connection: close")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            await writer.drain()
            for part in scenario.parts:
                if record.disconnected.is_set():
                    return False
                if isinstance(part, (int, float)):
                    await asyncio.sleep(part)
                    continue
                if isinstance(part, threading.Event):
                    while not part.is_set() and not record.disconnected.is_set():
                        await asyncio.sleep(0.01)  # polling the test's gate
                    continue
                if scenario.chunked:
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                else:
                    writer.write(part)
                await writer.drain()
            if scenario.hold_open:
                await watcher
                return False
            if scenario.chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            record.completed.set()
            return scenario.chunked and not scenario.close_after
        except ConnectionError:
            self._mark(record)
            return False
        finally:
            watcher.cancel()  # and wait for it: the next request's read must be the only reader
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, reader, record: Record) -> None:
        """Notice the client leaving while we pause or write (it sends nothing mid-response)."""
        try:
            data = await reader.read(1)
            if not data:
                self._mark(record)
            else:  # a pipelined request: not a disconnect; put it back is not possible, so ignore
                pass
        except (ConnectionError, asyncio.CancelledError):
            if not record.completed.is_set() and not asyncio.current_task().cancelled():
                self._mark(record)

    @staticmethod
    def _mark(record: Record) -> None:
        if record.disconnected_at is None:
            record.disconnected_at = time.monotonic()
        record.disconnected.set()
