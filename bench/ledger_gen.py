"""A large made-up ledger for the console's scale bench (issue 27): by default 1,000,000 rows
over the last 120 days, 1,000 users with 5 keys each (5,000 keys), 20 models of which a few
take most requests, several doors and outcomes, on SQLite or PostgreSQL.

The shape follows what a shared service sees: users' activity is skewed (Zipf: a few heavy
users, a long tail), a fifth of the requests come from a signed-in page (no key), requests
follow the day (more by day than by night), a few rows are still open (replies under way).
Seeded: the same arguments make the same ledger.

    python -m bench.ledger_gen --url sqlite:////tmp/ledger.db [--rows 1000000] [--days 120]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
import secrets
import time
from pathlib import Path

import sqlalchemy as sa

from gpt_proxy.db import open_database

ROOT = Path(__file__).resolve().parent.parent
# model, share of requests, dollars per million input and output tokens
MODELS = [("gpt-4o-mini", 40, 0.15, 0.6), ("gpt-4o", 18, 2.5, 10), ("claude-3-5-haiku", 10, 0.8, 4),
          ("gpt-4.1-mini", 8, 0.4, 1.6), ("claude-3-7-sonnet", 5, 3, 15), ("o3-mini", 4, 1.1, 4.4),
          ("gemini-2.0-flash", 3, 0.1, 0.4), ("llama-3.3-70b", 2, 0.6, 0.6),
          ("mistral-large", 2, 2, 6), ("deepseek-chat", 2, 0.27, 1.1),
          ("gpt-4.1", 1.5, 2, 8), ("o1", 1, 15, 60), ("qwen-2.5-72b", 0.8, 0.4, 1.2),
          ("gpt-4.1-nano", 0.7, 0.1, 0.4), ("command-r-plus", 0.5, 2.5, 10),
          ("gemini-1.5-pro", 0.5, 1.25, 5), ("deepseek-reasoner", 0.4, 0.55, 2.2),
          ("phi-4", 0.3, 0.07, 0.14), ("mixtral-8x22b", 0.2, 0.9, 0.9),
          ("text-embedding-3-small", 0.1, 0.02, 0)]
DOORS = [("openai", 55), ("gpt", 20), ("user", 15), ("chat-process", 10)]
OUTCOMES = [("ok", 90), ("client_left", 4), ("ok:no_usage", 2), ("error:upstream_error", 2),
            ("failed", 1.5), ("error:upstream_timeout", 0.5)]
UPSTREAMS = [("openai", 80), ("backup", 20)]
COLUMNS = ("request_id", "created", "finished", "user_id", "key_id", "door", "model", "role",
           "upstream", "prompt_tokens", "completion_tokens", "images", "cost", "outcome",
           "duration_ms", "ttft_ms", "state", "expires", "holds")


def _picker(rng: random.Random, choices: list[tuple]) -> callable:
    weights = list(itertools.accumulate(float(c[1]) for c in choices))
    total = weights[-1]
    return lambda: choices[bisect.bisect(weights, rng.random() * total)]


def _people(conn, users: int, keys: int, now: float) -> None:
    """Users `user0001`... and their keys (`key-<user>-<n>`), made in bulk (no password that
    anyone can use: the hash is not a hash of anything)."""
    conn.execute(sa.text(
        "INSERT INTO users (id, username, username_key, password_hash, created, disabled, "
        "admin) VALUES (:id, :name, :name, 'x', :created, false, :admin)"),
        [{"id": i, "name": f"user{i:04d}", "created": now - 200 * 86400, "admin": i == 1}
         for i in range(1, users + 1)])
    per_user = max(1, keys // users)
    conn.execute(sa.text(
        "INSERT INTO api_keys (id, user_id, name, key_hash, hint, created) "
        "VALUES (:id, :user_id, :name, :hash, 'gpk_...', :created)"),
        [{"id": k, "user_id": (k - 1) // per_user + 1,
          "name": f"key-{(k - 1) // per_user + 1}-{(k - 1) % per_user + 1}",
          "hash": secrets.token_hex(32), "created": now - 200 * 86400}
         for k in range(1, users * per_user + 1)])


def rows(count: int, days: float, users: int, keys: int, now: float, seed: int = 1):
    """The ledger's rows, oldest first, as tuples in COLUMNS' order."""
    rng = random.Random(seed)
    model = _picker(rng, MODELS)
    door = _picker(rng, DOORS)
    outcome = _picker(rng, OUTCOMES)
    upstream = _picker(rng, UPSTREAMS)
    user = _picker(rng, [(i, 1 / i ** 1.1) for i in range(1, users + 1)])
    per_user = max(1, keys // users)
    key_rank = _picker(rng, [(n, 1 / (n + 1)) for n in range(per_user)])
    start = now - days * 86400
    # the day's rhythm: three times as many requests in the afternoon as at night
    moments = sorted(start + rng.random() * days * 86400 for _ in range(count))
    moments = [m for m in moments if rng.random() < 0.5 + 0.5 * math.sin(
        (m % 86400) / 86400 * 2 * math.pi - math.pi / 2) + 0.5] or moments
    while len(moments) < count:  # the rhythm dropped some: top up where it is dense
        moments.append(start + rng.random() * days * 86400)
    moments.sort()
    for n, created in enumerate(moments[:count]):
        who = user()[0]
        name, _, price_in, price_out = model()
        result = outcome()[0]
        key_id = None if rng.random() < 0.2 else (who - 1) * per_user + key_rank()[0] + 1
        prompt = int(rng.lognormvariate(6.5, 1.0))
        completion = 0 if result == "failed" else int(rng.lognormvariate(5.5, 1.0))
        if result == "failed":
            prompt = 0
        duration = int(rng.lognormvariate(7.5, 0.8))
        ttft = None if result == "failed" else min(duration, int(rng.lognormvariate(6.2, 0.6)))
        cost = round(prompt * price_in * 1000 + completion * price_out * 1000)
        still_open = created > now - 60 and n % 7 == 0
        yield (f"gen{n:08d}", created, None if still_open else created + duration / 1000,
               who, key_id, door()[0], name, None, None if still_open else upstream()[0],
               None if still_open else prompt, None if still_open else completion, None,
               None if still_open else cost, None if still_open else result,
               None if still_open else duration, None if still_open else ttft,
               "open" if still_open else "settled", created + 1230 if still_open else None,
               "[]" if still_open else None)


def generate(url: str, *, count: int = 1_000_000, days: float = 120, users: int = 1000,
             keys: int = 5000, seed: int = 1, now: float | None = None) -> float:
    """Fill the (empty) database `url` with users, keys and `count` ledger rows; seconds."""
    began = time.monotonic()
    now = time.time() if now is None else now
    database = open_database(url, ROOT)
    with database.write() as conn:
        _people(conn, users, keys, now)
    made = rows(count, days, users, keys, now, seed)
    if database.dialect == "postgresql":
        raw = database.engine.raw_connection()
        try:
            cursor = raw.cursor()
            with cursor.copy(f"COPY ledger ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in made:
                    copy.write_row(row)
            raw.commit()
            cursor.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
    else:
        sql = (f"INSERT INTO ledger ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(COLUMNS))})")
        raw = database.engine.raw_connection()
        try:
            cursor = raw.cursor()
            while True:
                batch = list(itertools.islice(made, 50_000))
                if not batch:
                    break
                cursor.execute("BEGIN IMMEDIATE")
                cursor.executemany(sql, batch)
                cursor.execute("COMMIT")
            cursor.execute("ANALYZE")
        finally:
            raw.close()
    database.close()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="DATABASE_URL of an empty database")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=120)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    seconds = generate(args.url, count=args.rows, days=args.days, users=args.users,
                       keys=args.keys, seed=args.seed)
    print(f"{args.rows:,} ledger rows, {args.users:,} users, {args.keys:,} keys in "
          f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
