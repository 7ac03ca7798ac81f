"""The relay benchmark: `make bench` (or `python -m bench.run [--quick]`).

Starts the bench upstream (bench/upstream.py), the service under gunicorn (the repo's
gunicorn.conf.py) and the bare relay (bench/bare_relay.py, the same gevent worker settings),
all on 127.0.0.1, then runs each scenario in rounds of interleaved sides (bench/measure.py):
straight to the upstream (the floor: what the load generator and the fake upstream cost by
themselves), through the bare relay (the floor of the stack) and through the service. Each
figure the service is judged on is its run minus the floor run of the same round, and its
ratio to the bare relay's run of the same round; the table shows medians over the rounds.

`--only arrivals` (issue 30): 200 and then 1,000 short replies arriving at once while 20
replies run, and the CPU per short request with AUTH=open and with AUTH=users and a key, each
as a ratio to the bare relay (see bench/README.md). Per-token latency is a token's
arrival at the client minus the moment the upstream wrote it (time.monotonic_ns on both
sides: one clock on one machine). CPU and RSS are the service's alone (gunicorn master and
workers, through psutil); the upstream and the load generator run in other processes.

The resumable scenario (`--only resumable`) starts a redis-server too, gives it to the
service as REPLY_STORE, and interleaves ordinary and resumable replies of the latency
scenario: what a resumable reply adds is the difference of their added latencies, run by
run; the Redis commands counted during the ordinary runs show what a reply that did not ask
pays (none); the redis-server's own CPU is reported apart.

Options: --quick (a short run), --compare-workers (sync, gthread, gevent and worker counts,
the README's comparison), --worker-class/--workers/--threads (the service's settings, else
gunicorn.conf.py's defaults), --service-root DIR (the service from another checkout, for a
before/after), --repeats N, --only LIST, --no-bare, --no-hubtrace, --no-sweep, --no-chart,
--no-nginx, --json PATH. Raw results go
to bench/results/ (git-ignored); the chart to bench/chart.png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import psutil

from .load import resumable_target
from .measure import (
    ARRIVALS_200,
    ARRIVALS_1000,
    BURST,
    FAST,
    LATENCY,
    REQUESTS,
    REQUESTS_WARM,
    RESULTS,
    SHORT,
    WIDE,
    Bench,
    Scenario,
    med,
    total,
)
from .service import ROOT, BareRelay, BenchUpstream, Service, _raise_fd_limit
from .upstream import loop_factory

CHART = ROOT / "bench" / "chart.png"


def table(results: dict) -> tuple[str, list[bool]]:
    lat, wide, fast = results["latency"], results["wide"], results["fast"]
    oai = results.get("latency_openai") or []
    rows = [
        ("added time to first token, p99 (100x50)", "<= 5 ms", "ms",
         med(lat, "direct", "ttft_p99"), med(lat, "service", "ttft_p99"),
         med(lat, "added_ttft_p99"), lambda v: v <= 5, (lat, "ttft_p99")),
        ("added per-token latency, p50 (100x50)", "<= 0.5 ms", "ms",
         med(lat, "direct", "tok_p50"), med(lat, "service", "tok_p50"),
         med(lat, "added_tok_p50"), lambda v: v <= 0.5, (lat, "tok_p50")),
        ("added per-token latency, p99 (100x50)", "<= 2 ms", "ms",
         med(lat, "direct", "tok_p99"), med(lat, "service", "tok_p99"),
         med(lat, "added_tok_p99"), lambda v: v <= 2, (lat, "tok_p99")),
        ("added per-token latency, p99 (1000x5)", "<= 20 ms", "ms",
         med(wide, "direct", "tok_p99"), med(wide, "service", "tok_p99"),
         med(wide, "added_tok_p99"), lambda v: v <= 20, (wide, "tok_p99")),
        ("errors + missing + reordered (1000x5, all runs)", "0", "",
         None, None, total(wide, "errors") + total(wide, "missing") + total(wide, "reordered")
         if wide else float("nan"),
         lambda v: v == 0),
        ("service CPU per 1,000 tokens (100x50)", "<= 50 ms", "ms",
         None, None, med(lat, "service", "cpu_ms_per_1k"), lambda v: v <= 50,
         (lat, "cpu_ms_per_1k")),
        ("relayed tokens per second (fast upstream)", ">= 20,000", "tok/s",
         med(fast, "direct", "tok_per_s"), med(fast, "service", "tok_per_s"),
         med(fast, "service", "tok_per_s"), lambda v: v >= 20000, (fast, "tok_per_s")),
        ("service CPU per 1,000 tokens (fast upstream)", "-", "ms",
         None, None, med(fast, "service", "cpu_ms_per_1k"), None, (fast, "cpu_ms_per_1k")),
        ("RSS per open stream (1000x5)", "<= 50 KB", "KB",
         None, None, med(wide, "service", "rss_kb_per_stream"), lambda v: v <= 50),
    ]
    res, plain = results.get("resumable") or [], results.get("plain_redis") or []
    if res:
        def more(key: str) -> float:  # resumable minus ordinary, run by run (interleaved)
            return statistics.median(r[key] - p[key] for r, p in zip(res, plain, strict=True))
        rows += [
            ("resumable replies (REPLY_STORE=redis): added per-token latency, p50 (100x50)",
             "-", "ms", med(res, "direct", "tok_p50"), med(res, "service", "tok_p50"),
             med(res, "added_tok_p50"), None, (res, "tok_p50")),
            ("resumable replies: added per-token latency, p99 (100x50)", "-", "ms",
             med(res, "direct", "tok_p99"), med(res, "service", "tok_p99"),
             med(res, "added_tok_p99"), None, (res, "tok_p99")),
            ("ordinary replies, interleaved with them: added per-token latency, p99", "-", "ms",
             med(plain, "direct", "tok_p99"), med(plain, "service", "tok_p99"),
             med(plain, "added_tok_p99"), None, (plain, "tok_p99")),
            ("what resuming adds to the per-token p99 (resumable minus ordinary)", "<= +1 ms",
             "ms", None, None, more("added_tok_p99"), lambda v: v <= 1),
            ("what resuming adds to the per-token p50", "-", "ms", None, None,
             more("added_tok_p50"), None),
            ("what resuming adds to the time to first token, p99", "-", "ms", None, None,
             more("added_ttft_p99"), None),
            ("service CPU per 1,000 tokens: resumable", "-", "ms", None, None,
             med(res, "service", "cpu_ms_per_1k"), None, (res, "cpu_ms_per_1k")),
            ("service CPU per 1,000 tokens: ordinary, interleaved", "-", "ms", None, None,
             med(plain, "service", "cpu_ms_per_1k"), None, (plain, "cpu_ms_per_1k")),
            ("redis-server CPU per 1,000 resumable tokens", "-", "ms", None, None,
             med(res, "redis_cpu_ms_per_1k"), None),
            ("Redis commands sent for ordinary replies (all runs)", "0", "", None, None,
             sum(run["redis_commands"] for run in plain), lambda v: v == 0),
        ]
    burst, short = results.get("burst") or [], results.get("short") or []
    if burst:
        rows += [
            ("burst: added time until the upstream has the request, p50 (1000 in 100 ms)",
             "<= 150 ms", "ms", med(burst, "direct", "reach_p50"),
             med(burst, "service", "reach_p50"), med(burst, "added_reach_p50"),
             lambda v: v <= 150, (burst, "reach_p50")),
            ("burst: added time until the upstream has the request, p99", "<= 400 ms", "ms",
             med(burst, "direct", "reach_p99"), med(burst, "service", "reach_p99"),
             med(burst, "added_reach_p99"), lambda v: v <= 400, (burst, "reach_p99")),
            ("burst: errors + missing (all runs)", "0", "", None, None,
             total(burst, "errors") + total(burst, "missing"), lambda v: v == 0),
        ]
    if short:
        per_token = med(fast, "service", "cpu_ms_per_1k") / 1000
        rows += [
            ("short replies completed per second (10 tokens, fast upstream)", "-", "req/s",
             med(short, "direct", "req_per_s"), med(short, "service", "req_per_s"),
             med(short, "service", "req_per_s"), None, (short, "req_per_s")),
            ("service CPU per short request (10 tokens)", "-", "ms", None, None,
             med(short, "service", "cpu_ms_per_request"), None, (short, "cpu_ms_per_request")),
            ("fixed CPU per request (short request minus 10 tokens' relaying)", "<= 0.6 ms",
             "ms", None, None, med(short, "service", "cpu_ms_per_request") - 10 * per_token,
             lambda v: v <= 0.6),
        ]
    if oai:
        old_cpu = med(lat, "service", "cpu_ms_per_1k")
        rows += [
            ("/v1 route: added per-token latency, p50 (100x50)", "<= 1.1x /api/gpt/get", "ms",
             med(oai, "direct", "tok_p50"), med(oai, "service", "tok_p50"),
             med(oai, "added_tok_p50"), lambda v: v <= 1.1 * max(med(lat, "added_tok_p50"), 0),
             (oai, "tok_p50")),
            ("/v1 route: added per-token latency, p99 (100x50)", "<= 1.1x /api/gpt/get", "ms",
             med(oai, "direct", "tok_p99"), med(oai, "service", "tok_p99"),
             med(oai, "added_tok_p99"), lambda v: v <= 1.1 * max(med(lat, "added_tok_p99"), 0),
             (oai, "tok_p99")),
            ("/v1 route: service CPU per 1,000 tokens (100x50)", f"<= {1.1 * old_cpu:.1f} ms",
             "ms", None, None, med(oai, "service", "cpu_ms_per_1k"),
             lambda v: v <= 1.1 * old_cpu, (oai, "cpu_ms_per_1k")),
        ]

    def fmt(v, unit):
        if v is None:
            return "-"
        if unit in ("tok/s", "req/s"):
            return f"{v:,.0f}"
        if unit == "":
            return f"{v:d}" if isinstance(v, int) else f"{v:g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    lines = ["| figure | target | floor (direct) | bare relay | through service | "
             "service / floor | service / bare relay | service's figure | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    met = []
    for name, target, unit, floor, svc, value, check, *source in rows:
        if value != value:  # a scenario that did not run (--only)
            continue
        ok = None if check is None or value != value else check(value)
        if ok is not None:
            met.append(ok)
        ratio = f"{svc / floor:.2f}x" if floor and svc is not None and floor > 0 else "-"
        bare = vs_bare = None
        if source:  # the bare relay's figure, and the median of the ratios round by round
            runs, key = source[0]
            bare, vs_bare = med(runs, "bare", key), med(runs, "vs_bare_" + key)
        lines.append(f"| {name} | {target} | {fmt(floor, unit)} | "
                     f"{'-' if bare is None or bare != bare else fmt(bare, unit)} | "
                     f"{fmt(svc, unit)} | {ratio} | "
                     f"{'-' if vs_bare is None or vs_bare != vs_bare else f'{vs_bare:.2f}x'} | "
                     f"{fmt(value, unit)} {unit} | {'-' if ok is None else 'yes' if ok else 'NO'} |")
    return "\n".join(lines), met


def chart(sweep: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [s["users"] for s in sweep]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(users, [s["added_tok_p50"] for s in sweep], "o-", label="added per-token p50")
    ax.plot(users, [s["added_tok_p99"] for s in sweep], "s-", label="added per-token p99")
    ax.plot(users, [s["added_ttft_p99"] for s in sweep], "^--", label="added time to first token p99")
    ax.plot(users, [s["floor_tok_p99"] for s in sweep], ":", color="grey",
            label="floor per-token p99 (no service)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_xticks(users)
    ax.set_xticklabels([str(u) for u in users])
    ax.set_xlabel("concurrent streams (each 10 tokens/s)")
    ax.set_ylabel("ms added by the service")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def redis_commands(client) -> dict[str, int]:
    """Commands the redis-server ran so far, by name, leaving out the INFO calls that ask."""
    return {name[len("cmdstat_"):]: stat["calls"]
            for name, stat in client.info("commandstats").items() if name != "cmdstat_info"}


async def resumable_runs(bench: Bench, redis_server, repeats: int, log) -> tuple[list, list]:
    """Ordinary and resumable replies of the latency scenario, interleaved, against a service
    whose REPLY_STORE is `redis_server`: Redis commands counted during the ordinary ones, the
    redis-server's CPU during the resumable ones."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    server = psutil.Process(redis_server.proc.pid)
    # Both paths warmed by one unmeasured run of the scenario itself: the workers' Redis
    # connections opened, and their memory grown to what 100 streams of each take (the
    # first run after a start is otherwise slower, whichever path it is).
    await bench.phase(bench.through, LATENCY)
    await bench.phase(resumable_target(bench.service.port), LATENCY)
    plain, resumable = [], []
    for _ in range(repeats):
        before = redis_commands(client)  # once the last resumable replies' ends are written:
        for _ in range(20):  # nothing for a second (their upstreams drain for up to 0.5 s)
            await asyncio.sleep(1.0)
            now = redis_commands(client)
            if now == before:
                break
            before = now
        run = (await bench.scenario(LATENCY, 1, log))[0]
        sent = {name: calls - before.get(name, 0)
                for name, calls in redis_commands(client).items() if calls != before.get(name, 0)}
        run["redis_commands"] = sum(sent.values())
        log(f"    Redis commands during the ordinary run: {run['redis_commands']} {sent or ''}")
        plain.append(run)
        cpu = server.cpu_times()
        run = (await bench.scenario(LATENCY, 1, log, resumable_target(bench.service.port)))[0]
        used = server.cpu_times()
        run["redis_cpu_ms_per_1k"] = ((used.user + used.system - cpu.user - cpu.system) * 1e6
                                      / max(run["service"]["tokens"], 1))
        log(f"    redis-server CPU {run['redis_cpu_ms_per_1k']:.1f} ms per 1,000 tokens")
        resumable.append(run)
    client.close()
    return plain, resumable


