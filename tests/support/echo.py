"""The platform's test service (grpcplatform.testing.v1.EchoService).

Run in-process through `build`, or as a process with
`SERVICE=tests.support.echo:build python -m server`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceServicer
from server.application import Application, RuntimeContext


class EchoService(EchoServiceServicer):
    def __init__(self) -> None:
        self.arrivals = 0

    async def echo(
        self,
        request: pb.EchoRequest,
        context: grpc.aio.ServicerContext[pb.EchoRequest, pb.EchoResponse],
    ) -> pb.EchoResponse:
        self.arrivals += 1
        remaining = context.time_remaining() or 0.0
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return pb.EchoResponse(
            message=request.message, peer=context.peer(), time_remaining_seconds=remaining
        )

    async def expand(
        self,
        request: pb.ExpandRequest,
        context: grpc.aio.ServicerContext[pb.ExpandRequest, pb.ExpandResponse],
    ) -> AsyncIterator[pb.ExpandResponse]:
        for index in range(request.count):
            yield pb.ExpandResponse(message=request.message, index=index)

    async def collect(
        self,
        request_iterator: AsyncIterator[pb.CollectRequest],
        context: grpc.aio.ServicerContext[pb.CollectRequest, pb.CollectResponse],
    ) -> pb.CollectResponse:
        messages = [request.message async for request in request_iterator]
        return pb.CollectResponse(joined=" ".join(messages), count=len(messages))

    async def chat(
        self,
        request_iterator: AsyncIterator[pb.ChatRequest],
        context: grpc.aio.ServicerContext[pb.ChatRequest, pb.ChatResponse],
    ) -> AsyncIterator[pb.ChatResponse]:
        async for request in request_iterator:
            yield pb.ChatResponse(message=request.message.upper())


async def build(context: RuntimeContext) -> Application:
    del context
    return Application(servicers=[EchoService()])
