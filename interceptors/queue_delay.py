"""Queueing delay: the wait a CPU-bound grpc.aio server hides from its concurrency limit.

Why: grpc.aio asks gRPC's core for one call at a time, from its event loop.
When the process runs out of CPU, new calls wait in the core's pending queue
until the loop gets round to asking, and once started most run to their end
without a pause. The adaptive concurrency limit (interceptors.shedding)
counts and times calls between the chain's begin and end, so it sees
neither the wait nor the calls waiting. Measured on the echo service with
h2load holding 1280 calls in flight: mean latency 143 ms, limit untouched,
nothing shed. A thread or goroutine per call, as Netflix's limiter and
go-zero's shedder assume, keeps that queue inside the measured span; here it
is outside, in C, where no Python code can see a call's age. The event
loop's own lag does not show it either: between two calls the loop runs its
timers (measured: 6 ms of lag while calls waited 240 ms).

What is measured instead (server.queue_probe): the round trip of a health
check the server sends itself through its own listener, which queues behind
every waiting call. `QueueDelayGate` turns those samples into a share of new
calls to shed. Anchors: CoDel (Nichols and Jacobson, as Facebook's Wangle
server queues use it) for telling a standing queue from a burst: only when
the smallest delay of a whole `window` is above `target` does the queue
stand (one slow call or a GC pause does not); then a growing share of new
calls is shed, by STEP per window up to MAX_SHARE, and once the delay is back
under target the share halves per window (AIMD, as TCP does). A shed call
costs the chain's rejection path, a small fraction of a CPU-bound handler's
work, so the queue drains and the calls let through wait about `target`.
Where handlers cost less than a rejection (1.1-1.2 small echo calls) and
callers do not back off, shedding keeps the queue it should drain; `make
bench` saw a server held that way. So `interceptors.shedding` applies the
share only to methods whose calls take SHED_QUEUE_DELAY_MIN_HANDLING_SECONDS
or more. On by default (SHED_QUEUE_DELAY_SECONDS=0.05; 0 turns it off, and
the probe with it).

Departures: calls are shed at random, not the oldest first (their age is in
the core); the share is the process's, shared by all methods, like the
concurrency limit.
"""

from __future__ import annotations

import logging
import math

STEP = 0.1  # share of new calls shed added per window while the queue stands
MAX_SHARE = 0.9  # always let some calls through: they are how recovery is seen
MIN_SHARE = 0.01  # below this the share is 0

_log = logging.getLogger(__name__)


class QueueDelayGate:
    """The latest queueing delay, and the share of new calls to shed for it (pure logic).

    `target` 0 never sheds (and server.runtime then runs no probe to feed it).
    """

    def __init__(self, target: float, window: float = 0.25) -> None:
        self.target = target
        self.window = window
        self.delay = 0.0  # the latest sample, seconds
        self.share = 0.0  # of new calls to shed, 0 to MAX_SHARE
        self._window_min = math.inf
        self._window_end: float | None = None

    @property
    def on(self) -> bool:
        """Whether it can shed at all (the runtime probes only then)."""
        return self.target > 0

    def observe(self, delay: float, now: float) -> None:
        """One sample: a call that arrived `delay` seconds before `now` was answered."""
        self.delay = delay
        if delay < self._window_min:
            self._window_min = delay
        if self._window_end is None:
            self._window_end = now + self.window
            return
        if now < self._window_end:
            return
        if self.on and self._window_min > self.target:
            if not self.share:
                _log.warning(
                    "shedding calls: they wait too long to start",
                    extra={"queue_delay_ms": round(self._window_min * 1000, 1)},
                )
            self.share = min(MAX_SHARE, self.share + STEP)
        elif self.share:
            halved = self.share / 2
            self.share = halved if halved >= MIN_SHARE else 0.0
            if not self.share:
                _log.info("stopped shedding calls: the queue is gone")
        self._window_min = math.inf
        self._window_end = now + self.window
