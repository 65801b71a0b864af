"""Shedding for queueing delay: a CPU-bound overload is shed, then the server recovers.

The server runs as its own process (the callers' work must not share its
CPU or its event loop); its Echo handler holds the CPU for BUSY_MS a call
(`busy:<ms>`), so CALLERS callers in a loop queue in gRPC's core before the
chain sees them, where the concurrency limit cannot.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2 as details_pb2
from prometheus_client import CollectorRegistry

from clients.channel import ChannelFactory
from clients.errors import details_of, error_info
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.call import ServerCall
from interceptors.errors import Shed
from interceptors.metrics import RpcMetrics
from interceptors.policy import Arity, Idempotency, MethodPolicy
from interceptors.queue_delay import MAX_SHARE, STEP, QueueDelayGate
from interceptors.shedding import AdaptiveLimit, SheddingLayer, ShedSettings
from tests.support.net import poll, running_service
from tests.test_access_log import json_lines
from tests.test_metrics import scrape, value

BUSY_MS = 10
CALLERS = 24  # a queue of about 240 ms if every call is served
FLOOD_SECONDS = 4.0
ECHO = {"grpc_service": "grpcplatform.testing.v1.EchoService", "grpc_method": "Echo"}
NOTIFY = {**ECHO, "grpc_method": "Notify"}


@dataclass
class Flood:
    served: list[tuple[float, float]] = field(default_factory=list)  # (sent at, latency s)
    shed: list[grpc.aio.AioRpcError] = field(default_factory=list)
    other: list[grpc.StatusCode] = field(default_factory=list)

    def late_latencies(self, after: float) -> list[float]:
        return [latency for sent, latency in self.served if sent >= after]


async def flood(client: EchoServiceClient, seconds: float) -> tuple[Flood, float]:
    """CALLERS callers, each calling again as soon as it is answered; a shed caller
    waits the RetryInfo delay first, as the platform's clients do."""
    result = Flood()
    started = time.monotonic()
    end = started + seconds

    async def caller() -> None:
        while time.monotonic() < end:
            sent = time.monotonic()
            try:
                await client.echo(pb.EchoRequest(message=f"busy:{BUSY_MS}"), timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    result.other.append(error.code())
                    continue
                result.shed.append(error)
                retry = next(d for d in details_of(error) if isinstance(d, details_pb2.RetryInfo))
                await asyncio.sleep(retry.retry_delay.ToTimedelta().total_seconds())
            else:
                result.served.append((sent - started, time.monotonic() - sent))

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return result, started


async def cheap_calls(client: EchoServiceClient, seconds: float) -> list[grpc.StatusCode]:
    """One caller of Notify, a handler of microseconds, in a loop: its codes."""
    codes = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await client.notify(pb.NotifyRequest(message="cheap"), timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
    return codes


async def test_cpu_bound_overload_is_shed_for_its_queue_and_recovers(
    tmp_path: Path, single_attempt_channels: ChannelFactory
) -> None:
    env: dict[str, str] = {}  # the defaults: SHED_QUEUE_DELAY_SECONDS=0.05, LOG_CALLS=ERRORS
    with running_service("tests.support.echo:build", tmp_path, env) as server:
        client = EchoServiceClient(single_attempt_channels.connect(server.target))
        (result, _), cheap = await asyncio.gather(
            flood(client, FLOOD_SECONDS), cheap_calls(client, FLOOD_SECONDS)
        )

        assert result.other == []
        # A cheap method's calls wait in the same queue, but are not shed: rejecting
        # them would cost as much as serving them (SHED_QUEUE_DELAY_MIN_HANDLING_SECONDS).
        assert len(cheap) >= 5
        assert set(cheap) == {grpc.StatusCode.OK}
        assert result.shed, "nothing was shed under a CPU-bound overload"
        info = error_info(result.shed[0])
        assert info is not None
        assert info.reason == "LOAD_SHED"
        assert int(info.metadata["queueDelayMs"]) > 50
        # Once the gate has settled (its share grows by STEP per 0.25 s window), the
        # calls it lets through wait well short of the queue of serving them all
        # (the control below: about CALLERS * BUSY_MS, 240 ms; here about 100 ms).
        settled = result.late_latencies(after=FLOOD_SECONDS / 2)
        assert statistics.median(settled) < 0.75 * CALLERS * BUSY_MS / 1000
        # Shedding is not starving: the server kept doing useful work.
        assert len(result.served) > 0.3 * FLOOD_SECONDS * 1000 / BUSY_MS

        # Recovery: the share halves every window once the queue is gone, to 0.
        def gate_messages() -> list[str]:
            records = json_lines(server.stderr())
            return [r["message"] for r in records if r.get("logger") == "interceptors.queue_delay"]

        stopped = "stopped shedding calls: the queue is gone"
        await asyncio.to_thread(
            poll, lambda: stopped in gate_messages(), 10, "the gate to stop shedding"
        )
        for _ in range(10):
            await client.echo(pb.EchoRequest(message="ok"), timeout=5)

        samples = await asyncio.to_thread(scrape, server.admin_port)
        assert value(samples, "platform_server_shed_total", **ECHO) == len(result.shed)
        assert value(samples, "platform_server_shed_total", **NOTIFY) == 0
        assert value(samples, "platform_server_queue_delay_seconds") < 0.05

        # The log says when shedding started and stopped, not one line per shed call.
        assert gate_messages()[0] == "shedding calls: they wait too long to start"
        assert gate_messages()[-1] == stopped
        assert not [r for r in json_lines(server.stderr()) if r.get("grpc_code") == "UNAVAILABLE"]


async def test_without_the_gate_the_same_overload_queues_and_nothing_is_shed(
    tmp_path: Path, single_attempt_channels: ChannelFactory
) -> None:
    """The control, with the gate off: what the test above guards against."""
    env = {"LOG_CALLS": "NONE", "SHED_QUEUE_DELAY_SECONDS": "0"}
    with running_service("tests.support.echo:build", tmp_path, env) as server:
        client = EchoServiceClient(single_attempt_channels.connect(server.target))

        async def scrape_midway() -> dict[Any, float]:
            await asyncio.sleep(FLOOD_SECONDS / 3)
            return await asyncio.to_thread(scrape, server.admin_port)

        (result, _), samples = await asyncio.gather(
            flood(client, FLOOD_SECONDS / 2), scrape_midway()
        )
        assert result.shed == []
        assert result.other == []
        # Every caller waits behind the others: about CALLERS * BUSY_MS.
        settled = result.late_latencies(after=FLOOD_SECONDS / 4)
        assert statistics.median(settled) > 0.6 * CALLERS * BUSY_MS / 1000
        assert value(samples, "platform_server_concurrency_limit") == 100  # never moved
        assert ("platform_server_queue_delay_seconds", frozenset()) not in samples  # no probe


# -- the gate's arithmetic (pure logic) -------------------------------------------------


def feed(gate: QueueDelayGate, lags: list[float], start: float = 0.0, step: float = 0.05) -> float:
    now = start
    for lag in lags:
        now += step
        gate.observe(lag, now)
    return now


def test_a_standing_lag_sheds_a_share_growing_per_window_up_to_the_cap() -> None:
    gate = QueueDelayGate(target=0.05, window=0.25)
    now = feed(gate, [0.08] * 6)  # first sample opens the window; 5 more close it
    assert gate.share == pytest.approx(STEP)
    feed(gate, [0.08] * 100, start=now)
    assert gate.share == pytest.approx(MAX_SHARE)
    assert gate.delay == pytest.approx(0.08)


def test_a_spike_within_a_window_is_not_a_standing_queue() -> None:
    gate = QueueDelayGate(target=0.05, window=0.25)
    feed(gate, [0.001, 0.3, 0.001, 0.2, 0.001, 0.4] * 10)
    assert gate.share == 0.0


def test_the_share_halves_per_window_once_the_lag_is_back_under_target() -> None:
    gate = QueueDelayGate(target=0.05, window=0.25)
    now = feed(gate, [0.1] * 100)
    assert gate.share == pytest.approx(MAX_SHARE)
    now = feed(gate, [0.001] * 5, start=now)  # one window
    assert gate.share == pytest.approx(MAX_SHARE / 2)
    feed(gate, [0.001] * 50, start=now)  # ten more windows
    assert gate.share == 0.0


def test_a_target_of_zero_measures_and_never_sheds() -> None:
    gate = QueueDelayGate(target=0.0, window=0.25)
    feed(gate, [5.0] * 100)
    assert gate.share == 0.0
    assert gate.delay == 5.0


def test_the_gate_sheds_only_methods_whose_calls_cost_more_than_a_rejection() -> None:
    gate = QueueDelayGate(target=0.05)
    limiter = AdaptiveLimit(ShedSettings())
    metrics = RpcMetrics(CollectorRegistry(), "server")

    def layer_of(method: str) -> tuple[SheddingLayer, MethodPolicy]:
        policy = MethodPolicy("test.v1.Svc", method, Arity.UNARY_UNARY, Idempotency.UNKNOWN, 5.0)
        stats = metrics.for_method(policy)
        return SheddingLayer(limiter, gate, stats, min_handling=0.0005), policy

    def serve(layer: SheddingLayer, policy: MethodPolicy, seconds: float) -> bool:
        """One call through the layer, taking `seconds`: whether it was shed."""
        call = ServerCall(policy, cast(Any, None), ())
        try:
            layer.begin(call)
        except Shed:
            return True
        call.duration = seconds
        layer.end(call)
        return False

    cheap, cheap_policy = layer_of("Cheap")
    costly, costly_policy = layer_of("Costly")
    fresh, fresh_policy = layer_of("Fresh")
    for _ in range(100):  # no queue: everything is served, and each method shows its cost
        assert not serve(cheap, cheap_policy, 0.00003)
        assert not serve(costly, costly_policy, 0.010)
    assert cheap.handling == pytest.approx(0.00003, rel=0.05)
    assert costly.handling == pytest.approx(0.010, rel=0.05)

    gate.share = MAX_SHARE  # a standing queue
    shed = [serve(costly, costly_policy, 0.010) for _ in range(200)]
    assert 100 < sum(shed) < 200  # MAX_SHARE of 200 is 180
    assert not any(serve(cheap, cheap_policy, 0.00003) for _ in range(200))
    assert not any(serve(fresh, fresh_policy, 0.00003) for _ in range(200))
    assert costly.stats.shed == sum(shed)
    assert cheap.stats.shed == fresh.stats.shed == 0
