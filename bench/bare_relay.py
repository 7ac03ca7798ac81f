"""The bare relay: the smallest honest streaming relay on the service's own stack, the floor
the service is measured against beside the direct one (issue 30).

One Flask route, POST /v1/chat/completions: the request body is posted as it came to the
upstream (BARE_UPSTREAM, e.g. http://127.0.0.1:PORT/v1) with one module-level
`requests.Session` (`stream=True`, the same pool size as the service's), and the upstream's
lines are relayed as they come (the complete lines of each read in one write). No roles, no
validation, no metrics, no identity, no ledger, no access line: what Flask, requests and
gunicorn's gevent worker cost by themselves. It is still honest: the upstream's status is
passed on, a read timeout bounds a silent upstream, and the upstream response is closed
whichever way the reply ends (a client that leaves included).

It runs under gunicorn with the service's worker settings (`BareRelay` in bench/service.py:
gevent, 2 workers, 2,000 connections each, keep-alive 5 s, no access log):
`BARE_UPSTREAM=http://127.0.0.1:PORT/v1 gunicorn -k gevent -w 2 bench.bare_relay:app`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8000/v1").rstrip("/")
TIMEOUT = (10.0, 60.0)  # connect, read: the service's defaults

app = Flask(__name__)
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=1024, max_retries=0))


@app.post("/v1/chat/completions")
def relay() -> Response:
    upstream = session.post(UPSTREAM + "/chat/completions", data=request.get_data(),
                            headers={"Content-Type": "application/json"}, stream=True,
                            timeout=TIMEOUT)

    def lines() -> Iterator[bytes]:
        """Each read's complete lines in one write (an SSE event is a line and a blank one:
        written apart they would cost the bare relay a second write per token)."""
        pending = b""
        try:
            for chunk in upstream.iter_content(chunk_size=None):
                data = pending + chunk if pending else chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                if cut:
                    yield data[:cut]
            if pending:
                yield pending
        finally:
            upstream.close()
    return Response(lines(), status=upstream.status_code,
                    content_type=upstream.headers.get("Content-Type", "text/event-stream"))
