"""Soak with faults: two instances sharing PostgreSQL and Redis, many streams of one key over
every door, while a worker is killed, PostgreSQL and Redis are restarted, an instance is
stopped gracefully and started again, and the upstream fails for a while. Not part of CI.

    .venv/bin/python -m bench.soak_faults --duration 300 --concurrency 48

What it starts, all on 127.0.0.1: a throwaway PostgreSQL cluster (tests/databases.py), a
redis-server, the bench upstream (bench/upstream.py) behind a TCP proxy that can refuse
connections (the upstream "failing"), and two gunicorn instances (2 workers each, AUTH=users)
with the database, rate limits, conversations and resumable replies shared. One user with one
key, under three budgets (the key's requests per minute, the key's tokens in total, the
service's dollars per month at DEFAULT_PRICE), so every request reserves and settles three
counters at once.

`--concurrency` clients each run requests back to back on alternate instances and doors
(`/api/gpt/get` as SSE, `/v1/chat/completions` streamed, chat-process), and about one in six
hangs up after a few tokens. A reply that ran to its end must hold every token tag in order and
its end marker; one that breaks off mid-way counts as cut by a fault. A 500 anywhere is a
failure; a 503 during a fault is what a blip should give.

The faults, at fixed fractions of the run: a worker of instance 1 killed (SIGKILL), PostgreSQL
restarted (`pg_ctl restart -m fast`), redis-server restarted on its port, instance 2 stopped
gracefully (SIGTERM) and started again, the upstream refusing connections for `--outage`
seconds.

At the end, the consistency check: once the instances have stopped (a graceful stop writes
every pending row) and the reservations of the killed worker have expired and been swept,
`flask --app app budgets check` must find every counter equal to the ledger; the ledger must
have as many rows as the upstream received requests; nothing may stay open. Exit status 1 if
any of that fails, or a reply was spliced or duplicated, or a 500 was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import aiohttp

from tests.databases import PostgreSQL
from tests.processes import RedisServer, wait_port
from tests.tcp_proxy import CuttingProxy

from .service import ROOT, BenchUpstream, Service

RESULTS = ROOT / "bench" / "results"
TAG_RE = re.compile(r"~(\d{6})~")
DOORS = ("gpt", "v1", "chat-process")


class Tally:
    """What the clients saw."""

    def __init__(self) -> None:
        self.started = self.whole = self.cut_by_client = self.broken = self.in_flight = 0
        self.spliced = 0  # tags out of order or repeated: never acceptable
        self.internal = 0  # a chat-process envelope saying "internal error": a 500 there
        self.status: dict[str, int] = {}
        self.broken_at: dict[str, int] = {}  # "<door> <10 s slot of the run>" -> replies broken
        self.started_at = time.monotonic()

    def broke(self, door: str) -> None:
        self.broken += 1
        slot = f"{door} {int((time.monotonic() - self.started_at) // 10) * 10:>4} s"
        self.broken_at[slot] = self.broken_at.get(slot, 0) + 1

    def saw(self, what: str) -> None:
        self.status[what] = self.status.get(what, 0) + 1


def check_tags(text: str, expected: int) -> str:
    """'whole', 'short' (a prefix: the reply broke off) or 'spliced' (out of order, repeated)."""
    tags = [int(t) for t in TAG_RE.findall(text)]
    if tags != list(range(len(tags))):
        return "spliced"
    return "whole" if len(tags) == expected else "short"


def request_for(door: str, sid: int, tokens: int, rate: float) -> tuple[str, dict, dict]:
    prompt = f"bench sid={sid} n={tokens} rate={rate:g}"
    if door == "gpt":
        return "/api/gpt/get", {"message": prompt}, {"Accept": "text/event-stream"}
    if door == "v1":
        return "/v1/chat/completions", {"model": "bench-model", "stream": True, "messages": [
            {"role": "user", "content": prompt}]}, {}
    return "/api/chat-process", {"prompt": prompt, "options": {}}, {}


def reply_text(door: str, raw: str) -> tuple[str, bool]:
    """The reply's text and whether its end marker arrived."""
    if door == "chat-process":
        lines = [line for line in raw.split("\n") if line.strip()]
        try:
            last = json.loads(lines[-1]) if lines else {}
        except ValueError:
            return raw, False
        return str(last.get("text", "")), bool(lines) and "~" in raw
    if door == "v1":
        return raw, "data: [DONE]" in raw
    return raw, "event: done" in raw


