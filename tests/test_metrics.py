"""/metrics after a known mix of calls matches that mix exactly (go-grpc-prometheus names)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.access_log import AccessLog
from tests.conftest import StartRuntime
from tests.support import echo
from tests.support.net import HOST, http_get

SERVICE = "grpcplatform.testing.v1.EchoService"


def scrape(admin_port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = http_get(f"http://{HOST}:{admin_port}/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_match_a_known_mix_of_calls(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    runtime = await start_runtime(echo.build)
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    for _ in range(3):
        await client.echo(pb.EchoRequest(message="ok"))
    for kind in ("invalid", "invalid", "notfound", "internal"):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.echo(pb.EchoRequest(message=f"fail:{kind}"))
    assert len([r async for r in client.expand(pb.ExpandRequest(message="m", count=4))]) == 4

    async def two() -> Any:
        yield pb.CollectRequest(message="a")
        yield pb.CollectRequest(message="b")

    await client.collect(two())

    samples = await asyncio.to_thread(scrape, runtime.admin.port)
    unary = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Echo"}
    assert value(samples, "grpc_server_started_total", **unary) == 7
    assert value(samples, "grpc_server_handled_total", **unary, grpc_code="OK") == 3
    assert value(samples, "grpc_server_handled_total", **unary, grpc_code="InvalidArgument") == 2
    assert value(samples, "grpc_server_handled_total", **unary, grpc_code="NotFound") == 1
    assert value(samples, "grpc_server_handled_total", **unary, grpc_code="Internal") == 1
    assert value(samples, "grpc_server_msg_received_total", **unary) == 7
    assert value(samples, "grpc_server_msg_sent_total", **unary) == 3
    assert value(samples, "grpc_server_handling_seconds_count", **unary) == 7
    stream = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Expand"}
    assert value(samples, "grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert value(samples, "grpc_server_msg_sent_total", **stream) == 4
    client_stream = {
        "grpc_type": "client_stream",
        "grpc_service": SERVICE,
        "grpc_method": "Collect",
    }
    assert value(samples, "grpc_server_msg_received_total", **client_stream) == 2
    assert value(samples, "grpc_server_msg_sent_total", **client_stream) == 1
    in_flight = {"grpc_service": SERVICE, "grpc_method": "Echo"}
    assert value(samples, "platform_server_in_flight", **in_flight) == 0
    assert value(samples, "platform_server_concurrency_limit") > 0
    # No Python-style code names: dashboards built for go-grpc-prometheus keep working.
    codes = {dict(labels).get("grpc_code") for (name, labels) in samples if "handled" in name}
    assert "INVALID_ARGUMENT" not in codes


async def test_a_failing_access_log_still_counts_the_call(
    start_runtime: StartRuntime, channels: ChannelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_write(self: AccessLog, call: Any) -> None:
        raise RuntimeError("log sink broken")

    monkeypatch.setattr(AccessLog, "write", broken_write)
    runtime = await start_runtime(echo.build)
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await client.echo(pb.EchoRequest(message="fail:notfound"))
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    samples = await asyncio.to_thread(scrape, runtime.admin.port)
    unary = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Echo"}
    assert value(samples, "grpc_server_handled_total", **unary, grpc_code="NotFound") == 1
    in_flight = {"grpc_service": SERVICE, "grpc_method": "Echo"}
    assert value(samples, "platform_server_in_flight", **in_flight) == 0
