"""Client retries: which failures, how long to wait, and a budget so retries cannot
multiply an outage.

Built in Python rather than on gRPC's native service-config retry policy
(gRFC A6), which has no per-attempt timeout bound to the caller's remaining
budget, no budget shared across targets, and ignores `google.rpc.RetryInfo`.

- Only methods the contract declares NO_SIDE_EFFECTS or IDEMPOTENT are
  retried (AIP-194); anything else is sent once, whatever the settings say.
- Retryable: UNAVAILABLE; RESOURCE_EXHAUSTED and ABORTED only when the server
  attached a RetryInfo (it says a retry can succeed). Never INVALID_ARGUMENT,
  FAILED_PRECONDITION, DEADLINE_EXCEEDED or CANCELLED.
- Wait: exponential backoff with full jitter (AWS architecture blog), unless
  the server says otherwise: `RetryInfo.retry_delay`, or the
  `grpc-retry-pushback-ms` trailer (negative: do not retry) of gRFC A6.
- The caller's deadline bounds everything: an attempt is not started when
  the wait plus `min_attempt_time` no longer fits (interceptors.chain in the
  client raises DEADLINE_EXCEEDED then).
- `RetryBudget`: retries <= `ratio` x requests over a sliding window, plus a
  floor per second (Envoy's retry budget, the SRE book's per-client budget).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2

from interceptors.errors import STATUS_DETAILS_KEY

PUSHBACK_KEY = "grpc-retry-pushback-ms"
NEVER_RETRIED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
RETRIED_WITH_HINT = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff: float = 0.05
    multiplier: float = 2.0
    max_backoff: float = 1.0
    # An attempt is not started with less than this left of the deadline.
    min_attempt_time: float = 0.01
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def backoff(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max, initial x multiplier^(n-1))]."""
        ceiling = min(
            self.max_backoff, self.initial_backoff * self.multiplier ** (retry_number - 1)
        )
        return rng() * ceiling


@dataclass(frozen=True)
class ServerHint:
    """What the server said about retrying: a delay, or stop."""

    delay: float | None
    stop: bool = False


def server_hint(trailers: object) -> ServerHint:
    """Reads `grpc-retry-pushback-ms` and `RetryInfo` from a failed call's trailers."""
    delay: float | None = None
    for key, value in trailers or ():  # type: ignore[attr-defined]
        if key == PUSHBACK_KEY:
            try:
                pushback = int(value)
            except (TypeError, ValueError):
                return ServerHint(None, stop=True)  # gRFC A6: malformed means do not retry
            if pushback < 0:
                return ServerHint(None, stop=True)
            delay = pushback / 1000
        elif key == STATUS_DETAILS_KEY and delay is None:
            delay = _retry_info_delay(value)
    return ServerHint(delay)


def _retry_info_delay(encoded: object) -> float | None:
    from google.rpc import status_pb2

    if not isinstance(encoded, bytes):
        return None
    for detail in status_pb2.Status.FromString(encoded).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def retry_delay(
    policy: RetryPolicy,
    code: grpc.StatusCode,
    hint: ServerHint,
    retry_number: int,
    rng: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before retry number `retry_number` (1-based), or None: do not retry."""
    if retry_number >= policy.max_attempts or code in NEVER_RETRIED or hint.stop:
        return None
    if code in RETRIED_WITH_HINT:
        return hint.delay  # only a server hint makes these worth retrying
    if code not in policy.retryable_codes:
        return None
    return hint.delay if hint.delay is not None else policy.backoff(retry_number, rng)


class RetryBudget:
    """Retries may not exceed `ratio` x requests in the last `window` seconds,
    plus `floor_per_second` x `window`. Shared by every client of a process."""

    def __init__(
        self,
        ratio: float = 0.2,
        window: float = 10.0,
        floor_per_second: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.window = window
        self.floor = floor_per_second * window
        self.clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for events in (self._requests, self._retries):
            while events and events[0] < horizon:
                events.popleft()

    def record_request(self) -> None:
        now = self.clock()
        self._prune(now)  # amortised O(1): keeps memory to one window of calls
        self._requests.append(now)

    def try_spend(self) -> bool:
        """Takes one retry from the budget; False when none is left."""
        now = self.clock()
        self._prune(now)
        if len(self._retries) >= self.ratio * len(self._requests) + self.floor:
            return False
        self._retries.append(now)
        return True
