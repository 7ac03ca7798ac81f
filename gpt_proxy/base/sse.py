"""Server-Sent Events: an incremental decoder (bytes in any split -> events) and an encoder.

The decoder follows the WHATWG event-stream rules: LF, CR and CRLF line ends (a CRLF cut
between two reads counts once), comment lines, `field: value` with one optional space, several
`data` lines joined by LF, `event`, `id` (ignored when it holds NUL) and `retry`, dispatch on a
blank line, a leading BOM dropped. Lines are split on bytes before they are decoded, so a UTF-8
character cut between reads is whole again before it is decoded. Two things go beyond the spec:
a last event left without its blank line is still dispatched by `close()` (a proxy should not
drop the final words of a sloppy upstream), and one event may not grow past `max_event_bytes`
(a runaway line is an `SSEError`, not unbounded memory). Invalid UTF-8 is also an `SSEError`:
garbling a character silently is worse than saying the upstream sent bad bytes.

It knows nothing of HTTP or OpenAI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from json.encoder import encode_basestring
from typing import NamedTuple

DEFAULT_MAX_EVENT_BYTES = 1_048_576
_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEError(ValueError):
    """The byte stream cannot be decoded into events."""


class ServerSentEvent(NamedTuple):
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes with `feed()`, collect events; call `close()` at the end of the stream."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id: str | None = None
        self.retry: int | None = None
        self._partial: list[bytes] = []  # the start of a line whose end has not arrived
        self._partial_len = 0
        self._skip_lf = False  # the previous feed ended on CR: a leading LF ends nothing
        self._started = False  # BOM check done
        self._event = ""
        self._data: list[str] = []
        self._event_len = 0
        self._error: SSEError | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one read; return the events it completed (often none, sometimes several)."""
        if self._error is not None:
            raise self._error
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._keep_partial(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial.clear()
            self._partial_len = 0
        lines = chunk.splitlines(keepends=True)
        last = lines[-1]
        if last[-1:] not in (b"\n", b"\r"):
            lines.pop()
            self._keep_partial(last)
        elif last[-1:] == b"\r":
            self._skip_lf = True
        events: list[ServerSentEvent] = []
        for line in lines:
            try:
                event = self._line(line.rstrip(b"\r\n"))
            except SSEError as exc:
                if not events:
                    raise
                self._error = exc  # hand out the good events first; fail on the next call
                break
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: finish a last line and a last event left without a blank line."""
        if self._error is not None:
            raise self._error
        events: list[ServerSentEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            self._partial_len = 0
            self._line(line)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def iter_events(self, chunks) -> Iterator[ServerSentEvent]:
        """Decode a whole iterable of byte chunks."""
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.close()

    def _keep_partial(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._partial_len += len(piece)
        if self._partial_len + self._event_len > self.max_event_bytes:
            self._partial.clear()
            self._partial_len = 0
            raise SSEError(f"an event grew past {self.max_event_bytes} bytes")

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEError(f"invalid UTF-8 in the event stream: {exc.reason}") from None
        if not self._started:
            self._started = True
            if line.startswith("\ufeff"):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._event_len += len(raw)
            if self._event_len > self.max_event_bytes:
                self._data.clear()
                raise SSEError(f"an event grew past {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._event_len = [], "", 0
        if not data:
            return None
        return ServerSentEvent("\n".join(data), event or "message", self.last_event_id, self.retry)


def encode(data: str, event: str | None = None) -> bytes:
    """One event as bytes; `data` may hold line ends (each line becomes a data line)."""
    parts = []
    if event:
        parts.append(f"event: {event}\n")
    for line in _LINE_END.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_json(obj: object, event: str | None = None) -> bytes:
    """An event whose data is compact JSON (always one line: JSON escapes newlines)."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\ndata: " if event else "data: "
    return (head + data + "\n\n").encode("utf-8")


def encode_text(name: str, text: str) -> bytes:
    """`data: {"<name>":"<text>"}`: the same bytes as `encode_json({name: text})` for a plain
    `name`, built with the JSON string escaper alone (the relay's per-token hot path)."""
    return ('data: {"' + name + '":' + encode_basestring(text) + "}\n\n").encode("utf-8")


def comment(text: str = "") -> bytes:
    """A comment line: ignored by every client, keeps idle connections alive."""
    return f": {text}\n\n".encode() if text else b":\n\n"
