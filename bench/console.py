"""The console's scale bench (issue 27): a made-up ledger (`bench.ledger_gen`: 1,000,000 rows
over 120 days, 1,000 users, 5,000 keys) on SQLite and on PostgreSQL, then the console's JSON
routes through the app (Flask's test client: routing, identity, the queries, the JSON), each
the median of several runs, printed as a table with the 300 ms target.

    python -m bench.console [--rows 1000000] [--runs 7] [--only sqlite|postgresql]

PostgreSQL is a throwaway server of its own (`tests/databases.py`). Before the timed runs the
rollups are built once from the whole ledger (`usage.refresh()`, its time printed): what a
service that has run for months has; the rows above the watermark are read live as in
service. Figures are milliseconds of wall time; on a shared machine read them with the load
average printed beside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.ledger_gen import generate
from gpt_proxy import create_app
from gpt_proxy.config import load_config
from gpt_proxy.identity import SESSION_COOKIE

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-console-admin-token-0123456789"
TARGET_MS = 300.0


def _app(url: str, folder: str):
    config = load_config({}, database_url=url, auth="users", proxy_token=TOKEN,
                         conversation_store=f"sqlite:///{folder}/conversations.db",
                         budget_tz="Europe/Berlin")
    return create_app(config)


def _timed(client, path: str, runs: int, **kwargs) -> tuple[float, int]:
    """Median milliseconds of `runs` GETs of `path` (after one untimed), and its size."""
    response = client.get(path, **kwargs)
    assert response.status_code == 200, (path, response.status_code, response.data[:300])
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        response = client.get(path, **kwargs)
        body = response.get_data()
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200
    return statistics.median(times), len(body)


def bench(url: str, name: str, rows: int, runs: int, folder: str,
          reuse: bool = False) -> list[tuple]:
    made = 0.0
    if not reuse:
        print(f"{name}: generating {rows:,} rows ...", flush=True)
        made = generate(url, count=rows)
    app = _app(url, folder)
    usage = app.extensions["gpt_proxy"].budgets.usage
    usage.commit_margin = 0.0  # nothing else writes: every id is committed
    began = time.monotonic()
    usage.refresh()
    built = time.monotonic() - began
    print(f"{name}: ledger made in {made:.1f} s; rollups built in {built:.1f} s", flush=True)
    accounts = app.extensions["gpt_proxy"].accounts
    heavy = accounts.get_user(1)  # the heaviest user (Zipf rank 1)
    typical = accounts.get_user(200)
    admin = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
    client = app.test_client()
    today = usage.local_day(time.time())
    span = f"from={today - dt.timedelta(days=89)}&to={today}"
    cases = [
        ("overview (admin)", "/api/admin/overview", admin),
        ("90-day chart by model (admin)", f"/api/admin/usage/series?{span}&by=model", admin),
        ("90-day chart by key (admin)", f"/api/admin/usage/series?{span}&by=key", admin),
        ("90-day chart by user (admin)", f"/api/admin/usage/series?{span}&by=user", admin),
        ("ledger page: user + model", "/api/admin/ledger?user=1&model=gpt-4o&page=3", admin),
        ("ledger page: outcome, 7 days",
         f"/api/admin/ledger?outcome=failed&from={today - dt.timedelta(days=6)}", admin),
        ("ledger page: rare model", "/api/admin/ledger?model=text-embedding-3-small", admin),
        ("ledger page 200, no filter", "/api/admin/ledger?page=200", admin),
        ("upstreams (admin)", "/api/admin/upstreams", admin),
    ]
    results = []
    for label, path, kwargs in cases:
        results.append((name, label, *_timed(client, path, runs, **kwargs)))
    for who, user in (("heaviest user", heavy), ("typical user", typical)):
        user_client = app.test_client()
        user_client.set_cookie(SESSION_COOKIE, accounts.new_session(user))
        for by in ("model", "key"):
            results.append((name, f"90-day chart by {by} ({who})", *_timed(
                user_client, f"/api/usage/series?{span}&by={by}", runs)))
        results.append((name, f"/api/usage, 31 days ({who})",
                        *_timed(user_client, "/api/usage", runs)))
    app.extensions["gpt_proxy"].budgets.db.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--sqlite-file", help="keep the SQLite ledger in this file, and "
                        "reuse it when it exists (rows generated once)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="console-bench-") as folder:
        if args.only in (None, "sqlite"):
            path = Path(args.sqlite_file or f"{folder}/ledger.db").resolve()
            results += bench(f"sqlite:///{path}", "SQLite", args.rows, args.runs, folder,
                             reuse=path.exists())
        if args.only in (None, "postgresql"):
            from tests.databases import PostgreSQL

            server = PostgreSQL()
            try:
                results += bench(server.new_database(), "PostgreSQL", args.rows, args.runs,
                                 folder)
            finally:
                server.stop()
    print(f"\n{args.rows:,} ledger rows; median of {args.runs} runs; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(f"| database | route | ms (median) | bytes | within {TARGET_MS:.0f} ms |")
    print("|---|---|---:|---:|---|")
    for name, label, ms, size in results:
        print(f"| {name} | {label} | {ms:.1f} | {size:,} | "
              f"{'yes' if ms <= TARGET_MS else 'no'} |")


if __name__ == "__main__":
    main()
