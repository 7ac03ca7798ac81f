"""What every bench command shares: the scenarios, the analysis of a phase, and `Bench`, which
runs a scenario as interleaved sides and measures the processes under test.

The sides of one round, in an order that rotates round by round so drift over the minutes
hits each alike: straight to the upstream (`direct`, the floor of the load generator and the
fake upstream), through the bare relay (`bare`, bench/bare_relay.py: the floor of Flask,
requests and gunicorn's gevent worker; when one was started) and through the service. The
service's figures are reported minus the direct floor of the same round (`added_*`) and as a
ratio to the bare relay's of the same round (`vs_bare_*`). CPU and RSS are each relay's own
process tree (psutil); each run also says how many cores other processes used meanwhile.

bench/run.py, nginx_check.py, profile.py and identity.py import from here (never from each
other's command modules, which import them in turn).
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass

import numpy as np
import psutil

from . import hubtrace
from .load import (
    Arrived,
    Load,
    Phase,
    arrivals,
    direct_target,
    fetch_json,
    openai_target,
    service_target,
)
from .service import ROOT, BenchUpstream, Measured, Service

RESULTS = ROOT / "bench" / "results"


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


@dataclass(frozen=True)
class Arrivals:
    """`arriving` short replies at the same moment while `running` replies are streaming."""

    name: str
    arriving: int
    tokens: int = 10  # per arriving reply
    rate: float = 0.0  # its tokens per second; 0: as fast as the upstream can
    running: int = 20
    running_tokens: int = 100
    running_rate: float = 50.0


LATENCY = Scenario("100 streams x 50 tok/s", 100, 100, 50.0)
WIDE = Scenario("1000 streams x 5 tok/s", 1000, 20, 5.0)
FAST = Scenario("fast upstream", 20, 5000, 0.0, rounds=1)
BURST = Scenario("burst of 1000 in 100 ms", 1000, 20, 20.0, rounds=1, stagger=0.1)
SHORT = Scenario("short replies", 64, 10, 0.0, rounds=40, stagger=0.0)
# CPU per request: short replies (the arrivals command runs it per config, after an unmeasured
# run of REQUESTS_WARM); 3,200 requests, so that a round's figure moves by a few per cent at most
REQUESTS = Scenario("short replies for CPU per request", 64, 10, 0.0, rounds=50, stagger=0.0)
REQUESTS_WARM = Scenario("short replies, unmeasured", 64, 10, 0.0, rounds=5, stagger=0.0)
ARRIVALS_200 = Arrivals("200 arriving while 20 run", 200)
ARRIVALS_1000 = Arrivals("1000 arriving while 20 run", 1000)

# figures compared with the bare relay's, service over bare, each from the same round
RATIO_KEYS = ("tok_p50", "tok_p99", "ttft_p50", "ttft_p99", "reach_p50", "reach_p99",
              "cpu_ms_per_request", "cpu_ms_per_1k", "tok_per_s", "req_per_s")


def analyse(phase: Phase, collected: dict, window: tuple[int, int] | None = None) -> dict:
    """Errors, missing/reordered tokens, latency percentiles, throughput of one phase
    (`window`: per-token latency only of the tokens the upstream sent within it)."""
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
            arrived, at = np.frombuffer(s.times, dtype=np.int64)[ok], sent_ns[seqs[ok]]
            if window is not None:
                inside = (at >= window[0]) & (at <= window[1])
                arrived, at = arrived[inside], at[inside]
            lat.append(arrived - at)
        if s.first:
            ttft.append(s.first - s.start)
        arrived_at = received.get(str(s.sid))
        if arrived_at is not None:
            reach.append(arrived_at - s.start)
    lat_ms = np.concatenate(lat) / 1e6 if lat else np.zeros(1)
    lat_ms = lat_ms if len(lat_ms) else np.zeros(1)
    ttft_ms = np.asarray(ttft) / 1e6 if ttft else np.zeros(1)
    reach_ms = np.asarray(reach) / 1e6 if reach else np.zeros(1)
    ends = [s.end for s in phase.streams if s.end]
    wall = (max(ends) - min(s.start for s in phase.streams)) / 1e9 if ends else 1.0
    return {
        "streams": len(phase.streams), "errors": errors, "error_kinds": error_kinds,
        "missing": missing, "reordered": reordered, "tokens": tokens,
        "window_tokens": int(sum(len(x) for x in lat)) if window is not None else None,
        "tok_p50": float(np.percentile(lat_ms, 50)), "tok_p99": float(np.percentile(lat_ms, 99)),
        "tok_max": float(lat_ms.max()),
        "ttft_p50": float(np.percentile(ttft_ms, 50)), "ttft_p99": float(np.percentile(ttft_ms, 99)),
        "reach_p50": float(np.percentile(reach_ms, 50)),
        "reach_p99": float(np.percentile(reach_ms, 99)),
        "tok_per_s": tokens / wall, "wall_s": wall,
        "req_per_s": sum(1 for s in phase.streams if not s.error) / wall,
    }


def bare_target(port: int):
    """The bare relay takes the upstream's own request (it relays the body as it came)."""
    return direct_target(port, name="bare relay")


