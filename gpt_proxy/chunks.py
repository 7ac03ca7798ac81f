"""OpenAI chat-completion chunks -> deltas.

Takes decoded SSE events and yields `Delta` values: text (`content`), reasoning, and at the
end one `done` delta with the finish reason, usage and model. Tolerant of what real upstreams
send: role-only chunks and chunks with empty `choices` (Azure's filter results, the usage-only
chunk) produce no text, never "undefined"; content given as a list of parts is joined. An
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
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .errors import UpstreamError
from .sse import ServerSentEvent

_SURROGATE = re.compile("[\ud800-\udfff]")


class Delta(NamedTuple):
    kind: str  # "content" | "reasoning" | "done"; with raw: also "chunk" | "completion"
    text: str = ""  # chunk/completion: the upstream's JSON text
    finish_reason: str | None = None
    usage: dict | None = None
    model: str | None = None
    chunk: dict | None = None  # chunk/completion: the parsed object


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
            text = self._whole("content", text_of(delta.get("content")))
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