async def main_bench(args, log) -> dict:
    upstream = BenchUpstream()
    service = redis_server = bare = None
    only = set(args.only.split(",")) if args.only else None
    try:
        if only is None or "resumable" in only:
            from tests.processes import RedisServer
            redis_server = RedisServer()
        traced = (only is None or "arrivals" in only) and not args.no_hubtrace
        # `cpu` alone: the CPU per request of the arrivals runs without the arrivals
        service = Service(upstream.url, RESULTS / "gunicorn.log", worker_class=args.worker_class,
                          workers=args.workers, threads=args.threads,
                          root=args.service_root or ROOT, metrics=not args.no_metrics,
                          extra_env={"REPLY_STORE": redis_server.url} if redis_server else None,
                          hubtrace=traced)
        if not args.no_bare:
            bare = BareRelay(upstream.url, RESULTS / "gunicorn-bare.log",
                             workers=args.workers or 2, hubtrace=traced)
        bench = Bench(upstream, service, bare)
        await bench.warm_up()
        log(f"service: {service.describe}, baseline RSS {bench.baseline_rss / 2**20:.1f} MB "
            f"over {len(service.procs())} processes"
            + (f"; {bare.describe}, {bench.bare_baseline_rss / 2**20:.1f} MB" if bare else ""))
        repeats = args.repeats or (1 if args.quick else 5)
        results = {"config": service.describe, "repeats": repeats}

        def wanted(name: str) -> bool:
            return only is None or name in only

        for key in ("latency", "latency_openai", "wide", "fast", "burst", "short", "plain_redis",
                    "resumable"):
            results[key] = []
        for r in range(repeats if wanted("latency") else 0):  # the two routes interleaved,
            results["latency"] += await bench.scenario(LATENCY, 1, log, first=r)  # drift hits
            results["latency_openai"] += await bench.scenario(LATENCY, 1, log, bench.openai,
                                                              first=r)  # both alike
        few = max(1, repeats - 2)
        if wanted("wide"):
            results["wide"] = await bench.scenario(WIDE, few, log)
        fast = FAST if not args.quick else Scenario("fast upstream", 20, 2000, 0.0, rounds=1)
        if wanted("fast") or wanted("short"):
            results["fast"] = await bench.scenario(fast, few, log)
        if wanted("burst"):
            results["burst"] = await bench.scenario(BURST, few, log)
        if wanted("short"):
            results["short"] = await bench.scenario(SHORT, few, log)
        if wanted("arrivals") or wanted("cpu"):
            results["arrivals"] = await arrivals_runs(bench, upstream, args, repeats, log,
                                                      arriving=wanted("arrivals"))
        if redis_server is not None:
            results["plain_redis"], results["resumable"] = await resumable_runs(
                bench, redis_server, repeats, log)
        levels = [] if args.no_sweep or not wanted("sweep") else [10, 100, 1000] if args.quick else [
            10, 50, 100, 250, 500, 1000]
        sweep = []
        for users in levels:
            sc = Scenario(f"sweep {users}", users, 20, 10.0)
            runs = await bench.scenario(sc, 1, log)
            sweep.append({"users": users, "added_tok_p50": med(runs, "added_tok_p50"),
                          "added_tok_p99": med(runs, "added_tok_p99"),
                          "added_ttft_p99": med(runs, "added_ttft_p99"),
                          "floor_tok_p99": med(runs, "direct", "tok_p99"),
                          "cpu_ms_per_1k": med(runs, "service", "cpu_ms_per_1k")})
        results["sweep"] = sweep
        return results
    finally:
        if service is not None:
            service.stop()
        if bare is not None:
            bare.stop()
        if redis_server is not None:
            redis_server.stop()
        upstream.stop()


