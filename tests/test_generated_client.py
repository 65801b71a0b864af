"""Generated servicer bases and clients, in every arity, over a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import (
    ECHO_SERVICE_METHODS,
    EchoServiceClient,
    EchoServiceServicer,
)
from interceptors.policy import Arity, Idempotency
from server.application import Application, RuntimeContext
from tests.conftest import StartRuntime
from tests.support import echo


async def client_for(start_runtime: StartRuntime, channels: ChannelFactory) -> EchoServiceClient:
    runtime = await start_runtime(echo.build)
    return EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))


def test_policy_table_is_read_from_the_contract() -> None:
    echo_policy = ECHO_SERVICE_METHODS["Echo"]
    assert echo_policy.full_method == "/grpcplatform.testing.v1.EchoService/Echo"
    assert echo_policy.idempotency is Idempotency.NO_SIDE_EFFECTS
    assert echo_policy.default_deadline == 5.0  # (grpcplatform.v1.method_policy)
    assert ECHO_SERVICE_METHODS["Expand"].default_deadline == 2.0  # platform default
    assert ECHO_SERVICE_METHODS["Chat"].idempotency is Idempotency.UNKNOWN
    assert [p.arity for p in ECHO_SERVICE_METHODS.values()] == [
        Arity.UNARY_UNARY,
        Arity.UNARY_STREAM,
        Arity.STREAM_UNARY,
        Arity.STREAM_STREAM,
        Arity.UNARY_UNARY,
        Arity.UNARY_UNARY,
    ]
    assert ECHO_SERVICE_METHODS["Notify"].idempotency is Idempotency.UNKNOWN
    assert ECHO_SERVICE_METHODS["Store"].idempotency is Idempotency.IDEMPOTENT


async def test_all_four_arities(start_runtime: StartRuntime, channels: ChannelFactory) -> None:
    client = await client_for(start_runtime, channels)

    reply = await client.echo(pb.EchoRequest(message="hi"))
    assert reply.message == "hi"
    assert reply.peer.startswith("ipv4:127.0.0.1:")

    expanded = [r async for r in client.expand(pb.ExpandRequest(message="x", count=3))]
    assert [(r.message, r.index) for r in expanded] == [("x", 0), ("x", 1), ("x", 2)]

    async def words() -> AsyncIterator[pb.CollectRequest]:
        for word in ("a", "b", "c"):
            yield pb.CollectRequest(message=word)

    collected = await client.collect(words())
    assert (collected.joined, collected.count) == ("a b c", 3)

    async def chat() -> AsyncIterator[pb.ChatRequest]:
        for word in ("one", "two"):
            yield pb.ChatRequest(message=word)

    assert [r.message async for r in client.chat(chat())] == ["ONE", "TWO"]


async def test_call_without_timeout_gets_the_contract_default(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    client = await client_for(start_runtime, channels)
    reply = await client.echo(pb.EchoRequest())
    # The server saw the contract's 5 s deadline (less the time in flight).
    assert 4.0 < reply.time_remaining_seconds <= 5.05  # grpc's clock may read a hair over


async def test_explicit_timeout_wins_and_expires(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    client = await client_for(start_runtime, channels)
    reply = await client.echo(pb.EchoRequest(), timeout=0.5)
    # grpc-timeout rounds up to its unit on the wire: the server may see a hair over 0.5 s
    assert 0.0 < reply.time_remaining_seconds <= 0.5 + 0.005
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.echo(pb.EchoRequest(delay_ms=2000), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class EchoOnly(EchoServiceServicer):
    async def echo(
        self,
        request: pb.EchoRequest,
        context: grpc.aio.ServicerContext[pb.EchoRequest, pb.EchoResponse],
    ) -> pb.EchoResponse:
        return pb.EchoResponse(message=request.message)


async def test_methods_not_overridden_answer_unimplemented(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    async def build(context: RuntimeContext) -> Application:
        return Application(servicers=[EchoOnly()])

    assert set(EchoOnly().rpc_method_handlers()) == {"Echo"}
    runtime = await start_runtime(build)
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    assert (await client.echo(pb.EchoRequest(message="ok"))).message == "ok"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.collect(_one(pb.CollectRequest(message="x")))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _one(request: pb.CollectRequest) -> AsyncIterator[pb.CollectRequest]:
    yield request


async def test_channels_are_shared_per_target_and_closed(channels: ChannelFactory) -> None:
    first = channels.connect("127.0.0.1:1")
    assert channels.connect("127.0.0.1:1") is first
    assert channels.connect("127.0.0.1:2") is not first
    await channels.close()
    assert channels.connect("127.0.0.1:1") is not first
