"""Load shedding: an adaptive concurrency limit that sheds before latency collapses.

Anchor: Netflix concurrency-limits' Gradient2 (also the idea behind go-zero's
adaptive shedder). The limit follows the ratio of the long-term latency
(an exponential average) to the latest latency: while latency stays near
its long-term level the limit grows by a small queue allowance
(sqrt(limit)); when calls queue up and latency rises, the gradient falls
(never below 0.5 per step, to ride out outliers) and the limit shrinks.
A call that arrives with `limit` calls already in flight is rejected at once
with UNAVAILABLE, reason LOAD_SHED and a RetryInfo, having cost almost
nothing. As Netflix's `WindowedLimit` does, calls are sampled in windows of
`window` calls: the window's average latency and its peak concurrency make
one sample, so the arithmetic runs once per window, not per call. Departure:
the limit is server-wide, shared by all methods of the process.

The limit cannot see calls that wait in gRPC's core before the chain starts
them, which is where they wait when the process runs out of CPU; the layer
also sheds the share of calls that `interceptors.queue_delay` asks for then,
with the same reason and the measured delay in the ErrorInfo metadata. It
sheds those only for methods whose calls take `min_handling` or more (a
moving average over the calls served): a rejection costs about what serving
a small call does (grpc's own work per call is most of both), so shedding
cheap calls would free nothing and could keep the queue it should drain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from random import random

from interceptors.call import ServerCall
from interceptors.errors import Shed
from interceptors.metrics import MethodStats
from interceptors.queue_delay import QueueDelayGate

WARMUP_SAMPLES = 10
HANDLING_SMOOTHING = 1 / 32  # weight of the latest call in a method's moving average


@dataclass(frozen=True)
class ShedSettings:
    initial_limit: float = 100.0
    min_limit: float = 20.0
    max_limit: float = 1000.0
    smoothing: float = 0.2
    rtt_tolerance: float = 1.5
    long_window: int = 600
    window: int = 10  # calls per sample


class AdaptiveLimit:
    """Gradient2 estimator of how many calls may be in flight (pure logic, no I/O)."""

    def __init__(self, settings: ShedSettings) -> None:
        self.settings = settings
        self.limit = settings.initial_limit
        self.in_flight = 0
        self.long_rtt = 0.0
        self._samples = 0
        self._window_calls = 0
        self._window_rtt = 0.0  # sum over the window
        self._window_peak = 0  # most calls in flight seen in the window

    def try_acquire(self) -> bool:
        if self.in_flight >= int(self.limit):
            return False
        self.in_flight += 1
        return True

    def release(self, rtt: float) -> None:
        in_flight = self.in_flight
        self.in_flight = in_flight - 1
        if in_flight > self._window_peak:
            self._window_peak = in_flight
        self._window_rtt += rtt
        self._window_calls += 1
        if self._window_calls >= self.settings.window:
            self.on_sample(self._window_rtt / self._window_calls, self._window_peak)
            self._window_calls, self._window_rtt, self._window_peak = 0, 0.0, 0

    def _average(self, rtt: float) -> float:
        self._samples += 1
        if self._samples <= WARMUP_SAMPLES:
            self.long_rtt += (rtt - self.long_rtt) / self._samples
        else:
            factor = 2.0 / (self.settings.long_window + 1)
            self.long_rtt += (rtt - self.long_rtt) * factor
        return self.long_rtt

    def on_sample(self, rtt: float, in_flight: int) -> None:
        s = self.settings
        short = max(rtt, 1e-6)
        long = self._average(short)
        if long / short > 2:
            # Latency is back to normal after a long overload: forget the overload faster.
            self.long_rtt *= 0.95
        if in_flight < self.limit / 2:
            return  # app-limited: no evidence that more concurrency is safe
        gradient = max(0.5, min(1.0, s.rtt_tolerance * long / short))
        target = self.limit * gradient + math.sqrt(self.limit)
        smoothed = self.limit * (1 - s.smoothing) + target * s.smoothing
        self.limit = max(s.min_limit, min(s.max_limit, smoothed))


class SheddingLayer:
    """One method's shedding; the limiter and the gate are the process's."""

    def __init__(
        self,
        limiter: AdaptiveLimit,
        gate: QueueDelayGate,
        stats: MethodStats,
        min_handling: float = 0.0,
    ) -> None:
        self.limiter = limiter
        self.gate = gate
        self.stats = stats
        self.min_handling = min_handling
        # Seconds this method's served calls take, a moving average; kept only when
        # the gate can shed. A method starts cheap: it is shed once it has shown its cost.
        self.handling = 0.0
        self.measures_handling = gate.on

    def begin(self, call: ServerCall) -> None:
        share = self.gate.share
        # random() draws a share of the load, not a secret.
        if share and self.handling >= self.min_handling and random() < share:  # noqa: S311
            raise self._shed("queueDelayMs", round(self.gate.delay * 1000), self.gate.window)
        if not self.limiter.try_acquire():
            retry_after = round(max(0.05, self.limiter.long_rtt), 3)
            raise self._shed("concurrencyLimit", int(self.limiter.limit), retry_after)
        call.shed_slot = True

    def _shed(self, cause: str, value: int, retry_after: float) -> Shed:
        """The rejection, counted; `cause` names the measure that asked for it."""
        self.stats.shed += 1
        return Shed(
            "server overloaded; retry later",
            reason="LOAD_SHED",
            metadata={cause: str(value)},
            retry_after=retry_after,
        )

    def end(self, call: ServerCall) -> None:
        if call.shed_slot:
            self.limiter.release(call.duration)
            if self.measures_handling:
                self.handling += (call.duration - self.handling) * HANDLING_SMOOTHING
