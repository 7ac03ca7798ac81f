"""The offline demo upstream: used when no OPENAI_API_KEY is set.

It answers every operation the service relays, in OpenAI's own formats, so the whole pipeline
(decoder, readers, framing, heartbeats, cancellation) runs for real with no network and no
key, and every answer says it is a demo:
- chat completions and legacy completions: a short streamed reply (or one completion object
  when the request said `stream: false`) that says it is a demo and echoes what it was sent;
- the Responses API: the same reply as a Responses event stream, or one response object;
- embeddings: deterministic unit vectors derived from each input (the same input always gets
  the same vector; `dimensions` honoured, 256 by default), as floats or base64;
- image generation: placeholder PNGs of the size asked, labelled DEMO (written here with zlib
  and struct, no imaging library), as `b64_json` or as a `data:` URL in `url`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator

from .chunks import text_of

DEMO_MODEL = "demo"
DEMO_DIMENSIONS = 256
MAX_DEMO_SIDE = 2048


def demo_reply(payload: dict, last: str | None = None, count: int | None = None) -> str:
    """The demo's answer to a chat (`last`: the user's text, else the chat's newest user
    message; `count`: 0 for a request that is no chat)."""
    messages = payload.get("messages") or []
    if last is None:
        last = next((text_of(m.get("content")) for m in reversed(messages)
                     if m.get("role") == "user"), "")
    system = next((text_of(m.get("content")) for m in messages if m.get("role") == "system"), "")
    quoted = last if len(last) <= 200 else last[:200] + "…"
    lines = [
        "**[demo]** This is gpt_proxy's demo upstream: no `OPENAI_API_KEY` is set, "
        "so no model was asked.",
        "",
        f"You said: “{quoted}”",
        "",
        f"- model asked for: `{payload.get('model', '')}`",
        f"- messages sent upstream: {len(messages) if count is None else count}"
        + (f" (with a system prompt of {len(system)} characters)" if system else ""),
        "",
        "Set `OPENAI_API_KEY` (and optionally `OPENAI_BASE_URL`) to talk to a real model.",
    ]
    if count == 0:  # not a chat: no messages to count
        del lines[5]
    return "\n".join(lines)


def _tokens(text: str) -> list[str]:
    """Word-sized pieces, like a tokenizer's output, for a believable typewriter."""
    return re.findall(r"\s*\S+|\s+", text)