async def arrivals_runs(bench: Bench, upstream: BenchUpstream, args, repeats: int,
                        log, arriving: bool = True) -> dict:
    """Issue 30's figures, each side interleaved round by round: 200 and then 1,000 short
    replies arriving at once while 20 replies run (their per-token p99, the new replies'
    first-token p99; not with `arriving` false: `--only cpu`), and the CPU per request of
    short replies through the bare relay, the service with AUTH=open and a service with
    AUTH=users and an API key on every request. Before each CPU figure one unmeasured run of
    the same requests through every side lets the arrivals' thousand connections close and
    their memory settle, so what is counted is the requests' own CPU."""
    from .identity import start, target

    out: dict = {"200": [], "1000": [], "cpu_open": [], "cpu_key": []}
    if bench.bare is None:
        raise SystemExit("--only arrivals compares with the bare relay: leave out --no-bare")
    keyed, key = start(upstream, "arrivals-key", True, 0, args.service_root or ROOT)
    try:
        with_key = Bench(upstream, keyed, bench.bare)
        with_key.through = target(keyed.port, key)
        await with_key.warm_up()
        await with_key.phase(with_key.through, REQUESTS)  # the key's record cached, pools full
        log(f"arrivals: {ARRIVALS_200.running} replies of {ARRIVALS_200.running_tokens} tokens "
            f"at {ARRIVALS_200.running_rate:g}/s running, then short replies of "
            f"{ARRIVALS_200.tokens} tokens arriving at once; CPU per request: {REQUESTS.users} "
            f"clients x {REQUESTS.rounds} replies of {REQUESTS.tokens} tokens")
        for r in range(repeats):
            if arriving:
                out["200"] += await bench.arrivals(ARRIVALS_200, 1, log, first=r)
                out["1000"] += await bench.arrivals(ARRIVALS_1000, 1, log, first=r)
            await bench.pair(REQUESTS_WARM, r)
            await with_key.pair(REQUESTS_WARM, r)
            out["cpu_open"] += await bench.scenario(REQUESTS, 1, log, first=r)
            out["cpu_key"] += await with_key.scenario(
                REQUESTS, 1, lambda text: log("[AUTH=users, key] " + text.strip()), first=r)
    finally:
        keyed.stop()
    return out


