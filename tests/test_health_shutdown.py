"""Health, readiness, metrics and the graceful drain of a real server process."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from server.application import Application, RuntimeContext
from tests.conftest import StartRuntime
from tests.support import echo
from tests.support.net import HOST, http_get, port_open, ready_status, running_service

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def test_liveness_readiness_and_metrics_answer(start_runtime: StartRuntime) -> None:
    runtime = await start_runtime(echo.build)
    admin = f"http://{HOST}:{runtime.admin.port}"
    status, body = await asyncio.to_thread(http_get, f"{admin}/health")
    assert status == 200
    status, body = await asyncio.to_thread(http_get, f"{admin}/ready")
    assert (status, body) == (200, b'{"ready": true, "draining": false, "checks": {}}')
    status, body = await asyncio.to_thread(http_get, f"{admin}/metrics")
    assert status == 200
    assert b"process_cpu_seconds_total" in body
    async with grpc.aio.insecure_channel(f"{HOST}:{runtime.grpc_port}") as channel:
        assert await health_of(channel) == SERVING
        assert await health_of(channel, "grpcplatform.testing.v1.EchoService") == SERVING
        assert await health_of(channel, "liveness") == SERVING


async def test_failing_readiness_check_shows_on_ready_and_grpc_health(
    start_runtime: StartRuntime,
) -> None:
    healthy = True

    async def dependency() -> bool:
        if not healthy:
            raise ConnectionError("dependency down")
        return True

    async def build(context: RuntimeContext) -> Application:
        return Application(servicers=[echo.EchoService()], readiness_checks={"db": dependency})

    runtime = await start_runtime(build)
    runtime.health._refresh_interval = 0.05  # poll fast in the test
    admin = f"http://{HOST}:{runtime.admin.port}/ready"
    async with grpc.aio.insecure_channel(f"{HOST}:{runtime.grpc_port}") as channel:
        assert await health_of(channel) == SERVING
        healthy = False
        status, body = await asyncio.to_thread(http_get, admin)
        assert status == 503
        assert b'"db": false' in body
        await runtime.health.refresh()
        assert await health_of(channel) == NOT_SERVING
        assert await health_of(channel, "liveness") == SERVING  # alive, only not ready
        healthy = True
        await runtime.health.refresh()
        assert await health_of(channel) == SERVING


async def test_workers_run_while_serving_and_stop_before_shutdown_hooks(
    start_runtime: StartRuntime, channels: ChannelFactory, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []
    running = asyncio.Event()

    async def consumer() -> None:
        events.append("started")
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def broken() -> None:
        raise RuntimeError("worker bug")

    async def close() -> None:
        events.append("shutdown hook")

    async def build(context: RuntimeContext) -> Application:
        return Application(
            servicers=[echo.EchoService()],
            workers={"consumer": consumer, "broken": broken},
            on_shutdown=[close],
        )

    runtime = await start_runtime(build)
    await asyncio.wait_for(running.wait(), 5)
    await asyncio.sleep(0)  # the broken worker has failed by now: logged, nothing else
    assert "worker stopped" in caplog.text
    client = EchoServiceClient(channels.connect(f"{HOST}:{runtime.grpc_port}"))
    assert (await client.echo(pb.EchoRequest(message="still serving"))).message
    await runtime.stop()
    assert events == ["started", "cancelled", "shutdown hook"]


async def test_sigterm_drains_in_flight_call_after_reporting_not_serving(tmp_path: Path) -> None:
    settings = {"SHUTDOWN_DELAY_SECONDS": "1.0", "SHUTDOWN_GRACE_SECONDS": "10"}
    with running_service("tests.support.echo:build", tmp_path, settings) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        async with grpc.aio.insecure_channel(service.target) as health_channel:
            assert await health_of(health_channel) == SERVING
            slow = asyncio.create_task(
                client.echo(pb.EchoRequest(message="in flight", delay_ms=2500))
            )
            await asyncio.sleep(0.3)  # let the call reach the handler before the signal
            sent_at = time.monotonic()
            service.process.send_signal(signal.SIGTERM)

            # Before the listener closes: health says NOT_SERVING and /ready says 503.
            status = SERVING
            while status == SERVING and time.monotonic() - sent_at < 1.0:
                status = await health_of(health_channel)
            assert status == NOT_SERVING
            ready = await asyncio.to_thread(ready_status, service.admin_port)
            assert ready is not None
            assert ready[0] == 503
            assert ready[1]["draining"] is True
            assert port_open(service.grpc_port)

            reply = await slow
            assert reply.message == "in flight"

        exit_code = await asyncio.to_thread(service.process.wait, 20)
        assert exit_code == 0
        assert not port_open(service.grpc_port)
        assert not port_open(service.admin_port)
        await channels.close()
    log = service.stderr()
    assert log.index('"message": "draining"') < log.index('"message": "stopped"')


async def test_new_calls_after_the_listener_closes_are_refused(tmp_path: Path) -> None:
    with running_service("tests.support.echo:build", tmp_path) as service:
        channels = ChannelFactory()
        client = EchoServiceClient(channels.connect(service.target))
        assert (await client.echo(pb.EchoRequest(message="before"))).message == "before"
        assert await asyncio.to_thread(service.terminate) == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.echo(pb.EchoRequest(message="after"), timeout=1)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await channels.close()
