"""Behind a real reverse proxy: do tokens still arrive one by one?

`python -m bench.nginx_check` starts the bench upstream, the service, and Debian's nginx
(/usr/sbin/nginx) on 127.0.0.1 with nothing but a plain `proxy_pass` to the service (nginx
buffers proxied replies by default; the service's `X-Accel-Buffering: no` is what turns that
off). For comparison, the bench upstream's own stream (no such header) goes through the same
nginx too. Streams of 10 tokens/s then go through nginx, in both framings (SSE and plain text), and
through the service directly for comparison. Buffering would show as tokens arriving late and
in lumps; the check passes when every token comes in order, in its own read, within
`--max-ms` of the moment the upstream sent it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np

from tests.processes import Nginx

from .load import Load, direct_target, fetch_json, service_target
from .measure import RESULTS, analyse
from .service import BenchUpstream, Service
from .upstream import loop_factory

SERVER = """    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:%d;
        }}
        location /v1/ {{
            proxy_pass http://127.0.0.1:%d;
        }}
    }}"""


def one_by_one(phase) -> tuple[int, int]:
    """(tokens, tokens that arrived in a read of their own) over a phase."""
    total = alone = 0
    for s in phase.streams:
        times = np.frombuffer(s.times, dtype=np.int64) if len(s.times) else np.zeros(0, np.int64)
        total += len(times)
        if len(times):
            _, counts = np.unique(times, return_counts=True)
            alone += int((counts == 1).sum())
    return total, alone


async def check(users: int, tokens: int, rate: float, max_ms: float, log) -> bool:
    upstream = BenchUpstream()
    service = nginx = None
    try:
        service = Service(upstream.url, RESULTS / "gunicorn-nginx.log")
        nginx = Nginx(SERVER % (service.port, upstream.port))
        log(f"nginx on 127.0.0.1:{nginx.port} -> service on 127.0.0.1:{service.port} "
            f"(plain proxy_pass, nginx's default buffering)")
        load = Load()
        ok = True
        control = direct_target(nginx.port)
        control.name = "for comparison, the bench upstream through nginx (no X-Accel-Buffering)"
        for name, port, accept in (("service directly, SSE", service.port, "text/event-stream"),
                                   ("through nginx, SSE", nginx.port, "text/event-stream"),
                                   ("through nginx, text", nginx.port, ""),
                                   (control.name, None, None)):
            target = control if port is None else service_target(port, accept=accept, name=name)
            phase = await load.run(target, users=users, rounds=1, tokens=tokens, rate=rate,
                                   stagger=1.0 / rate)
            sent = await fetch_json("127.0.0.1", upstream.port, "/_bench/collect")
            stats = analyse(phase, sent)
            total, alone = one_by_one(phase)
            passed = (stats["errors"] == 0 and stats["missing"] == 0 and stats["reordered"] == 0
                      and total == users * tokens and alone == total
                      and stats["tok_max"] <= max_ms)
            if port is not None:
                ok = ok and passed
            log(f"{name}: {total}/{users * tokens} tokens, {alone} in a read of their own, "
                f"errors {stats['errors']}, missing {stats['missing']}, reordered "
                f"{stats['reordered']}; upstream-to-client latency p50 {stats['tok_p50']:.2f} ms, "
                f"p99 {stats['tok_p99']:.2f} ms, max {stats['tok_max']:.1f} ms "
                f"(tokens {1000 / rate:.0f} ms apart) -> {'one by one' if passed else 'FAILED'}")
        return ok
    finally:
        if nginx is not None:
            nginx.stop()
        if service is not None:
            service.stop()
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="tokens through nginx arrive one by one")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--max-ms", type=float, default=50.0,
                        help="latest a token may arrive after the upstream sent it")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            ok = runner.run(check(args.users, args.tokens, args.rate, args.max_ms, log))
    except FileNotFoundError as exc:
        print(f"skipped: {exc}")
        return 0
    print("nginx check:", "tokens arrive one by one" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
