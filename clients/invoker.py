"""The client chain that every generated client calls through.

A generated client (`<Service>Client`) does not call its channel directly: it
hands the multicallable, the method's `MethodPolicy` and the request to an
`Invoker`. The invoker is where the client chain lives, as plain Python around
the call rather than `grpc.aio` client interceptors, which cost an extra task
and call object per RPC.

The default invoker is `clients.chain.ClientChain`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from interceptors.call import Metadata as Metadata  # re-exported: generated clients use it
from interceptors.policy import MethodPolicy

Request = TypeVar("Request")
Response = TypeVar("Response")


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
