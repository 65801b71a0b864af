"""Client retries against a real server that injects faults and counts arrivals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from clients.chain import ClientChain
from clients.channel import ChannelFactory
from clients.resilience import Resilience
from grpcplatform.testing.v1 import echo_pb2 as pb
from grpcplatform.testing.v1.echo_platform import EchoServiceClient, EchoServiceServicer
from interceptors import errors
from interceptors.correlation import HEADER as CORRELATION
from interceptors.metrics import RpcMetrics
from interceptors.retry import (
    PUSHBACK_KEY,
    RetryBudget,
    RetryPolicy,
    ServerHint,
    retry_delay,
    server_hint,
)
from server.application import Application, RuntimeContext
from tests.conftest import MakeChannels, StartRuntime
from tests.support import echo
from tests.test_metrics import value

Context = grpc.aio.ServicerContext[Any, Any]
NO_BREAKER = Resilience(breaker=None)
Fault = Exception | Callable[[Context], Awaitable[None]] | None


class Scripted(EchoServiceServicer):
    """Fails as `plan` says, one entry per arrival (then succeeds); records arrivals."""

    def __init__(self, plan: Iterator[Fault], delay: float = 0.0) -> None:
        self.plan = plan
        self.delay = delay
        self.arrivals: list[tuple[float, Any, dict[str, Any]]] = []

    async def _arrive(self, request: Any, context: Context) -> None:
        metadata: Any = context.invocation_metadata() or ()
        self.arrivals.append((time.monotonic(), request, dict(metadata)))
        if self.delay:
            await asyncio.sleep(self.delay)
        fault = next(self.plan, None)
        if isinstance(fault, Exception):
            raise fault
        if fault is not None:
            await fault(context)

    async def echo(self, request: pb.EchoRequest, context: Context) -> pb.EchoResponse:
        await self._arrive(request, context)
        return pb.EchoResponse(message=request.message)

    async def notify(self, request: pb.NotifyRequest, context: Context) -> pb.NotifyResponse:
        await self._arrive(request, context)
        return pb.NotifyResponse(received=len(self.arrivals))

    async def store(self, request: pb.StoreRequest, context: Context) -> pb.StoreResponse:
        await self._arrive(request, context)
        return pb.StoreResponse(request_id=request.request_id)


def unavailable() -> errors.Unavailable:
    return errors.Unavailable("down")


def forever(fault: Callable[[], Fault]) -> Iterator[Fault]:
    while True:
        yield fault()


async def serve(start_runtime: StartRuntime, servicer: Scripted) -> str:
    async def build(context: RuntimeContext) -> Application:
        return Application(servicers=[servicer])

    runtime = await start_runtime(build, SHED_ENABLED="false")
    return f"127.0.0.1:{runtime.grpc_port}"


Connect = Callable[[str, ClientChain], EchoServiceClient]


@pytest.fixture
def client(make_channels: MakeChannels) -> Connect:
    """Echo clients of `target` through `chain`, their channels closed when the test ends."""

    def connect(target: str, chain: ClientChain) -> EchoServiceClient:
        return EchoServiceClient(make_channels(chain=chain).connect(target))

    return connect


async def test_non_idempotent_method_is_sent_exactly_once(
    start_runtime: StartRuntime, client: Connect
) -> None:
    servicer = Scripted(forever(unavailable))
    target = await serve(start_runtime, servicer)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client(target, ClientChain(retry=RetryPolicy(max_attempts=5))).notify(
            pb.NotifyRequest(message="once")
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.arrivals) == 1


async def test_idempotent_method_recovers_with_growing_jittered_backoff(
    start_runtime: StartRuntime, client: Connect
) -> None:
    servicer = Scripted(iter([unavailable(), unavailable()]))
    target = await serve(start_runtime, servicer)
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    jitter = iter([0.5, 0.9])
    chain = ClientChain(sleep=recording_sleep, rng=lambda: next(jitter))
    reply = await client(target, chain).store(pb.StoreRequest(request_id="rid-1", value="v"))
    assert reply.request_id == "rid-1"
    assert len(servicer.arrivals) == 3
    # Full jitter over a ceiling that doubles: 0.5 x 50 ms, then 0.9 x 100 ms.
    assert waits == pytest.approx([0.025, 0.09])
    requests = [request for _, request, _ in servicer.arrivals]
    assert {r.request_id for r in requests} == {"rid-1"}
    assert len({r.SerializeToString() for r in requests}) == 1
    gaps = [b[0] - a[0] for a, b in zip(servicer.arrivals, servicer.arrivals[1:], strict=False)]
    assert gaps[0] >= 0.025
    assert gaps[1] >= 0.09


async def test_real_jitter_varies(start_runtime: StartRuntime) -> None:
    policy = RetryPolicy()
    samples = {policy.backoff(2) for _ in range(50)}
    assert len(samples) > 40
    assert all(0 <= s <= 0.1 for s in samples)
    del start_runtime


async def test_no_attempt_starts_after_the_deadline(
    start_runtime: StartRuntime, client: Connect
) -> None:
    servicer = Scripted(forever(unavailable), delay=0.03)
    target = await serve(start_runtime, servicer)
    chain = ClientChain(
        retry=RetryPolicy(max_attempts=50, initial_backoff=0.02, max_backoff=0.05),
        resilience=NO_BREAKER,
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client(target, chain).echo(pb.EchoRequest(message="late"), timeout=0.2)
    elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 0.2 + 0.05
    assert len(servicer.arrivals) >= 2
    assert all(arrived - started < 0.2 for arrived, _, _ in servicer.arrivals)


async def test_retry_info_delays_the_next_attempt(
    start_runtime: StartRuntime, client: Connect
) -> None:
    servicer = Scripted(iter([errors.Unavailable("busy", retry_after=0.3)]))
    target = await serve(start_runtime, servicer)
    await client(target, ClientChain()).echo(pb.EchoRequest(message="x"))
    (first, _, _), (second, _, _) = servicer.arrivals
    assert second - first >= 0.3


async def test_negative_pushback_stops_retrying(
    start_runtime: StartRuntime, client: Connect
) -> None:
    async def refuse(context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "go away", (("grpc-retry-pushback-ms", "-1"),)
        )

    servicer = Scripted(forever(lambda: refuse))
    target = await serve(start_runtime, servicer)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client(target, ClientChain()).echo(pb.EchoRequest(message="x"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.arrivals) == 1


async def test_permanent_errors_are_never_retried(
    start_runtime: StartRuntime, client: Connect
) -> None:
    servicer = Scripted(
        iter([errors.FailedPrecondition("no"), errors.ResourceExhausted("no hint")])
    )
    target = await serve(start_runtime, servicer)
    chain = ClientChain(retry=RetryPolicy(max_attempts=5))
    for code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client(target, chain).echo(pb.EchoRequest(message="x"))
        assert caught.value.code() == code
    assert len(servicer.arrivals) == 2


async def test_retry_budget_caps_attempts_during_an_outage(
    start_runtime: StartRuntime, client: Connect
) -> None:
    servicer = Scripted(forever(unavailable))
    target = await serve(start_runtime, servicer)
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry, "client")
    budget = RetryBudget(ratio=0.2, window=10, floor_per_second=0.5)  # floor: 5 per window
    chain = ClientChain(
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002),
        budget=budget,
        metrics=metrics,
        resilience=NO_BREAKER,  # this test is about the budget alone
    )
    echo_client = client(target, chain)
    calls = 100
    for _ in range(calls):
        with pytest.raises(grpc.aio.AioRpcError):
            await echo_client.echo(pb.EchoRequest(message="x"))
    attempts = len(servicer.arrivals)
    assert attempts <= calls + 0.2 * calls + 5  # without the budget: 300
    assert attempts > calls  # the budget allowed some retries
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
    }
    labels = {"grpc_service": "grpcplatform.testing.v1.EchoService", "grpc_method": "Echo"}
    assert value(samples, "platform_client_retries_total", **labels) == attempts - calls
    denied = value(samples, "platform_client_retries_denied_total", **labels)
    assert 0 < denied <= calls  # each call ends with at most one refused retry
    started = value(samples, "grpc_client_started_total", grpc_type="unary", **labels)
    assert started == attempts
    unavailable_count = value(
        samples, "grpc_client_handled_total", grpc_type="unary", grpc_code="Unavailable", **labels
    )
    assert unavailable_count == attempts


async def test_correlation_and_trace_context_reach_the_downstream(
    start_runtime: StartRuntime, channels: ChannelFactory
) -> None:
    downstream = Scripted(iter([]))
    downstream_target = await serve(start_runtime, downstream)
    relay = await start_runtime(echo.build, ECHO_DOWNSTREAM=downstream_target)
    upstream = EchoServiceClient(channels.connect(f"127.0.0.1:{relay.grpc_port}"))
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await upstream.echo(
        pb.EchoRequest(message="relay"),
        metadata=((CORRELATION, "corr-42"), ("traceparent", parent), ("baggage", "tenant=acme")),
    )
    ((_, _, metadata),) = downstream.arrivals
    assert metadata[CORRELATION] == "corr-42"
    assert metadata["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert metadata["baggage"] == "tenant=acme"


@given(st.one_of(st.text(max_size=12), st.integers().map(str)))
def test_pushback_parsing_never_fails_and_negative_stops(raw: str) -> None:
    hint = server_hint(((PUSHBACK_KEY, raw),))  # grpc gives text metadata as str
    try:
        parsed = int(raw)
    except ValueError:
        assert hint.stop
        return
    assert hint.stop == (parsed < 0)
    if parsed >= 0:
        assert hint.delay == parsed / 1000


def test_retry_decisions() -> None:
    policy = RetryPolicy(max_attempts=3)
    none = ServerHint(None)
    code = grpc.StatusCode
    assert retry_delay(policy, code.UNAVAILABLE, none, 1, rng=lambda: 1.0) == 0.05
    assert retry_delay(policy, code.UNAVAILABLE, none, 2, rng=lambda: 1.0) == 0.1
    assert retry_delay(policy, code.UNAVAILABLE, none, 3) is None  # third retry = 4th attempt
    assert retry_delay(policy, code.UNAVAILABLE, ServerHint(0.3), 1) == 0.3
    assert retry_delay(policy, code.UNAVAILABLE, ServerHint(None, stop=True), 1) is None
    assert retry_delay(policy, code.ABORTED, none, 1) is None
    assert retry_delay(policy, code.ABORTED, ServerHint(0.2), 1) == 0.2
    configured = RetryPolicy(retryable_codes=frozenset(code))  # "retry everything"
    for never in (
        code.INVALID_ARGUMENT,
        code.FAILED_PRECONDITION,
        code.DEADLINE_EXCEEDED,
        code.CANCELLED,
    ):
        assert retry_delay(configured, never, ServerHint(0.1), 1) is None
