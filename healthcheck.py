"""The container's health check (Dockerfile HEALTHCHECK, compose.yaml): GET /healthz on the
service's own listener; exit 0 when it answers 200, else 1, printing what it said (Docker
keeps the output in `docker inspect`'s health log). Standard library only: it runs every
30 s and must cost little.

The address is BIND's port on 127.0.0.1 (BIND's host itself when it names one address).
"""

import os
import sys
import urllib.error
import urllib.request


def url(bind: str) -> str:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::", "localhost"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def main() -> int:
    target = url(os.environ.get("BIND", "127.0.0.1:7345"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP_PROXY
    try:
        with opener.open(target, timeout=4) as response:
            print(response.read(2000).decode("utf-8", "replace"))
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{target}: {exc.code} {exc.read(2000).decode('utf-8', 'replace')}")
    except OSError as exc:
        print(f"{target}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
