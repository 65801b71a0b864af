"""Prometheus metrics with go-grpc-prometheus names and labels, so dashboards work.

Server side: `grpc_server_started_total`, `grpc_server_handled_total`
(with `grpc_code` in Go's names), `grpc_server_msg_received_total`,
`grpc_server_msg_sent_total`, `grpc_server_handling_seconds` (histogram with
Prometheus' default buckets, as go-grpc-prometheus uses), all labelled
`grpc_type`, `grpc_service`, `grpc_method`; plus `platform_server_in_flight`,
`platform_server_throttled_total`, `platform_server_shed_total` and
`platform_server_concurrency_limit`.

Departure from the usual prometheus-client pattern, for the hot path: the
counts live in plain integers per method (`MethodStats`), updated on the
event loop's thread without locks, and a custom collector turns them into
metric families when `/metrics` is scraped (on the same thread). A
prometheus-client `Counter.inc()` takes a lock and several calls each; six
of them per RPC were a measurable share of the chain's cost (`make bench`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

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


class MethodStats:
    """Counts of one method. Only the event loop's thread writes them."""

    __slots__ = (
        "buckets",
        "handled",
        "in_flight",
        "labels",
        "received",
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
        self.handled: dict[grpc.StatusCode, int] = {grpc.StatusCode.OK: 0}
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class ServerMetrics(Collector):
    """The server's metric families, collected from every method's `MethodStats`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._methods: list[MethodStats] = []
        self.concurrency_limit: Callable[[], float] | None = None
        registry.register(self)

    def for_method(self, policy: MethodPolicy) -> MethodStats:
        stats = MethodStats(policy)
        self._methods.append(stats)
        return stats

    def collect(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.", labels=_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=[*_LABELS, "grpc_code"],
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server.",
            labels=_LABELS,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server.",
            labels=_LABELS,
        )
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels=_LABELS,
        )
        short = ["grpc_service", "grpc_method"]
        in_flight = GaugeMetricFamily(
            "platform_server_in_flight", "RPCs being handled right now.", labels=short
        )
        throttled = CounterMetricFamily(
            "platform_server_throttled",
            "RPCs rejected by the rate limiter (RESOURCE_EXHAUSTED).",
            labels=short,
        )
        shed = CounterMetricFamily(
            "platform_server_shed",
            "RPCs shed by the adaptive concurrency limit (UNAVAILABLE).",
            labels=short,
        )
        for stats in self._methods:
            labels = stats.labels
            started.add_metric(labels, stats.started)
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
            throttled.add_metric(labels[1:], stats.throttled)
            shed.add_metric(labels[1:], stats.shed)
        yield from (started, handled, received, sent, handling, in_flight, throttled, shed)
        if self.concurrency_limit is not None:
            yield GaugeMetricFamily(
                "platform_server_concurrency_limit",
                "Current adaptive concurrency limit of the load shedder.",
                value=self.concurrency_limit(),
            )


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
        stats = self.stats
        stats.in_flight -= 1
        handled = stats.handled
        handled[call.code] = handled.get(call.code, 0) + 1
        stats.observe(call.elapsed)
        stats.received += call.received
        stats.sent += call.sent
