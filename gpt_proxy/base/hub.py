"""Cooperative yields for a request's set-up on the worker's event loop (issue 30).

Under gunicorn's gevent worker every request of a worker runs on one hub. A request's set-up
(parsing, validation, roles, identity, the ledger, sending the upstream request, then
building the relay once the upstream answered) would otherwise run in one piece, and when
many requests arrive at once the tokens of the replies already running wait behind all of
them: the hub looks at its sockets again only once every greenlet ready to run has run (its
callbacks are checked against the 5 ms switch interval only every 50 of them).

`pause()` splits a set-up into stages: the rest of the set-up waits at a gate of the hub,
which lets at most `STAGES_PER_POLL` waiting stages go on per turn of the event loop (a
prepare watcher, run once per turn just before the hub polls its sockets). So between two
polls the hub runs a few set-up stages, plus whatever the sockets that were ready need: the
running replies' tokens go out between the arrivals' stages instead of after all of them.
Nothing is skipped, only ordered; while stages wait the poll does not sleep (an idle watcher
is active), so a lone request loses a turn of the loop (microseconds), not time.

Outside gevent (the sync and gthread workers, tests without monkey-patching) `pause()` does
nothing: there the operating system's scheduler interleaves the threads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

STAGES_PER_POLL = 4  # set-up stages let go on per turn of the event loop

_gate = None
_checked = False


class _Gate:
    """The waiting stages of one hub, let go a few per turn of its loop, first come first."""

    def __init__(self) -> None:
        import gevent
        from gevent.hub import Waiter

        self.hub = gevent.get_hub()
        self.Waiter = Waiter
        self.waiting: deque = deque()
        self.watcher = self.hub.loop.prepare(ref=False)
        self.watcher.start(self.release)
        # While stages wait, an active idle watcher keeps the loop's poll from sleeping.
        self.spin = self.hub.loop.idle(ref=False)

    def release(self) -> None:
        """Run by the hub before each poll: the first few waiting stages go on, each until it
        waits again (as the hub runs a greenlet whose socket is ready)."""
        waiting = self.waiting
        for _ in range(min(STAGES_PER_POLL, len(waiting))):
            waiting.popleft().switch(None)
        if not waiting and self.spin.active:
            self.spin.stop()

    def wait(self) -> None:
        waiter = self.Waiter(self.hub)
        self.waiting.append(waiter)
        if not self.spin.active:
            self.spin.start(_nothing)
        try:
            waiter.get()
        except BaseException:  # killed while waiting (the worker stopping): leave the queue
            try:
                self.waiting.remove(waiter)
            except ValueError:
                pass
            raise


def _nothing() -> None:
    pass


def _open_gate() -> _Gate | None:
    """The gate when this process runs on gevent's monkey-patched sockets, else None (looked
    up once: the worker patches before it loads the app)."""
    global _gate, _checked
    if not _checked:
        try:
            from gevent import monkey
            if monkey.is_module_patched("socket"):
                _gate = _Gate()
        except ImportError:
            _gate = None
        _checked = True
    return _gate


class _Later:
    """A call of `work` in a greenlet of its own `seconds` from now, on the hub's own timer
    (cheaper than a thread or a sleeping greenlet per call); `cancel()` before it runs."""

    def __init__(self, hub, seconds: float, work: Callable[[], object]) -> None:
        import gevent

        self.timer = hub.loop.timer(seconds)
        self.timer.start(gevent.spawn, work)

    def cancel(self) -> None:
        self.timer.stop()
        self.timer.close()


def on_gevent() -> bool:
    """Whether this process runs on gevent's monkey-patched sockets (the gevent worker)."""
    return (_gate if _checked else _open_gate()) is not None


def later(seconds: float, work: Callable[[], object]) -> _Later | None:
    """`work()` `seconds` from now in a greenlet of its own, under gevent (cancel it with
    `.cancel()`); None elsewhere, where the caller does the work as it would have."""
    gate = _gate if _checked else _open_gate()
    return None if gate is None else _Later(gate.hub, seconds, work)


def pause() -> None:
    """Let the hub poll its sockets (the running replies' tokens) before the rest of this
    request's set-up, when other set-ups are queued ahead of it."""
    gate = _gate if _checked else _open_gate()
    if gate is not None:
        gate.wait()