def _sse(obj: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n").encode()


class DemoStream:
    """A streamed chat reply, or one completion object when the request said `stream: false`
    (`legacy`: in the shape of the legacy completions API)."""

    def __init__(self, payload: dict, delay: float, legacy: bool = False) -> None:
        self.payload = payload
        self.delay = delay
        self.legacy = legacy
        stream = payload.get("stream")
        self.is_json = stream is not True if legacy else stream is False
        self._closed = threading.Event()

    def _text(self) -> str:
        if not self.legacy:
            return demo_reply(self.payload)
        prompt = self.payload.get("prompt")
        return demo_reply(self.payload, last=prompt if isinstance(prompt, str) else
                          text_of(prompt), count=0)

    def _usage(self, pieces: list[str]) -> dict:
        if self.legacy:
            value = self.payload.get("prompt")
            prompt = len(_tokens(value if isinstance(value, str) else text_of(value)))
        else:
            prompt = sum(len(_tokens(text_of(m.get("content"))))
                         for m in self.payload.get("messages", []))
        return {"prompt_tokens": prompt, "completion_tokens": len(pieces),
                "total_tokens": prompt + len(pieces)}

    def _choice(self, text: str | None, finish: str | None, role: bool = False) -> dict:
        if self.legacy:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if role else (
            {"content": text} if text is not None else {})
        return {"index": 0, "delta": delta, "finish_reason": finish}

    def chunks(self) -> Iterator[bytes]:
        kind = "text_completion" if self.legacy else "chat.completion.chunk"
        base = {"id": "cmpl-demo" if self.legacy else "chatcmpl-demo", "object": kind,
                "created": int(time.time()), "model": DEMO_MODEL}
        text = self._text()
        if self.is_json:
            if self.legacy:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
            else:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": "stop"}
            yield json.dumps(dict(base, object="text_completion" if self.legacy else
                                  "chat.completion", choices=[choice],
                                  usage=self._usage(_tokens(text))), ensure_ascii=False).encode()
            return

        def chunk(choices: list, **extra) -> bytes:
            return _sse(dict(base, choices=choices, **extra))

        if not self.legacy:
            yield chunk([self._choice("", None, role=True)])
        pieces = _tokens(text)
        for piece in pieces:
            if self._closed.wait(self.delay):
                return
            yield chunk([self._choice(piece, None)])
        yield chunk([self._choice(None, "stop")])
        options = self.payload.get("stream_options")
        if not self.legacy or (isinstance(options, dict) and options.get("include_usage")):
            yield chunk([], usage=self._usage(pieces))
        yield b"data: [DONE]\n\n"

    def drain(self) -> None:
        """Nothing is left after `[DONE]`."""

    def close(self) -> None:
        self._closed.set()


def _input_text(value: object) -> str:
    """The user's newest text in a Responses `input`: a string, or a list of messages whose
    content is a string or parts (`input_text`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for item in reversed(value):
            if isinstance(item, dict) and item.get("role", "user") == "user":
                return text_of(item.get("content"))
    return ""


class DemoResponses(DemoStream):
    """The demo reply through the Responses API: its event stream, or one response object."""

    def __init__(self, payload: dict, delay: float) -> None:
        super().__init__(payload, delay)
        self.is_json = payload.get("stream") is not True

    def _text(self) -> str:
        return demo_reply(self.payload, last=_input_text(self.payload.get("input")), count=0)

    def _response(self, status: str, text: str | None, pieces: list[str]) -> dict:
        output = []
        if text is not None:
            output = [{"id": "msg_demo", "type": "message", "status": "completed",
                       "role": "assistant", "content": [
                           {"type": "output_text", "text": text, "annotations": []}]}]
        prompt = len(_tokens(_input_text(self.payload.get("input"))))
        usage = None if status != "completed" else {
            "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(pieces), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + len(pieces)}
        return {"id": "resp_demo", "object": "response", "created_at": int(time.time()),
                "status": status, "error": None, "incomplete_details": None,
                "instructions": self.payload.get("instructions"), "model": DEMO_MODEL,
                "output": output, "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "usage": usage}

    def chunks(self) -> Iterator[bytes]:
        text = self._text()
        pieces = _tokens(text)
        if self.is_json:
            yield json.dumps(self._response("completed", text, pieces),
                             ensure_ascii=False).encode()
            return
        number = iter(range(1 << 30))

        def event(name: str, **fields) -> bytes:
            return _sse({"type": name, "sequence_number": next(number), **fields}, name)

        item = {"id": "msg_demo", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        where = {"item_id": "msg_demo", "output_index": 0, "content_index": 0}
        yield event("response.created", response=self._response("in_progress", None, []))
        yield event("response.in_progress", response=self._response("in_progress", None, []))
        yield event("response.output_item.added", output_index=0, item=item)
        yield event("response.content_part.added", **where,
                    part={"type": "output_text", "text": "", "annotations": []})
        for piece in pieces:
            if self._closed.wait(self.delay):
                return
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
        part = {"type": "output_text", "text": text, "annotations": []}
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=0,
                    item=dict(item, status="completed", content=[part]))
        yield event("response.completed", response=self._response("completed", text, pieces))


class DemoAnswer:
    """One JSON answer (embeddings, images), after `wait` seconds (a close ends the wait)."""

    is_json = True

    def __init__(self, make, wait: float) -> None:
        self.make = make
        self.wait = wait
        self._closed = threading.Event()

    def chunks(self) -> Iterator[bytes]:
        if self.wait and self._closed.wait(self.wait):
            return
        yield json.dumps(self.make(), ensure_ascii=False).encode()

    def drain(self) -> None:
        """Nothing is left."""

    def close(self) -> None:
        self._closed.set()


def embedding(value: object, dimensions: int = DEMO_DIMENSIONS) -> list[float]:
    """A deterministic unit vector for one input (a string, or a list of token ids)."""
    seed = hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).digest()
    raw = b"".join(hashlib.sha256(seed + struct.pack(">I", i)).digest()
                   for i in range((dimensions + 31) // 32))[:dimensions]
    vector = [byte / 127.5 - 1.0 for byte in raw]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def embeddings_answer(payload: dict) -> dict:
    value = payload.get("input")
    one = not isinstance(value, list) or not value or isinstance(value[0], int)
    inputs = [value] if one else value
    dimensions = payload.get("dimensions")
    if (not isinstance(dimensions, int) or isinstance(dimensions, bool)
            or not 1 <= dimensions <= 3072):
        dimensions = DEMO_DIMENSIONS
    data = []
    for index, item in enumerate(inputs):
        vector = embedding(item, dimensions)
        if payload.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(item) if isinstance(item, list) else len(_tokens(str(item)))
                 for item in inputs)
    return {"object": "list", "data": data, "model": DEMO_MODEL,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _side(size: object) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", size) if isinstance(size, str) else None
    if not match:
        return 1024, 1024
    return (min(max(int(match[1]), 16), MAX_DEMO_SIDE), min(max(int(match[2]), 16), MAX_DEMO_SIDE))


def images_answer(payload: dict) -> dict:
    n = payload.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 10 else 1
    width, height = _side(payload.get("size"))
    prompt = payload.get("prompt") if isinstance(payload.get("prompt"), str) else ""
    data = []
    for index in range(n):
        image = base64.b64encode(placeholder_png(width, height, f"{prompt}\0{index}")).decode()
        item = ({"url": "data:image/png;base64," + image}
                if payload.get("response_format") == "url" else {"b64_json": image})
        item["revised_prompt"] = f"[demo] {prompt[:200]}"
        data.append(item)
    return {"created": int(time.time()), "data": data}


# --- a placeholder picture ------------------------------------------------------------------

_FONT = {  # 5x7 capitals: enough to say DEMO
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
}


def _png(width: int, height: int, raw: bytes) -> bytes:
    """An 8-bit RGB PNG from its filtered scanlines."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def placeholder_png(width: int, height: int, seed: str, label: str = "DEMO") -> bytes:
    """A sky from one colour to another, a sun, and `label`: the colours and the sun's place
    follow from `seed`, so one prompt always draws the same picture."""
    digest = hashlib.sha256(seed.encode("utf-8", "replace")).digest()
    top, bottom = digest[0:3], bytes(b // 3 for b in digest[3:6])
    sun = bytes(200 + b % 56 for b in digest[6:9])
    cx = width * (0.25 + digest[9] / 255 * 0.5)
    cy, radius = height * 0.38, min(width, height) * 0.16
    scale = max(1, min(width, height) // 48)
    text_w, text_h = (len(label) * 6 - 1) * scale, 7 * scale
    tx, ty = (width - text_w) // 2, int(height * 0.72)
    ink = b"\xff\xff\xff" * scale
    rows = []
    for y in range(height):
        t = y / max(height - 1, 1)
        sky = bytes(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        row = bytearray(sky * width)
        dy = y - cy
        if abs(dy) < radius:
            half = math.sqrt(radius * radius - dy * dy)
            x0, x1 = max(0, int(cx - half)), min(width, int(cx + half))
            row[x0 * 3:x1 * 3] = sun * (x1 - x0)
        if ty <= y < ty + text_h:
            line = (y - ty) // scale
            for i, letter in enumerate(label):
                for fx, cell in enumerate(_FONT.get(letter, _FONT["O"])[line]):
                    x = tx + (i * 6 + fx) * scale
                    if cell == "#" and 0 <= x and x + scale <= width:
                        row[x * 3:(x + scale) * 3] = ink
        rows.append(b"\x00" + bytes(row))
    return _png(width, height, b"".join(rows))


class DemoUpstream:
    mode = "demo"

    def __init__(self, delay: float = 0.03) -> None:
        self.delay = delay

    def open(self, payload: dict, gone=None, path: str = "/chat/completions"):
        if path == "/completions":
            return DemoStream(payload, self.delay, legacy=True)
        if path == "/responses":
            return DemoResponses(payload, self.delay)
        if path == "/embeddings":
            return DemoAnswer(lambda: embeddings_answer(payload), 0)
        if path == "/images/generations":  # a real one takes seconds: show the wait
            return DemoAnswer(lambda: images_answer(payload), self.delay * 30)
        return DemoStream(payload, self.delay)

    def serves(self, model: str) -> bool:
        return True

    def models(self) -> list[str]:
        return []
