"""OpenAI chat-completion chunks, and Responses API events, -> deltas.

`ChunkReader` takes decoded SSE events and yields `Delta` values: text (`content`), reasoning,
and at the end one `done` delta with the finish reason, usage and model. Tolerant of what real
upstreams send: role-only chunks and chunks with empty `choices` (Azure's filter results, the
usage-only chunk) produce no text, never "undefined"; content given as a list of parts is
joined. An
`{"error": ...}` chunk or `event: error` raises `UpstreamError`; so does a stream that ends
before both `[DONE]` and a finish reason ("upstream ended early").

Text is always writable as UTF-8: JSON may escape a lone UTF-16 surrogate ("\\ud83d"), and
some upstreams split an emoji's surrogate pair across two chunks. A high surrogate that ends a
delta waits for the next delta of the same kind and is joined with it; any other lone
surrogate becomes U+FFFD (a framer's `encode("utf-8")` would otherwise fail mid-reply).

With `raw=True` each chunk also comes out whole, as a `chunk` delta ahead of the deltas read
from it (a `completion` delta for an upstream that answered with one completion object): its
JSON text on one line and the parsed object, so a protocol that relays the upstream's own
chunks (the OpenAI API) passes on every field, including ones this module does not know.
A legacy completion's `choices[].text` is read as content too (the same reader serves
/completions, and whole JSON answers such as embeddings, whose `usage` it keeps).

`EventReader` reads a Responses API stream (`event: response.output_text.delta` ...) into the
same deltas: output text as content, reasoning text as reasoning, `response.completed` (or
`.incomplete`) as the end with its usage and model. With `raw=True` every event also comes out
whole, as an `event` delta with its name, so the OpenAI door relays the stream event by event.
An upstream's own `error` or `response.failed` event is relayed like any other and then
ends the reply as an `error` delta (the relay records it; the framer has already passed the
upstream's own words on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..base.errors import UpstreamError
from ..base.sse import ServerSentEvent

_SURROGATE = re.compile("[\ud800-\udfff]")


class Delta(NamedTuple):
    kind: str  # "content" | "reasoning" | "done" | "error"; raw: "chunk" | "completion" | "event"
    text: str = ""  # chunk/completion/event: the upstream's JSON text; error: the message
    finish_reason: str | None = None
    usage: dict | None = None
    model: str | None = None
    chunk: dict | None = None  # chunk/completion/event: the parsed object
    event: str | None = None  # event: its name ("message" when the upstream named none)


def text_of(value: object) -> str:
    """`content` as a string: a string as it is, or the text of a list of parts (OpenAI's
    message parts, and a few providers' chunks); "" for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part if isinstance(part, str) else ""
            for part in value)
    return ""


def payload_message(payload: object) -> str:
    """The message of an upstream error body: `{"error": {"message"|"detail": ...}}`, a bare
    `{"message": ...}`, `{"error": "text"}` or plain text; "" when it names none."""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail")
    return str(error) if error else ""


def error_from_payload(payload: object, default: str = "the upstream reported an error") -> UpstreamError:
    """Turn an upstream `{"error": ...}` body (or a bare string) into our error."""
    return UpstreamError(f"upstream error: {payload_message(payload) or default}"[:1000])


