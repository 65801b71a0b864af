"""Bulkheads: a concurrency limit per dependency, so one slow dependency cannot
take every task and connection that the others need.

Anchor: Resilience4j's SemaphoreBulkhead. At most `max_concurrent` calls to
the dependency are in flight; a call beyond that waits up to `max_wait`
seconds (never past its deadline) for a slot, else is rejected at once. The
chain (clients.chain) turns a rejection into RESOURCE_EXHAUSTED with reason
BULKHEAD_FULL, without touching the network. Waiters are served first come,
first served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BulkheadSettings:
    max_concurrent: int = 64
    max_wait: float = 0.0


class Bulkhead:
    def __init__(self, settings: BulkheadSettings) -> None:
        self.settings = settings
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, budget: float) -> bool:
        """Takes a slot, waiting at most min(max_wait, budget) seconds; False if none."""
        if self.in_flight < self.settings.max_concurrent and not self._waiters:
            self.in_flight += 1
            return True
        wait = min(self.settings.max_wait, budget)
        if wait <= 0:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait)
        except TimeoutError:
            if waiter.done():  # handed a slot just as the wait ended
                return True
            waiter.cancel()
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled: pass it on
            else:
                waiter.cancel()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return True

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter: in_flight unchanged
                return
        self.in_flight -= 1
