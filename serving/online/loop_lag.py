"""Is a standing queue building up in front of this event loop? (CoDel's question, on the loop.)

A request that waits in a socket buffer or in the loop's ready queue is invisible to a count of
requests in progress: the replica runs short re-ranks inline, so under overload the loop itself is
the queue. A timer due every TICK_S measures how late the loop runs it. A loop that stays later
than `target_s` for a whole `interval_s` without once running on time holds a standing queue, and
then each request is refused at its turn until a tick runs on time again. A pause shorter than
the interval (a long bulk request, a garbage collection) refuses nothing. As CoDel does for
packets, the delay that counts is the one that does not go away, and the decision is taken when a
request leaves the queue, not when it joins: a tick still waiting behind the requests ahead of it
counts as late already, so a burst that arrived at once is seen while it is being worked off.
"""

from __future__ import annotations

import asyncio

TICK_S = 0.005


class LoopLag:
    """Started on the loop it watches (`start()` from a coroutine running there)."""

    def __init__(self, target_s: float, interval_s: float):
        if target_s <= 0 or interval_s <= 0:
            raise ValueError(f"target and interval must be > 0, got {target_s}, {interval_s}")
        self.target_s = target_s
        self.interval_s = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._above_since: float | None = None  # late without a break since then

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()

    def _schedule(self) -> None:
        self._due = self._loop.time() + TICK_S
        self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        if now - self._due < self.target_s:
            self._above_since = None
        elif self._above_since is None:  # from now: one late tick alone is a pause
            self._above_since = now
        self._schedule()

    def standing_delay_s(self) -> float:
        """How long the loop has been more than the target behind without a break, once that is
        a whole interval (else 0): asked by a request at its turn on the loop."""
        if self._loop is None:
            return 0.0
        now = self._loop.time()
        if self._above_since is None and now - self._due >= self.target_s:
            self._above_since = self._due + self.target_s
        if self._above_since is None:
            return 0.0
        held = now - self._above_since
        return held if held >= self.interval_s else 0.0
