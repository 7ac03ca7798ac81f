"""What admission and settlement cost by themselves: `python -m bench.money [--rounds 5]
[--requests 2000] [--root DIR] [--also-root DIR] [--database postgresql] [--concurrency N]`.

In a process of its own per figure, on a fresh database each time (an SQLite file, or a new
database on a throwaway PostgreSQL server of the bench's own, `tests/databases.py`): a key
under no budget, under one (its tokens per day), then under three (its tokens per day, its
requests per minute, the service's dollars in total), and `--requests` requests admitted and
settled (then checked: every counter what the ledger says, no row left open). Prints the
CPU time of that process (`time.process_time`: the client's side, the
driver's included, not the database server's) per admitted and settled request, the median of
the rounds, and each budget count's figure minus no budget's of the same round (what the
budgets add to a request, the figure issue 30 sets at most 0.3 ms).

`--concurrency N` (N > 1): the process runs under gevent, as the service's workers do, with N
requests at a time, each a millisecond between its admission and its settlement (a short
reply), so that admissions and settlements that come together are written together as in a
worker (`Budgets(gather=True)`); everything still waiting is written before the clock stops.
`--root DIR` measures another checkout's `gpt_proxy`; `--also-root DIR` measures this one and
that one in the same rounds, in turn (before/after comparisons; the whole-service figure is
`bench.identity`'s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = [("key", 1, "tokens", "day", 10**12), ("key", 1, "requests", "minute", 10**9),
         ("service", 0, "usd", "total", 10**15)]

# One figure, in a process of its own (gevent's monkey-patching must come first): argv is the
# tree, the database URL, the budget count, the requests and the concurrency. Prints the ms of
# CPU per request.
ONE = """
import sys
root, url, count, requests, concurrency = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
if concurrency > 1:
    from gevent import monkey
    monkey.patch_all()
sys.path.insert(0, root)
import time
from pathlib import Path
from gpt_proxy.base.prices import default_price
from gpt_proxy.money import budgets as money
from gpt_proxy.money.budgets import Ask, Budgets, Spent
from gpt_proxy.storage.db import open_database

db = open_database(url, Path(root))
budgets = Budgets(db, default_price=default_price("0.15/0.6"))
for scope, subject, unit, period, limit in KINDS[:count]:
    budgets.set_budget(scope, subject, unit, period, limit)
ask = Ask("fake-model", 120, 256, "bench", "r")

def one():
    hold = budgets.admit(ask, 1, 1)
    if concurrency > 1:
        gevent.sleep(0.001)  # the reply
    budgets.settle(hold, Spent(100, 10))

def run(n):
    if concurrency == 1:
        for _ in range(n):
            one()
        return
    def client(k):
        for _ in range(k):
            one()
    gevent.joinall([gevent.spawn(client, n // concurrency) for _ in range(concurrency)])

if concurrency > 1:
    import gevent
run(max(50, requests // 10))  # warm up: statements prepared, caches filled
money.flush_all()
started = time.process_time()
run(requests)
money.flush_all()
spent = time.process_time() - started
problems = budgets.check()  # every counter what the ledger says
with db.read() as conn:
    left_open = conn.exec_driver_sql("SELECT COUNT(*) FROM ledger WHERE state = 'open'").scalar()
if problems or left_open:
    raise SystemExit(f"the counters differ from the ledger: {problems}; open rows: {left_open}")
print(spent / requests * 1000)
db.close()
"""


def measure(root: Path, url: str, count: int, requests: int, concurrency: int) -> float:
    script = f"KINDS = {KINDS!r}\n" + ONE
    out = subprocess.run([sys.executable, "-c", script, str(root), url, str(count),
                          str(requests), str(concurrency)], cwd=root, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"bench.money: the measurement failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout whose gpt_proxy is measured")
    parser.add_argument("--also-root", type=Path, default=None,
                        help="another checkout, measured in the same rounds")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests at a time, under gevent (1: one after another)")
    args = parser.parse_args()
    trees = [("", args.root.resolve())]
    if args.also_root is not None:
        trees.append(("@also", args.also_root.resolve()))
    server = None
    if args.database == "postgresql":
        sys.path.insert(0, str(ROOT))
        from tests.databases import PostgreSQL
        server = PostgreSQL()
    figures: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-money-") as folder:
            for i in range(args.rounds):
                for n, (label, tree) in enumerate(trees if i % 2 == 0 else trees[::-1]):
                    for count in (0, 1, 3):
                        url = (server.new_database() if server is not None
                               else f"sqlite:///{folder}/money-{i}-{n}-{count}.db")
                        figure = measure(tree, url, count, args.requests, args.concurrency)
                        figures.setdefault(f"{count}{label}", []).append(figure)
                        print(f"round {i + 1} {tree.name}{label} {count} budget(s): "
                              f"{figure:.3f} ms", flush=True)
    finally:
        if server is not None:
            server.stop()
    print(f"database: {args.database}, concurrency {args.concurrency}, "
          f"{args.requests} requests, {args.rounds} rounds (medians)")
    print("| tree | no budget | one budget | three budgets | one, over none (paired) | "
          "three, over none (paired) |")
    print("|---|---|---|---|---|---|")
    for label, tree in trees:
        none, one, three = (figures[f"{count}{label}"] for count in (0, 1, 3))
        over = [statistics.median(b - a for a, b in zip(none, more, strict=True))
                for more in (one, three)]
        print(f"| {tree}{label} | {statistics.median(none):.3f} ms | "
              f"{statistics.median(one):.3f} ms | {statistics.median(three):.3f} ms | "
              f"{over[0] * 1000:+.0f} µs | {over[1] * 1000:+.0f} µs |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
