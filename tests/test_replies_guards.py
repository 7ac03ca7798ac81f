"""The guards of gpt_proxy/replies.py that the mutation run (bench/mutation.py) found no test
holding: when a live reply is given up (cancelled, unlogged, or no client for `grace`
seconds exactly), and that a reply knows its owner."""

from __future__ import annotations

from gpt_proxy.storage.replies import MemoryReplyStore

from .conftest import FakeClock


def test_a_reply_without_a_client_is_given_up_after_grace_seconds_exactly():
    clock = FakeClock()
    store = MemoryReplyStore(keep=60, clock=clock)
    reply = store.begin("ann", grace=30, heartbeat=15)
    assert reply.owner == "ann"
    reply.detach()  # its client left at 1000
    clock.now += 29.9
    assert not reply.abandoned()
    clock.now += 0.1  # 30 s exactly
    assert reply.abandoned()


def test_a_followed_reply_is_kept_and_its_wait_starts_when_the_follower_leaves():
    clock = FakeClock()
    store = MemoryReplyStore(keep=60, clock=clock)
    reply = store.begin("ann", grace=30, heartbeat=15)
    reply.detach()
    reply.followers = 1  # a resumed client follows it
    clock.now += 100
    assert not reply.abandoned()  # seen now
    reply.followers = 0
    clock.now += 29
    assert not reply.abandoned()
    clock.now += 1
    assert reply.abandoned()


def test_a_cancelled_or_unlogged_reply_is_given_up_at_once():
    clock = FakeClock()
    store = MemoryReplyStore(keep=60, clock=clock)
    cancelled, unlogged, attached = (store.begin("ann", grace=30, heartbeat=15)
                                     for _ in range(3))
    cancelled.cancelled = True
    unlogged.unlogged("redis went away")
    assert cancelled.abandoned() and unlogged.abandoned()
    attached.seen_at = clock.now  # a client attached this very moment
    assert not attached.abandoned()
