"""How long a gevent worker's hub goes without looking at its sockets: the bench's measure of
the stall that arrivals cause the replies already running (issue 30).

A token that reaches a worker waits for the hub's next poll, so the work the hub does
between two polls (the ready callbacks: new requests' set-up; and the handlers of every
socket that was ready: tokens, upstream answers) is what a running reply's token may wait
behind. On a shared machine wall-clock latency also holds whatever the other processes took;
the CPU time of the worker's thread between two polls does not, so it shows the hub's own
share, load or no load.

`HUBTRACE_DIR=/some/dir gunicorn ... bench.hubtrace:app` (`bench.hubtrace:bare` for the bare
relay) serves the app of the current directory (the service of the checkout gunicorn was
started in), and in each worker starts a prepare watcher (run once per loop iteration,
before the poll) that adds the thread CPU time since the previous iteration to a histogram
(0.1 ms buckets up to 1 s); every half second the worker writes its histogram to
HUBTRACE_DIR/<pid>.json. The bench reads the files before and after a phase (`snapshot`) and
reports the difference (`summary`): iterations, their p99 and maximum CPU time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BUCKET_MS = 0.1
BUCKETS = 10_000  # up to 1 s; longer ones go in the last


def _install() -> None:
    folder = os.environ.get("HUBTRACE_DIR", "")
    if not folder:
        return
    try:
        from gevent import monkey
        if not monkey.is_module_patched("socket"):
            return
        import gevent
    except ImportError:
        return
    counts = [0] * BUCKETS
    state = {"last": time.thread_time(), "max": 0.0}
    clock = time.thread_time
    hub = gevent.get_hub()

    def iteration() -> None:
        now = clock()
        ms = (now - state["last"]) * 1000
        state["last"] = now
        counts[min(int(ms / BUCKET_MS), BUCKETS - 1)] += 1
        if ms > state["max"]:
            state["max"] = ms

    watcher = hub.loop.prepare()
    watcher.start(iteration)
    path = Path(folder) / f"{os.getpid()}.json"

    def dump() -> None:
        while True:
            gevent.sleep(0.5)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"counts": {i: n for i, n in enumerate(counts) if n},
                                       "max": state["max"]}))
            os.replace(tmp, path)
    gevent.spawn(dump)
    _install.watcher = watcher  # kept alive


def snapshot(folder: Path) -> dict[str, dict]:
    """Every worker's histogram as written last."""
    out = {}
    for path in folder.glob("*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return out


def summary(before: dict, after: dict) -> dict:
    """The iterations between two snapshots, all workers together: how many, and the CPU ms
    of the hub between two polls at p50, p99, p99.9 (bucket upper bounds)."""
    counts = [0] * BUCKETS
    for pid, data in after.items():
        old = before.get(pid, {}).get("counts", {})
        for i, n in data["counts"].items():
            counts[int(i)] += n - old.get(i, 0)
    total = sum(counts)
    out = {"iterations": total}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        seen, value = 0, 0.0
        for i, n in enumerate(counts):
            seen += n
            if total and seen >= q * total:
                value = (i + 1) * BUCKET_MS
                break
        out[name] = value
    top = max((i for i, n in enumerate(counts) if n > 0), default=-1)
    out["max"] = (top + 1) * BUCKET_MS
    # the CPU ms spent in iterations longer than 5 ms: the long stalls' total
    out["long_ms"] = sum(n * (i + 0.5) * BUCKET_MS for i, n in enumerate(counts)
                         if (i + 1) * BUCKET_MS > 5)
    return out


_install()


def __getattr__(name: str):
    """`app`: the service of the current directory; `bare`: the bare relay (imported only
    when gunicorn asks, after the watcher is in place)."""
    if name == "app":
        from app import app
        return app
    if name == "bare":
        from .bare_relay import app as bare
        return bare
    raise AttributeError(name)