async def one(session, base: str, key: str, door: str, sid: int, args, tally: Tally) -> None:
    path, body, headers = request_for(door, sid, args.tokens, args.rate)
    hang_up = random.random() < args.hang_up
    tally.started += 1
    tally.in_flight += 1
    try:
        async with session.post(base + path, json=body, headers={
                **headers, "Authorization": f"Bearer {key}"}) as resp:
            tally.saw(str(resp.status))
            if resp.status != 200:
                await resp.read()
                return
            if hang_up:
                seen = b""
                async for piece in resp.content.iter_any():
                    seen += piece
                    if len(TAG_RE.findall(seen.decode("utf-8", "replace"))) >= 3:
                        break
                tally.cut_by_client += 1
                resp.close()
                return
            raw = (await resp.read()).decode("utf-8", "replace")
        if door == "chat-process" and raw.lstrip().startswith('{"status"'):
            # chat-process answers a failure before the first byte with HTTP 200 and its
            # envelope (the frontends show the message): a refusal in its own shape
            answer = json.loads(raw.split("\n", 1)[0])
            status = answer.get("status", "?")
            if "internal error" in str(answer.get("message", "")):
                tally.internal += 1
            tally.status["200"] -= 1
            tally.saw(f"chat-process {status}")
            return
        text, ended = reply_text(door, raw)
        verdict = check_tags(text, args.tokens)
        if verdict == "spliced":
            tally.spliced += 1
        elif verdict == "whole" and ended:
            tally.whole += 1
        else:
            tally.broke(door)
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.saw(type(exc).__name__)
        tally.broke(door)
    finally:
        tally.in_flight -= 1


