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
4. metrics    - per attempt, go-grpc-prometheus client names
                (interceptors.metrics, side "client").
Streams get 1, 2 and 4: a stream is never retried.

Plain Python around the call instead of `grpc.aio` client interceptors, which
cost an extra task and call object per RPC. Circuit breakers, bulkheads and
client rate limits slot in between 2 and 3 (next step of issue 4).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from clients.invoker import Metadata
from interceptors.deadline import remaining_budget
from interceptors.metrics import MethodStats, RpcMetrics
from interceptors.policy import MethodPolicy
from interceptors.propagation import outbound_metadata
from interceptors.retry import RetryBudget, RetryPolicy, retry_delay, server_hint

Request = TypeVar("Request")
Response = TypeVar("Response")


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
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.budget = budget or RetryBudget()
        self.metrics = metrics
        self.reserve = reserve
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self._stats: dict[str, MethodStats] = {}

    def deadline(self, policy: MethodPolicy, timeout: float | None) -> float:
        """Seconds the whole call (all attempts) may take."""
        deadline = policy.default_deadline if timeout is None else timeout
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
        stats.in_flight -= 1
        stats.handled[code] = stats.handled.get(code, 0) + 1
        stats.observe(time.perf_counter() - started)
        stats.received += received

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
        deadline_at = self.clock() + self.deadline(policy, timeout)
        outbound = outbound_metadata(metadata)
        stats = self._stats_of(policy)
        self.budget.record_request()
        retry_number = 0
        while True:
            started = self._started(stats, 1)
            try:
                response = await rpc(request, timeout=deadline_at - self.clock(), metadata=outbound)
            except grpc.aio.AioRpcError as error:
                self._finished(stats, error.code(), started, 0)
                if not policy.safe_to_retry:
                    raise
                retry_number += 1
                hint = server_hint(error.trailing_metadata())
                delay = retry_delay(self.retry, error.code(), hint, retry_number, self.rng)
                if delay is None:
                    raise
                if self.clock() + delay + self.retry.min_attempt_time > deadline_at:
                    raise _out_of_time(error) from error
                if not self.budget.try_spend():
                    if stats is not None:
                        stats.retries_denied += 1
                    raise
                if stats is not None:
                    stats.retries += 1
                await self.sleep(delay)
                continue
            self._finished(stats, grpc.StatusCode.OK, started, 1)
            return response

    async def unary_stream(
        self,
        rpc: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        request: Request,
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]:
        call: Any = rpc(
            request, timeout=self.deadline(policy, timeout), metadata=outbound_metadata(metadata)
        )
        async for response in self._observed(policy, call, 1):
            yield response

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
        started = self._started(stats, 0)
        try:
            response = await rpc(
                _iterator(requests),
                timeout=self.deadline(policy, timeout),
                metadata=outbound_metadata(metadata),
            )
        except grpc.aio.AioRpcError as error:
            self._finished(stats, error.code(), started, 0)
            raise
        self._finished(stats, grpc.StatusCode.OK, started, 1)
        return response

    async def stream_stream(
        self,
        rpc: grpc.aio.StreamStreamMultiCallable[Request, Response],
        policy: MethodPolicy,
        requests: AsyncIterable[Request],
        *,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Response]:
        call: Any = rpc(
            _iterator(requests),
            timeout=self.deadline(policy, timeout),
            metadata=outbound_metadata(metadata),
        )
        async for response in self._observed(policy, call, 0):
            yield response

    async def _observed(self, policy: MethodPolicy, call: Any, sent: int) -> AsyncIterator[Any]:
        stats = self._stats_of(policy)
        started = self._started(stats, sent)
        received = 0
        try:
            async for response in call:
                received += 1
                yield response
        except grpc.aio.AioRpcError as error:
            self._finished(stats, error.code(), started, received)
            raise
        self._finished(stats, grpc.StatusCode.OK, started, received)


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
