"""What differs between the upstream operations the pipeline runs: one small description each.

Every operation (chat completions, legacy completions, embeddings, image generation, the
Responses API) goes through the same pipeline: the same policy, the same upstream client with
failover, the same relay with heartbeats and cancellation, the same access line and metrics.
An `Operation` says only what is its own:
- `path`: where it is posted after an upstream's base URL (Azure: after the deployment);
- `streams`: whether the upstream may be asked for a stream (else one JSON answer);
- `reader_type`: what turns the upstream's events into deltas (`ChunkReader`, `EventReader`);
- `chat`: whether the body is built from a role, system text and a history within its budget
  (else the client's body is sent as it is, after the door's checks);
- `stream_usage`: whether a stream is asked to report its usage (`stream_options`);
- `token_fields`: the fields MAX_TOKENS_CEILING caps (the first is sent when none is given);
- `model_setting`: the setting whose model a request that names none gets (None: required);
- `max_answer_bytes`: how large one whole answer may be (0: MAX_EVENT_BYTES);
- `usage(outcome, payload)`: what the reply used, read from the answer (tokens, images);
- `asked(payload)`: the most the request may use, read from the request before it is sent.

`Usage` is the one shape both read into, whatever the upstream called its fields
(prompt/input tokens, completion/output tokens), so the access line, the metrics and a
price list read one thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .chunks import ChunkReader, EventReader
from .images import ImageReader


class Usage(NamedTuple):
    """What one request used (or may use, from `Operation.asked`); None: not known."""

    input_tokens: int | None = None  # prompt / input tokens
    output_tokens: int | None = None  # completion / output tokens
    images: int = 0  # images made
    image_size: str | None = None  # their size as asked ("1024x1024"); None: the model's default


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _tokens(usage: object) -> tuple[int | None, int | None]:
    """(input, output) tokens of an upstream's usage object, in either naming."""
    if not isinstance(usage, dict):
        return None, None
    given = _count(usage.get("prompt_tokens"))
    made = _count(usage.get("completion_tokens"))
    if given is None:
        given = _count(usage.get("input_tokens"))
    if made is None:
        made = _count(usage.get("output_tokens"))
    return given, made


def token_usage(outcome, payload: Mapping) -> Usage:
    """The tokens the upstream reported (a stream's usage chunk or event, or the answer's)."""
    return Usage(*_tokens(outcome.usage))


def image_usage(outcome, payload: Mapping) -> Usage:
    """The images in the answer (counted there: a failed one is not made), at the size asked,
    and the tokens some image models report."""
    answer = next((d.chunk for d in outcome.chunks if d.kind == "completion"), None) or {}
    data = answer.get("data")
    size = payload.get("size")
    return Usage(*_tokens(answer.get("usage")), images=len(data) if isinstance(data, list) else 0,
                 image_size=size if isinstance(size, str) else None)


def _asked_tokens(*fields: str) -> Callable[[Mapping], Usage]:
    def asked(payload: Mapping) -> Usage:
        return Usage(output_tokens=next((_count(payload.get(name)) for name in fields
                                         if _count(payload.get(name)) is not None), None))
    return asked


def _asked_images(payload: Mapping) -> Usage:
    size = payload.get("size")
    return Usage(images=_count(payload.get("n")) or 1,
                 image_size=size if isinstance(size, str) else None)


@dataclass(frozen=True)
class Operation:
    """One upstream operation (see the module's docstring)."""

    name: str  # for the access line and the routes' messages
    path: str
    streams: bool
    reader_type: type[ChunkReader] = ChunkReader
    chat: bool = False
    stream_usage: bool = False
    token_fields: tuple[str, ...] = ()
    model_setting: str | None = "openai_model"
    max_answer_bytes: int = 0
    usage: Callable[..., Usage] = token_usage
    asked: Callable[[Mapping], Usage] = lambda payload: Usage()


IMAGE_ANSWER_BYTES = 64 * 1024 * 1024  # ten 1024x1024 images as base64 fit with room to spare

CHAT = Operation("chat", "/chat/completions", streams=True, chat=True, stream_usage=True,
                 token_fields=("max_tokens", "max_completion_tokens"),
                 asked=_asked_tokens("max_completion_tokens", "max_tokens"))
COMPLETIONS = Operation("completions", "/completions", streams=True, stream_usage=True,
                        token_fields=("max_tokens",), asked=_asked_tokens("max_tokens"))
EMBEDDINGS = Operation("embeddings", "/embeddings", streams=False, model_setting=None)
IMAGES = Operation("images", "/images/generations", streams=False, reader_type=ImageReader,
                   model_setting="openai_image_model", max_answer_bytes=IMAGE_ANSWER_BYTES,
                   usage=image_usage, asked=_asked_images)
RESPONSES = Operation("responses", "/responses", streams=True, reader_type=EventReader,
                      token_fields=("max_output_tokens",),
                      asked=_asked_tokens("max_output_tokens"))
