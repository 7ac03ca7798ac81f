"""What a resumable reply waits before its first byte with REPLY_STORE=redis: the time of
`RedisReplyStore.begin` (since the reply is registered in Redis before its id goes out, one
round trip), measured in-process against a redis-server of its own on 127.0.0.1, with the
writer running as in a worker.

    python -m bench.reply_begin [--count 2000]
    PYTHONPATH=/path/to/other/checkout python -m bench.reply_begin   # a before/after

Prints the median, p90 and p99 of `begin` in microseconds, and a Redis PING's for scale.
Nothing is asserted: a figure to read, on a machine whose other load it also prints."""

from __future__ import annotations

import argparse
import statistics
import time

import psutil
import redis

import gpt_proxy
from gpt_proxy.replies import RedisReplyStore
from tests.processes import RedisServer


class _Ended:
    client_left = False
    reply_state = None


def _quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.9, 0.99)]
    median, p90, p99 = (x * 1e6 for x in pick)
    return f"median {median:.0f} µs, p90 {p90:.0f} µs, p99 {p99:.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    count = max(1, min(args.count, 100_000))
    server = RedisServer()
    try:
        store = RedisReplyStore(server.url, keep=5, live_seconds=60,
                                prefix="gpt_proxy:bench-begin")
        ping = redis.Redis.from_url(server.url)
        psutil.cpu_percent(None)
        begins, pings = [], []
        for _ in range(count):
            started = time.perf_counter()
            reply = store.begin("", grace=30, heartbeat=15)
            begins.append(time.perf_counter() - started)
            reply.end(_Ended())
            started = time.perf_counter()
            ping.ping()
            pings.append(time.perf_counter() - started)
        busy = psutil.cpu_percent(None) / 100 * psutil.cpu_count()
        print(f"gpt_proxy from {gpt_proxy.__file__}")
        print(f"begin, {count} replies: {_quantiles(begins)} "
              f"(mean {statistics.fmean(begins) * 1e6:.0f} µs)")
        print(f"PING for scale:        {_quantiles(pings)}")
        print(f"machine busy: {busy:.2f} of {psutil.cpu_count()} cores (this run included)")
        store.close()
        ping.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
