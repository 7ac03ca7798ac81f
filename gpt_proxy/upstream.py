"""The upstream client: one pooled `requests.Session`, opening chat-completion streams.

`OpenAIUpstream.open()` sends the request and checks the status before anything reaches our
client, so failures become real statuses: 401/403 -> 502 (our key was refused), 404 -> 502
naming the model, 429 -> 429 with Retry-After, 400/422 -> 400 (the upstream rejected what was
asked, e.g. a context too long), 5xx -> 502, refused -> 503, timeouts -> 504. No text that
could hold the key (the upstream echoes masked keys in 401 messages) reaches a reply.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from .config import Config
from .errors import (
    BadRequest,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

READ_SIZE = 65536
MAX_ERROR_BODY = 65536
_KEYLIKE = re.compile(r"\b(sk|key|pk|rk)-[A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secret: str = "") -> str:
    """Remove the key, and anything that looks like a (masked) key, from upstream text."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


class UpstreamStream:
    """An open upstream response: raw reads as they arrive, and an abort that works from any thread."""

    def __init__(self, response: requests.Response, secret: str = "") -> None:
        self.response = response
        self.secret = secret
        content_type = response.headers.get("Content-Type", "")
        self.is_json = content_type.split(";")[0].strip().lower() == "application/json"
        self.closed = False
        self.complete = False  # read to its end: the connection went back to the pool

    def chunks(self) -> Iterator[bytes]:
        """Bytes as the network gives them: `read1` returns what one read brings, so a token
        is never held back waiting for a buffer to fill (chunked or close-delimited alike)."""
        raw = self.response.raw
        try:
            while True:
                data = raw.read1(READ_SIZE)
                if not data:
                    self.complete = True
                    return
                yield data
        except (ReadTimeoutError, TimeoutError):
            if self.closed:
                return
            raise UpstreamTimeout("upstream timed out: no data within the read timeout") from None
        except (ProtocolError, OSError, ValueError, AttributeError,
                requests.RequestException) as exc:
            if self.closed:
                return
            raise UpstreamError(f"connection to the upstream was lost ({type(exc).__name__})") from None

    def drain(self, max_reads: int = 4) -> None:
        """After `[DONE]`, read the body's last bytes (the final empty chunk), so urllib3 puts
        the connection back in the pool: the next request skips a TCP and TLS handshake."""
        for _ in self.chunks():
            max_reads -= 1
            if max_reads <= 0:
                return

    def close(self) -> None:
        """Close now. A `shutdown` first wakes a thread blocked reading this socket; a stream
        read to its end is only released (its connection is reused)."""
        if self.closed:
            return
        self.closed = True
        sock = None if self.complete else _socket_of(self.response)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self.response.close()
        except Exception:  # noqa: BLE001 - closing must never raise into the relay
            pass


def _socket_of(response: requests.Response):
    raw = getattr(response, "raw", None)
    conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock


class OpenAIUpstream:
    """Any OpenAI-compatible chat-completions API."""

    mode = "openai"

    def __init__(self, config: Config, session: requests.Session | None = None) -> None:
        self.config = config
        self.url = config.openai_base_url + "/chat/completions"
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=1024, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.trust_env = False  # no proxies or .netrc credentials picked up silently
        self.headers = {
            "Authorization": f"Bearer {config.openai_api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "User-Agent": "gpt_proxy/1.0",
        }

    def open(self, payload: dict) -> UpstreamStream:
        """Send the request; return the open stream, or raise the error our client should get."""
        key = self.config.openai_api_key
        try:
            response = self.session.post(
                self.url, data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
                headers=self.headers, stream=True,
                timeout=(self.config.upstream_connect_timeout, self.config.upstream_read_timeout))
        except requests.exceptions.ConnectTimeout:
            raise UpstreamTimeout("upstream timed out while connecting") from None
        except requests.exceptions.ReadTimeout:
            raise UpstreamTimeout("upstream timed out before it answered") from None
        except requests.exceptions.SSLError:
            raise UpstreamUnavailable("upstream TLS handshake failed") from None
        except (requests.exceptions.ConnectionError, OSError):
            raise UpstreamUnavailable("upstream unreachable: the connection failed") from None
        except requests.RequestException as exc:
            raise UpstreamError(f"upstream request failed ({type(exc).__name__})") from None
        if response.status_code == 200:
            return UpstreamStream(response, key)
        try:
            raise status_error(response, payload.get("model", ""), key)
        finally:
            response.close()


def _error_text(response: requests.Response, secret: str) -> str:
    """The upstream's own error message, bounded and redacted."""
    try:
        body = response.raw.read(MAX_ERROR_BODY, decode_content=True) or b""
    except Exception:  # noqa: BLE001 - a broken error body still gets a clean error
        return ""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return redact(text.strip()[:300], secret)
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or ""
    return redact(str(error)[:500], secret)


def status_error(response: requests.Response, model: str, secret: str) -> ProxyError:
    """Map an upstream status to the error our client gets."""
    status = response.status_code
    if status in (401, 403):
        return UpstreamError(
            f"the upstream refused the proxy's API key (HTTP {status}); check OPENAI_API_KEY",
            code="upstream_auth")
    detail = _error_text(response, secret)
    suffix = f": {detail}" if detail else ""
    if status == 404:
        return UpstreamError(f"the upstream does not know model {model!r} (HTTP 404){suffix}",
                             code="upstream_model_not_found")
    if status == 429:
        headers = {}
        retry = response.headers.get("Retry-After")
        if retry and re.fullmatch(r"\d{1,6}(\.\d+)?", retry.strip()):
            headers["Retry-After"] = retry.strip()
        return RateLimited(f"the upstream is rate limiting (HTTP 429){suffix}",
                           code="upstream_rate_limited", headers=headers)
    if status in (400, 422):
        return BadRequest(f"the upstream rejected the request (HTTP {status}){suffix}",
                          code="upstream_bad_request")
    if status == 413:
        return PayloadTooLarge(f"the upstream says the request is too large{suffix}")
    if status in (408, 504):
        return UpstreamTimeout(f"the upstream timed out (HTTP {status}){suffix}")
    return UpstreamError(f"the upstream failed (HTTP {status}){suffix}")
