"""Circuit breakers, bulkheads and client rate limits, against real servers on loopback."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2 as details_pb2
from prometheus_client import CollectorRegistry

from clients.chain import ClientChain
from clients.errors import details_of, error_info
from clients.resilience import Resilience
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors import errors
from interceptors.breaker import BreakerSettings, CircuitBreaker, State
from interceptors.bulkhead import BulkheadSettings
from interceptors.metrics import RpcMetrics
from interceptors.policy import MethodPolicy
from interceptors.ratelimit import Rate
from interceptors.retry import RetryPolicy
from tests.conftest import MakeChannels, StartRuntime
from tests.support import echo
from tests.support.net import free_port
from tests.test_client_retries import Scripted, forever, serve

ONCE = RetryPolicy(max_attempts=1)
FAST_BREAKER = BreakerSettings(
    minimum_calls=5, window_calls=10, failure_rate=0.5, open_seconds=0.3, half_open_probes=2
)


class Toggle:
    """A fault plan the test switches: UNAVAILABLE while `failing`."""

    def __init__(self) -> None:
        self.failing = True

    def __iter__(self) -> Toggle:
        return self

    def __next__(self) -> Exception | None:
        return errors.Unavailable("down") if self.failing else None


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        return error.code(), info.reason if info else ""
    return grpc.StatusCode.OK, ""


async def test_breaker_opens_fails_fast_probes_and_closes(
    start_runtime: StartRuntime, make_channels: MakeChannels, caplog: pytest.LogCaptureFixture
) -> None:
    toggle = Toggle()
    servicer = Scripted(toggle)
    target = await serve(start_runtime, servicer)
    registry = CollectorRegistry()
    chain = ClientChain(
        retry=ONCE,
        resilience=Resilience(breaker=FAST_BREAKER),
        metrics=RpcMetrics(registry, "client"),
    )
    client = EchoServiceClient(make_channels(chain=chain).connect(target))
    caplog.set_level(logging.INFO, logger="clients.resilience")

    for _ in range(5):
        assert (await code_of(client.echo(pb.EchoRequest())))[0] == grpc.StatusCode.UNAVAILABLE
    arrivals = len(servicer.arrivals)

    # Open: fail fast, no traffic, CIRCUIT_OPEN with RetryInfo.
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.echo(pb.EchoRequest())
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.001
    assert len(servicer.arrivals) == arrivals
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "CIRCUIT_OPEN"
    assert any(isinstance(d, details_pb2.RetryInfo) for d in details_of(caught.value))

    # The downstream recovers; after the open period only the probes go through.
    toggle.failing = False
    dependency = chain.for_target(target).dependency
    assert dependency is not None
    deadline = time.monotonic() + 5
    while any(b.retry_after() > 0 for b in dependency.breakers.values()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    servicer.delay = 0.1  # probes stay in flight while the others arrive
    results = await asyncio.gather(*(code_of(client.echo(pb.EchoRequest())) for _ in range(6)))
    assert results.count((grpc.StatusCode.OK, "")) == 2
    assert results.count((grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")) == 4
    assert len(servicer.arrivals) == arrivals + 2
    servicer.delay = 0
    assert (await code_of(client.echo(pb.EchoRequest())))[0] == grpc.StatusCode.OK  # closed

    transitions = [
        (getattr(r, "from_state", None), getattr(r, "to_state", None)) for r in caplog.records
    ]
    assert ("CLOSED", "OPEN") in transitions
    assert ("OPEN", "HALF_OPEN") in transitions
    assert ("HALF_OPEN", "CLOSED") in transitions
    states = {
        s.labels["breaker"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "platform_client_breaker_state"
    }
    assert set(states.values()) == {0}
    rejected = [
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "platform_client_rejected_total" and s.labels["reason"] == "CIRCUIT_OPEN"
    ]
    assert rejected == [24]


async def test_breaker_with_the_downstream_stopped_and_restarted(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    port = free_port()
    first = await start_runtime(echo.build, GRPC_PORT=str(port))
    chain = ClientChain(retry=ONCE, resilience=Resilience(breaker=FAST_BREAKER))
    client = EchoServiceClient(make_channels(chain=chain).connect(f"127.0.0.1:{port}"))
    assert (await code_of(client.echo(pb.EchoRequest())))[0] == grpc.StatusCode.OK
    await first.server.stop(0)  # the downstream goes away

    codes = [await code_of(client.echo(pb.EchoRequest(), timeout=1)) for _ in range(8)]
    assert codes[0][0] == grpc.StatusCode.UNAVAILABLE
    assert codes[-1] == (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN")

    await start_runtime(echo.build, GRPC_PORT=str(port))  # back on the same address
    deadline = time.monotonic() + 10
    while (await code_of(client.echo(pb.EchoRequest(), timeout=1)))[0] != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the breaker did not close after the restart"
        await asyncio.sleep(0.05)
    dependency = chain.for_target(f"127.0.0.1:{port}").dependency
    assert dependency is not None
    assert dependency.rollup is not None
    for _ in range(3):  # half-open probes pass, then closed
        await client.echo(pb.EchoRequest())
    assert dependency.rollup.state is State.CLOSED


async def test_one_hung_dependency_does_not_slow_another(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    hung = Scripted(iter([]), delay=30)
    healthy = Scripted(iter([]))
    hung_target, healthy_target = (
        await serve(start_runtime, hung),
        await serve(start_runtime, healthy),
    )
    chain = ClientChain(
        retry=ONCE, resilience=Resilience(bulkhead=BulkheadSettings(max_concurrent=4))
    )
    channels = make_channels(chain=chain)
    to_hung = EchoServiceClient(channels.connect(hung_target))
    to_healthy = EchoServiceClient(channels.connect(healthy_target))

    async def latency() -> float:
        started = time.perf_counter()
        await to_healthy.echo(pb.EchoRequest())
        return time.perf_counter() - started

    baseline = statistics.median([await latency() for _ in range(20)])
    stuck = [asyncio.create_task(to_hung.echo(pb.EchoRequest(), timeout=60)) for _ in range(4)]
    deadline = time.monotonic() + 5
    while len(hung.arrivals) < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    code, reason = await code_of(to_hung.echo(pb.EchoRequest()))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BULKHEAD_FULL")
    assert time.perf_counter() - started < 0.01
    assert len(hung.arrivals) == 4
    during = statistics.median([await latency() for _ in range(20)])
    assert during < max(3 * baseline, 0.02), (baseline, during)
    for task in stuck:
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)


async def test_client_rate_limit_waits_within_the_deadline_or_fails_fast(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    servicer = Scripted(iter([]))
    target = await serve(start_runtime, servicer)
    waiting = ClientChain(
        retry=ONCE, resilience=Resilience(rate=Rate(per_second=10, burst=2), rate_max_wait=1.0)
    )
    client = EchoServiceClient(make_channels(chain=waiting).connect(target))
    started = time.monotonic()
    for _ in range(6):
        await client.echo(pb.EchoRequest())
    assert time.monotonic() - started >= 0.4 - 0.02  # 2 at once, then one per 100 ms
    strict = ClientChain(retry=ONCE, resilience=Resilience(rate=Rate(per_second=1, burst=2)))
    client = EchoServiceClient(make_channels(chain=strict).connect(target))
    results = [await code_of(client.echo(pb.EchoRequest())) for _ in range(3)]
    assert results[:2] == [(grpc.StatusCode.OK, "")] * 2
    assert results[2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT_RATE_LIMITED")
    assert len(servicer.arrivals) == 8


async def test_fallback_answers_while_the_circuit_is_open(
    start_runtime: StartRuntime, make_channels: MakeChannels
) -> None:
    servicer = Scripted(forever(lambda: errors.Unavailable("down")))
    target = await serve(start_runtime, servicer)

    async def cached(policy: MethodPolicy, request: Any, error: grpc.aio.AioRpcError) -> Any:
        return pb.EchoResponse(message=f"cached {request.message}")

    chain = ClientChain(retry=ONCE, resilience=Resilience(breaker=FAST_BREAKER), fallback=cached)
    client = EchoServiceClient(make_channels(chain=chain).connect(target))
    for _ in range(5):
        await code_of(client.echo(pb.EchoRequest(message="x")))
    reply = await client.echo(pb.EchoRequest(message="x"))
    assert reply.message == "cached x"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


OK, DOWN, BAD = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT


def test_client_errors_do_not_open_the_breaker() -> None:
    breaker = CircuitBreaker("b", BreakerSettings(minimum_calls=4), clock=Clock())
    for _ in range(50):
        assert breaker.allow()
        breaker.record(BAD, 0.01)
    assert breaker.state is State.CLOSED


def test_slow_calls_open_the_breaker() -> None:
    settings = BreakerSettings(minimum_calls=5, slow_call_seconds=0.5, slow_call_rate=0.8)
    breaker = CircuitBreaker("b", settings, clock=Clock())
    for _ in range(4):
        breaker.record(OK, 0.6)
    breaker.record(OK, 0.01)
    assert breaker.state is State.OPEN  # 4 of 5 slow


def test_a_method_allowed_longer_is_slow_only_past_half_its_deadline() -> None:
    settings = BreakerSettings(minimum_calls=5, slow_call_seconds=0.5, slow_call_rate=0.8)
    breaker = CircuitBreaker("b", settings, clock=Clock())
    for _ in range(5):
        breaker.record(OK, 0.9, slow_after=1.0)  # a saga with a 2 s contract deadline
    assert breaker.state is State.CLOSED
    breaker = CircuitBreaker("b", settings, clock=Clock())
    for _ in range(5):
        breaker.record(OK, 1.1, slow_after=1.0)
    assert breaker.state is State.OPEN


def test_open_time_grows_and_is_capped_then_resets() -> None:
    clock = Clock()
    settings = BreakerSettings(
        minimum_calls=1, open_seconds=1, open_growth=2, max_open_seconds=3, half_open_probes=1
    )
    breaker = CircuitBreaker("b", settings, clock=clock)
    breaker.record(DOWN, 0.01)
    waits = []
    for _ in range(3):
        waits.append(breaker.retry_after())
        clock.now += waits[-1]
        assert breaker.allow()  # half-open probe
        breaker.record(DOWN, 0.01)  # fails: open again, longer
    assert waits == [1, 2, 3]
    clock.now += breaker.retry_after()
    assert breaker.allow()
    breaker.record(OK, 0.01)
    assert breaker.state is State.CLOSED
    breaker.record(DOWN, 0.01)
    assert breaker.retry_after() == 1  # reset after closing


def test_a_slow_probe_opens_again_for_the_same_time_and_a_failed_one_longer() -> None:
    """A dependency that answers, if slowly, is probed at the same pace: a grown open time
    would keep the breaker open long after a brown-out ends."""
    clock = Clock()
    settings = BreakerSettings(
        minimum_calls=1,
        open_seconds=1,
        open_growth=2,
        max_open_seconds=60,
        half_open_probes=1,
        slow_call_seconds=1.0,
    )
    breaker = CircuitBreaker("b", settings, clock=clock)
    breaker.record(OK, 1.5)  # slow: opens
    waits = []
    for outcome in [(OK, 1.5), (OK, 1.5), (DOWN, 0.01), (OK, 1.5), (DOWN, 0.01)]:
        waits.append(breaker.retry_after())
        clock.now += waits[-1]
        assert breaker.allow()  # half-open probe
        breaker.record(*outcome)
        assert breaker.state is State.OPEN
    waits.append(breaker.retry_after())
    assert waits == [1, 1, 1, 2, 2, 4]


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker("b", BreakerSettings(minimum_calls=4, window_seconds=10), clock=clock)
    for _ in range(3):
        breaker.record(DOWN, 0.01)
    clock.now += 11
    breaker.record(DOWN, 0.01)
    assert breaker.state is State.CLOSED  # the first three are too old to count
