"""Rate limiting and load shedding: rejections under an over-limit burst, then recovery."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2 as details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from clients.channel import ChannelFactory
from clients.errors import details_of, error_info
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.ratelimit import HINTS_PER_SECOND, Rate, TokenBucket, retry_hint
from interceptors.shedding import AdaptiveLimit, ShedSettings
from server.config import ConfigError
from tests.conftest import StartRuntime
from tests.support import echo
from tests.test_metrics import scrape, value

ECHO = {"grpc_service": "grpcplatform.testing.v1.EchoService", "grpc_method": "Echo"}


async def outcome(call: asyncio.Future[pb.EchoResponse] | object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_rate_limit_rejects_the_excess_and_recovers(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    channels = single_attempt_channels
    runtime = await start_runtime(echo.build, RATE_LIMIT_RPS="5", RATE_LIMIT_BURST="5")
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    alice = (("x-client-id", "alice"),)
    started = time.monotonic()
    codes = [await outcome(client.echo(pb.EchoRequest(), metadata=alice)) for _ in range(12)]
    refills = int((time.monotonic() - started) * 5)  # 5/s: more on a slow machine
    assert 5 <= codes.count(grpc.StatusCode.OK) <= 5 + refills + 1  # the burst, plus refills
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 12 - codes.count(grpc.StatusCode.OK)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.echo(pb.EchoRequest(), metadata=alice)
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "RATE_LIMITED"
    found = {type(d): d for d in details_of(caught.value)}
    quota = found[details_pb2.QuotaFailure]
    assert isinstance(quota, details_pb2.QuotaFailure)
    assert quota.violations[0].subject == "client:alice"
    retry = found[details_pb2.RetryInfo]
    assert isinstance(retry, details_pb2.RetryInfo)
    wait = retry.retry_delay.ToTimedelta().total_seconds()
    assert 0 < wait <= 0.2 + 1e-9  # one token at 5/s

    # Another caller has its own bucket; health is never throttled.
    bob = (("x-client-id", "bob"),)
    assert await outcome(client.echo(pb.EchoRequest(), metadata=bob)) == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(30):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # Recovery: after the advised wait, alice gets through again.
    await asyncio.sleep(wait)
    assert await outcome(client.echo(pb.EchoRequest(), metadata=alice)) == grpc.StatusCode.OK
    samples = await asyncio.to_thread(scrape, runtime.admin.port)
    assert (
        value(samples, "platform_server_throttled_total", **ECHO)
        == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) + 1
    )


async def test_shedding_rejects_beyond_the_limit_and_recovers(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    channels = single_attempt_channels
    runtime = await start_runtime(
        echo.build, SHED_INITIAL_LIMIT="2", SHED_MIN_LIMIT="2", SHED_MAX_LIMIT="2"
    )
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    started = time.monotonic()
    codes = await asyncio.gather(
        *(outcome(client.echo(pb.EchoRequest(delay_ms=400))) for _ in range(8))
    )
    assert codes.count(grpc.StatusCode.OK) == 2
    assert codes.count(grpc.StatusCode.UNAVAILABLE) == 6

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.gather(
            client.echo(pb.EchoRequest(delay_ms=300)),
            client.echo(pb.EchoRequest(delay_ms=300)),
            client.echo(pb.EchoRequest()),
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "LOAD_SHED"
    assert any(isinstance(d, details_pb2.RetryInfo) for d in details_of(caught.value))
    assert time.monotonic() - started < 5

    await asyncio.sleep(0.4)  # the slow calls above finish
    for _ in range(3):
        assert await outcome(client.echo(pb.EchoRequest())) == grpc.StatusCode.OK
    samples = await asyncio.to_thread(scrape, runtime.admin.port)
    assert value(samples, "platform_server_shed_total", **ECHO) == 7


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(Rate(per_second=10, burst=2), now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.1) == 0.0
    assert bucket.take(10.0) == 0.0  # capped at the burst
    assert bucket.take(10.0) == 0.0
    assert bucket.take(10.0) > 0


def saturate(limit: AdaptiveLimit, rtt: float, samples: int) -> None:
    for _ in range(samples):
        limit.on_sample(rtt, in_flight=int(limit.limit))


def test_limit_grows_while_latency_holds_and_shrinks_when_it_rises() -> None:
    limit = AdaptiveLimit(ShedSettings(initial_limit=20, min_limit=5, max_limit=200))
    saturate(limit, 0.010, 300)
    grown = limit.limit
    assert grown > 60  # latency steady under full use: more concurrency is safe
    saturate(limit, 0.060, 40)  # queueing: latency x6
    assert limit.limit < grown / 2
    assert limit.limit >= 5


def test_app_limited_load_does_not_grow_the_limit() -> None:
    limit = AdaptiveLimit(ShedSettings(initial_limit=50, min_limit=5, max_limit=500))
    for _ in range(500):
        limit.on_sample(0.010, in_flight=3)
    assert limit.limit == 50


def test_limit_bounds_in_flight() -> None:
    limit = AdaptiveLimit(ShedSettings(initial_limit=3, min_limit=3, max_limit=3))
    assert [limit.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    limit.release(0.01)
    assert limit.try_acquire()


@given(st.floats(min_value=1e-12, max_value=3600))
def test_a_retry_hint_is_a_whole_step_and_never_shorter_than_the_wait(wait: float) -> None:
    hint = retry_hint(wait)
    steps = hint * HINTS_PER_SECOND
    assert round(steps) >= 1
    assert abs(steps - round(steps)) < 1e-6
    assert wait - 1e-9 <= hint < wait + 1 / HINTS_PER_SECOND


async def test_a_per_method_override_limits_that_method_only(
    start_runtime: StartRuntime, single_attempt_channels: ChannelFactory
) -> None:
    runtime = await start_runtime(
        echo.build,
        RATE_LIMIT_RPS="1000",
        RATE_LIMIT_OVERRIDES="grpcplatform.testing.v1.EchoService/Notify=0.01:2",
    )
    client = EchoServiceClient(single_attempt_channels.connect(f"127.0.0.1:{runtime.grpc_port}"))
    notified = [await outcome(client.notify(pb.NotifyRequest())) for _ in range(5)]
    assert notified == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    echoed = [await outcome(client.echo(pb.EchoRequest())) for _ in range(5)]
    assert echoed == [grpc.StatusCode.OK] * 5


async def test_an_override_for_a_method_not_served_stops_start_up(
    start_runtime: StartRuntime,
) -> None:
    with pytest.raises(ConfigError, match=r"^RATE_LIMIT_OVERRIDES names methods .* not serve: "):
        await start_runtime(
            echo.build, RATE_LIMIT_OVERRIDES="grpcplatform.testing.v1.EchoService/echo=5"
        )
