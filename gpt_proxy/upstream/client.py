"""The upstream client: one pooled `requests.Session`, opening chat-completion streams and
the other operations' answers (the path after the base URL is the caller's: /chat/completions,
/embeddings, /images/generations, /responses, /completions).

`Endpoint.open()` sends the request and checks the status before anything reaches our
client, so failures become real statuses: 401/403 -> 502 (our key was refused), 404 -> 502
naming the model, 429 -> 429 with Retry-After, 400/422 -> 400 (the upstream rejected what was
asked, e.g. a context too long), 5xx -> 502, refused -> 503, timeouts -> 504. No text that
could hold the key (the upstream echoes masked keys in 401 messages) reaches a reply.
"""

from __future__ import annotations

import json
import random
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import quote

import requests
import requests.auth
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, ReadTimeoutError

from ..base.config import Config, UpstreamSpec
from ..base.errors import (
    BadRequest,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .chunks import payload_message

READ_SIZE = 65536
MAX_ERROR_BODY = 65536
MAX_CHUNK_LINE = 4096  # bytes of a chunk-size (or trailer) line
MAX_CHUNK_SIZE = 1 << 63  # a size no signed 64-bit length holds is broken framing (as curl)
CHAT_PATH = "/chat/completions"
# Azure OpenAI serves these per resource, not per deployment: the body's `model` names the
# deployment (its "v1" Responses API; the api_version must be one that has it).
AZURE_RESOURCE_PATHS = frozenset(("/responses",))
_KEYLIKE = re.compile(r"\b(sk|key|pk|rk)-[A-Za-z0-9_\-*.]{6,}")


def redact(text: str, secret: str = "") -> str:
    """Remove the key, and anything that looks like a (masked) key, from upstream text."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


class UpstreamStream:
    """An open upstream response: raw reads as they arrive, and an abort that works from any thread.

    A relay that reads in its own thread sets `wait`: a read then gives up after that many
    seconds and `chunks()` yields None, so the relay can send heartbeats and look at its client
    without a helper thread; `read_timeout` without any data is still an `UpstreamTimeout`."""

    def __init__(self, response: requests.Response, secret: str = "",
                 read_timeout: float | None = None) -> None:
        self.response = response
        self._early: bytes | None = None  # the body's start, read by `read_early`
        self.secret = secret
        self.is_json = media_type(response) == "application/json"
        self.closed = False
        self.complete = False  # read to its end: the connection went back to the pool
        self.wait: float | None = None  # seconds a read may wait; None: until `read_timeout`
        self.read_timeout = read_timeout
        self._body = None  # the plain body reader (False: none fits), made at the first read
        self._sock = None  # the socket, once reads go to it directly (timed reads)
        self._sock_wait: float | None = None
        self._last_data = time.monotonic()

    def timed_reads(self) -> bool:
        """Whether reads can honour `wait` (a plain body over a socket we can reach)."""
        if self._early is not None:  # a whole JSON answer: read already, nothing to wait for
            return True
        if self.read_timeout is None or _socket_of(self.response) is None:
            return False
        if self._body is None:
            self._body = _plain_body(self.response.raw, self._read1) or False
        return self._body is not False

    def read_early(self, limit: int) -> bytes:
        """Read up to `limit` bytes of the body now (a whole JSON answer, see Endpoint.open);
        `chunks()` hands them out first."""
        try:
            body = self.response.raw.read(limit, decode_content=True) or b""
        except (ReadTimeoutError, TimeoutError):
            self.close()
            raise UpstreamTimeout("upstream timed out: no data within the read timeout") from None
        except (HTTPError, OSError, ValueError, requests.RequestException) as exc:
            self.close()  # lost, or a body its Content-Encoding does not decode
            raise UpstreamError(f"the upstream's answer could not be read ({type(exc).__name__})"
                                ) from None
        self._early = body
        return body

    def _read1(self, size: int) -> bytes | None:
        """One network read for the plain body; None when `wait` passed with nothing."""
        if self._sock is None:
            if self.wait is None:
                return self.response.raw._fp.fp.read1(size)
            # From here on read the socket itself (a timed-out buffered reader is unusable),
            # after handing out what the buffered reader already holds.
            self._sock = sock = _socket_of(self.response)
            self._sock_wait = sock.gettimeout()
            sock.settimeout(0.0)
            try:
                data = self.response.raw._fp.fp.read1(size)  # no I/O if it holds bytes
            except (BlockingIOError, ssl.SSLWantReadError):  # TLS: nothing decrypted yet
                data = b""
            if data:
                self._last_data = time.monotonic()
                return data
        wait = self.read_timeout if self.wait is None else self.wait
        if wait != self._sock_wait:
            self._sock.settimeout(wait)
            self._sock_wait = wait
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            if self.wait is None or time.monotonic() - self._last_data >= (self.read_timeout or 0):
                raise
            return None
        self._last_data = time.monotonic()
        return data

    def chunks(self) -> Iterator[bytes | None]:
        """Bytes as the network gives them: `read1` returns what one read brings, so a token
        is never held back waiting for a buffer to fill (chunked or close-delimited alike).
        None: `wait` passed with nothing read."""
        raw = self.response.raw
        if self._early is not None:
            early, self._early = self._early, b""
            if early:
                yield early
            if raw.closed or raw.isclosed():  # read whole before: nothing is left to read
                self.complete = True
                return
        try:
            if self._body is None:
                self._body = _plain_body(raw, self._read1) or False
            if self._body is not False:
                for data in self._body:  # not `yield from`: a stopped reader resumes in drain()
                    yield data
                self.complete = True
                return
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
        except BrokenChunks as exc:
            if self.closed:
                return
            raise UpstreamError(f"upstream sent a broken chunked body: {exc}") from None
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

    def _finished(self) -> None:
        """The body's end: the connection goes back to the pool, as urllib3 itself would do."""
        if self._sock is not None:
            self._sock.settimeout(self.read_timeout)
        raw = self.response.raw
        raw._fp.close()
        raw.release_conn()


def _plain_body(raw, read1) -> Iterator[bytes | None] | None:
    """The body's bytes read straight from the connection, one network read per step, with
    chunked framing undone here (several chunks of one read come out as one piece). It skips
    urllib3's and http.client's per-chunk layers, the costliest part of the relay per token.
    Only for a body without Content-Encoding (else None: urllib3 decodes it)."""
    response = getattr(raw, "_fp", None)  # http.client.HTTPResponse
    reader = getattr(response, "fp", None)
    if (reader is None or not hasattr(reader, "read1") or getattr(raw, "_fp_bytes_read", 1)
            or raw.headers.get("Content-Encoding", "identity").strip().lower() != "identity"):
        return None
    finished = read1.__self__._finished
    if response.chunked:
        return _dechunked(read1, finished) if response.chunk_left is None else None
    return _sized(read1, response.length, finished)


def _sized(read1, length: int | None, finished) -> Iterator[bytes | None]:
    """A body of a known length, or one that ends when the upstream closes the connection."""
    while length is None or length > 0:
        data = read1(READ_SIZE if length is None else min(READ_SIZE, length))
        if data is None:
            yield None
            continue
        if not data:
            if length is None:
                break
            raise ProtocolError("Response ended prematurely")
        if length is not None:
            length -= len(data)
        yield data
    finished()


class BrokenChunks(ProtocolError):
    """The body's chunked framing is broken (the connection itself is fine)."""


def _dechunked(read1, finished) -> Iterator[bytes | None]:
    """Chunked transfer coding undone incrementally; trailers are read and dropped. A framing
    error is raised only after the good bytes before it were handed out. Nothing is ever
    allocated by what a size line claims; a line is at most MAX_CHUNK_LINE bytes however the
    network cuts it."""
    pending = b""
    left = 0  # chunk bytes still to come; -1: the CRLF after a chunk is due
    trailers = False
    while True:
        data = read1(READ_SIZE)
        if data is None:
            yield None
            continue
        if not data:
            raise ProtocolError("Response ended prematurely")
        if pending:
            data, pending = pending + data, b""
        pos, size, out, error, ended = 0, len(data), [], None, False
        while pos < size:
            if left > 0:
                end = pos + left
                out.append(data[pos:end] if pos or end < size else data)
                left = max(end - size, 0) or -1
                pos = end
            elif left == -1:
                if size - pos < 2:
                    pending = data[pos:]
                    break
                if data[pos:pos + 2] != b"\r\n":
                    error = "no CRLF after a chunk"
                    break
                pos += 2
                left = 0
            else:
                eol = data.find(b"\n", pos)
                if eol < 0:
                    pending = data[pos:]
                    if len(pending) > MAX_CHUNK_LINE:
                        error = "chunk header too long"
                    break
                if eol - pos > MAX_CHUNK_LINE:
                    error = "chunk header too long"
                    break
                line = data[pos:eol]
                pos = eol + 1
                if trailers:
                    if not line.strip():
                        ended = True
                        break
                    continue
                try:
                    left = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    error = "a chunk size that is not a hex number"
                    break
                if not 0 <= left < MAX_CHUNK_SIZE:
                    error = "a chunk size out of range"
                    break
                trailers = left == 0
        if out:
            yield out[0] if len(out) == 1 else b"".join(out)
        if error is not None:
            raise BrokenChunks(error)
        if ended:
            finished()
            return


def _socket_of(response: requests.Response):
    raw = getattr(response, "raw", None)
    conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock


class BearerAuth(requests.auth.AuthBase):
    """`Authorization: Bearer <key>`; its repr never shows the key."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth([redacted])"


class AzureKeyAuth(requests.auth.AuthBase):
    """Azure OpenAI's `api-key: <key>` header; its repr never shows the key."""

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request):
        request.headers["api-key"] = self._key
        return request

    def __repr__(self) -> str:
        return "AzureKeyAuth([redacted])"


HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream",
           "Accept-Encoding": "identity", "User-Agent": "gpt_proxy/1.0"}


def new_session(pools: int = 4) -> requests.Session:
    """One pooled session for every upstream: a kept-alive connection per host is reused
    (no TCP and TLS handshake per request); urllib3 never retries on its own. It keeps no
    cookies: a cookie an upstream set in answer to one user's request must not ride along
    with everybody's later ones (or with another key's, on the same host)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=max(4, pools), pool_maxsize=1024, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


class Endpoint:
    """One upstream: where a chat completion is posted, with which key, and what its failures
    mean. `open()` sends the request and checks the status before anything reaches our client,
    so failures become real statuses (see the module docstring)."""

    def __init__(self, spec: UpstreamSpec, config: Config, session: requests.Session,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config
        self.session = session
        self.sleep = sleep
        self._prepared: dict[str, tuple[requests.PreparedRequest, dict]] = {}
        # The key goes in through `auth`: with an auth set, requests never consults .netrc,
        # while the environment's HTTPS_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE still apply.
        if spec.kind == "azure":
            self.auth: requests.auth.AuthBase = AzureKeyAuth(spec.key)
        else:
            self.auth = BearerAuth(spec.key)

    def url_for(self, model: str, path: str = CHAT_PATH) -> str:
        """OpenAI-compatible: `{base}{path}`; Azure: the model's deployment, then the path,
        with the API version as a query parameter; a path Azure serves per resource
        (AZURE_RESOURCE_PATHS: the Responses API) is `{base}/openai{path}`, the deployment
        being named in the body instead."""
        if self.spec.kind != "azure":
            return self.spec.base_url + path
        version = quote(self.spec.api_version, safe="")
        if path in AZURE_RESOURCE_PATHS:
            return f"{self.spec.base_url}/openai{path}?api-version={version}"
        deployment = self.spec.deployments.get(model, model)
        return (f"{self.spec.base_url}/openai/deployments/{quote(deployment, safe='')}"
                f"{path}?api-version={version}")

    def open(self, payload: dict, data: bytes, timeout: tuple[float, float],
             path: str = CHAT_PATH) -> UpstreamStream:
        """Send the request to `path`; return the open stream, or raise the error our client
        should get. A connection that failed before the request left (refused, no route, a
        failed name lookup) is tried again after a short backoff, up to CONNECT_RETRIES times."""
        key = self.spec.key
        model = payload.get("model", "")
        if self.spec.kind == "azure" and path in AZURE_RESOURCE_PATHS:
            deployment = self.spec.deployments.get(model, model)
            if deployment != model:  # the body names the deployment there
                data = json.dumps({**payload, "model": deployment},
                                  ensure_ascii=False).encode("utf-8")
        template, settings = self._template(self.url_for(model, path))
        for attempt in range(self.config.connect_retries + 1):
            request = _with_body(template, data)
            try:
                response = self.session.send(request, timeout=timeout, allow_redirects=True,
                                             **settings)
                break
            except requests.exceptions.ConnectTimeout:
                raise UpstreamTimeout("upstream timed out while connecting") from None
            except requests.exceptions.ReadTimeout:
                raise UpstreamTimeout("upstream timed out before it answered") from None
            except requests.exceptions.SSLError:
                raise UpstreamUnavailable("upstream TLS handshake failed") from None
            except (requests.exceptions.ConnectionError, OSError) as exc:
                if attempt < self.config.connect_retries and not_sent(exc):
                    self.sleep(CONNECT_BACKOFF * 2 ** attempt * (1 + random.random()))
                    continue
                raise UpstreamUnavailable("upstream unreachable: the connection failed") from None
            except requests.RequestException as exc:
                raise UpstreamError(f"upstream request failed ({type(exc).__name__})") from None
        if response.status_code == 200 and not _is_web_page(response):
            stream = UpstreamStream(response, key, self.config.upstream_read_timeout)
            if stream.is_json:
                # One JSON value (a whole reply, asked for or not, or an error), whole by the
                # time it is sent. Read it now, so that an error in a 200 answer (some relays
                # do that) is an error before the first byte, and fails over.
                body = stream.read_early(self.config.max_event_bytes + 1)
                error = embedded_error(body, payload.get("model", ""), key)
                if error is not None:
                    stream.close()
                    raise error
            if timeout[1] != self.config.upstream_read_timeout:  # a shortened wait for headers
                sock = _socket_of(response)
                if sock is not None:
                    sock.settimeout(self.config.upstream_read_timeout)
            return stream
        try:
            if response.status_code == 200:  # a web page is never a stream: a wrong base URL
                raise UpstreamError("the upstream answered with a web page, not an event "
                                    "stream; check its base URL (OPENAI_BASE_URL, or its base_url)")
            raise status_error(response, payload.get("model", ""), key)
        finally:
            response.close()

    def _template(self, url: str) -> tuple[requests.PreparedRequest, dict]:
        """The request for `url` prepared once (headers, auth, the session's defaults) and the
        environment's settings for it (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) read once:
        what `session.post()` would redo on every call, at about half the CPU of a request
        (bench/README.md). The environment is read at start-up, as the rest of the settings."""
        found = self._prepared.get(url)
        if found is None:
            template = self.session.prepare_request(
                requests.Request("POST", url, headers=HEADERS, auth=self.auth, data=b"{}"))
            settings = self.session.merge_environment_settings(url, {}, True, None, None)
            found = (template, settings)
            if len(self._prepared) < MAX_TEMPLATES:  # Azure: one per deployment
                self._prepared[url] = found
        return found


MAX_TEMPLATES = 64


def _with_body(template: requests.PreparedRequest, data: bytes) -> requests.PreparedRequest:
    """A copy of the prepared `template` carrying `data`. Like `template.copy()`, without
    copying its cookie jar: the session keeps no cookies, so the jar is always empty, and
    requests only reads it (a redirect copies it before changing it). Built attribute by
    attribute, every one `PreparedRequest.__init__` sets (its empty hooks and a header
    mapping rebuilt key by key were a quarter of the cost, and thrown away at once)."""
    request = requests.PreparedRequest.__new__(requests.PreparedRequest)
    headers = CaseInsensitiveDict.__new__(CaseInsensitiveDict)
    headers._store = template.headers._store.copy()  # lower-cased name -> (name, value)
    headers["Content-Length"] = str(len(data))
    request.method, request.url, request.hooks = template.method, template.url, template.hooks
    request.headers, request._cookies, request.body = headers, template._cookies, data
    request._body_position = None
    return request
CONNECT_BACKOFF = 0.05  # seconds before the first retry of a connection that failed


def not_sent(exc: BaseException) -> bool:
    """Whether a failed request certainly never reached the upstream: the connection itself
    failed (refused, unreachable, name lookup), so trying again cannot run it twice."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError) or isinstance(exc, ConnectionRefusedError)


def media_type(response: requests.Response) -> str:
    """The Content-Type without its parameters, lower-cased ("" when absent)."""
    return response.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _is_web_page(response: requests.Response) -> bool:
    return media_type(response) in ("text/html", "application/xhtml+xml")


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
    return redact(payload_message(data)[:500], secret)


def status_error(response: requests.Response, model: str, secret: str) -> ProxyError:
    """Map an upstream status to the error our client gets (the status stays on it as
    `upstream_status`, for failover)."""
    status = response.status_code
    detail = "" if status in (401, 403) else _error_text(response, secret)
    return _status_error(status, f"HTTP {status}", detail, model,
                         response.headers.get("Retry-After"))


def embedded_error(body: bytes, model: str, secret: str) -> ProxyError | None:
    """The error of a 200 answer that is an `{"error": ...}` object and no completion, mapped
    as its status would be: the status it names (`error.code`, `error.status`, `status` or
    `code`, when one is an HTTP error status), else 502. None for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return None  # not JSON: the relay reports it as it reads it
    if not isinstance(data, dict) or "choices" in data or not data.get("error"):
        return None
    inner = data["error"] if isinstance(data["error"], dict) else {}
    named = (inner.get("code"), inner.get("status"), data.get("status"), data.get("code"))
    status = next((value for value in named if isinstance(value, int)
                   and not isinstance(value, bool) and 400 <= value <= 599), 502)
    detail = redact(payload_message(data)[:500], secret)
    return _status_error(status, f"error {status} in an HTTP 200 answer", detail, model, None)


def _status_error(status: int, where: str, detail: str, model: str,
                  retry: str | None) -> ProxyError:
    """Our error for an upstream error `status` (`where`: how it was given), with the
    upstream's own message (`detail`), as `upstream_status` for failover."""
    error = _status_error_of(status, where, detail, model, retry)
    error.upstream_status = status
    return error


def _status_error_of(status: int, where: str, detail: str, model: str,
                     retry: str | None) -> ProxyError:
    if status in (401, 403):
        return UpstreamError(
            f"the upstream refused the proxy's API key ({where}); check its key "
            "(OPENAI_API_KEY, or its key_env)",
            code="upstream_auth")
    suffix = f": {detail}" if detail else ""
    if status == 404:
        return UpstreamError(f"the upstream does not know model {model!r} ({where}){suffix}",
                             code="upstream_model_not_found")
    if status == 429:
        headers = {}
        if retry and re.fullmatch(r"\d{1,6}(\.\d+)?", retry.strip()):
            headers["Retry-After"] = retry.strip()
        return RateLimited(f"the upstream is rate limiting ({where}){suffix}",
                           code="upstream_rate_limited", headers=headers)
    if status in (400, 422):
        return BadRequest(f"the upstream rejected the request ({where}){suffix}",
                          code="upstream_bad_request")
    if status == 413:
        return PayloadTooLarge(f"the upstream says the request is too large{suffix}")
    if status in (408, 504):
        return UpstreamTimeout(f"the upstream timed out ({where}){suffix}")
    return UpstreamError(f"the upstream failed ({where}){suffix}")
