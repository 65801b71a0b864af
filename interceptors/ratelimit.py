"""Rate limiting with token buckets: per method and caller on the server, per
dependency on the client (`ClientRateLimiter`).

Each (method, caller) pair gets a bucket of `burst` tokens refilled at `rate`
per second; a call without a token is rejected at once with
RESOURCE_EXHAUSTED, reason RATE_LIMITED, a QuotaFailure naming the caller
and the limit, and a RetryInfo saying when a token will be there. The caller
is its identity proven by mTLS when the server authenticates callers
(interceptors.authorization runs first), else the `x-client-id` header it
declares, else its address. Buckets of
idle callers are evicted (least recently used first) beyond `max_callers`,
so hostile callers cannot grow memory without bound.

Limits: `RATE_LIMIT_RPS` (0: off) and `RATE_LIMIT_BURST` (default = rate),
overridden per method with `RATE_LIMIT_OVERRIDES`. Health, reflection and
admin traffic never pass through the chain, so they are never throttled.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from interceptors.call import ServerCall
from interceptors.errors import QuotaViolation, Throttled
from interceptors.metrics import MethodStats

CLIENT_ID_HEADER = "x-client-id"
HINTS_PER_SECOND = 100  # a rejection's RetryInfo is a whole number of 10 ms


def retry_hint(wait: float) -> float:
    """`wait` rounded up to a whole 1/HINTS_PER_SECOND: still a time the token is
    there by, and one of few values, so the encoded rejection is cached
    (errors.encoded_status) rather than built per call."""
    steps = math.ceil(wait * HINTS_PER_SECOND - 1e-9)  # 1e-9: 0.2 s is 20 steps, not 21
    return max(1, steps) / HINTS_PER_SECOND


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


class TokenBucket:
    __slots__ = ("_rate", "_tokens", "_updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate
        self._tokens = rate.burst
        self._updated = now

    def reserve(self, now: float) -> float:
        """Takes a token now or on credit: the seconds until it is really there (0: now)."""
        rate = self._rate
        self._tokens = min(rate.burst, self._tokens + (now - self._updated) * rate.per_second)
        self._updated = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / rate.per_second

    def refund(self) -> None:
        self._tokens += 1.0

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        rate = self._rate
        self._tokens = min(rate.burst, self._tokens + (now - self._updated) * rate.per_second)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate.per_second


class RateLimitLayer:
    def __init__(
        self,
        rate: Rate,
        stats: MethodStats,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.stats = stats
        self.max_callers = max_callers
        self.clock = clock
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._limit = f"{rate.per_second:g}/s (burst {rate.burst:g})"
        self._metadata = {"limitPerSecond": f"{rate.per_second:g}"}

    def caller_of(self, call: ServerCall) -> str:
        if call.caller:
            return f"id:{call.caller[:256]}"  # authenticated: a header cannot change it
        client_id = call.header(CLIENT_ID_HEADER)
        if client_id:
            return f"client:{client_id[:64]}"
        peer = call.context.peer()
        host = peer.rsplit(":", 1)[0] if peer else "unknown"
        return f"peer:{host}"

    def begin(self, call: ServerCall) -> None:
        caller = self.caller_of(call)
        now = self.clock()
        bucket = self.buckets.get(caller)
        if bucket is None:
            bucket = self.buckets[caller] = TokenBucket(self.rate, now)
            if len(self.buckets) > self.max_callers:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(caller)
        wait = bucket.take(now)
        if wait:
            self.stats.throttled += 1
            raise Throttled(
                f"rate limit of {self._limit} exceeded for {call.policy.full_method}",
                [QuotaViolation(subject=caller, description=f"{self._limit} per caller")],
                reason="RATE_LIMITED",
                metadata=self._metadata,
                retry_after=retry_hint(wait),
            )

    def end(self, call: ServerCall) -> None:
        return None


class ClientRateLimiter:
    """Keeps calls to one dependency under its published rate: a call waits for its
    token when the wait fits within `max_wait` and its deadline, else is refused."""

    def __init__(
        self, rate: Rate, max_wait: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.bucket = TokenBucket(rate, clock())
        self.max_wait = max_wait
        self.clock = clock

    async def acquire(self, budget: float) -> bool:
        wait = self.bucket.reserve(self.clock())
        if wait == 0.0:
            return True
        if wait > min(self.max_wait, budget):
            self.bucket.refund()
            return False
        await asyncio.sleep(wait)
        return True
