"""Image answers: what is checked in an upstream's image answer, and how an image reaches a page
whose Content-Security-Policy allows images from its own origin and `data:` only.

The rules it follows:
- An upstream image answer is `{"data": [{"b64_json": ...} | {"url": ...}, ...]}`. An item
  whose `url` is neither http(s) nor a `data:image/...;base64,` URL is never passed on, on any
  door: the whole answer is an upstream error (`ImageReader`). Everything else in the answer
  is relayed as the upstream sent it (/v1/images/generations).
- A page gets `data:` URLs only (`page_urls`): base64 images become `data:image/<type>`, the
  type read from the image's own first bytes (PNG, JPEG, GIF, WebP; anything else is refused).
  An http(s) URL is fetched here, by the service (`fetch`), and becomes a `data:` URL too, so
  the page needs no `img-src` beyond `data:`, nothing is kept on the server (any worker, any
  instance can answer), and an upstream's URLs that expire after an hour do not matter.
- A fetch follows at most MAX_REDIRECTS http(s) redirects, reads at most MAX_FETCH_BYTES,
  gives up after the upstream timeouts (UPSTREAM_CONNECT_TIMEOUT to connect,
  UPSTREAM_READ_TIMEOUT for the whole download) or when the client leaves, sends no key, no
  cookie and no .netrc credential, and keeps nothing. The URL comes from the configured
  upstream, never from the client; what it returns must be an image by its first bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable

import requests
import urllib3

from ..base.config import Config
from ..base.errors import ClientLeft, UpstreamError, UpstreamTimeout
from .chunks import ChunkReader, Delta

log = logging.getLogger("gpt_proxy.images")

MAX_PROMPT_CHARS = 32_000  # the longest prompt any OpenAI image model takes (gpt-image-1)
MAX_FETCH_BYTES = 16 * 1024 * 1024
MAX_REDIRECTS = 3
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
_DATA_URL = re.compile(r"data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def image_type(head: bytes) -> str | None:
    """The media type of an image by its first bytes (at least 12), or None."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def shown_url(url: str) -> bool:
    """Whether an image URL may be passed on at all: http(s), or a base64 `data:` image."""
    lowered = url[:32].lower()
    return lowered.startswith(("https://", "http://")) or bool(_DATA_URL.match(url))


class ImageReader(ChunkReader):
    """Reads one image answer as `ChunkReader` does, refusing one whose data is not a list of
    images or that holds a URL that must not be shown (see the module's docstring)."""

    def read_chunk(self, chunk: dict) -> list[Delta]:
        data = chunk.get("data")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise UpstreamError("the upstream's image answer holds no list of images")
        for item in data:
            url = item.get("url")
            if url is not None and not (isinstance(url, str) and shown_url(url)):
                raise UpstreamError("the upstream answered with an image URL that is neither "
                                    "http(s) nor a data: image; it is not passed on")
        return super().read_chunk(chunk)


def data_url(encoded: str) -> str:
    """A `data:` URL for a base64 image, its type read from its first bytes."""
    encoded = "".join(encoded.split()) if any(c.isspace() for c in encoded[:80]) else encoded
    if not _BASE64.fullmatch(encoded):
        raise UpstreamError("the upstream sent an image that is not base64")
    try:
        head = base64.b64decode(encoded[:24])
    except (binascii.Error, ValueError):
        raise UpstreamError("the upstream sent an image that is not base64") from None
    kind = image_type(head)
    if kind is None:
        raise UpstreamError("the upstream sent an image that is not a PNG, JPEG, GIF or WebP")
    return f"data:{kind};base64,{encoded}"


def page_urls(answer: dict, config: Config, gone: Callable[[], bool] = lambda: False
              ) -> list[str]:
    """A `data:` URL for each image of an upstream answer (see the module's docstring)."""
    urls = []
    for item in answer.get("data") or ():
        encoded, url = item.get("b64_json"), item.get("url")
        if isinstance(encoded, str) and encoded:
            urls.append(data_url(encoded))
        elif isinstance(url, str) and _DATA_URL.match(url):
            urls.append(data_url(url[url.index(",") + 1:]))
        elif isinstance(url, str) and shown_url(url):
            urls.append(fetch(url, config, gone))
        else:
            raise UpstreamError("the upstream's image answer holds an item with no image")
    return urls


def fetch(url: str, config: Config, gone: Callable[[], bool] = lambda: False) -> str:
    """Download an upstream's image URL into a `data:` URL (see the module's docstring)."""
    deadline = time.monotonic() + config.upstream_read_timeout
    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    where = re.sub(r"[?#].*", "", url)[:120]  # for the log: no query (it may hold a signature)
    try:
        try:
            response = session.get(
                url, stream=True, allow_redirects=True,
                timeout=(config.upstream_connect_timeout, config.upstream_read_timeout),
                headers={"Accept": "image/*", "User-Agent": "gpt_proxy/1.0"},
                auth=lambda request: request)  # an auth of our own: never a .netrc entry
        except requests.exceptions.Timeout:
            raise UpstreamTimeout("the upstream's image did not download in time") from None
        except requests.RequestException as exc:
            log.warning("image download failed: %s (%s)", where, type(exc).__name__)
            raise UpstreamError("the upstream's image could not be downloaded "
                                f"({type(exc).__name__})") from None
        try:
            if response.status_code != 200:
                raise UpstreamError("the upstream's image could not be downloaded "
                                    f"(HTTP {response.status_code})")
            body = _read(response, deadline, gone)
        finally:
            response.close()
    finally:
        session.close()
    kind = image_type(body[:16])
    if kind is None:
        log.warning("image download refused: %s is not an image", where)
        raise UpstreamError("the upstream's image URL did not give a PNG, JPEG, GIF or WebP image")
    return f"data:{kind};base64,{base64.b64encode(body).decode('ascii')}"


def _read(response: requests.Response, deadline: float, gone: Callable[[], bool]) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > MAX_FETCH_BYTES:
        raise UpstreamError(f"the upstream's image is larger than {MAX_FETCH_BYTES} bytes")
    parts, size = [], 0
    try:
        while True:
            data = response.raw.read(65536, decode_content=True)
            if not data:
                return b"".join(parts)
            size += len(data)
            if size > MAX_FETCH_BYTES:
                raise UpstreamError(f"the upstream's image is larger than {MAX_FETCH_BYTES} bytes")
            parts.append(data)
            if time.monotonic() > deadline:
                raise UpstreamTimeout("the upstream's image did not download in time")
            if gone():
                raise ClientLeft("the client left while the image downloaded")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamError(f"the upstream's image download broke off ({type(exc).__name__})"
                            ) from None

