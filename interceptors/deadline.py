"""Deadlines: every call has one, and work done for it never outlives it.

- No deadline from the caller: the method's default from the contract
  applies (`grpcplatform.v1.method_policy`); a caller's deadline longer than
  `max_deadline` is clamped. When ours is tighter than gRPC's, `DeadlineWatch`
  cancels the handler when it passes and the chain answers DEADLINE_EXCEEDED.
  One sweeping task serves all calls: a per-call asyncio timer cost 15-20 us
  of CPU per call at full load (measured with `make bench`). The watch costs
  a list append, and the call's end clears `local_deadline` and the call's
  `task`; each sweep drops the ended calls, so a call is looked at once per
  `resolution` (20 ms) while it runs, and a deadline fires up to that late.
  The end lets go of the task at once because the watch holding finished
  tasks (their coroutines, contexts and grpc state) until the next sweep, some
  hundreds of them at full load, cost about 3% of throughput in cache misses
  (`make bench` A/B).
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
        self._watched: list[ServerCall] = []
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, call: ServerCall) -> None:
        """Until the call's end clears `call.local_deadline` and `call.task`."""
        call.task = asyncio.current_task()
        self._watched.append(call)
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
                for call in self._watched:
                    deadline = call.local_deadline
                    if deadline is None:
                        continue  # ended
                    if now >= deadline:
                        call.deadline_expired = True
                        if call.task is not None:
                            call.task.cancel()
                    else:
                        running.append(call)
                self._watched = running
        finally:
            self._sweeper = None


class DeadlineLayer:
    def __init__(self, max_deadline: float, watch: DeadlineWatch | None = None) -> None:
        self.max_deadline = max_deadline
        self.watch = watch or DeadlineWatch()

    def begin(self, call: ServerCall) -> None:
        remaining = call.context.time_remaining()
        if remaining is None:
            budget = call.policy.default_deadline
        elif remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the call was handled")
        elif remaining <= self.max_deadline:
            # gRPC enforces the caller's own deadline: nothing to watch.
            call.deadline_token = deadline_var.set(time.monotonic() + remaining)
            return
        else:
            budget = self.max_deadline
        if budget > self.max_deadline:
            budget = self.max_deadline
        deadline = time.monotonic() + budget
        call.local_deadline = deadline
        self.watch.watch(call)
        call.deadline_token = deadline_var.set(deadline)

    def end(self, call: ServerCall) -> None:
        if call.deadline_token is None:
            return  # rejected in begin: nothing was watched or set
        # The watch lets go of the call at its next sweep; the task, which holds the
        # call's coroutines and grpc state, is let go now.
        call.local_deadline = None
        call.task = None
        deadline_var.reset(call.deadline_token)
