"""Prometheus metrics with go-grpc-prometheus names and labels, so dashboards work.

For each side (`server`, `client`): `grpc_<side>_started_total`,
`grpc_<side>_handled_total` (with `grpc_code` in Go's names),
`grpc_<side>_msg_received_total`, `grpc_<side>_msg_sent_total`,
`grpc_<side>_handling_seconds` (histogram with Prometheus' default buckets,
as go-grpc-prometheus uses), all labelled `grpc_type`, `grpc_service`,
`grpc_method`; plus `platform_<side>_in_flight`, and on the server
`platform_server_throttled_total`, `platform_server_shed_total`,
`platform_server_concurrency_limit`, `platform_server_queue_delay_seconds`
(interceptors.queue_delay), on the client
`platform_client_retries_total` and `platform_client_retries_denied_total`
(retries the budget refused). Client counts are per attempt, as the network
sees them.

Departure from the usual prometheus-client pattern, for the hot path: the
counts live in plain integers per method (`MethodStats`), updated on the
event loop's thread without locks, and a custom collector turns them into
metric families when `/metrics` is scraped (on the same thread). A
prometheus-client `Counter.inc()` takes a lock and several calls each; six
of them per RPC were a measurable share of the chain's cost (`make bench`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from interceptors.call import ServerCall
from interceptors.codes import GO_NAMES
from interceptors.policy import MethodPolicy

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
_OK = grpc.StatusCode.OK


class MethodStats:
    """Counts of one method. Only the event loop's thread writes them."""

    __slots__ = (
        "buckets",
        "handled",
        "handled_ok",
        "in_flight",
        "labels",
        "received",
        "rejected",
        "retries",
        "retries_denied",
        "sent",
        "shed",
        "started",
        "sum",
        "throttled",
    )

    def __init__(self, policy: MethodPolicy) -> None:
        self.labels = [policy.arity.value, policy.service, policy.method]
        self.started = 0
        self.received = 0
        self.sent = 0
        self.in_flight = 0
        self.throttled = 0
        self.shed = 0
        self.retries = 0
        self.retries_denied = 0
        self.rejected: dict[str, int] = {}  # client: calls refused before the network, by reason
        self.handled_ok = 0
        self.handled: dict[grpc.StatusCode, int] = {}  # the other codes
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def finished(self, code: grpc.StatusCode, seconds: float, received: int, sent: int) -> None:
        """One call ended: no longer in flight, counted by code, timed, messages counted."""
        self.in_flight -= 1
        if code is _OK:
            # Not through the dict: a StatusCode key hashes through Enum.__hash__, a Python
            # call, and this runs for every call.
            self.handled_ok += 1
        else:
            self.handled[code] = self.handled.get(code, 0) + 1
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.received += received
        self.sent += sent


class RpcMetrics(Collector):
    """One side's metric families, collected from every method's `MethodStats`."""

    def __init__(self, registry: CollectorRegistry, side: str = "server") -> None:
        self.side = side
        self._methods: list[MethodStats] = []
        self.concurrency_limit: Callable[[], float] | None = None
        self.queue_delay: Callable[[], float] | None = None
        self.breaker_states: Callable[[], list[tuple[str, int]]] | None = None
        registry.register(self)

    def for_method(self, policy: MethodPolicy) -> MethodStats:
        stats = MethodStats(policy)
        self._methods.append(stats)
        return stats

    def collect(self) -> Iterator[Metric]:
        side = self.side
        started = CounterMetricFamily(
            f"grpc_{side}_started", f"Total number of RPCs started on the {side}.", labels=_LABELS
        )
        handled = CounterMetricFamily(
            f"grpc_{side}_handled",
            f"Total number of RPCs completed on the {side}, regardless of success or failure.",
            labels=[*_LABELS, "grpc_code"],
        )
        received = CounterMetricFamily(
            f"grpc_{side}_msg_received",
            f"Total number of RPC stream messages received on the {side}.",
            labels=_LABELS,
        )
        sent = CounterMetricFamily(
            f"grpc_{side}_msg_sent",
            f"Total number of gRPC stream messages sent by the {side}.",
            labels=_LABELS,
        )
        handling = HistogramMetricFamily(
            f"grpc_{side}_handling_seconds",
            f"Histogram of response latency (seconds) of gRPC calls on the {side}.",
            labels=_LABELS,
        )
        short = ["grpc_service", "grpc_method"]
        in_flight = GaugeMetricFamily(
            f"platform_{side}_in_flight", "RPCs in flight right now.", labels=short
        )
        if side == "server":
            first = ("throttled", "RPCs rejected by the rate limiter (RESOURCE_EXHAUSTED).")
            second = ("shed", "RPCs shed for overload (UNAVAILABLE).")
        else:
            first = ("retries", "Attempts after the first of a call.")
            second = ("retries_denied", "Retries the retry budget refused.")
        extra = [
            (name, CounterMetricFamily(f"platform_{side}_{name}", text, labels=short))
            for name, text in (first, second)
        ]
        for stats in self._methods:
            labels = stats.labels
            started.add_metric(labels, stats.started)
            handled.add_metric([*labels, "OK"], stats.handled_ok)
            for code, count in stats.handled.items():
                handled.add_metric([*labels, GO_NAMES[code]], count)
            received.add_metric(labels, stats.received)
            sent.add_metric(labels, stats.sent)
            cumulative, total = [], 0
            for bound, count in zip((*BUCKETS, float("inf")), stats.buckets, strict=True):
                total += count
                cumulative.append((_bound(bound), total))
            handling.add_metric(labels, cumulative, stats.sum)
            in_flight.add_metric(labels[1:], stats.in_flight)
            for name, family in extra:
                family.add_metric(labels[1:], getattr(stats, name))
        yield from (started, handled, received, sent, handling, in_flight)
        yield from (family for _, family in extra)
        if side == "client":
            rejected = CounterMetricFamily(
                "platform_client_rejected",
                "Calls refused on the client, before the network (CIRCUIT_OPEN, "
                "BULKHEAD_FULL, CLIENT_RATE_LIMITED).",
                labels=[*short, "reason"],
            )
            for stats in self._methods:
                for reason, count in stats.rejected.items():
                    rejected.add_metric([*stats.labels[1:], reason], count)
            yield rejected
        if self.breaker_states is not None:
            yield breaker_state_family("platform_client_breaker_state", self.breaker_states())
        if self.concurrency_limit is not None:
            yield GaugeMetricFamily(
                "platform_server_concurrency_limit",
                "Current adaptive concurrency limit of the load shedder.",
                value=self.concurrency_limit(),
            )
        if self.queue_delay is not None:
            yield GaugeMetricFamily(
                "platform_server_queue_delay_seconds",
                "Round trip of the server's latest health check to itself: its queueing delay.",
                value=self.queue_delay(),
            )


def breaker_state_family(name: str, states: Iterable[tuple[str, int]]) -> GaugeMetricFamily:
    """A gauge of circuit breakers by name (`breaker` label), as `State` values."""
    family = GaugeMetricFamily(
        name, "Circuit breaker state: 0 closed, 1 open, 2 half-open.", labels=["breaker"]
    )
    for breaker, state in states:
        family.add_metric([breaker], state)
    return family


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsLayer:
    def __init__(self, stats: MethodStats) -> None:
        self.stats = stats

    def begin(self, call: ServerCall) -> None:
        stats = self.stats
        stats.started += 1
        stats.in_flight += 1

    def end(self, call: ServerCall) -> None:
        self.stats.finished(call.code, call.duration, call.received, call.sent)
