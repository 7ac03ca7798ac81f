"""What admission and settlement cost by themselves: `python -m bench.money [--rounds 5]
[--requests 2000] [--root DIR]`.

In one process, on a fresh SQLite file each round: a key under one budget, then under three
(the key's tokens per day, its requests per minute, the service's dollars in total), and
`--requests` requests admitted and settled one after another. Prints the CPU time
(`time.process_time`, so other processes on the machine barely move it) per admitted and
settled request, the median of the rounds. `--root DIR` measures another checkout's
`gpt_proxy` (before/after comparisons: the whole-service figure is `bench.identity`'s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def measure(budget_count: int, requests: int) -> float:
    from gpt_proxy.budgets import Ask, Budgets, Spent
    from gpt_proxy.db import open_database
    from gpt_proxy.prices import default_price

    with tempfile.TemporaryDirectory(prefix="bench-money-") as folder:
        db = open_database(f"sqlite:///{folder}/money.db", Path(folder))
        budgets = Budgets(db, default_price=default_price("0.15/0.6"))
        kinds = [("key", 1, "tokens", "day", 10**12), ("key", 1, "requests", "minute", 10**9),
                 ("service", 0, "usd", "total", 10**15)][:budget_count]
        for scope, subject, unit, period, limit in kinds:
            budgets.set_budget(scope, subject, unit, period, limit)
        applying = budgets.applying(1, 1)
        ask = Ask("fake-model", 120, 256, "bench", "r")
        for _ in range(50):  # warm up: statements prepared, caches filled
            budgets.settle(budgets.admit(ask, 1, 1, applying), Spent(100, 10))
        started = time.process_time()
        for _ in range(requests):
            budgets.settle(budgets.admit(ask, 1, 1, applying), Spent(100, 10))
        spent = time.process_time() - started
        db.close()
    return spent / requests * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--root", type=Path, default=None,
                        help="the checkout whose gpt_proxy is measured")
    args = parser.parse_args()
    if args.root is not None:
        sys.path.insert(0, str(args.root.resolve()))
    import gpt_proxy

    print(f"gpt_proxy from {Path(gpt_proxy.__file__).parent}")
    for count in (1, 3):
        figures = [measure(count, args.requests) for _ in range(args.rounds)]
        print(f"{count} budget(s): {statistics.median(figures):.3f} ms CPU per admitted and "
              f"settled request (median of {args.rounds}; "
              f"{', '.join(f'{f:.3f}' for f in figures)})")


if __name__ == "__main__":
    main()