async def client(number: int, bases: list, key: str, args, tally: Tally, stop_at: float) -> None:
    sid = number
    while time.monotonic() < stop_at and tally.started < args.max_requests:
        base = bases[sid % len(bases)]()
        door = DOORS[(sid // len(bases)) % len(DOORS)]
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=args.tokens / args.rate + 60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await one(session, base, key, door, sid, args, tally)
        sid += args.concurrency


def flask(env: dict, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *argv], cwd=ROOT,
                          env=env, input=stdin, capture_output=True, text=True, timeout=120)


def psql_scalar(url: str, sql: str):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


class Stack:
    """Everything the soak runs, and the faults it can do to it."""

    def __init__(self, args) -> None:
        self.args = args
        self.pg = PostgreSQL()
        self.db_url = self.pg.new_database()
        self.redis = RedisServer()
        self.upstream = BenchUpstream()
        self.gate = CuttingProxy(self.upstream.port)
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.env = {**{k: v for k, v in os.environ.items()
                       if not k.startswith(("OPENAI_", "GPT_"))},
                    "DATABASE_URL": self.db_url, "AUTH": "users", "LOG_LEVEL": "warning",
                    "PROXY_TOKEN": "soak-admin-token-" + "x" * 24}
        self.service_env = {
            "RATE_LIMIT_STORAGE": self.redis.url, "CONVERSATION_STORE": self.redis.url,
            "REPLY_STORE": self.redis.url, "AUTH": "users", "DATABASE_URL": self.db_url,
            "PROXY_TOKEN": self.env["PROXY_TOKEN"], "DEFAULT_PRICE": "1000/1000",
            "OPENAI_MODEL": "bench-model", "MAX_STREAM_SECONDS": str(args.max_stream),
            "UPSTREAM_READ_TIMEOUT": "5", "FAILOVER_SECONDS": "5", "LOGIN_LIMIT": "1000/minute"}
        self.instances: list[Service | None] = [None, None]
        self.stopped = False

    def setup_accounts(self) -> str:
        out = flask(self.env, "users", "add", "soak", "--password-stdin",
                    stdin="soak-password-12345\n")
        if out.returncode:
            raise SystemExit(f"users add failed: {out.stderr or out.stdout}")
        out = flask(self.env, "keys", "create", "soak", "--name", "soak")
        match = re.search(r"sk-gpx-\w+", out.stdout)
        if not match:
            raise SystemExit(f"keys create failed: {out.stderr or out.stdout}")
        key_id = psql_scalar(self.db_url, "SELECT max(id) FROM api_keys")
        for argv in (("--key", str(key_id), "--unit", "requests", "--period", "minute",
                      "--limit", "100000"),
                     ("--key", str(key_id), "--unit", "tokens", "--period", "total",
                      "--limit", "1000000000"),
                     ("--service", "--unit", "usd", "--period", "month",
                      "--limit", "100000")):
            out = flask(self.env, "budgets", "set", *argv)
            if out.returncode:
                raise SystemExit(f"budgets set {argv} failed: {out.stderr or out.stdout}")
        return match[0]

    def start(self, which: int) -> None:
        log = RESULTS / f"soak-faults-{self.stamp}-instance{which + 1}.log"
        self.instances[which] = Service(self.gate.url + "/v1", log, workers=2,
                                        extra_env=self.service_env)

    def base(self, which: int):
        def url() -> str:
            instance = self.instances[which] or self.instances[1 - which]
            return f"http://127.0.0.1:{instance.port}"
        return url

    # --- the faults ---------------------------------------------------------------------------

    def kill_worker(self) -> str:
        pid = self.instances[0].worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return f"worker {pid} of instance 1 killed"

    def restart_postgres(self) -> str:
        self.pg._run("pg_ctl", "-D", str(self.pg.data), "-m", "fast", "-w", "-t", "30",
                     "restart")
        return "PostgreSQL restarted (-m fast)"

    def restart_redis(self) -> str:
        port = self.redis.port
        self.redis.proc.terminate()
        self.redis.proc.wait(10)
        self.redis.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.redis.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, self.redis.proc, "redis-server", 10)
        return "redis-server restarted"

    def bounce_instance(self) -> str:
        instance, self.instances[1] = self.instances[1], None
        instance.stop()  # SIGTERM: replies in flight finish, pending ledger rows are written
        self.start(1)
        return "instance 2 stopped gracefully and started again"

    async def outage(self) -> str:
        self.gate.refusing = True
        await asyncio.sleep(self.args.outage)  # the length of the outage itself
        self.gate.refusing = False
        return f"upstream refused connections for {self.args.outage:g} s"

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for instance in self.instances:
            if instance is not None:
                instance.stop()
        self.gate.stop()
        self.upstream.stop()
        self.redis.stop()

    def close(self) -> None:
        self.pg.stop()


async def faults(stack: Stack, args, started: float, log: list) -> None:
    plan = [(0.15, stack.kill_worker), (0.30, stack.restart_postgres),
            (0.45, stack.restart_redis), (0.60, stack.bounce_instance), (0.75, stack.outage)]
    for fraction, fault in plan:
        delay = started + fraction * args.duration - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the fault's moment in the schedule
        moment = time.monotonic() - started
        if asyncio.iscoroutinefunction(fault):
            result = await fault()
        else:  # in a thread: the clients' loop goes on while a server restarts
            result = await asyncio.to_thread(fault)
        print(f"[{moment:6.1f} s] {result}", flush=True)
        log.append((round(moment, 1), result))


async def run_load(stack: Stack, key: str, args) -> tuple[Tally, list]:
    tally = Tally()
    fault_log: list = []
    started = time.monotonic()
    stop_at = started + args.duration
    bases = [stack.base(0), stack.base(1)]
    chaos = asyncio.create_task(faults(stack, args, started, fault_log))
    await asyncio.gather(*(client(i, bases, key, args, tally, stop_at)
                           for i in range(args.concurrency)))
    await chaos
    return tally, fault_log