def arrivals_table(arr: dict) -> tuple[str, list[bool]]:
    """The arrivals figures: floor, bare relay, service, and the median of the service/bare
    ratios round by round, with issue 30's targets."""
    rows = ["| figure | target | floor (direct) | bare relay | service | service / bare relay "
            "(median of rounds) | met |", "|---|---|---|---|---|---|---|"]
    met = []

    def add(name, target, floor, bare, svc, ratio, ok, unit="ms") -> None:
        if ok is not None:
            met.append(ok)
        def cell(v):
            return ("-" if v is None else f"{v:.2f} {unit}" if unit else f"{v:g}")
        rows.append(f"| {name} | {target} | {cell(floor)} | {cell(bare)} | {cell(svc)} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{'-' if ok is None else 'yes' if ok else 'NO'} |")
    for n in ("200", "1000"):
        runs = arr.get(n) or []
        if not runs:
            continue
        ratio = med(runs, "vs_bare_running_tok_p99")
        add(f"{n} arriving at once: per-token p99 of the 20 replies running", "<= 1.5x",
            med(runs, "direct", "running", "tok_p99"), med(runs, "bare", "running", "tok_p99"),
            med(runs, "service", "running", "tok_p99"), ratio, ratio <= 1.5)
        ratio = med(runs, "vs_bare_arrived_ttft_p99")
        add(f"{n} arriving at once: first-token p99 of the arriving replies", "<= 1.5x",
            med(runs, "direct", "arrived", "ttft_p99"), med(runs, "bare", "arrived", "ttft_p99"),
            med(runs, "service", "arrived", "ttft_p99"), ratio, ratio <= 1.5)
        add(f"{n} arriving at once: time until the upstream has the request, p99", "-",
            med(runs, "direct", "arrived", "reach_p99"),
            med(runs, "bare", "arrived", "reach_p99"),
            med(runs, "service", "arrived", "reach_p99"),
            statistics.median(r["service"]["arrived"]["reach_p99"]
                              / max(r["bare"]["arrived"]["reach_p99"], 1e-9) for r in runs),
            None)
        if all("hub" in r["service"] and "hub" in r["bare"] for r in runs):
            for key, words in (("p99", "p99"), ("p999", "p99.9"), ("max", "maximum")):
                add(f"{n} arriving at once: the worker hub's CPU between two polls, {words} "
                    "(a running token waits up to this long)", "-", None,
                    med(runs, "bare", "hub", key), med(runs, "service", "hub", key),
                    med(runs, f"vs_bare_hub_{key}"), None)
        errors = {w: sum(r[w]["errors"] for r in runs) for w in ("direct", "bare", "service")}
        lost = {w: sum(r[w]["lost"] for r in runs) for w in ("direct", "bare", "service")}
        add(f"{n} arriving at once: errors + lost or reordered tokens (all rounds)", "0",
            errors["direct"] + lost["direct"], errors["bare"] + lost["bare"],
            errors["service"] + lost["service"], None,
            errors["service"] + lost["service"] == 0, unit="")
        add(f"{n} arriving at once: service CPU per request (running and arriving)", "-",
            None, med(runs, "bare", "cpu_ms_per_request"),
            med(runs, "service", "cpu_ms_per_request"),
            statistics.median(r["service"]["cpu_ms_per_request"]
                              / max(r["bare"]["cpu_ms_per_request"], 1e-9) for r in runs), None)
    cpu_open, cpu_key = arr.get("cpu_open") or [], arr.get("cpu_key") or []
    if cpu_open:
        ratio = med(cpu_open, "vs_bare_cpu_ms_per_request")
        add("CPU per request, AUTH=open (10-token replies)", "<= 1.0x", None,
            med(cpu_open, "bare", "cpu_ms_per_request"),
            med(cpu_open, "service", "cpu_ms_per_request"), ratio, ratio <= 1.0)
    if cpu_key:
        more = statistics.median(r["service"]["cpu_ms_per_request"]
                                 - r["bare"]["cpu_ms_per_request"] for r in cpu_key)
        add("CPU per request, AUTH=users and an API key", "<= bare + 0.1 ms", None,
            med(cpu_key, "bare", "cpu_ms_per_request"),
            med(cpu_key, "service", "cpu_ms_per_request"),
            med(cpu_key, "vs_bare_cpu_ms_per_request"), more <= 0.1)
        rows.append(f"| ... the key's service minus the bare relay, round by round | "
                    f"<= +0.1 ms | | | {more:+.2f} ms | | |")
        if cpu_open:
            diff = statistics.median(k["service"]["cpu_ms_per_request"]
                                     - o["service"]["cpu_ms_per_request"]
                                     for k, o in zip(cpu_key, cpu_open, strict=True))
            rows.append(f"| ... AUTH=users and a key minus AUTH=open, round by round | - | | | "
                        f"{diff:+.2f} ms | | |")
    return "\n".join(rows), met


