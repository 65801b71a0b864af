"""Circuit breakers: stop calling a dependency that is failing, probe it, come back.

Anchor: Resilience4j's CircuitBreaker. Outcomes are kept in a sliding window
that is both time- and count-based (the last `window_calls` calls of the last
`window_seconds`). Once it holds `minimum_calls`, the breaker opens when the
failure rate reaches `failure_rate` or the slow-call rate (calls slower than
`slow_call_seconds`) reaches `slow_call_rate`. Open, it rejects every call at
once; after `open_seconds` (growing by `open_growth` on each consecutive
failed probe, up to `max_open_seconds`: Resilience4j's exponential wait) it lets
`half_open_probes` calls through: all succeed and it closes (and the open time
resets), one fails and it opens again.

Only the server's failures count (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
UNKNOWN, RESOURCE_EXHAUSTED); a client error proves the server answered and
counts as a success. State changes go to `on_change` (logs, metrics).
Departures: a call is only slow past `slow_call_seconds` *or* half its
method's contract deadline, whichever is longer (the client chain passes it):
a saga method allowed 10 s is not slow at 1.2 s, and must not open the
breaker of its whole target. And a probe that answered, only slowly, opens
the breaker again for the same time, without growing it: the dependency is
answering, and an open time grown to a minute would outlast a brown-out (seen
against a slow DynamoDB emulator, where every probe was slow and the open
time reached 60 s). A failed probe grows it.
Pure logic with an injected clock: the chain (clients.chain) decides what a
rejected call looks like on the wire (UNAVAILABLE, reason CIRCUIT_OPEN).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class State(enum.Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerSettings:
    window_seconds: float = 10.0
    window_calls: int = 100
    minimum_calls: int = 20
    failure_rate: float = 0.5
    slow_call_seconds: float = 1.0
    slow_call_rate: float = 0.8
    open_seconds: float = 5.0
    open_growth: float = 2.0
    max_open_seconds: float = 60.0
    half_open_probes: int = 3


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        on_change: Callable[[str, State, State], None] = lambda name, old, new: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self.on_change = on_change
        self.clock = clock
        self.state = State.CLOSED
        self._window: deque[tuple[float, bool, bool]] = deque()  # (time, failed, slow)
        self._failures = 0  # running counts of the window, so a call costs O(1)
        self._slows = 0
        self._open_until = 0.0
        self._open_for = settings.open_seconds
        self._probes_started = 0
        self._probes_passed = 0

    def _move(self, new: State) -> None:
        old, self.state = self.state, new
        if old is not new:
            self.on_change(self.name, old, new)

    @property
    def open_until(self) -> float:
        """When the current (or last) open period ends, on the breaker's clock."""
        return self._open_until

    def retry_after(self) -> float:
        """Seconds until the breaker will let a probe through (0 unless open)."""
        return max(0.0, self._open_until - self.clock()) if self.state is State.OPEN else 0.0

    def allow(self) -> bool:
        """May a call go out now? A True in HALF_OPEN takes one probe slot."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self.clock() < self._open_until:
                return False
            self._probes_started = self._probes_passed = 0
            self._move(State.HALF_OPEN)
        if self._probes_started >= self.settings.half_open_probes:
            return False
        self._probes_started += 1
        return True

    def release_probe(self) -> None:
        """Gives back a probe slot that `allow` took for a call that never went out."""
        if self.state is State.HALF_OPEN and self._probes_started > 0:
            self._probes_started -= 1

    def record(self, code: grpc.StatusCode, seconds: float, slow_after: float = 0.0) -> None:
        """`slow_after`: the caller's own slow-call threshold when longer than the setting."""
        failed = code in FAILURES
        slow = seconds >= max(self.settings.slow_call_seconds, slow_after)
        if self.state is State.HALF_OPEN:
            if failed or slow:
                self._open(grow=failed)
                return
            self._probes_passed += 1
            if self._probes_passed >= self.settings.half_open_probes:
                self._open_for = self.settings.open_seconds
                self._move(State.CLOSED)
            return
        if self.state is State.OPEN:
            return  # a call that started before the breaker opened
        now = self.clock()
        window = self._window
        window.append((now, failed, slow))
        self._failures += failed
        self._slows += slow
        horizon = now - self.settings.window_seconds
        while window and (window[0][0] < horizon or len(window) > self.settings.window_calls):
            _, old_failed, old_slow = window.popleft()
            self._failures -= old_failed
            self._slows -= old_slow
        if len(window) < self.settings.minimum_calls:
            return
        if (
            self._failures / len(window) >= self.settings.failure_rate
            or self._slows / len(window) >= self.settings.slow_call_rate
        ):
            self._open(grow=False)

    def _open(self, grow: bool) -> None:
        if grow:
            self._open_for = min(
                self.settings.max_open_seconds, self._open_for * self.settings.open_growth
            )
        self._open_until = self.clock() + self._open_for
        self._window.clear()
        self._failures = self._slows = 0
        self._move(State.OPEN)
