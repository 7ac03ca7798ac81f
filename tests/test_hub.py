"""gpt_proxy.base.hub: a request's set-up lets the other ready work of the worker's hub run
between its stages under gevent, and is a no-op elsewhere. The gevent case runs in a process
of its own (monkey-patching cannot be undone in the test process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpt_proxy.base import hub

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
from gevent import monkey
monkey.patch_all()
import json, gevent
from gpt_proxy.base.hub import pause

order = []

def setup():  # a request's set-up, in two stages
    order.append("stage 1")
    %s
    order.append("stage 2")

def token():  # a running reply's token, ready while the set-up runs
    order.append("token")

gevent.joinall([gevent.spawn(setup), gevent.spawn(token)], timeout=10)
print(json.dumps(order))
"""


def order_under_gevent(between: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT % between], cwd=ROOT, timeout=60,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_other_ready_work_runs_between_the_stages_of_a_set_up_under_gevent():
    assert order_under_gevent("pass") == ["stage 1", "stage 2", "token"]  # the control
    assert order_under_gevent("pause()") == ["stage 1", "token", "stage 2"]


def test_pause_does_nothing_without_gevent():
    hub.pause()
    assert hub._checked and hub._gate is None  # the test process is not monkey-patched


MANY = """
from gevent import monkey
monkey.patch_all()
import json, gevent
from gpt_proxy.base.hub import STAGES_PER_POLL, pause

done, turns = [], []

def setup(k):
    pause()
    done.append(k)

check = gevent.get_hub().loop.check()  # run once per turn of the loop, after its poll
check.start(lambda: turns.append(len(done)))
gevent.joinall([gevent.spawn(setup, k) for k in range(40)], timeout=20)
print(json.dumps({"done": done, "most_per_turn": max(b - a for a, b in zip([0] + turns, turns)),
                  "limit": STAGES_PER_POLL}))
"""


def test_many_paused_set_ups_all_go_on_in_order_a_few_per_turn_of_the_loop():
    out = subprocess.run([sys.executable, "-c", MANY], cwd=ROOT, timeout=60,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["done"] == list(range(40))  # none lost, first come first
    assert result["most_per_turn"] <= result["limit"]
