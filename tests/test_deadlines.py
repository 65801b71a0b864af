"""Deadlines: contract default, clamp, enforcement, and propagation to outbound calls."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import time
import weakref
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.channel import ChannelFactory
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import ECHO_SERVICE_METHODS, EchoServiceClient
from interceptors.call import ServerCall
from interceptors.deadline import DeadlineLayer, DeadlineWatch, remaining_budget
from interceptors.errors import DeadlineExceeded
from interceptors.inbound import inbound_var
from server.runtime import Runtime
from tests.conftest import StartRuntime
from tests.support import echo


async def relay_pair(start_runtime: StartRuntime, **upstream: str) -> tuple[Runtime, Runtime]:
    downstream = await start_runtime(echo.build)
    relay = await start_runtime(
        echo.build, ECHO_DOWNSTREAM=f"127.0.0.1:{downstream.grpc_port}", **upstream
    )
    return relay, downstream


def raw_echo(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        ECHO_SERVICE_METHODS["Echo"].full_method,
        request_serializer=pb.EchoRequest.SerializeToString,
        response_deserializer=pb.EchoResponse.FromString,
    )


async def test_downstream_call_gets_at_most_the_inbound_remaining_time(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    relay, _ = await relay_pair(start_runtime)
    client = EchoServiceClient(channels.connect(f"127.0.0.1:{relay.grpc_port}"))
    reply = await client.echo(pb.EchoRequest(message="relay"), timeout=0.8)
    assert reply.message == "relayed"
    # The downstream saw less than the caller's 0.8 s (less reserve and time in flight),
    # although its own contract default is 5 s.
    assert 0.3 < reply.time_remaining_seconds < 0.8


async def test_call_without_deadline_gets_the_contract_default(
    start_runtime: StartRuntime,
) -> None:
    relay, _ = await relay_pair(start_runtime)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.grpc_port}") as channel:
        reply = await raw_echo(channel)(pb.EchoRequest(message="relay"))  # no timeout at all
    assert 4.5 < reply.time_remaining_seconds <= 5.05  # Echo's default_deadline_ms: 5000


async def test_absurd_deadline_is_clamped(start_runtime: StartRuntime) -> None:
    relay, _ = await relay_pair(start_runtime, MAX_DEADLINE_SECONDS="1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{relay.grpc_port}") as channel:
        reply = await raw_echo(channel)(pb.EchoRequest(message="relay"), timeout=3600)
    assert 0.5 < reply.time_remaining_seconds <= 1.0


async def test_local_deadline_is_enforced(start_runtime: StartRuntime) -> None:
    runtime = await start_runtime(echo.build, MAX_DEADLINE_SECONDS="0.3")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.grpc_port}") as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_echo(channel)(pb.EchoRequest(delay_ms=3000), timeout=30)
        elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.25 < elapsed < 1.5


class _Context:
    """A stand-in ServicerContext for the pure logic of DeadlineLayer."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_expired_call_is_rejected_before_the_handler() -> None:
    layer = DeadlineLayer(max_deadline=60)
    call = ServerCall(ECHO_SERVICE_METHODS["Echo"], _Context(-0.01), ())  # type: ignore[arg-type]
    with pytest.raises(DeadlineExceeded):
        layer.begin(call)


def test_budget_is_the_current_calls_and_only_inside_it() -> None:
    assert remaining_budget() is None
    layer = DeadlineLayer(max_deadline=60)
    call = ServerCall(ECHO_SERVICE_METHODS["Echo"], _Context(2.0), ())  # type: ignore[arg-type]

    def inside_the_call() -> float | None:
        inbound_var.set(call)  # what the chain does first, in the call's own task
        layer.begin(call)
        try:
            return remaining_budget()
        finally:
            layer.end(call)

    budget = contextvars.copy_context().run(inside_the_call)
    assert budget is not None
    assert 1.9 < budget <= 2.0
    assert call.watch_index == -1  # gRPC enforces the caller's own deadline: not watched
    assert remaining_budget() is None


async def test_the_watch_cancels_overdue_calls_only_and_lets_go_of_ended_ones() -> None:
    watch = DeadlineWatch(resolution=0.01)
    layer = DeadlineLayer(max_deadline=0.1, watch=watch)  # below Echo's 5 s default

    async def handle(work_seconds: float) -> ServerCall:
        call = ServerCall(ECHO_SERVICE_METHODS["Echo"], _Context(None), ())  # type: ignore[arg-type]
        layer.begin(call)
        try:
            await asyncio.sleep(work_seconds)
        finally:
            layer.end(call)
        return call

    quick = [asyncio.create_task(handle(0.01)) for _ in range(50)]
    overdue = asyncio.create_task(handle(10))
    await asyncio.sleep(0)
    assert watch.watching == 51
    for call in await asyncio.gather(*quick):
        assert not call.deadline_expired
    assert watch.watching == 1  # ended calls left at once; the overdue one runs on
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await overdue
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0.05)
    assert watch.watching == 0


async def test_an_ended_call_leaves_the_watch_at_once() -> None:
    """Finished calls and tasks held until the next sweep cost cache misses at full load."""
    watch = DeadlineWatch(resolution=60)  # no sweep during the test
    layer = DeadlineLayer(max_deadline=60, watch=watch)
    calls: list[ServerCall] = []

    async def handle() -> None:
        call = ServerCall(ECHO_SERVICE_METHODS["Echo"], _Context(None), ())  # type: ignore[arg-type]
        calls.append(call)
        layer.begin(call)
        try:
            assert call.task is asyncio.current_task()
            await asyncio.sleep(0)
        finally:
            layer.end(call)

    task = asyncio.create_task(handle())
    await task
    finished = weakref.ref(task)
    del task
    await asyncio.sleep(0)  # the loop's handle that woke this test holds the task until now
    gc.collect()
    assert finished() is None
    assert watch.watching == 0
    assert calls[0].task is None


@given(st.permutations(range(12)), st.integers(min_value=0, max_value=12))
def test_forgetting_in_any_order_leaves_exactly_the_running_calls(
    order: list[int], ended: int
) -> None:
    async def scenario() -> None:
        watch = DeadlineWatch(resolution=60)
        calls = [
            ServerCall(ECHO_SERVICE_METHODS["Echo"], _Context(None), ())  # type: ignore[arg-type]
            for _ in order
        ]
        for call in calls:
            call.deadline = time.monotonic() + 60
            watch.watch(call)
        for index in order[:ended]:
            watch.forget(calls[index])
            watch.forget(calls[index])  # twice is harmless
        running = {id(calls[index]) for index in order[ended:]}
        assert {id(call) for call in watch._watched} == running
        assert all(watch._watched[call.watch_index] is call for call in watch._watched)
        assert all(calls[index].watch_index == -1 for index in order[:ended])

    asyncio.run(scenario())
