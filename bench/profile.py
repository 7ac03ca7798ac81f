"""Profile the service's hot path: `python -m bench.profile [--scenario latency|fast|wide]`
(`--resumable`: replies asking X-Resumable: 1, logged in a redis-server of its own; `--key`:
AUTH=users with an API key on every request, `--budgets N` under N budgets, `--database
postgresql` on a throwaway PostgreSQL server; `--bare`: the bare relay instead of the service).

Starts the bench upstream and the service (one gevent worker unless told otherwise), runs one
scenario through it while py-spy samples the worker, and prints the functions holding the most
samples, inclusive and self. The collapsed stacks go to bench/results/profile-*.txt (feed them
to any flame-graph tool). py-spy needs `pip install py-spy` and the right to ptrace.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .load import Load, resumable_target, service_target
from .measure import FAST, LATENCY, RESULTS, SHORT, WIDE, Bench, Scenario
from .service import ROOT, BenchUpstream, Service
from .upstream import loop_factory

SCENARIOS = {"latency": LATENCY, "fast": FAST, "wide": WIDE, "short": SHORT,
             "requests": Scenario("1-token replies", 50, 1, 1.0, rounds=10)}


def summarise(raw: Path, top: int) -> str:
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"-- top {top} by {title} --")
        for frame, n in counter.most_common(top):
            out.append(f"{100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(out)


async def run(args) -> None:
    upstream = BenchUpstream()
    service = None
    spy = None
    redis_server = None
    postgres = None
    try:
        if args.resumable:
            from tests.processes import RedisServer
            redis_server = RedisServer()
        key = ""
        if args.bare:  # the bare relay (bench/bare_relay.py) under the same load
            from .measure import bare_target
            from .service import BareRelay
            service = BareRelay(upstream.url, RESULTS / "gunicorn-profile-bare.log",
                                workers=args.workers)
        elif args.key:  # AUTH=users, every request with an API key (bench.identity's service)
            from .identity import start
            url = ""
            if args.database == "postgresql":
                from tests.databases import PostgreSQL
                postgres = PostgreSQL()
                url = postgres.new_database()
            service, key = start(upstream, "profile-key", True, args.budgets,
                                 args.service_root or ROOT, workers=args.workers,
                                 database_url=url)
        else:
            service = Service(upstream.url, RESULTS / "gunicorn-profile.log",
                              worker_class=args.worker_class, workers=args.workers,
                              root=args.service_root or ROOT,
                              extra_env={"REPLY_STORE": redis_server.url} if redis_server
                              else None)
        bench = Bench(upstream, service)
        if args.bare:
            bench.through = bare_target(service.port)
        await bench.warm_up()
        sc = SCENARIOS[args.scenario]
        raw = RESULTS / f"profile-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        pids = service.worker_pids()
        spy = subprocess.Popen(
            [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
             "--format", "raw", "--nonblocking", "--rate", str(args.rate), "--output", str(raw),
             "--duration", str(args.seconds), "--pid", str(pids[0])]
            + (["--idle"] if args.idle else []) + (["--gil"] if args.gil else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        load = Load()
        deadline = time.monotonic() + args.seconds
        cpu0, requests = service.cpu(), 0
        while time.monotonic() < deadline - 1:
            target = (resumable_target if args.resumable else service_target)(service.port)
            if args.bare:
                target = bench.through
            if key:
                target.headers["Authorization"] = f"Bearer {key}"
            phase = await load.run(target, users=sc.users, rounds=sc.rounds,
                                   tokens=sc.tokens, rate=sc.rate, stagger=sc.spread)
            requests += len(phase.streams)
        cpu = service.cpu() - cpu0
        err = spy.communicate(timeout=args.seconds + 30)[1]
        if spy.returncode:
            print(err.decode(errors="replace")[-2000:])
        print(summarise(raw, args.top))
        print(f"{requests} requests, {cpu * 1000 / max(requests, 1):.2f} ms of CPU each "
              f"(the whole server, profiler running)")
        print(f"collapsed stacks: {raw}")
    finally:
        if spy is not None and spy.poll() is None:
            spy.terminate()
        if service is not None:
            service.stop()
        if redis_server is not None:
            redis_server.stop()
        if postgres is not None:
            postgres.stop()
        upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="profile the relay under load with py-spy")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="latency")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--worker-class", default="gevent")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--resumable", action="store_true",
                        help="resumable replies, logged in a redis-server of its own")
    parser.add_argument("--bare", action="store_true",
                        help="profile the bare relay (bench/bare_relay.py) instead")
    parser.add_argument("--key", action="store_true",
                        help="AUTH=users, an API key on every request (bench.identity's setup)")
    parser.add_argument("--budgets", type=int, default=0,
                        help="with --key: that many budgets over the key (0-3)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="with --key: where the accounts and the ledger live")
    parser.add_argument("--idle", action="store_true", help="count idle (waiting) samples too")
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL: Python's own CPU, not syscalls")
    parser.add_argument("--service-root", type=Path, default=None,
                        help="profile the service from another checkout")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    main()