def settle_leftovers(stack: Stack, args) -> int:
    """Wait until the open rows (the killed worker's) have expired, then sweep them."""
    deadline = time.monotonic() + args.max_stream + 300
    while time.monotonic() < deadline:
        latest = psql_scalar(stack.db_url, "SELECT max(expires) FROM ledger WHERE state='open'")
        if latest is None:
            return 0
        wait = latest - time.time() + 1
        if wait <= 0:
            break
        print(f"waiting {wait:.0f} s for open reservations to expire", flush=True)
        time.sleep(min(wait, 30))  # the expiry the sweep waits for, bounded by the deadline
    code = ("from gpt_proxy import create_app\n"
            "b = create_app().extensions['gpt_proxy'].budgets\n"
            "total = 0\n"
            "for _ in range(100):\n"
            "    n = b.sweep()\n"
            "    total += n\n"
            "    if not n: break\n"
            "print(total)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         env={**stack.env, **stack.service_env, "METRICS_BIND": ""},
                         capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=48, help="requests open at once")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=20, help="tokens per second per reply")
    parser.add_argument("--hang-up", type=float, default=1 / 6,
                        help="share of clients that leave after a few tokens")
    parser.add_argument("--outage", type=float, default=10, help="seconds the upstream fails")
    parser.add_argument("--max-stream", type=float, default=30, help="MAX_STREAM_SECONDS")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="a bound")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    stack = Stack(args)
    try:
        key = stack.setup_accounts()
        stack.start(0)
        stack.start(1)
        tally, fault_log = asyncio.run(run_load(stack, key, args))
        received = asyncio.run(collect(stack.upstream.port))
        stack.stop()  # graceful: pending rows written
        swept = settle_leftovers(stack, args)
        check = flask({**stack.env, **stack.service_env}, "budgets", "check")
        rows = psql_scalar(stack.db_url, "SELECT count(*) FROM ledger")
        # a row the upstream answered names it; a killed worker's rows were swept (expired)
        served = psql_scalar(stack.db_url, "SELECT count(*) FROM ledger WHERE upstream IS NOT "
                             "NULL OR outcome = 'expired'")
        still_open = psql_scalar(stack.db_url, "SELECT count(*) FROM ledger WHERE state='open'")
        outcomes = psql_scalar(stack.db_url, "SELECT json_object_agg(o, n) FROM (SELECT "
                               "coalesce(outcome, '-') AS o, count(*) AS n FROM ledger GROUP BY 1) x")
    finally:
        stack.stop()
        stack.close()
    fivehundreds = sum(n for code, n in tally.status.items() if code.startswith("5")
                       and code != "503")
    # chat-process shows an internal error as a Fail whose message says so
    fivehundreds += tally.internal
    report = {
        "requests": tally.started, "whole": tally.whole, "cut_by_client": tally.cut_by_client,
        "broken_by_faults": tally.broken, "broken_when": dict(sorted(tally.broken_at.items())),
        "spliced_or_duplicated": tally.spliced,
        "statuses": tally.status, "faults": fault_log, "upstream_requests": received,
        "ledger_rows": rows, "ledger_rows_served": served, "ledger_outcomes": outcomes,
        "open_after_sweep": still_open, "swept": swept,
        "budgets_check": {"exit": check.returncode, "output": check.stdout[-4000:]
                          + check.stderr[-2000:]}}
    path = RESULTS / f"soak-faults-{stack.stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "budgets_check"}, indent=2))
    print("budgets check:", check.returncode, check.stdout.strip()[-2000:], check.stderr[-500:])
    failed = []
    if tally.spliced:
        failed.append(f"{tally.spliced} replies spliced or duplicated")
    if fivehundreds:
        failed.append(f"{fivehundreds} server errors other than 503")
    if check.returncode != 0:
        failed.append("budgets check found counters that differ from the ledger")
    if still_open:
        failed.append(f"{still_open} ledger rows still open after the sweep")
    if served != received:
        failed.append(f"ledger rows served by the upstream ({served}) != upstream requests "
                      f"({received})")
    print("FAILED: " + "; ".join(failed) if failed else "OK: consistent", flush=True)
    print(f"report: {path}")
    return 1 if failed else 0


async def collect(port: int) -> int:
    """How many chat requests the bench upstream received (and it forgets them)."""
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/_bench/collect") as resp:
        return len((await resp.json())["received"])


if __name__ == "__main__":
    sys.exit(main())
