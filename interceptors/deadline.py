"""Deadlines: every call has one, and work done for it never outlives it.

- No deadline from the caller: the method's default from the contract
  applies (`grpcplatform.v1.method_policy`); a caller's deadline longer than
  `max_deadline` is clamped. When ours is tighter than gRPC's, the chain
  enforces it (interceptors.chain) and answers DEADLINE_EXCEEDED.
- A call whose deadline has already passed is rejected before the handler.
- The absolute deadline (monotonic clock) is put in a context variable;
  `remaining_budget()` is what every outbound call (our gRPC clients, AWS
  calls) must stay within. Computed explicitly, not by passing
  `context.time_remaining()` around (grpc/grpc#26236).
- Cancellation by the caller cancels the handler's task (grpc.aio does that);
  the chain records it as CANCELLED.
"""

from __future__ import annotations

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


class DeadlineLayer:
    def __init__(self, max_deadline: float) -> None:
        self.max_deadline = max_deadline

    def begin(self, call: ServerCall) -> None:
        remaining = call.context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the call was handled")
        budget = call.policy.default_deadline if remaining is None else remaining
        budget = min(budget, self.max_deadline)
        now = time.monotonic()
        if remaining is None or budget < remaining:
            call.local_deadline = now + budget
        call.deadline_token = deadline_var.set(now + budget)

    def end(self, call: ServerCall) -> None:
        deadline_var.reset(call.deadline_token)
