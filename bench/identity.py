"""What the user service costs: `python -m bench.identity [--repeats 3] [--quick]`
(`--only key,budget` some configurations, `--no-stall` without the stall check,
`--service-root DIR` the service of another checkout: before/after comparisons,
`--database postgresql` the accounts and the ledger on PostgreSQL instead of SQLite,
`--side-by-side [--also-root DIR]` every configuration started once and run in turn round by
round, with DIR's own beside them: a before/after within one run).

Four configurations of the service, each started fresh with a database of its own (SQLite
in bench/results/, or a new database on a throwaway PostgreSQL server of the bench's own,
`tests/databases.py`: 127.0.0.1, fsync off), run interleaved so drift hits them alike:
- `open`: AUTH=open, no budget (every request still leaves its ledger row);
- `key`: AUTH=users, every request with an API key, no budget;
- `budget`: the same key under one budget (its tokens per day);
- `budgets`: the same key under three budgets that all apply (the key's tokens per day, the
  user's dollars per month, the service's tokens in total).
For each: the short-replies scenario of `bench.run` (64 clients, 40 requests each, 10-token
replies as fast as the upstream can): replies per second, the service's CPU per request.
`key` minus `open` is what identity costs; `budget` and `budgets` minus `key` what admission
and settlement cost.

Then the stall check: 100 streams at 50 tokens/s through the `budgets` service, alone; while
100 plain requests (GET /api/limits: no password, no key, no database) arrive at the same
moment, the control; and while 50 logins (argon2id, ~30 ms of CPU each) and 50 key checks
arrive at the same moment: the streams' per-token latency (upstream write to client
arrival), p50 and p99. A worker stalled by a login or by the database would show as the
third row above the control; a burst of any 100 requests costs the streams what the control
shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path

from .load import Target
from .measure import LATENCY, SHORT, Bench, Scenario, med
from .service import ROOT, BenchUpstream, Service

RESULTS = ROOT / "bench" / "results"
ADMIN = "bench-admin-token-0123456789"


def _call(port: int, method: str, path: str, body: dict | None = None,
          token: str = ADMIN) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"{}")


def start(upstream: BenchUpstream, name: str, users: bool, budgets: int,
          root: Path = ROOT, workers: int = 0, database_url: str = "") -> tuple[Service, str]:
    """A service in configuration `name`; the key its requests carry ('' for open).
    `database_url`: its database (default: a new SQLite file in bench/results/)."""
    database = RESULTS / f"identity-{name}-{time.time_ns()}.db"
    env = {"DATABASE_URL": database_url or f"sqlite:///{database}", "PROXY_TOKEN": ADMIN,
           "AUTH": "users" if users else "open", "DEFAULT_PRICE": "0.15/0.6",
           "LOGIN_LIMIT": "100000/minute", "REGISTRATION": "open",
           "CONVERSATION_STORE": f"sqlite:///{RESULTS}/identity-conversations.db"}
    service = Service(upstream.url, RESULTS / f"identity-{name}.log", extra_env=env, root=root,
                      workers=workers)
    if not users:
        return service, ""
    port = service.port
    user = _call(port, "POST", "/api/admin/users", {"username": "bench",
                                                    "password": "bench password"})
    key = _call(port, "POST", "/api/admin/keys", {"user": "bench", "name": "bench"})
    if budgets:
        for scope, subject, unit, period, limit in (
                ("key", key["id"], "tokens", "day", 10**12),
                ("user", user["id"], "usd", "month", "1000000"),
                ("service", 0, "tokens", "total", 10**15))[:budgets]:
            _call(port, "POST", "/api/admin/budgets", {"scope": scope, "subject": subject,
                                                       "unit": unit, "period": period,
                                                       "limit": limit})
    return service, key["key"]


def target(port: int, key: str) -> Target:
    headers = {"Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return Target("service", "127.0.0.1", port, "/api/gpt/get", headers,
                  lambda sid, n, rate: {"message": f"bench sid={sid} n={n} rate={rate:g}"},
                  b"event: done")


def storm(port: int, key: str, logins: int = 50, checks: int = 50, plain: bool = False) -> float:
    """`logins` logins and `checks` key checks at the same moment (`plain`: as many requests
    that need neither a password nor a key, the control); their wall time (s)."""
    barrier = threading.Barrier(logins + checks)

    def login() -> None:
        barrier.wait(30)
        if plain:
            _call(port, "GET", "/api/limits", token="")
            return
        _call(port, "POST", "/api/user/login", {"username": "bench",
                                                 "password": "bench password"}, token="")

    def check() -> None:
        barrier.wait(30)
        _call(port, "GET", "/api/limits" if plain else "/v1/models", token="" if plain else key)
    threads = [threading.Thread(target=login) for _ in range(logins)]
    threads += [threading.Thread(target=check) for _ in range(checks)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return time.monotonic() - started


async def run(args, log) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    upstream = BenchUpstream()
    short = SHORT if not args.quick else Scenario("short replies", 64, 10, 0.0, rounds=10,
                                                  stagger=0.0)
    configs = tuple(c for c in (("open", False, 0), ("key", True, 0), ("budget", True, 1),
                                ("budgets", True, 3)) if not args.only or c[0] in args.only)
    root = args.service_root or ROOT
    results: dict = {name: [] for name, _, _ in configs}
    server = None
    if args.database == "postgresql":
        from tests.databases import PostgreSQL
        server = PostgreSQL()

    def database() -> str:
        return server.new_database() if server is not None else ""
    try:
        if args.side_by_side:
            results.update(await side_by_side(args, upstream, configs, database, short, log))
            return results
        for i in range(args.repeats):
            for name, users, budgets in (configs if i % 2 == 0 else configs[::-1]):
                bench, service = await ready(upstream, name, users, budgets, root, database(),
                                             Scenario("warm", 32, 10, 0.0, rounds=5,
                                                      stagger=0.0))
                try:
                    results[name] += await bench.scenario(short, 1, lambda t, n=name:
                                                          log(f"[{n}] {t.strip()}"))
                finally:
                    service.stop()
        if args.no_stall:
            return results
        stall: dict = {"alone": [], "plain": [], "storm": [], "storm_seconds": []}
        service, key = start(upstream, "stall", True, 3, root, database_url=database())
        try:
            bench = Bench(upstream, service)
            await bench.warm_up()
            through = target(service.port, key)
            loop = asyncio.get_running_loop()
            for _ in range(args.repeats):
                # the same streams through the service, alone and with the storm under way
                # (it starts once the streams are all open: one stream's length in)
                alone, _ = await bench.phase(through, LATENCY)
                stall["alone"].append(alone)
                running = loop.run_in_executor(None, lambda: (time.sleep(2.0), storm(
                    service.port, key, plain=True))[1])
                plain, _ = await bench.phase(through, LATENCY)
                stall["plain"].append(plain)
                await running
                running = loop.run_in_executor(None, lambda: (time.sleep(2.0),
                                                              storm(service.port, key))[1])
                stormy, _ = await bench.phase(through, LATENCY)
                stall["storm"].append(stormy)
                stall["storm_seconds"].append(await running)
                log(f"  stall: per-token p50/p99 alone {alone['tok_p50']:.2f}/"
                    f"{alone['tok_p99']:.2f} ms, with 100 plain requests {plain['tok_p50']:.2f}/"
                    f"{plain['tok_p99']:.2f} ms, with the storm {stormy['tok_p50']:.2f}/"
                    f"{stormy['tok_p99']:.2f} ms (storm {stall['storm_seconds'][-1]:.2f} s)")
        finally:
            service.stop()
        results["stall"] = stall
        return results
    finally:
        upstream.stop()
        if server is not None:
            server.stop()


async def ready(upstream: BenchUpstream, name: str, users: bool, budgets: int, root: Path,
                database_url: str, warm: Scenario) -> tuple[Bench, Service]:
    """A service in configuration `name` (`start`), warmed by `warm` through its target."""
    service, key = start(upstream, name, users, budgets, root, database_url=database_url)
    try:
        bench = Bench(upstream, service)
        await bench.warm_up()
        bench.through = target(service.port, key)
        await bench.phase(bench.through, warm)
    except BaseException:
        service.stop()
        raise
    return bench, service


async def side_by_side(args, upstream: BenchUpstream, configs, database, short: Scenario,
                       log) -> dict:
    """Every configuration started once (and each again from `--also-root`, labelled
    `name@also`), then `--repeats` rounds, each running every one in turn, the order reversed
    every other round: this machine's speed drifts by a third within minutes, and a figure is
    compared only with the others of its round."""
    trees = [("", args.service_root or ROOT)]
    if args.also_root is not None:
        trees.append(("@also", args.also_root))
    running: list[tuple[str, Bench, Service]] = []
    results: dict = {}
    try:
        for suffix, tree in trees:
            for name, users, budgets in configs:
                # warmed by a whole run: pools, caches, the key's record
                bench, service = await ready(upstream, name + suffix.replace("@", "-"), users,
                                             budgets, tree, database(), short)
                running.append((name + suffix, bench, service))
                results[name + suffix] = []
        for i in range(args.repeats):
            for label, bench, _ in (running if i % 2 == 0 else running[::-1]):
                results[label] += await bench.scenario(short, 1, lambda t, n=label:
                                                       log(f"[{n}] {t.strip()}"))
    finally:
        for _, _, service in running:
            service.stop()
    return results


def report(results: dict) -> str:
    rows = ["| configuration | short replies/s | service CPU per request | CPU vs `open`, "
            "paired | vs `key`, paired |", "|---|---|---|---|---|"]

    def paired(name: str, other: str) -> str:
        """The median of the per-round differences (each round runs every configuration)."""
        if name == other:
            return "-"
        if other not in results:
            return "-"
        return f"{statistics.median(a['service']['cpu_ms_per_request'] - b['service']['cpu_ms_per_request'] for a, b in zip(results[name], results[other], strict=True)):+.2f} ms"  # noqa: E501
    for name in [n for n in results if n != "stall"]:
        runs = results[name]
        base, _, tree = name.partition("@")
        also = "@" + tree if tree else ""
        rows.append(f"| {name} | {med(runs, 'service', 'req_per_s'):,.0f} | "
                    f"{med(runs, 'service', 'cpu_ms_per_request'):.2f} ms | "
                    f"{paired(name, 'open' + also)} | "
                    f"{paired(name, 'key' + also) if base.startswith('budget') else '-'} |")
    if "stall" not in results:
        return "\n".join(rows)
    stall = results["stall"]
    rows += ["", "| 100 streams x 50 tok/s through the `budgets` service | per-token p50 | "
             "per-token p99 |", "|---|---|---|"]
    words = {"alone": "alone", "plain": "with 100 plain requests at once (the control)",
             "storm": "with 50 logins + 50 key checks at once"}
    for name in ("alone", "plain", "storm"):
        rows.append(f"| {words[name]} | "
                    f"{statistics.median(r['tok_p50'] for r in stall[name]):.2f} ms | "
                    f"{statistics.median(r['tok_p99'] for r in stall[name]):.2f} ms |")
    rows.append(f"\nthe logins and key checks took {statistics.median(stall['storm_seconds']):.2f}"
                " s (median) while the streams ran")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer requests per run")
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default=None,
                        help="comma-separated configurations: open, key, budget, budgets")
    parser.add_argument("--no-stall", action="store_true", help="skip the stall check")
    parser.add_argument("--service-root", type=Path, default=None,
                        help="run the service from another checkout")
    parser.add_argument("--side-by-side", action="store_true",
                        help="start every configuration once and run them in turn, round by "
                             "round (the figures to compare are taken minutes apart otherwise)")
    parser.add_argument("--also-root", type=Path, default=None,
                        help="with --side-by-side: the same configurations from another "
                             "checkout too, labelled name@also (a before/after in one run)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="where the accounts and the ledger live (postgresql: a "
                             "throwaway server of the bench's own)")
    args = parser.parse_args()

    def log(text: str) -> None:
        print(text, flush=True)
    results = asyncio.run(run(args, log))
    (RESULTS / "identity.json").write_text(json.dumps(results, default=str, indent=1))
    print()
    print(f"database: {args.database}")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
