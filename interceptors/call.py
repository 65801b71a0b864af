"""One inbound call as the server chain sees it, and the shape of a chain layer.

A `Layer` is a pair of synchronous hooks: `begin(call)` before the handler
(raise a PlatformError to reject the call) and `end(call)` after it, in
reverse order, with `call.code`, `call.error` and `call.duration` set.
Synchronous hooks cost a function call each, not a coroutine and a task,
which keeps the whole chain cheap on the hot path; the chain itself
(interceptors.chain) owns the awaits.
Layers keep their per-call state on the `ServerCall` (slots below; a service's
own layers may put a dict in `extras`, None until then: nothing is allocated
per call for state nobody uses).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from interceptors.policy import MethodPolicy

# gRPC metadata as grpc.aio takes and hands it over: (key, value) pairs, `-bin` keys bytes.
Metadata = Sequence[tuple[str, str | bytes]]


class ServerCall:
    __slots__ = (
        "begun",
        "caller",
        "code",
        "context",
        "correlation_id",
        "deadline",
        "deadline_expired",
        "duration",
        "error",
        "extras",
        "metadata",
        "policy",
        "received",
        "request",
        "sent",
        "shed_slot",
        "span",
        "span_id",
        "span_token",
        "started",
        "task",
        "trace_id",
        "watch_index",
    )

    def __init__(
        self,
        policy: MethodPolicy,
        context: grpc.aio.ServicerContext[Any, Any],
        metadata: Metadata,
    ) -> None:
        self.policy = policy
        self.context = context
        self.started = time.perf_counter()
        self.duration = 0.0  # set once when the call ends, before the layers' end()
        self.metadata: dict[str, str | bytes] = dict(metadata)
        self.begun = 0  # application layers whose begin() completed: exactly those get end()
        self.code = grpc.StatusCode.OK
        self.error: BaseException | None = None
        self.correlation_id = ""
        self.caller = ""  # the authenticated identity (interceptors.authorization), if any
        self.trace_id = ""
        self.span_id = ""
        self.request: Any = None
        self.received = 0
        self.sent = 0
        self.deadline: float | None = None  # time.monotonic() seconds, set by the deadline layer
        self.deadline_expired = False
        self.task: asyncio.Task[Any] | None = None  # the handler's, while the deadline watch has it
        self.watch_index = -1  # its place in the deadline watch, -1 when not watched
        self.shed_slot = False
        self.span: Any = None
        self.span_token: Any = None
        self.extras: dict[str, Any] | None = None  # a service layer's own state, if it needs any

    def header(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None


class Layer(Protocol):
    def begin(self, call: ServerCall) -> None: ...

    def end(self, call: ServerCall) -> None: ...
