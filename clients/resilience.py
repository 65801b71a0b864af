"""The resilience state of one dependency (a target): breakers, bulkhead, rate limit.

`Dependency.admit` runs before each attempt: the client rate limiter (wait
within the deadline, or refuse), the breakers (the method's and the target's
roll-up: both must allow), then the bulkhead. A refusal is a `CallRejected`:
a gRPC error raised on the client with a rich status, so callers read it like
a server's (`clients.errors.error_info`), and no network call is made:
UNAVAILABLE / CIRCUIT_OPEN (+ RetryInfo: when a probe will be allowed),
RESOURCE_EXHAUSTED / BULKHEAD_FULL, RESOURCE_EXHAUSTED / CLIENT_RATE_LIMITED.
`Admission.finish` records the outcome in the breakers and frees the slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from interceptors.breaker import BreakerSettings, CircuitBreaker, State
from interceptors.bulkhead import Bulkhead, BulkheadSettings
from interceptors.errors import (
    STATUS_DETAILS_KEY,
    PlatformError,
    ResourceExhausted,
    Unavailable,
    to_status,
)
from interceptors.policy import MethodPolicy
from interceptors.ratelimit import ClientRateLimiter, Rate

CLIENT_DOMAIN = "client.grpc-platform.internal"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resilience:
    """Per-dependency settings; None turns a mechanism off."""

    breaker: BreakerSettings | None = field(default_factory=BreakerSettings)
    bulkhead: BulkheadSettings | None = field(default_factory=BulkheadSettings)
    rate: Rate | None = None
    rate_max_wait: float = 0.0


class CallRejected(grpc.aio.AioRpcError):
    """Refused on the client, before any network call."""

    def __init__(self, error: PlatformError, encoded_status: bytes | None = None) -> None:
        if encoded_status is None:
            encoded_status = to_status(error, CLIENT_DOMAIN).SerializeToString()
        trailers = grpc.aio.Metadata((STATUS_DETAILS_KEY, encoded_status))
        super().__init__(error.code, grpc.aio.Metadata(), trailers, error.message, "")
        self.reason = error.reason


@dataclass
class Admission:
    dependency: Dependency
    breakers: tuple[CircuitBreaker, ...]
    # Half the method's contract deadline: slower than that is slow for this method.
    slow_after: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def finish(self, code: grpc.StatusCode) -> None:
        elapsed = time.perf_counter() - self.started
        for breaker in self.breakers:
            breaker.record(code, elapsed, self.slow_after)
        if self.dependency.bulkhead is not None:
            self.dependency.bulkhead.release()


class Dependency:
    def __init__(
        self,
        target: str,
        settings: Resilience,
        on_change: Callable[[str, State, State], None],
    ) -> None:
        self.target = target
        self.settings = settings
        self.on_change = on_change
        self.rollup = (
            CircuitBreaker(target, settings.breaker, on_change) if settings.breaker else None
        )
        self.breakers: dict[str, CircuitBreaker] = {}
        # The rejection of an open breaker is the same for its whole open period:
        # built once, so failing fast stays far cheaper than a call (`make bench`).
        self._rejections: dict[str, tuple[float, Unavailable, bytes]] = {}
        self.bulkhead = Bulkhead(settings.bulkhead) if settings.bulkhead else None
        self.limiter = (
            ClientRateLimiter(settings.rate, settings.rate_max_wait) if settings.rate else None
        )

    def breakers_for(self, policy: MethodPolicy) -> tuple[CircuitBreaker, ...]:
        if self.rollup is None or self.settings.breaker is None:
            return ()
        breaker = self.breakers.get(policy.full_method)
        if breaker is None:
            name = f"{self.target}{policy.full_method}"
            breaker = CircuitBreaker(name, self.settings.breaker, self.on_change)
            self.breakers[policy.full_method] = breaker
        return (breaker, self.rollup)

    async def admit(self, policy: MethodPolicy, budget: float) -> Admission:
        if self.limiter is not None and not await self.limiter.acquire(budget):
            raise CallRejected(
                ResourceExhausted(
                    f"client rate limit for {self.target} reached",
                    reason="CLIENT_RATE_LIMITED",
                    metadata={"target": self.target},
                )
            )
        breakers = self.breakers_for(policy)
        allowed: list[CircuitBreaker] = []
        for breaker in breakers:
            if not breaker.allow():
                for taken in allowed:
                    taken.release_probe()
                raise self._open_circuit(breaker, policy)
            allowed.append(breaker)
        if self.bulkhead is not None and not await self.bulkhead.acquire(budget):
            for taken in allowed:
                taken.release_probe()
            raise CallRejected(
                ResourceExhausted(
                    f"bulkhead for {self.target} is full",
                    reason="BULKHEAD_FULL",
                    metadata={"target": self.target},
                )
            )
        return Admission(self, breakers, policy.default_deadline / 2)

    def _open_circuit(self, breaker: CircuitBreaker, policy: MethodPolicy) -> CallRejected:
        cached = self._rejections.get(breaker.name)
        if cached is None or cached[0] != breaker.open_until:
            error = Unavailable(
                f"circuit open for {breaker.name}",
                reason="CIRCUIT_OPEN",
                metadata={"target": self.target, "method": policy.full_method},
                retry_after=round(breaker.retry_after(), 3),
            )
            encoded = to_status(error, CLIENT_DOMAIN).SerializeToString()
            cached = self._rejections[breaker.name] = (breaker.open_until, error, encoded)
        return CallRejected(cached[1], cached[2])


def log_state_change(name: str, old: State, new: State) -> None:
    level = logging.WARNING if new is State.OPEN else logging.INFO
    _log.log(
        level,
        "circuit breaker state changed",
        extra={"breaker": name, "from_state": old.name, "to_state": new.name},
    )