WORKER_CONFIGS = [
    ("sync", 2, 1), ("sync", 4, 1),  # threads=1: with more, gunicorn runs gthread instead
    ("gthread", 2, 64), ("gthread", 2, 512),
    ("gevent", 1, 0), ("gevent", 2, 0), ("gevent", 4, 0),
]


async def compare_workers(args, log) -> list[dict]:
    """The same scenarios against each worker class and count (sync: only what it can hold)."""
    rows = []
    repeats = args.repeats or (1 if args.quick else 2)
    for kind, workers, threads in WORKER_CONFIGS:
        upstream = BenchUpstream()
        service = None
        try:
            service = Service(upstream.url, RESULTS / "gunicorn-compare.log", worker_class=kind,
                              workers=workers, threads=threads)
            bench = Bench(upstream, service)
            await bench.warm_up()
            name = f"{kind} workers={workers}" + (f" threads={threads}" if kind == "gthread" else "")
            log(f"{name}:")
            row = {"config": name, "holds": workers * (threads or 2000)}
            if kind == "sync":  # 100 at once would queue for minutes: show the queue at 10
                sc = Scenario("10 streams x 10 tok/s", 10, 20, 10.0, rounds=1, stagger=0.2)
                runs = await bench.scenario(sc, 1, log)
                row["sync_ttft_p99_10"] = med(runs, "service", "ttft_p99")
                row["latency"] = await bench.scenario(
                    Scenario(f"{workers} streams x 50 tok/s", workers, 100, 50.0), repeats, log)
            else:
                row["latency"] = await bench.scenario(LATENCY, repeats, log)
                row["wide"] = await bench.scenario(WIDE, 1, log)
            row["fast"] = await bench.scenario(
                Scenario("fast upstream", min(20, row["holds"]), 2000, 0.0, rounds=1), repeats, log)
            rows.append(row)
        finally:
            if service is not None:
                service.stop()
            upstream.stop()
    return rows


