"""The platform's test service (grpcplatform.testing.v1.EchoService).

Run in-process through `build`, or as a process with
`SERVICE=tests.support.echo:build python -m server`. `fail:<kind>` makes
Echo (after its `delay_ms`, so a failure can be slow) and Chat raise the
fault of FAULTS; `busy:<ms>` makes Echo hold the CPU (and so the event
loop) for that long by the wall clock, as a CPU-bound handler does, and
`cpu:<ms>` until the loop's thread has used that much CPU time (on a
shared host the two differ by the time the thread waited its turn);
`relay` makes Echo call the service at `ECHO_DOWNSTREAM` and return its answer.
Notify only counts, a handler of microseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient, EchoServiceServicer
from interceptors import errors
from server.application import Application, RuntimeContext

Context = grpc.aio.ServicerContext[Any, Any]

FAULTS: dict[str, Exception] = {
    "invalid": errors.InvalidArgument(
        "bad", [errors.FieldViolation("message", "must not say invalid")]
    ),
    "precondition": errors.FailedPrecondition(
        "not now",
        [errors.PreconditionViolation("STATE", "echo/1", "wrong state")],
        reason="WRONG_STATE",
        metadata={"currentState": "closed"},
    ),
    "notfound": errors.NotFound(
        "no such echo", resource_type="echo", resource_name="echo/1", reason="ECHO_NOT_FOUND"
    ),
    "exists": errors.AlreadyExists("already there"),
    "aborted": errors.Aborted("conflict", retry_after=0.25),
    "denied": errors.PermissionDenied("not yours"),
    "unauthenticated": errors.Unauthenticated("who are you"),
    "exhausted": errors.ResourceExhausted(
        "quota", [errors.QuotaViolation("client:x", "10/s")], retry_after=1.5
    ),
    "unavailable": errors.Unavailable("try later", retry_after=0.3),
    "deadline": errors.DeadlineExceeded("too slow"),
    "internal": RuntimeError("db-7.internal.example refused password=hunter2"),
    # A service's mistake in its own error: ErrorInfo metadata must be strings.
    "unmappable": errors.FailedPrecondition(
        "not now",
        [],
        metadata={"count": 5},  # type: ignore[dict-item]
    ),
}
NOT_SERIALIZABLE = "respond:none"  # a handler answers None: a service's mistake too
NOT_A_MESSAGE = "respond:text"  # a handler answers a str: the same mistake
STATUS_SET = "respond:set-code"  # grpc's own way to fail a call, without raising
STATUS_SET_WITH_MESSAGE = "respond:set-code-and-message"  # grpc discards the message
HOLDS = {"busy:": time.perf_counter, "cpu:": time.thread_time}


class EchoService(EchoServiceServicer):
    def __init__(self, downstream: EchoServiceClient | None = None) -> None:
        self.arrivals = 0
        self.notifications = 0
        self.downstream = downstream

    async def echo(self, request: pb.EchoRequest, context: Context) -> pb.EchoResponse:
        self.arrivals += 1
        remaining = context.time_remaining() or 0.0
        for prefix, clock in HOLDS.items():
            if request.message.startswith(prefix):
                until = clock() + int(request.message.removeprefix(prefix)) / 1000
                while clock() < until:
                    pass
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        if request.message.startswith("fail:"):
            raise FAULTS[request.message.removeprefix("fail:")]
        if request.message == "relay" and self.downstream is not None:
            return await self.downstream.echo(pb.EchoRequest(message="relayed"))
        if request.message == NOT_SERIALIZABLE:
            return None  # type: ignore[return-value]
        if request.message == NOT_A_MESSAGE:
            return "not a message"  # type: ignore[return-value]
        if request.message in (STATUS_SET, STATUS_SET_WITH_MESSAGE):
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("set by the handler")
            if request.message == STATUS_SET:
                return None  # type: ignore[return-value]
        return pb.EchoResponse(
            message=request.message, peer=context.peer(), time_remaining_seconds=remaining
        )

    async def expand(
        self, request: pb.ExpandRequest, context: Context
    ) -> AsyncIterator[pb.ExpandResponse]:
        for index in range(request.count):
            yield pb.ExpandResponse(message=request.message, index=index)
        if request.message == NOT_SERIALIZABLE:
            yield None  # type: ignore[misc]

    async def collect(
        self, request_iterator: AsyncIterator[pb.CollectRequest], context: Context
    ) -> pb.CollectResponse:
        messages = [request.message async for request in request_iterator]
        return pb.CollectResponse(joined=" ".join(messages), count=len(messages))

    async def chat(
        self, request_iterator: AsyncIterator[pb.ChatRequest], context: Context
    ) -> AsyncIterator[pb.ChatResponse]:
        async for request in request_iterator:
            if request.message.startswith("fail:"):
                raise FAULTS[request.message.removeprefix("fail:")]
            yield pb.ChatResponse(message=request.message.upper())

    async def notify(self, request: pb.NotifyRequest, context: Context) -> pb.NotifyResponse:
        self.notifications += 1
        return pb.NotifyResponse(received=self.notifications)


async def build(context: RuntimeContext) -> Application:
    """`ECHO_DOWNSTREAM`: the target `relay` calls (optional)."""
    downstream = context.env.string("ECHO_DOWNSTREAM", "-")
    client = None if downstream == "-" else EchoServiceClient(context.channels.connect(downstream))
    return Application(servicers=[EchoService(client)], error_domain="echo.testing.internal")
