"""AWS calls (aiobotocore) with the same policies as gRPC calls.

`AwsClients` opens one aiobotocore client per AWS service, with explicit
connect/read timeouts and botocore's own retries turned off
(`total_max_attempts=1`, mode standard) so that the two retry layers do not
multiply; `ResilientAwsClient` wraps it:

- every call gets a deadline: what is left of the inbound call being served
  (interceptors.deadline), else `default_timeout` (plus a long poll's wait);
- a circuit breaker and a bulkhead per AWS service (interceptors.breaker,
  interceptors.bulkhead), with the same settings types as gRPC dependencies;
- retries (interceptors.retry backoff and budget) only for operations that
  are safe to repeat: reads (`get_*`, `batch_get_*`, `query`, `scan`,
  `describe_*`, `list_*`, `receive_message`), conditional writes
  (`ConditionExpression`), and idempotency-keyed writes
  (`transact_write_items` with `ClientRequestToken`, SQS sends with
  `MessageDeduplicationId`). Anything else is sent once.
- Transient failures (connection errors, timeouts, throttling, 5xx) count
  for the breaker and end as `Unavailable` (UNAVAILABLE + RetryInfo on the
  wire, reason DEPENDENCY_UNAVAILABLE); an open breaker is `Unavailable`
  reason CIRCUIT_OPEN, a full bulkhead `ResourceExhausted` BULKHEAD_FULL. An
  AWS client error (e.g. ConditionalCheckFailedException) proves the service
  answered: it counts as a success and is raised unchanged for the caller to
  handle.
- A long poll (`WaitTimeSeconds`, SQS `receive_message`) waits by design:
  only time past its wait counts as a slow call, and outside an inbound call
  its deadline is the wait plus `default_timeout`. Otherwise an empty
  queue's poll would be "slow", and as the half-open probe it would re-open
  the breaker that the consumer shares with the publisher, again and again;
  and a poll answered a little late would be abandoned after SQS counted its
  receive, bringing a message nearer its dead-letter queue unseen. (The
  socket's `read_timeout` is per client: a poller's must exceed its wait.)

Breaker state changes are logged like a gRPC dependency's
(clients.resilience), and `AwsBreakerStates` exports them as
`platform_aws_breaker_state{breaker="aws:<service>"}` (0 closed, 1 open,
2 half-open).

Local runs and tests point `endpoint_url` at moto in server mode: the same
code path as production, where it is None.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from clients.resilience import log_state_change
from clients.settings import ClientSettings, Reader
from interceptors.breaker import BreakerSettings, CircuitBreaker, State
from interceptors.bulkhead import Bulkhead, BulkheadSettings
from interceptors.deadline import remaining_budget
from interceptors.errors import ResourceExhausted, Unavailable
from interceptors.metrics import breaker_state_family
from interceptors.retry import RetryBudget, RetryPolicy

SAFE_PREFIXES = ("get_", "batch_get_", "describe_", "list_", "query", "scan", "receive_message")
CONDITIONAL_WRITES = frozenset({"put_item", "update_item", "delete_item"})
THROTTLING = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)
TRANSIENT_ERRORS = (BotocoreConnectionError, HTTPClientError, TimeoutError)


def safe_to_retry(operation: str, params: dict[str, Any]) -> bool:
    if operation.startswith(SAFE_PREFIXES):
        return True
    if operation in CONDITIONAL_WRITES:
        return "ConditionExpression" in params
    if operation == "transact_write_items":
        return "ClientRequestToken" in params
    if operation in ("send_message", "send_message_batch"):
        entries = params.get("Entries") or [params]
        return all("MessageDeduplicationId" in entry for entry in entries)
    return False


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in THROTTLING or int(status or 0) >= 500
    return False


@dataclass(frozen=True)
class AwsSettings:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    connect_timeout: float = 1.0
    read_timeout: float = 2.0
    default_timeout: float = 2.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerSettings | None = field(default_factory=BreakerSettings)  # None: off
    bulkhead: BulkheadSettings = field(default_factory=BulkheadSettings)

    @classmethod
    def from_env(cls, read: Reader, service: str) -> AwsSettings:
        """`AWS_REGION`, `AWS_ENDPOINT_URL` (moto locally; unset in AWS) and
        `AWS_CONNECT_TIMEOUT_SECONDS` / `AWS_READ_TIMEOUT_SECONDS`; the policies of
        one AWS service from `CLIENT_AWS_<SERVICE>_*` (clients.settings)."""
        retry, resilience = ClientSettings(read).for_dependency(f"aws_{service}")
        defaults = cls()
        return cls(
            region=read.string("AWS_REGION", defaults.region),
            endpoint_url=read.string("AWS_ENDPOINT_URL", "") or None,
            connect_timeout=read.seconds(
                "AWS_CONNECT_TIMEOUT_SECONDS", str(defaults.connect_timeout)
            ),
            read_timeout=read.seconds("AWS_READ_TIMEOUT_SECONDS", str(defaults.read_timeout)),
            retry=retry,
            breaker=resilience.breaker,
            bulkhead=resilience.bulkhead or BulkheadSettings(),
        )


class ResilientAwsClient:
    """`await client.call("get_item", TableName=..., Key=...)`, or `await client.get_item(...)`."""

    def __init__(
        self,
        service: str,
        raw: Any,
        settings: AwsSettings,
        budget: RetryBudget,
        on_change: Callable[[str, State, State], None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.service = service
        self.raw = raw
        self.settings = settings
        self.budget = budget
        self.breaker = (
            CircuitBreaker(f"aws:{service}", settings.breaker, on_change)
            if settings.breaker is not None
            else None
        )
        self.bulkhead = Bulkhead(settings.bulkhead)
        self.sleep = sleep

    def __getattr__(self, operation: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def call(**params: Any) -> dict[str, Any]:
            return await self.call(operation, **params)

        return call

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        budget = remaining_budget()
        patience = float(params.get("WaitTimeSeconds", 0))
        deadline_at = time.monotonic() + (
            self.settings.default_timeout + patience if budget is None else max(budget, 0.0)
        )
        retryable = safe_to_retry(operation, params)
        self.budget.record_request()
        retry_number = 0
        while True:
            try:
                return await self._once(operation, params, deadline_at, patience)
            except Exception as error:
                if not is_transient(error):
                    raise
                retry_number += 1
                delay = None
                if retryable:
                    delay = self.settings.retry.backoff(retry_number)
                    if retry_number >= self.settings.retry.max_attempts:
                        delay = None
                fits = delay is not None and (
                    time.monotonic() + delay + self.settings.retry.min_attempt_time < deadline_at
                )
                if not fits or not self.budget.try_spend():
                    raise Unavailable(
                        f"{self.service} is unavailable",
                        reason="DEPENDENCY_UNAVAILABLE",
                        metadata={"dependency": self.service, "operation": operation},
                        retry_after=1.0,
                    ) from error
                assert delay is not None
                await self.sleep(delay)

    async def _once(
        self, operation: str, params: dict[str, Any], deadline_at: float, patience: float
    ) -> dict[str, Any]:
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            raise Unavailable(
                f"circuit open for {self.service}",
                reason="CIRCUIT_OPEN",
                metadata={"dependency": self.service},
                retry_after=round(max(breaker.retry_after(), 0.001), 3),
            )
        if not await self.bulkhead.acquire(deadline_at - time.monotonic()):
            if breaker is not None:
                breaker.release_probe()
            raise ResourceExhausted(
                f"bulkhead for {self.service} is full",
                reason="BULKHEAD_FULL",
                metadata={"dependency": self.service},
                retry_after=0.1,
            )
        started = time.perf_counter()
        code = grpc.StatusCode.UNAVAILABLE
        try:
            async with asyncio.timeout(deadline_at - time.monotonic()):
                result: dict[str, Any] = await getattr(self.raw, operation)(**params)
            code = grpc.StatusCode.OK
            return result
        except Exception as error:
            if not is_transient(error):
                code = grpc.StatusCode.OK  # the service answered: not its failure
            raise
        finally:
            if breaker is not None:
                breaker.record(
                    code,
                    time.perf_counter() - started,
                    slow_after=patience + breaker.settings.slow_call_seconds,
                )
            self.bulkhead.release()


class AwsClients:
    """Opens and shares the process's AWS clients; `close()` closes them."""

    def __init__(
        self,
        settings: AwsSettings,
        budget: RetryBudget | None = None,
        on_change: Callable[[str, State, State], None] = log_state_change,
    ) -> None:
        self.settings = settings
        self.budget = budget or RetryBudget()
        self.on_change = on_change
        self._session = get_session()
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, ResilientAwsClient] = {}

    async def client(self, service: str) -> ResilientAwsClient:
        wrapped = self._clients.get(service)
        if wrapped is None:
            config = AioConfig(
                connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout,
                # botocore's `max_attempts` counts retries after the first try: one
                # total attempt is `total_max_attempts`. Our layer does the retrying.
                retries={"mode": "standard", "total_max_attempts": 1},
            )
            raw = await self._stack.enter_async_context(
                self._session.create_client(
                    service,
                    region_name=self.settings.region,
                    endpoint_url=self.settings.endpoint_url,
                    config=config,
                )
            )
            wrapped = ResilientAwsClient(service, raw, self.settings, self.budget, self.on_change)
            self._clients[service] = wrapped
        return wrapped

    def breaker_states(self) -> list[tuple[str, int]]:
        return [
            (client.breaker.name, client.breaker.state.value)
            for client in self._clients.values()
            if client.breaker is not None
        ]

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()


class AwsBreakerStates(Collector):
    """`platform_aws_breaker_state` over the breakers of some `AwsClients`."""

    def __init__(self, registry: CollectorRegistry, *clients: AwsClients) -> None:
        self.clients = clients
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield breaker_state_family(
            "platform_aws_breaker_state",
            (state for clients in self.clients for state in clients.breaker_states()),
        )
