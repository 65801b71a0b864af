"""server.dispatch: one generic handler serves every method of the process."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from server.dispatch import MethodTable
from tests.conftest import StartRuntime
from tests.support.echo import build
from tests.support.net import HOST


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def handler(name: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def behavior(request: Any, context: Any) -> str:
        return name

    return grpc.unary_unary_rpc_method_handler(behavior)


def test_routes_by_full_path_and_knows_nothing_else() -> None:
    table = MethodTable()
    first, second = handler("first"), handler("second")
    table.add("pkg.v1.Thing", {"Get": first, "Put": second})
    assert table.service(Details("/pkg.v1.Thing/Get")) is first
    assert table.service(Details("/pkg.v1.Thing/Put")) is second
    assert table.service(Details("/pkg.v1.Thing/Delete")) is None
    assert table.service(Details("/pkg.v1.Other/Get")) is None
    assert table.paths == ["/pkg.v1.Thing/Get", "/pkg.v1.Thing/Put"]


def test_a_path_served_twice_is_refused() -> None:
    table = MethodTable()
    table.add("pkg.v1.Thing", {"Get": handler("a")})
    with pytest.raises(ValueError, match=r"/pkg\.v1\.Thing/Get is served twice"):
        table.add_registered_method_handlers("pkg.v1.Thing", {"Get": handler("b")})


def test_generic_only_registrations_are_asked_for_unknown_paths() -> None:
    legacy = handler("legacy")
    table = MethodTable()
    table.add("pkg.v1.Thing", {"Get": handler("table")})
    table.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("pkg.v1.Old", {"Ping": legacy})]
    )
    assert table.service(Details("/pkg.v1.Old/Ping")) is legacy
    assert table.service(Details("/pkg.v1.Old/Pong")) is None


def test_generated_registration_lands_in_the_table() -> None:
    table = MethodTable()
    health_pb2_grpc.add_HealthServicer_to_server(health_pb2_grpc.HealthServicer(), table)
    assert table.paths == [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/List",
        "/grpc.health.v1.Health/Watch",
    ]


async def test_runtime_serves_services_health_and_reflection_from_one_table(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    runtime = await start_runtime(build)
    assert "/grpcplatform.testing.v1.EchoService/Echo" in runtime.methods.paths
    assert "/grpc.health.v1.Health/Watch" in runtime.methods.paths
    assert "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in (
        runtime.methods.paths
    )
    client = EchoServiceClient(channels.connect(f"{HOST}:{runtime.grpc_port}"))
    reply = await client.echo(echo_pb2.EchoRequest(message="routed"))
    assert reply.message == "routed"
    async with grpc.aio.insecure_channel(f"{HOST}:{runtime.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        unknown = channel.unary_unary(  # type: ignore[call-arg]  # raw bytes both ways
            "/grpcplatform.testing.v1.EchoService/Nope"
        )
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await unknown(b"", timeout=2)
        assert failure.value.code() is grpc.StatusCode.UNIMPLEMENTED