def worker_table(rows: list[dict]) -> str:
    lines = ["| worker | streams held at once | added TTFT p99 | added token p50 / p99 | "
             "CPU per 1k tokens | tok/s, fast upstream | 1000x5: errors, added p99, RSS/stream |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lat, wide = row["latency"], row.get("wide")
        note = (f"{med(wide, 'service', 'errors') + med(wide, 'service', 'missing'):g} err, "
                f"{med(wide, 'added_tok_p99'):.1f} ms, "
                f"{med(wide, 'service', 'rss_kb_per_stream'):.0f} KB" if wide else
                f"n/a (10 streams wait: TTFT p99 {row['sync_ttft_p99_10'] / 1000:.1f} s)")
        lines.append(
            f"| {row['config']} | {row['holds']} | {med(lat, 'added_ttft_p99'):.2f} ms | "
            f"{med(lat, 'added_tok_p50'):.2f} / {med(lat, 'added_tok_p99'):.2f} ms | "
            f"{med(lat, 'service', 'cpu_ms_per_1k'):.1f} ms | "
            f"{med(row['fast'], 'service', 'tok_per_s'):,.0f} | {note} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the relay (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="one short pass of each scenario")
    parser.add_argument("--compare-workers", action="store_true",
                        help="compare gunicorn worker classes and counts")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--worker-class", default="")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--no-sweep", action="store_true", help="skip the concurrency sweep")
    parser.add_argument("--service-root", type=Path, default=None,
                        help="run the service from another checkout (before/after comparisons)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the check behind nginx")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-metrics", action="store_true",
                        help="the service with METRICS_BIND empty (what metrics cost)")
    parser.add_argument("--only", default="", help="comma-separated scenarios: latency, wide, "
                        "fast, burst, short, resumable, arrivals, cpu (the CPU per request of arrivals "
                        "alone), sweep, nginx (only these run)")
    parser.add_argument("--no-hubtrace", action="store_true",
                        help="arrivals without timing the workers' hub (bench/hubtrace.py)")
    parser.add_argument("--no-bare", action="store_true",
                        help="without the bare relay (bench/bare_relay.py) as a third side")
    args = parser.parse_args()
    _raise_fd_limit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if args.compare_workers:
            rows = runner.run(compare_workers(args, log))
            (args.json or RESULTS / f"workers-{stamp}.json").write_text(json.dumps(rows, indent=1))
            print()
            print(worker_table(rows))
            return 0
        results = runner.run(main_bench(args, log))
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    (args.json or RESULTS / f"bench-{stamp}.json").write_text(json.dumps(results, indent=1))
    text, met = table(results)
    print()
    arr = results.get("arrivals") or {}
    other = statistics.median([run["service"]["other_cores"] for key in (
        "latency", "latency_openai", "wide", "fast", "burst", "short", "plain_redis",
        "resumable") for run in results[key]] + [
        run["service"]["other_cores"] for runs in arr.values() for run in runs] or [0.0])
    print(f"gpt_proxy relay benchmark: {results['config']}, medians of {results['repeats']} "
          f"run(s); {psutil.cpu_count()} cores shared by load generator, upstream and service; "
          f"other processes used a median {other:.2f} cores meanwhile")
    print(text)
    if arr:
        arrivals_text, arrivals_met = arrivals_table(arr)
        met += arrivals_met
        print()
        print("arrivals (issue 30), each figure beside the bare relay's of the same round:")
        print(arrivals_text)
    if results["sweep"]:
        print()
        print("added latency against concurrency (10 tokens/s per stream):")
    for s in results["sweep"]:
        print(f"  {s['users']:5d} streams: per-token p50 {s['added_tok_p50']:+.3f} ms, "
              f"p99 {s['added_tok_p99']:+.3f} ms, TTFT p99 {s['added_ttft_p99']:+.2f} ms, "
              f"CPU {s['cpu_ms_per_1k']:.1f} ms/1k tokens")
    if not args.no_chart and results["sweep"]:
        chart(results["sweep"], CHART, f"gpt_proxy: latency the relay adds (gunicorn "
                                       f"{results['config']}; {psutil.cpu_count()} cores)")
        print(f"chart: {CHART.relative_to(ROOT)}")
    status = 0
    if not args.no_nginx and (not args.only or "nginx" in args.only.split(",")):
        from .nginx_check import main as nginx_main
        print()
        sys.argv = [sys.argv[0]]
        status = nginx_main()
    print(f"targets met: {sum(met)}/{len(met)}; took {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