class ChunkReader:
    """Consume events from one upstream stream and yield deltas."""

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.model: str | None = None
        self.done = False
        self._high = {"content": "", "reasoning": ""}  # a pair's first half, from the last delta

    def deltas(self, events: Iterable[ServerSentEvent]) -> Iterator[Delta]:
        for event in events:
            if self.done:
                break
            yield from self.read(event)
        if not self.done:
            yield self.end()

    def end(self) -> Delta:
        """The stream closed without `[DONE]`: fine after a finish reason, else an early end."""
        if self.finish_reason is None:
            raise UpstreamError("upstream ended early: the stream closed before the reply was finished")
        return self.finish()

    def finish(self) -> Delta:
        self.done = True
        return Delta("done", finish_reason=self.finish_reason, usage=self.usage, model=self.model)

    def read(self, event: ServerSentEvent, whole: bool = False) -> list[Delta]:
        """The deltas one event carries; `whole`: the event is a completion object (the
        upstream answered with JSON instead of a stream)."""
        data = event.data
        if data == "[DONE]":
            return [self.finish()]
        try:
            chunk = json.loads(data)
        except ValueError:
            if event.event == "error":
                raise error_from_payload(data) from None
            if "\n" in data:  # chunks on consecutive data lines with no blank line between
                return self._read_lines(event)
            raise UpstreamError(f"upstream sent a malformed chunk: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"upstream sent a malformed chunk: {data[:200]!r}")
        if event.event == "error" or chunk.get("error"):
            raise error_from_payload(chunk)
        if not self.raw:
            return self.read_chunk(chunk)
        if whole:
            return [Delta("completion", data, chunk=chunk), *self.read_chunk(chunk)]
        if "\n" in data:  # JSON spread over several data lines: one line for the client
            data = data.replace("\n", " ")  # (raw line ends in JSON can only be whitespace)
        return [Delta("chunk", data, chunk=chunk), *self.read_chunk(chunk)]

    def _read_lines(self, event: ServerSentEvent) -> list[Delta]:
        """Some servers forget the blank line between events, so several chunks arrive as one
        multi-line event; read each line as its own chunk rather than fail the reply."""
        out: list[Delta] = []
        for line in event.data.split("\n"):
            if line.strip():
                out.extend(self.read(ServerSentEvent(line, event.event)))
                if self.done:
                    break
        return out

    def read_chunk(self, chunk: dict) -> list[Delta]:
        out: list[Delta] = []
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return out
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice.get("message")  # a non-streamed completion
                if not isinstance(delta, dict):
                    delta = {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                reasoning = self._whole("reasoning", text_of(reasoning))
                if reasoning:
                    out.append(Delta("reasoning", reasoning))
            content = delta.get("content")
            if content is None and isinstance(choice.get("text"), str):
                content = choice["text"]  # a legacy completion
            text = self._whole("content", text_of(content))
            if text:
                out.append(Delta("content", text))
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self.finish_reason = finish
        return out

    def _whole(self, kind: str, text: str) -> str:
        """`text` with whole characters only (see the module's docstring)."""
        high = self._high[kind]
        if high:
            text, self._high[kind] = high + text, ""
        if text.isascii() or not _SURROGATE.search(text):
            return text
        if "\ud800" <= text[-1] <= "\udbff":  # the next delta may hold its second half
            text, self._high[kind] = text[:-1], text[-1]
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_END_EVENTS = ("response.completed", "response.incomplete")
_CONTENT_EVENTS = {"response.output_text.delta": "content",
                   "response.reasoning_text.delta": "reasoning",
                   "response.reasoning_summary_text.delta": "reasoning"}


class EventReader(ChunkReader):
    """Consume the events of one Responses API stream (or one response object) and yield
    deltas; see the module's docstring."""

    def read(self, event: ServerSentEvent, whole: bool = False) -> list[Delta]:
        data = event.data
        if data == "[DONE]":  # not OpenAI's, but some compatible servers end so
            out = [Delta("event", data, event=event.event)] if self.raw else []
            out.append(self.finish())
            return out
        try:
            obj = json.loads(data)
        except ValueError:
            if event.event == "error":
                raise error_from_payload(data) from None
            raise UpstreamError(f"upstream sent a malformed event: {data[:200]!r}") from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"upstream sent a malformed event: {data[:200]!r}")
        if whole:
            return self._whole_response(data, obj)
        kind = obj.get("type")
        out = [Delta("event", data, chunk=obj, event=event.event)] if self.raw else []
        part = _CONTENT_EVENTS.get(kind)
        if part is not None:
            text = obj.get("delta")
            text = self._whole(part, text) if isinstance(text, str) else ""
            if text:
                out.append(Delta(part, text))
            return out
        if event.event == "error" or kind in ("error", "response.failed") or obj.get("error"):
            response = obj.get("response")
            if isinstance(response, dict):
                self._note(response)
                obj = response if response.get("error") else obj
            self.done = True
            message = payload_message(obj) or "the upstream reported an error"
            out.append(Delta("error", f"upstream error: {message}"[:1000], usage=self.usage,
                             model=self.model))
            return out
        response = obj.get("response")
        if isinstance(response, dict):
            self._note(response)
            if kind in _END_EVENTS:
                status = response.get("status")
                self.finish_reason = status if isinstance(status, str) and status else kind[9:]
                out.append(self.finish())
        return out

    def _note(self, response: dict) -> None:
        """The model and usage a response object names."""
        model = response.get("model")
        if isinstance(model, str) and model:
            self.model = model
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.usage = usage

    def _whole_response(self, data: str, response: dict) -> list[Delta]:
        """One response object (`stream: false`, or an upstream that did not stream)."""
        self._note(response)
        out = [Delta("completion", data, chunk=response)] if self.raw else []
        for item in response.get("output") or ():
            if not isinstance(item, dict) or not isinstance(item.get("content"), list):
                continue
            for part in item["content"]:
                if (isinstance(part, dict) and part.get("type") == "output_text"
                        and isinstance(part.get("text"), str) and part["text"]):
                    out.append(Delta("content", self._whole("content", part["text"])))
        status = response.get("status")
        self.finish_reason = status if isinstance(status, str) and status else "completed"
        return out
