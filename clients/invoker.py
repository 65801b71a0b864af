"""The client chain that every generated client calls through.

A generated client (`<Service>Client`) does not call its channel directly: it
hands the multicallable, the method's `MethodPolicy` and the request to an
`Invoker`. The invoker is where the client chain lives, as plain Python around
the call rather than `grpc.aio` client interceptors, which cost an extra task
and call object per RPC.

`DeadlineInvoker` is the base of the chain: no call leaves without a deadline
(the caller's, else the contract's default for the method), and none outlives
the inbound call being served: it is capped by `remaining_budget()` (from
interceptors.deadline) less a small reserve for the answer to travel back.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import grpc

from interceptors.deadline import remaining_budget
from interceptors.policy import MethodPolicy

Request = TypeVar("Request")
Response = TypeVar("Response")
Metadata = Sequence[tuple[str, str | bytes]]


class Invoker(Protocol):
    async def unary_unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response: ...

    def unary_stream(
        self,
        rpc: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]: ...

    async def stream_unary(
        self,
        rpc: grpc.aio.StreamUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response: ...

    def stream_stream(
        self,
        rpc: grpc.aio.StreamStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]: ...


@dataclass(frozen=True)
class Connection:
    """What a generated client needs: a channel to one target and the chain to call through."""

    target: str
    channel: grpc.aio.Channel
    invoker: Invoker


def _iterator(requests: AsyncIterable[Request]) -> AsyncIterator[Request]:
    # grpc.aio accepts any async iterable; its type stubs ask for an iterator.
    return cast(AsyncIterator[Request], requests)


class DeadlineInvoker:
    """Gives every call a deadline: the caller's `timeout`, else the method's default,
    capped by the inbound call's remaining budget less `reserve` seconds."""

    def __init__(self, reserve: float = 0.005) -> None:
        self.reserve = reserve

    def deadline(self, policy: MethodPolicy, timeout: float | None) -> float:
        deadline = policy.default_deadline if timeout is None else timeout
        budget = remaining_budget()
        if budget is not None:
            deadline = min(deadline, budget - self.reserve)
        # An exhausted budget still gets a tiny positive deadline: the call then fails
        # DEADLINE_EXCEEDED at once instead of going out with no deadline at all.
        return max(deadline, 0.001)

    async def unary_unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response:
        return await rpc(request, timeout=self.deadline(policy, timeout), metadata=metadata)

    async def unary_stream(
        self,
        rpc: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]:
        call: Any = rpc(request, timeout=self.deadline(policy, timeout), metadata=metadata)
        async for response in call:
            yield response

    async def stream_unary(
        self,
        rpc: grpc.aio.StreamUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response:
        return await rpc(
            _iterator(requests), timeout=self.deadline(policy, timeout), metadata=metadata
        )

    async def stream_stream(
        self,
        rpc: grpc.aio.StreamStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]:
        call: Any = rpc(
            _iterator(requests), timeout=self.deadline(policy, timeout), metadata=metadata
        )
        async for response in call:
            yield response
