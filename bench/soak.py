"""Soak: hundreds of concurrent streams for minutes; the service's memory and open files must
stay flat, and no reply may be lost. Not part of CI.

    .venv/bin/python -m bench.soak --duration 180 --concurrency 300

Starts the bench upstream (its own process) and the service under gunicorn (the repo's
gunicorn.conf.py), both on 127.0.0.1; `--concurrency` clients each run streams back to back
until `--duration` has passed (or `--max-streams` were started). Every reply is checked: all
`--tokens` token tags in order and the final `event: done`; anything else counts as lost.
Every `--every` seconds it prints the service's RSS and open file descriptors (master and
workers added up), then a summary comparing the first and second halves of the run. The
samples go to bench/results/soak-<time>.csv. Exit status 1 if a reply was lost or RSS or fds
grew past the given tolerances between the halves.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import re
import statistics
import sys
import time

import aiohttp
import psutil

from .service import ROOT, BenchUpstream, Service

RESULTS = ROOT / "bench" / "results"
TAG_RE = re.compile(r"~(\d{6})~")


class Counters:
    def __init__(self) -> None:
        self.started = self.ok = self.lost = self.in_flight = 0
        self.errors: dict[str, int] = {}

    def fail(self, why: str) -> None:
        self.lost += 1
        self.errors[why] = self.errors.get(why, 0) + 1


def service_usage(service: Service) -> tuple[int, int, int]:
    """(RSS bytes, open fds, processes) of the gunicorn master and its workers."""
    rss = fds = count = 0
    root = psutil.Process(service.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
            count += 1
        except psutil.NoSuchProcess:
            continue
    return rss, fds, count


async def one_stream(session, url: str, sid: int, args, counters: Counters) -> None:
    body = {"message": f"bench sid={sid} n={args.tokens} rate={args.rate:g}"}
    counters.started += 1
    counters.in_flight += 1
    try:
        async with session.post(url, json=body, headers={"Accept": "text/event-stream"}) as resp:
            if resp.status != 200:
                counters.fail(f"HTTP {resp.status}")
                await resp.read()
                return
            text = (await resp.read()).decode("utf-8")
        tags = [int(t) for t in TAG_RE.findall(text)]
        if tags != list(range(args.tokens)):
            counters.fail("tokens missing or out of order")
        elif "event: done" not in text:
            counters.fail("no done event" if "event: error" not in text else "error event")
        else:
            counters.ok += 1
    except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
        counters.fail(type(exc).__name__)
    finally:
        counters.in_flight -= 1


async def client(session, url: str, first_sid: int, args, counters: Counters,
                 stop_at: float) -> None:
    sid = first_sid
    while time.monotonic() < stop_at and counters.started < args.max_streams:
        await one_stream(session, url, sid, args, counters)
        sid += args.concurrency


async def sampler(service: Service, counters: Counters, args, stop_at: float,
                  samples: list[dict]) -> None:
    start = time.monotonic()
    print(f"{'t (s)':>6} {'RSS (MB)':>9} {'fds':>6} {'procs':>5} {'open':>5} {'done':>7} "
          f"{'lost':>5}", flush=True)
    while True:
        rss, fds, procs = service_usage(service)
        row = {"t": round(time.monotonic() - start, 1), "rss_mb": round(rss / 2**20, 1),
               "fds": fds, "procs": procs, "open": counters.in_flight,
               "done": counters.ok, "lost": counters.lost}
        samples.append(row)
        print(f"{row['t']:>6} {row['rss_mb']:>9} {fds:>6} {procs:>5} {row['open']:>5} "
              f"{row['done']:>7} {row['lost']:>5}", flush=True)
        if time.monotonic() >= stop_at and counters.in_flight == 0:
            return
        await asyncio.sleep(args.every)  # the sampling period, not a synchronisation


async def soak(args, service: Service) -> tuple[Counters, list[dict]]:
    counters = Counters()
    samples: list[dict] = []
    url = f"http://127.0.0.1:{service.port}/api/gpt/get"
    stop_at = time.monotonic() + args.duration
    timeout = aiohttp.ClientTimeout(total=args.tokens / max(args.rate, 1) + 60)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        watch = asyncio.create_task(sampler(service, counters, args, stop_at, samples))
        await asyncio.gather(*(client(session, url, i, args, counters, stop_at)
                               for i in range(args.concurrency)))
        await watch
    return counters, samples


def halves(samples: list[dict], key: str) -> tuple[float, float]:
    """Median of the first and of the second half of the samples after warm-up."""
    steady = samples[1:-1] or samples
    middle = len(steady) // 2
    first, second = steady[:middle] or steady, steady[middle:] or steady
    return statistics.median(r[key] for r in first), statistics.median(r[key] for r in second)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180, help="seconds (default 180)")
    parser.add_argument("--concurrency", type=int, default=300, help="streams open at once")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=20, help="tokens per second per reply")
    parser.add_argument("--max-streams", type=int, default=1_000_000, help="a bound on streams")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--rss-tolerance-mb", type=float, default=20)
    parser.add_argument("--fd-tolerance", type=int, default=50)
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 2000 or not 1 <= args.duration <= 3600:
        parser.error("--concurrency must be 1..2000 and --duration 1..3600")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    upstream = BenchUpstream()
    service = Service(upstream.url, RESULTS / f"soak-{stamp}.log", workers=args.workers,
                      extra_env={"RATE_LIMIT": ""})
    try:
        print(f"soak: {args.concurrency} streams at once for {args.duration:g} s, "
              f"{args.tokens} tokens at {args.rate:g}/s each, gunicorn {service.describe}, "
              f"pid {service.proc.pid}", flush=True)
        started = time.monotonic()
        counters, samples = asyncio.run(soak(args, service))
        elapsed = time.monotonic() - started
    finally:
        service.stop()
        upstream.stop()

    path = RESULTS / f"soak-{stamp}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    rss = halves(samples, "rss_mb")
    fds = halves(samples, "fds")
    print(f"\nstreams: {counters.ok} complete, {counters.lost} lost "
          f"({counters.ok / elapsed:.0f}/s over {elapsed:.0f} s) {counters.errors or ''}")
    print(f"RSS  (MB): first half {rss[0]:.1f}, second half {rss[1]:.1f}, "
          f"min {min(r['rss_mb'] for r in samples):.1f}, max {max(r['rss_mb'] for r in samples):.1f}")
    print(f"fds      : first half {fds[0]:.0f}, second half {fds[1]:.0f}, "
          f"min {min(r['fds'] for r in samples)}, max {max(r['fds'] for r in samples)}, "
          f"after the load {samples[-1]['fds']}")
    print(f"samples: {path.relative_to(ROOT)}")
    flat = (rss[1] - rss[0] <= args.rss_tolerance_mb and fds[1] - fds[0] <= args.fd_tolerance)
    return 0 if counters.lost == 0 and flat else 1


if __name__ == "__main__":
    sys.exit(main())
