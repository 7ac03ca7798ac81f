"""The relay benchmark: `make bench` (or `python -m bench.run [--quick]`).

Starts the bench upstream (bench/upstream.py) and the service under gunicorn (the repo's
gunicorn.conf.py), both on 127.0.0.1, then runs each scenario as interleaved pairs: straight
to the upstream (the floor: what the load generator and the fake upstream cost by themselves)
and through the service. Each figure the service is judged on is its run minus the floor run
of the same pair; the table shows medians over the repeats. Per-token latency is a token's
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
before/after), --repeats N, --no-sweep, --no-chart, --no-nginx, --json PATH. Raw results go
to bench/results/ (git-ignored); the chart to bench/chart.png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from .load import (
    Load,
    Phase,
    direct_target,
    fetch_json,
    openai_target,
    resumable_target,
    service_target,
)
from .service import ROOT, BenchUpstream, Service, _raise_fd_limit
from .upstream import loop_factory

RESULTS = ROOT / "bench" / "results"
CHART = ROOT / "bench" / "chart.png"


@dataclass(frozen=True)
class Scenario:
    name: str
    users: int  # concurrent streams at the steady middle of the run
    tokens: int  # per stream
    rate: float  # tokens per second per stream; 0: as fast as the upstream can
    rounds: int = 2  # streams each user runs back to back
    stagger: float | None = None  # seconds over which users start; None: one stream's length

    @property
    def spread(self) -> float:
        if self.stagger is not None:
            return self.stagger
        return self.tokens / self.rate if self.rate else 0.0


LATENCY = Scenario("100 streams x 50 tok/s", 100, 100, 50.0)
WIDE = Scenario("1000 streams x 5 tok/s", 1000, 20, 5.0)
FAST = Scenario("fast upstream", 20, 5000, 0.0, rounds=1)
BURST = Scenario("burst of 1000 in 100 ms", 1000, 20, 20.0, rounds=1, stagger=0.1)
SHORT = Scenario("short replies", 64, 10, 0.0, rounds=40, stagger=0.0)


def analyse(phase: Phase, collected: dict) -> dict:
    """Errors, missing/reordered tokens, latency percentiles, throughput of one phase."""
    sent, received = collected["sent"], collected["received"]
    lat, ttft, reach = [], [], []
    errors = missing = reordered = tokens = 0
    error_kinds: dict[str, int] = {}
    for s in phase.streams:
        if s.error:
            errors += 1
            kind = s.error[:80]
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
        seqs = np.frombuffer(s.seqs, dtype=np.int32) if len(s.seqs) else np.zeros(0, np.int32)
        got = len(seqs)
        tokens += got
        missing += max(0, s.tokens - len(np.unique(seqs)))
        if got > 1 and np.any(np.diff(seqs) <= 0):
            reordered += 1
        times = sent.get(str(s.sid))
        if times is not None and got:
            sent_ns = np.asarray(times, dtype=np.int64)
            ok = seqs < len(sent_ns)
            lat.append(np.frombuffer(s.times, dtype=np.int64)[ok] - sent_ns[seqs[ok]])
        if s.first:
            ttft.append(s.first - s.start)
        arrived = received.get(str(s.sid))
        if arrived is not None:
            reach.append(arrived - s.start)
    lat_ms = np.concatenate(lat) / 1e6 if lat else np.zeros(1)
    ttft_ms = np.asarray(ttft) / 1e6 if ttft else np.zeros(1)
    reach_ms = np.asarray(reach) / 1e6 if reach else np.zeros(1)
    ends = [s.end for s in phase.streams if s.end]
    wall = (max(ends) - min(s.start for s in phase.streams)) / 1e9 if ends else 1.0
    return {
        "streams": len(phase.streams), "errors": errors, "error_kinds": error_kinds,
        "missing": missing, "reordered": reordered, "tokens": tokens,
        "tok_p50": float(np.percentile(lat_ms, 50)), "tok_p99": float(np.percentile(lat_ms, 99)),
        "tok_max": float(lat_ms.max()),
        "ttft_p50": float(np.percentile(ttft_ms, 50)), "ttft_p99": float(np.percentile(ttft_ms, 99)),
        "reach_p50": float(np.percentile(reach_ms, 50)),
        "reach_p99": float(np.percentile(reach_ms, 99)),
        "tok_per_s": tokens / wall, "wall_s": wall,
        "req_per_s": sum(1 for s in phase.streams if not s.error) / wall,
    }


class Bench:
    def __init__(self, upstream: BenchUpstream, service: Service) -> None:
        self.upstream = upstream
        self.service = service
        self.load = Load()
        self.direct = direct_target(upstream.port)
        self.through = service_target(service.port)
        self.openai = openai_target(service.port)
        self.baseline_rss = 0
        self.me = psutil.Process()

    def busy(self) -> tuple[float, float]:
        """(CPU seconds of the whole machine, of the bench's own processes) so far."""
        t = psutil.cpu_times()
        machine = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        mine = self.me.cpu_times()
        return machine, self.service.cpu() + self.upstream.cpu() + mine.user + mine.system

    async def phase(self, target, sc: Scenario, sampler=None) -> tuple[dict, Phase]:
        phase = await self.load.run(target, users=sc.users, rounds=sc.rounds, tokens=sc.tokens,
                                    rate=sc.rate, stagger=sc.spread, sampler=sampler)
        collected = await fetch_json("127.0.0.1", self.upstream.port, "/_bench/collect")
        return analyse(phase, collected), phase

    async def pair(self, sc: Scenario, first_service: bool, target=None) -> dict:
        """One floor run and one service run, in the given order; the service's CPU and RSS."""
        out = {}
        target = target or self.through
        for which in (("service", "direct") if first_service else ("direct", "service")):
            if which == "direct":
                out["direct"], _ = await self.phase(self.direct, sc)
                continue
            cpu0 = self.service.cpu()
            machine0, ours0 = self.busy()
            stats, phase = await self.phase(target, sc, sampler=self.service.rss)
            cpu = self.service.cpu() - cpu0
            machine1, ours1 = self.busy()
            wall = (phase.ended - phase.started) / 1e9
            stats["other_cores"] = max(0.0, (machine1 - machine0) - (ours1 - ours0)) / wall
            stats["cpu_ms_per_1k"] = cpu * 1000 / max(stats["tokens"], 1) * 1000
            stats["cpu_ms_per_request"] = cpu * 1000 / max(stats["streams"], 1)
            stats["cpu_s"] = cpu
            busy = [(n, rss) for n, rss in phase.samples if n > 0]
            if busy:
                n, rss = max(busy, key=lambda x: x[1])
                n_open = max(n for n, _ in busy)
                stats["open_max"] = n_open
                stats["rss_peak_mb"] = rss / 2**20
                stats["rss_kb_per_stream"] = (rss - self.baseline_rss) / 1024 / max(n_open, 1)
            out["service"] = stats
        for key in ("tok_p50", "tok_p99", "ttft_p50", "ttft_p99", "reach_p50", "reach_p99"):
            out["added_" + key] = out["service"][key] - out["direct"][key]
        return out

    async def scenario(self, sc: Scenario, repeats: int, log, target=None) -> list[dict]:
        runs = []
        for i in range(repeats):
            run = await self.pair(sc, first_service=bool(i % 2), target=target)
            s, d = run["service"], run["direct"]
            via = f" via {target.path}" if target is not None else ""
            log(f"  {sc.name}{via} #{i + 1}: added tok p50 {run['added_tok_p50']:.3f} ms, "
                f"p99 {run['added_tok_p99']:.3f} ms, ttft p99 {run['added_ttft_p99']:.2f} ms, "
                f"reach p50/p99 {run['added_reach_p50']:.1f}/{run['added_reach_p99']:.1f} ms; "
                f"{s['req_per_s']:.0f} req/s (floor {d['req_per_s']:.0f}), "
                f"cpu {s['cpu_ms_per_request']:.2f} ms/req; "
                f"cpu {s['cpu_ms_per_1k']:.1f} ms/1k; {s['tok_per_s']:.0f} tok/s "
                f"(floor {d['tok_per_s']:.0f}); errors {s['errors']}/{d['errors']}, "
                f"missing {s['missing']}, reordered {s['reordered']}; "
                f"other load {s['other_cores']:.2f} cores"
                + (f"; rss {s['rss_kb_per_stream']:.1f} KB/stream at {s['open_max']} open"
                   if "rss_kb_per_stream" in s else ""))
            if s["error_kinds"] or d["error_kinds"]:
                log(f"    errors: service {s['error_kinds']} direct {d['error_kinds']}")
            runs.append(run)
        return runs

    async def warm_up(self) -> None:
        warm = Scenario("warm-up", 50, 50, 0.0, rounds=2, stagger=0.5)
        await self.phase(self.direct, warm)
        await self.phase(self.through, warm)
        await asyncio.sleep(0.5)
        self.baseline_rss = self.service.rss()


def med(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else float("nan")


def total(runs: list[dict], key: str) -> int:
    return sum(run["service"][key] + run["direct"][key] for run in runs)


def table(results: dict) -> tuple[str, list[bool]]:
    lat, wide, fast = results["latency"], results["wide"], results["fast"]
    oai = results.get("latency_openai") or []
    rows = [
        ("added time to first token, p99 (100x50)", "<= 5 ms", "ms",
         med(lat, "direct", "ttft_p99"), med(lat, "service", "ttft_p99"),
         med(lat, "added_ttft_p99"), lambda v: v <= 5),
        ("added per-token latency, p50 (100x50)", "<= 0.5 ms", "ms",
         med(lat, "direct", "tok_p50"), med(lat, "service", "tok_p50"),
         med(lat, "added_tok_p50"), lambda v: v <= 0.5),
        ("added per-token latency, p99 (100x50)", "<= 2 ms", "ms",
         med(lat, "direct", "tok_p99"), med(lat, "service", "tok_p99"),
         med(lat, "added_tok_p99"), lambda v: v <= 2),
        ("added per-token latency, p99 (1000x5)", "<= 20 ms", "ms",
         med(wide, "direct", "tok_p99"), med(wide, "service", "tok_p99"),
         med(wide, "added_tok_p99"), lambda v: v <= 20),
        ("errors + missing + reordered (1000x5, all runs)", "0", "",
         None, None, total(wide, "errors") + total(wide, "missing") + total(wide, "reordered")
         if wide else float("nan"),
         lambda v: v == 0),
        ("service CPU per 1,000 tokens (100x50)", "<= 50 ms", "ms",
         None, None, med(lat, "service", "cpu_ms_per_1k"), lambda v: v <= 50),
        ("relayed tokens per second (fast upstream)", ">= 20,000", "tok/s",
         med(fast, "direct", "tok_per_s"), med(fast, "service", "tok_per_s"),
         med(fast, "service", "tok_per_s"), lambda v: v >= 20000),
        ("service CPU per 1,000 tokens (fast upstream)", "-", "ms",
         None, None, med(fast, "service", "cpu_ms_per_1k"), None),
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
             med(res, "added_tok_p50"), None),
            ("resumable replies: added per-token latency, p99 (100x50)", "-", "ms",
             med(res, "direct", "tok_p99"), med(res, "service", "tok_p99"),
             med(res, "added_tok_p99"), None),
            ("ordinary replies, interleaved with them: added per-token latency, p99", "-", "ms",
             med(plain, "direct", "tok_p99"), med(plain, "service", "tok_p99"),
             med(plain, "added_tok_p99"), None),
            ("what resuming adds to the per-token p99 (resumable minus ordinary)", "<= +1 ms",
             "ms", None, None, more("added_tok_p99"), lambda v: v <= 1),
            ("what resuming adds to the per-token p50", "-", "ms", None, None,
             more("added_tok_p50"), None),
            ("what resuming adds to the time to first token, p99", "-", "ms", None, None,
             more("added_ttft_p99"), None),
            ("service CPU per 1,000 tokens: resumable", "-", "ms", None, None,
             med(res, "service", "cpu_ms_per_1k"), None),
            ("service CPU per 1,000 tokens: ordinary, interleaved", "-", "ms", None, None,
             med(plain, "service", "cpu_ms_per_1k"), None),
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
             lambda v: v <= 150),
            ("burst: added time until the upstream has the request, p99", "<= 400 ms", "ms",
             med(burst, "direct", "reach_p99"), med(burst, "service", "reach_p99"),
             med(burst, "added_reach_p99"), lambda v: v <= 400),
            ("burst: errors + missing (all runs)", "0", "", None, None,
             total(burst, "errors") + total(burst, "missing"), lambda v: v == 0),
        ]
    if short:
        per_token = med(fast, "service", "cpu_ms_per_1k") / 1000
        rows += [
            ("short replies completed per second (10 tokens, fast upstream)", "-", "req/s",
             med(short, "direct", "req_per_s"), med(short, "service", "req_per_s"),
             med(short, "service", "req_per_s"), None),
            ("service CPU per short request (10 tokens)", "-", "ms", None, None,
             med(short, "service", "cpu_ms_per_request"), None),
            ("fixed CPU per request (short request minus 10 tokens' relaying)", "<= 0.6 ms",
             "ms", None, None, med(short, "service", "cpu_ms_per_request") - 10 * per_token,
             lambda v: v <= 0.6),
        ]
    if oai:
        old_cpu = med(lat, "service", "cpu_ms_per_1k")
        rows += [
            ("/v1 route: added per-token latency, p50 (100x50)", "<= 1.1x /api/gpt/get", "ms",
             med(oai, "direct", "tok_p50"), med(oai, "service", "tok_p50"),
             med(oai, "added_tok_p50"), lambda v: v <= 1.1 * max(med(lat, "added_tok_p50"), 0)),
            ("/v1 route: added per-token latency, p99 (100x50)", "<= 1.1x /api/gpt/get", "ms",
             med(oai, "direct", "tok_p99"), med(oai, "service", "tok_p99"),
             med(oai, "added_tok_p99"), lambda v: v <= 1.1 * max(med(lat, "added_tok_p99"), 0)),
            ("/v1 route: service CPU per 1,000 tokens (100x50)", f"<= {1.1 * old_cpu:.1f} ms",
             "ms", None, None, med(oai, "service", "cpu_ms_per_1k"),
             lambda v: v <= 1.1 * old_cpu),
        ]

    def fmt(v, unit):
        if v is None:
            return "-"
        if unit in ("tok/s", "req/s"):
            return f"{v:,.0f}"
        if unit == "":
            return f"{v:d}" if isinstance(v, int) else f"{v:g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    lines = ["| figure | target | floor (direct) | through service | service / floor | "
             "service's figure | met |",
             "|---|---|---|---|---|---|---|"]
    met = []
    for name, target, unit, floor, svc, value, check in rows:
        if value != value:  # a scenario that did not run (--only)
            continue
        ok = None if check is None or value != value else check(value)
        if ok is not None:
            met.append(ok)
        ratio = f"{svc / floor:.2f}x" if floor and svc is not None and floor > 0 else "-"
        lines.append(f"| {name} | {target} | {fmt(floor, unit)} | {fmt(svc, unit)} | {ratio} | "
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
    service = redis_server = None
    only = set(args.only.split(",")) if args.only else None
    try:
        if only is None or "resumable" in only:
            from tests.processes import RedisServer
            redis_server = RedisServer()
        service = Service(upstream.url, RESULTS / "gunicorn.log", worker_class=args.worker_class,
                          workers=args.workers, threads=args.threads,
                          root=args.service_root or ROOT, metrics=not args.no_metrics,
                          extra_env={"REPLY_STORE": redis_server.url} if redis_server else None)
        bench = Bench(upstream, service)
        await bench.warm_up()
        log(f"service: {service.describe}, baseline RSS {bench.baseline_rss / 2**20:.1f} MB "
            f"over {len(service.procs())} processes")
        repeats = args.repeats or (1 if args.quick else 5)
        results = {"config": service.describe, "repeats": repeats}

        def wanted(name: str) -> bool:
            return only is None or name in only

        for key in ("latency", "latency_openai", "wide", "fast", "burst", "short", "plain_redis",
                    "resumable"):
            results[key] = []
        for _ in range(repeats if wanted("latency") else 0):  # the two routes interleaved,
            results["latency"] += await bench.scenario(LATENCY, 1, log)  # so drift hits both
            results["latency_openai"] += await bench.scenario(LATENCY, 1, log, bench.openai)
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
        if redis_server is not None:
            results["plain_redis"], results["resumable"] = await resumable_runs(
                bench, redis_server, repeats, log)
        levels = [] if args.no_sweep else [10, 100, 1000] if args.quick else [
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
        if redis_server is not None:
            redis_server.stop()
        upstream.stop()


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
                        "fast, burst, short, resumable (the table shows their rows)")
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
    other = statistics.median([run["service"]["other_cores"] for key in (
        "latency", "latency_openai", "wide", "fast", "burst", "short", "plain_redis",
        "resumable") for run in results[key]] or [0.0])
    print(f"gpt_proxy relay benchmark: {results['config']}, medians of {results['repeats']} "
          f"run(s); {psutil.cpu_count()} cores shared by load generator, upstream and service; "
          f"other processes used a median {other:.2f} cores meanwhile")
    print(text)
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
    if not args.no_nginx:
        from .nginx_check import main as nginx_main
        print()
        sys.argv = [sys.argv[0]]
        status = nginx_main()
    print(f"targets met: {sum(met)}/{len(met)}; took {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
