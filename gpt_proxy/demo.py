"""The offline demo upstream: used when no OPENAI_API_KEY is set.

It answers every request with a short streamed reply that says it is a demo and echoes what it
was sent, in the exact OpenAI chunk format, so the whole relay (decoder, chunk reader, framing,
heartbeats, cancellation) runs for real with no network and no key.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

from .chunks import text_of

DEMO_MODEL = "demo"


def demo_reply(payload: dict) -> str:
    messages = payload.get("messages") or []
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
        f"- messages sent upstream: {len(messages)}"
        + (f" (with a system prompt of {len(system)} characters)" if system else ""),
        "",
        "Set `OPENAI_API_KEY` (and optionally `OPENAI_BASE_URL`) to talk to a real model.",
    ]
    return "\n".join(lines)


def _tokens(text: str) -> list[str]:
    """Word-sized pieces, like a tokenizer's output, for a believable typewriter."""
    return re.findall(r"\s*\S+|\s+", text)


class DemoStream:
    """A streamed reply, or one completion object when the request said `stream: false`."""

    def __init__(self, payload: dict, delay: float) -> None:
        self.payload = payload
        self.delay = delay
        self.is_json = payload.get("stream") is False
        self._closed = threading.Event()

    def _usage(self, pieces: list[str]) -> dict:
        prompt = sum(len(_tokens(text_of(m.get("content"))))
                     for m in self.payload.get("messages", []))
        return {"prompt_tokens": prompt, "completion_tokens": len(pieces),
                "total_tokens": prompt + len(pieces)}

    def chunks(self) -> Iterator[bytes]:
        base = {"id": "chatcmpl-demo", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": DEMO_MODEL}
        if self.is_json:
            text = demo_reply(self.payload)
            yield json.dumps(dict(base, object="chat.completion", choices=[{
                "index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"}], usage=self._usage(_tokens(text))),
                ensure_ascii=False).encode()
            return

        def chunk(choices: list, **extra) -> bytes:
            body = dict(base, choices=choices, **extra)
            return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None}])
        pieces = _tokens(demo_reply(self.payload))
        for piece in pieces:
            if self._closed.wait(self.delay):
                return
            yield chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        yield chunk([], usage=self._usage(pieces))
        yield b"data: [DONE]\n\n"

    def drain(self) -> None:
        """Nothing is left after `[DONE]`."""

    def close(self) -> None:
        self._closed.set()


class DemoUpstream:
    mode = "demo"

    def __init__(self, delay: float = 0.03) -> None:
        self.delay = delay

    def open(self, payload: dict, gone=None) -> DemoStream:
        return DemoStream(payload, self.delay)

    def serves(self, model: str) -> bool:
        return True

    def models(self) -> list[str]:
        return []
