"""The client chain: the default `Invoker` of generated clients.

For every call, in order:
1. deadline   - the caller's `timeout`, else the contract's default for the
                method, capped by the inbound call's remaining budget less a
                small reserve (interceptors.deadline); never none;
2. propagation - correlation id, trace context and baggage into the metadata
                (interceptors.propagation);
3. retries    - unary calls of NO_SIDE_EFFECTS or IDEMPOTENT methods only,
                within the deadline and the process-wide budget
                (interceptors.retry); the same request, hence the same
                `request_id`, on every attempt;
4. admission  - per attempt, per dependency (clients.resilience): client rate
                limit, circuit breakers (method and target roll-up), bulkhead;
                a refusal fails fast without a network call and is not
                retried; an open circuit may go to the `fallback` hook;
5. metrics    - per attempt, go-grpc-prometheus client names
                (interceptors.metrics, side "client").
With a tracer (an exporter is configured), each unary call is a CLIENT span
around all of this, and the propagated `traceparent` names it as parent.
Streams get all but retries: a stream is never retried.

`ChannelFactory.connect(target)` binds the chain to its dependency
(`for_target`); budget, metrics and settings are shared by all targets.
Plain Python around the call instead of `grpc.aio` client interceptors, which
cost an extra task and call object per RPC.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from clients.invoker import Metadata
from clients.resilience import (
    Admission,
    CallRejected,
    Dependency,
    Resilience,
    log_state_change,
)
from clients.settings import ClientSettings
from interceptors.deadline import remaining_budget
from interceptors.metrics import MethodStats, RpcMetrics
from interceptors.policy import MethodPolicy
from interceptors.propagation import outbound_metadata
from interceptors.retry import RetryBudget, RetryPolicy, retry_delay, server_hint

Request = TypeVar("Request")
Response = TypeVar("Response")
# Answers a call whose circuit is open (e.g. from a cache); raise to refuse.
Fallback = Callable[[MethodPolicy, Any, grpc.aio.AioRpcError], Awaitable[Any]]


class ClientChain:
    def __init__(
        self,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        metrics: RpcMetrics | None = None,
        reserve: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        resilience: Resilience | None = None,
        fallback: Fallback | None = None,
        settings: ClientSettings | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings or ClientSettings()
        self.tracer = tracer
        self.resilience = resilience or self.settings.resilience
        self.fallback = fallback
        self.dependency: Dependency | None = None
        self._dependencies: dict[str, Dependency] = {}
        self.retry = retry or self.settings.retry
        self._method_retry: dict[str, RetryPolicy] = {}
        self.budget = budget or RetryBudget()
        self.metrics = metrics
        self.reserve = reserve
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self._stats: dict[str, MethodStats] = {}
        if metrics is not None:
            metrics.breaker_states = self._breaker_states

    def for_target(self, target: str, name: str | None = None) -> ClientChain:
        """This chain bound to one dependency, with its settings (`CLIENT_<NAME>_*`)."""
        retry, resilience = self.retry, self.resilience
        if name is not None:
            retry, resilience = self.settings.for_dependency(name)
        dependency = self._dependencies.get(target)
        if dependency is None:
            dependency = Dependency(target, resilience, log_state_change)
            self._dependencies[target] = dependency
        bound = copy.copy(self)
        bound.dependency = dependency
        bound.retry = retry
        bound._method_retry = {}
        return bound

    def _retry_of(self, policy: MethodPolicy) -> RetryPolicy:
        retry = self._method_retry.get(policy.full_method)
        if retry is None:
            override = self.settings.methods.get(policy.full_method)
            retry = self.retry
            if override is not None and override.max_attempts is not None:
                retry = dataclasses.replace(retry, max_attempts=override.max_attempts)
            self._method_retry[policy.full_method] = retry
        return retry

    def _breaker_states(self) -> list[tuple[str, int]]:
        return [
            (breaker.name, breaker.state.value)
            for dependency in self._dependencies.values()
            for breaker in (*dependency.breakers.values(), dependency.rollup)
            if breaker is not None
        ]

    async def _admit(self, policy: MethodPolicy, deadline_at: float) -> Admission | None:
        if self.dependency is None:
            return None
        return await self.dependency.admit(policy, deadline_at - self.clock())

    def _rejected(self, stats: MethodStats | None, reason: str) -> None:
        if stats is not None:
            stats.rejected[reason] = stats.rejected.get(reason, 0) + 1

    def deadline(self, policy: MethodPolicy, timeout: float | None) -> float:
        """Seconds the whole call (all attempts) may take."""
        if timeout is None:
            override = self.settings.methods.get(policy.full_method)
            deadline = (
                override.deadline if override and override.deadline else policy.default_deadline
            )
        else:
            deadline = timeout
        budget = remaining_budget()
        if budget is not None:
            deadline = min(deadline, budget - self.reserve)
        # An exhausted budget still gets a tiny positive deadline: the call then fails
        # DEADLINE_EXCEEDED at once instead of going out with no deadline at all.
        return max(deadline, 0.001)

    def _stats_of(self, policy: MethodPolicy) -> MethodStats | None:
        if self.metrics is None:
            return None
        stats = self._stats.get(policy.full_method)
        if stats is None:
            stats = self._stats[policy.full_method] = self.metrics.for_method(policy)
        return stats

    def _finished(
        self, stats: MethodStats | None, code: grpc.StatusCode, started: float, received: int
    ) -> None:
        if stats is None:
            return
        stats.finished(code, time.perf_counter() - started, received, 0)  # sent: at the start

    def _started(self, stats: MethodStats | None, sent: int) -> float:
        if stats is not None:
            stats.started += 1
            stats.in_flight += 1
            stats.sent += sent
        return time.perf_counter()

    async def unary_unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response:
        if self.tracer is None:
            return await self._unary(rpc, policy, request, timeout, metadata)
        with self.tracer.start_as_current_span(
            policy.full_method[1:],
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": policy.service,
                "rpc.method": policy.method,
                "server.address": self.dependency.target if self.dependency else "",
            },
            record_exception=False,
        ) as span:
            try:
                response = await self._unary(rpc, policy, request, timeout, metadata)
            except grpc.aio.AioRpcError as error:
                span.set_attribute("rpc.grpc.status_code", error.code().value[0])
                span.set_status(Status(StatusCode.ERROR, error.code().name))
                raise
            span.set_attribute("rpc.grpc.status_code", 0)
            return response

    async def _unary(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response:
        deadline_at = self.clock() + self.deadline(policy, timeout)
        outbound = outbound_metadata(metadata)  # inside the client span: it is the parent
        stats = self._stats_of(policy)
        self.budget.record_request()
        retry_number = 0
        retry = self._retry_of(policy)
        while True:
            try:
                return await self._once(
                    lambda left: rpc(request, timeout=left, metadata=outbound),
                    policy,
                    deadline_at,
                    stats,
                    1,
                )
            except CallRejected as rejected:
                self._rejected(stats, rejected.reason)
                if self.fallback is not None and rejected.reason == "CIRCUIT_OPEN":
                    return cast(Response, await self.fallback(policy, request, rejected))
                raise
            except grpc.aio.AioRpcError as error:
                if not policy.safe_to_retry:
                    raise
                retry_number += 1
                hint = server_hint(error.trailing_metadata())
                delay = retry_delay(retry, error.code(), hint, retry_number, self.rng)
                if delay is None:
                    raise
                if self.clock() + delay + retry.min_attempt_time > deadline_at:
                    raise _out_of_time(error) from error
                if not self.budget.try_spend():
                    if stats is not None:
                        stats.retries_denied += 1
                    raise
                if stats is not None:
                    stats.retries += 1
                await self.sleep(delay)

    async def _once(
        self,
        invoke: Callable[[float], Awaitable[Response]],
        policy: MethodPolicy,
        deadline_at: float,
        stats: MethodStats | None,
        sent: int,
    ) -> Response:
        """One admitted attempt (`invoke` gets the seconds left); the outcome is recorded,
        and the slot freed, before any retry waits."""
        admission = await self._admit(policy, deadline_at)
        started = self._started(stats, sent)
        code = grpc.StatusCode.CANCELLED
        try:
            response = await invoke(deadline_at - self.clock())
            code = grpc.StatusCode.OK
            return response
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise
        finally:
            self._finished(stats, code, started, 1 if code is grpc.StatusCode.OK else 0)
            if admission is not None:
                admission.finish(code)

    def unary_stream(
        self,
        rpc: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]:
        def start(left: float) -> Any:
            return rpc(request, timeout=left, metadata=outbound_metadata(metadata))

        return self._streamed(policy, timeout, 1, start)

    async def stream_unary(
        self,
        rpc: grpc.aio.StreamUnaryMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Response:
        stats = self._stats_of(policy)
        deadline_at = self.clock() + self.deadline(policy, timeout)
        outbound = outbound_metadata(metadata)
        try:
            return await self._once(
                lambda left: rpc(_iterator(requests), timeout=left, metadata=outbound),
                policy,
                deadline_at,
                stats,
                0,
            )
        except CallRejected as rejected:
            self._rejected(stats, rejected.reason)
            raise

    def stream_stream(
        self,
        rpc: grpc.aio.StreamStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]:
        def start(left: float) -> Any:
            return rpc(_iterator(requests), timeout=left, metadata=outbound_metadata(metadata))

        return self._streamed(policy, timeout, 0, start)

    async def _streamed(
        self, policy: MethodPolicy, timeout: float | None, sent: int, start: Callable[[float], Any]
    ) -> AsyncIterator[Any]:
        """A response stream: admitted, started within the deadline, observed to its end."""
        deadline_at = self.clock() + self.deadline(policy, timeout)
        admission = await self._admitted(policy, deadline_at)
        call = start(deadline_at - self.clock())
        async for response in self._observed(policy, call, sent, admission):
            yield response

    async def _admitted(self, policy: MethodPolicy, deadline_at: float) -> Admission | None:
        """Admission for a stream: a refusal is counted and raised (streams have no fallback)."""
        try:
            return await self._admit(policy, deadline_at)
        except CallRejected as rejected:
            self._rejected(self._stats_of(policy), rejected.reason)
            raise

    async def _observed(
        self, policy: MethodPolicy, call: Any, sent: int, admission: Admission | None
    ) -> AsyncIterator[Any]:
        stats = self._stats_of(policy)
        started = self._started(stats, sent)
        received = 0
        code = grpc.StatusCode.CANCELLED
        try:
            async for response in call:
                received += 1
                yield response
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
            raise
        finally:
            self._finished(stats, code, started, received)
            if admission is not None:
                admission.finish(code)


def _iterator(requests: AsyncIterable[Request]) -> AsyncIterator[Request]:
    # grpc.aio accepts any async iterable; its type stubs ask for an iterator.
    return cast(AsyncIterator[Request], requests)


def _out_of_time(last: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """DEADLINE_EXCEEDED, not the last transient code: a retrying caller upstream
    must not retry a call whose budget is spent."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"deadline would pass before the next retry; last error "
        f"{last.code().name}: {last.details()}",
        debug_error_string="",
    )
