"""The inbound work being served, in one context variable: its correlation id and deadline.

The server chain sets `inbound_var` once per call, to the call itself (a
`ServerCall` has both fields, filled in by the correlation and deadline
layers); a queue consumer sets an `InboundWork` per delivery, and a saga its
own. Read through `interceptors.correlation.current_correlation_id()` (logs,
outbound metadata, events) and `interceptors.deadline.remaining_budget()`
(every outbound call's deadline).

One variable set once, rather than one per concern set and reset: every
`ContextVar.set` and `reset` copies the context's mapping and makes a token,
and the chain's four of them per call cost about 5% of its throughput at full
load (`make bench` A/B). The chain does not reset it: grpc.aio serves each
call in a task of its own, whose context ends with the call.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Protocol


class Inbound(Protocol):
    @property
    def correlation_id(self) -> str: ...  # "" when there is none

    @property
    def deadline(self) -> float | None: ...  # `time.monotonic()` seconds; None: no deadline


@dataclass(frozen=True, slots=True)
class InboundWork:
    """Work that is not a gRPC call: a queue delivery, a saga driven in the background."""

    correlation_id: str = ""
    deadline: float | None = None


inbound_var: contextvars.ContextVar[Inbound | None] = contextvars.ContextVar(
    "inbound", default=None
)