def ratios(service: dict, bare: dict) -> dict:
    """Service over bare relay for each figure both have (None where the bare one is 0)."""
    return {"vs_bare_" + key: (service[key] / bare[key] if bare.get(key) else None)
            for key in RATIO_KEYS if key in service and key in bare}


class Bench:
    def __init__(self, upstream: BenchUpstream, service: Service,
                 bare: Measured | None = None) -> None:
        self.upstream = upstream
        self.service = service
        self.bare = bare
        self.load = Load()
        self.direct = direct_target(upstream.port)
        self.through = service_target(service.port)
        self.bare_through = bare_target(bare.port) if bare is not None else None
        self.openai = openai_target(service.port)
        self.baseline_rss = 0
        self.bare_baseline_rss = 0
        self.me = psutil.Process()

    @property
    def sides(self) -> tuple[str, ...]:
        return ("direct", "bare", "service") if self.bare is not None else ("direct", "service")

    def busy(self) -> tuple[float, float]:
        """(CPU seconds of the whole machine, of the bench's own processes) so far."""
        t = psutil.cpu_times()
        machine = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        mine = self.me.cpu_times()
        ours = self.service.cpu() + self.upstream.cpu() + mine.user + mine.system
        if self.bare is not None:
            ours += self.bare.cpu()
        return machine, ours

    async def phase(self, target, sc: Scenario, sampler=None) -> tuple[dict, Phase]:
        phase = await self.load.run(target, users=sc.users, rounds=sc.rounds, tokens=sc.tokens,
                                    rate=sc.rate, stagger=sc.spread, sampler=sampler)
        collected = await fetch_json("127.0.0.1", self.upstream.port, "/_bench/collect")
        return analyse(phase, collected), phase

    def order(self, turn: int) -> tuple[str, ...]:
        """The sides of round `turn`, rotated so each comes first, middle and last in turn."""
        sides = self.sides
        k = turn % len(sides)
        return sides[k:] + sides[:k]

    def _measure(self, proc: Measured, baseline: int, phase: Phase, stats: dict,
                 cpu: float, machine: float, ours: float, requests: int) -> None:
        wall = (phase.ended - phase.started) / 1e9
        stats["other_cores"] = max(0.0, machine - ours) / max(wall, 1e-9)
        stats["cpu_ms_per_1k"] = cpu * 1000 / max(stats["tokens"], 1) * 1000
        stats["cpu_ms_per_request"] = cpu * 1000 / max(requests, 1)
        stats["cpu_s"] = cpu
        busy = [(n, rss) for n, rss in phase.samples if n > 0]
        if busy:
            n, rss = max(busy, key=lambda x: x[1])
            n_open = max(n for n, _ in busy)
            stats["open_max"] = n_open
            stats["rss_peak_mb"] = rss / 2**20
            stats["rss_kb_per_stream"] = (rss - baseline) / 1024 / max(n_open, 1)

    def _relay(self, which: str, target) -> tuple[object, Measured | None, int]:
        if which == "service":
            return target or self.through, self.service, self.baseline_rss
        if which == "bare":
            return self.bare_through, self.bare, self.bare_baseline_rss
        return self.direct, None, 0

    async def pair(self, sc: Scenario, first_service: bool | int, target=None) -> dict:
        """One run of each side, in the order of round `first_service` (True/False: the
        service first/last, as before there were three sides); each relay's CPU and RSS."""
        turn = int(first_service) if isinstance(first_service, bool) else first_service
        order = self.order(turn)
        if isinstance(first_service, bool) and self.bare is None:
            order = ("service", "direct") if first_service else ("direct", "service")
        out = {}
        for which in order:
            where, proc, baseline = self._relay(which, target)
            if proc is None:
                out["direct"], _ = await self.phase(where, sc)
                continue
            cpu0 = proc.cpu()
            machine0, ours0 = self.busy()
            stats, phase = await self.phase(where, sc, sampler=proc.rss)
            cpu = proc.cpu() - cpu0
            machine1, ours1 = self.busy()
            self._measure(proc, baseline, phase, stats, cpu, machine1 - machine0,
                          ours1 - ours0, stats["streams"])
            out[which] = stats
        for key in ("tok_p50", "tok_p99", "ttft_p50", "ttft_p99", "reach_p50", "reach_p99"):
            out["added_" + key] = out["service"][key] - out["direct"][key]
            if "bare" in out:
                out["bare_added_" + key] = out["bare"][key] - out["direct"][key]
        if "bare" in out:
            out.update(ratios(out["service"], out["bare"]))
        return out

    async def scenario(self, sc: Scenario, repeats: int, log, target=None,
                       first: int = 0) -> list[dict]:
        runs = []
        for i in range(repeats):
            turn = first + i
            run = await self.pair(sc, turn if self.bare is not None else bool(turn % 2),
                                  target=target)
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
            if "bare" in run:
                b = run["bare"]
                log(f"    bare relay: tok p50/p99 {b['tok_p50']:.2f}/{b['tok_p99']:.2f} ms, "
                    f"ttft p99 {b['ttft_p99']:.2f} ms, cpu {b['cpu_ms_per_request']:.2f} ms/req, "
                    f"{b['cpu_ms_per_1k']:.1f} ms/1k, errors {b['errors']}; service/bare: "
                    f"tok p50 {fmt_ratio(run, 'tok_p50')}, p99 {fmt_ratio(run, 'tok_p99')}, "
                    f"ttft p99 {fmt_ratio(run, 'ttft_p99')}, "
                    f"cpu/req {fmt_ratio(run, 'cpu_ms_per_request')}")
            if s["error_kinds"] or d["error_kinds"]:
                log(f"    errors: service {s['error_kinds']} direct {d['error_kinds']}")
            runs.append(run)
        return runs

    async def arrivals_side(self, which: str, sc: Arrivals, target=None) -> dict:
        """One arrivals run through one side: the running replies' per-token latency within
        the window, the arriving replies' first token, errors and lost tokens of both."""
        where, proc, baseline = self._relay(which, target)
        traced = proc.hubtrace if proc is not None else None
        if traced is not None:
            hub0 = hubtrace.snapshot(traced)
        cpu0 = proc.cpu() if proc is not None else 0.0
        machine0, ours0 = self.busy()
        got: Arrived = await arrivals(
            self.load, where, running=sc.running, running_tokens=sc.running_tokens,
            running_rate=sc.running_rate, arriving=sc.arriving, tokens=sc.tokens, rate=sc.rate,
            sampler=proc.rss if proc is not None else None)
        machine1, ours1 = self.busy()
        collected = await fetch_json("127.0.0.1", self.upstream.port, "/_bench/collect")
        running = analyse(got.running, collected, window=got.window)
        arrived = analyse(got.arrived, collected)
        out = {"running": running, "arrived": arrived,
               "tokens": running["tokens"] + arrived["tokens"],
               "window_ms": (got.window[1] - got.window[0]) / 1e6,
               "errors": running["errors"] + arrived["errors"],
               "lost": running["missing"] + arrived["missing"]
               + running["reordered"] + arrived["reordered"]}
        if proc is not None:
            cpu = proc.cpu() - cpu0
            self._measure(proc, baseline, got.running, out, cpu, machine1 - machine0,
                          ours1 - ours0, running["streams"] + arrived["streams"])
        if traced is not None:
            await asyncio.sleep(1.2)  # the workers write their histograms every 0.5 s
            out["hub"] = hubtrace.summary(hub0, hubtrace.snapshot(traced))
        return out

    async def arrivals(self, sc: Arrivals, repeats: int, log, target=None,
                       first: int = 0) -> list[dict]:
        """`repeats` rounds of `sc`, each side in turn (rotating order)."""
        runs = []
        for i in range(repeats):
            run = {}
            for which in self.order(first + i):
                run[which] = await self.arrivals_side(which, sc, target)
            for key in ("tok_p50", "tok_p99"):
                run[f"running_{key}"] = {w: run[w]["running"][key] for w in self.sides}
            for key in ("ttft_p50", "ttft_p99", "reach_p99"):
                run[f"arrived_{key}"] = {w: run[w]["arrived"][key] for w in self.sides}
            if "bare" in run:
                run["vs_bare_running_tok_p99"] = (run["service"]["running"]["tok_p99"]
                                                  / run["bare"]["running"]["tok_p99"])
                run["vs_bare_arrived_ttft_p99"] = (run["service"]["arrived"]["ttft_p99"]
                                                   / run["bare"]["arrived"]["ttft_p99"])
            line = []
            for w in self.sides:
                r = run[w]
                line.append(f"{w}: running tok p50/p99 {r['running']['tok_p50']:.1f}/"
                            f"{r['running']['tok_p99']:.1f} ms ({r['running']['window_tokens']} "
                            f"tokens in {r['window_ms']:.0f} ms), arrived ttft p50/p99 "
                            f"{r['arrived']['ttft_p50']:.1f}/{r['arrived']['ttft_p99']:.1f} ms, "
                            f"errors {r['errors']}, lost {r['lost']}"
                            + (f", other load {r['other_cores']:.2f} cores" if "other_cores" in r
                               else ""))
            log(f"  {sc.name} #{i + 1}: " + "; ".join(line))
            if "bare" in run:
                log(f"    service/bare: running tok p99 {run['vs_bare_running_tok_p99']:.2f}x, "
                    f"arrived ttft p99 {run['vs_bare_arrived_ttft_p99']:.2f}x")
            hubs = [(w, run[w]["hub"]) for w in self.sides if "hub" in run.get(w, {})]
            if hubs:
                log("    hub CPU between two polls (p50/p99/p99.9/max, ms; CPU in iterations "
                    "over 5 ms): " + "; ".join(
                        f"{w} {h['p50']:.1f}/{h['p99']:.1f}/{h['p999']:.1f}/{h['max']:.1f} over "
                        f"{h['iterations']} ({h['long_ms']:.0f} ms)" for w, h in hubs))
                if len(hubs) == 2:
                    for key in ("p99", "p999", "max"):
                        run[f"vs_bare_hub_{key}"] = (run["service"]["hub"][key]
                                                     / max(run["bare"]["hub"][key], 0.1))
            runs.append(run)
        return runs

    async def warm_up(self) -> None:
        warm = Scenario("warm-up", 50, 50, 0.0, rounds=2, stagger=0.5)
        await self.phase(self.direct, warm)
        await self.phase(self.through, warm)
        if self.bare_through is not None:
            await self.phase(self.bare_through, warm)
        await asyncio.sleep(0.5)
        self.baseline_rss = self.service.rss()
        if self.bare is not None:
            self.bare_baseline_rss = self.bare.rss()


def fmt_ratio(run: dict, key: str) -> str:
    value = run.get("vs_bare_" + key)
    return "-" if value is None else f"{value:.2f}x"


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
