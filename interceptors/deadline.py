"""Deadlines: every call has one, and work done for it never outlives it.

- No deadline from the caller: the method's default from the contract
  applies (`grpcplatform.v1.method_policy`); a caller's deadline longer than
  `max_deadline` is clamped. When ours is tighter than gRPC's, `DeadlineWatch`
  cancels the handler when it passes and the chain answers DEADLINE_EXCEEDED.
  One sweeping task serves all calls: a per-call asyncio timer cost 15-20 us
  of CPU per call at full load (measured with `make bench`). The watch costs
  a list append, and the call's end clears `local_deadline`; each sweep drops
  the ended calls, so a call is looked at once per `resolution` (20 ms) while
  it runs, and a deadline fires up to that late.
- A call whose deadline has already passed is rejected before the handler.
- The absolute deadline (monotonic clock) is put in a context variable;
  `remaining_budget()` is what every outbound call (our gRPC clients, AWS
  calls) must stay within. Computed explicitly, not by passing
  `context.time_remaining()` around (grpc/grpc#26236).
- Cancellation by the caller cancels the handler's task (grpc.aio does that);
  the chain records it as CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

from interceptors.call import ServerCall
from interceptors.errors import DeadlineExceeded

deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "inbound_deadline", default=None
)


def remaining_budget() -> float | None:
    """Seconds left of the inbound call being served, or None outside any call."""
    deadline = deadline_var.get()
    return None if deadline is None else deadline - time.monotonic()


class DeadlineWatch:
    """Cancels the handlers of calls whose local deadline has passed."""

    def __init__(self, resolution: float = 0.02) -> None:
        self.resolution = resolution
        self._watched: list[tuple[ServerCall, asyncio.Task[object]]] = []
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, call: ServerCall) -> None:
        """Until the call's end sets `call.local_deadline` to None."""
        task = asyncio.current_task()
        if task is None:
            return
        self._watched.append((call, task))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    @property
    def watching(self) -> int:
        """Calls held: those running, and those ended since the last sweep."""
        return len(self._watched)

    async def _sweep(self) -> None:
        try:
            while self._watched:  # ends by itself when no call is watched
                await asyncio.sleep(self.resolution)
                now = time.monotonic()
                running = []
                for call, task in self._watched:
                    deadline = call.local_deadline
                    if deadline is None:
                        continue  # ended
                    if now >= deadline:
                        call.deadline_expired = True
                        task.cancel()
                    else:
                        running.append((call, task))
                self._watched = running
        finally:
            self._sweeper = None


class DeadlineLayer:
    def __init__(self, max_deadline: float, watch: DeadlineWatch | None = None) -> None:
        self.max_deadline = max_deadline
        self.watch = watch or DeadlineWatch()

    def begin(self, call: ServerCall) -> None:
        remaining = call.context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the call was handled")
        budget = call.policy.default_deadline if remaining is None else remaining
        budget = min(budget, self.max_deadline)
        now = time.monotonic()
        if remaining is None or budget < remaining:
            call.local_deadline = now + budget
            self.watch.watch(call)
        call.deadline_token = deadline_var.set(now + budget)

    def end(self, call: ServerCall) -> None:
        if call.deadline_token is None:
            return  # rejected in begin: nothing was watched or set
        call.local_deadline = None  # the watch lets go of it at its next sweep
        deadline_var.reset(call.deadline_token)
