"""Prometheus metrics with go-grpc-prometheus names and labels, so dashboards work.

Server side: `grpc_server_started_total`, `grpc_server_handled_total`
(with `grpc_code` in Go's names), `grpc_server_msg_received_total`,
`grpc_server_msg_sent_total`, `grpc_server_handling_seconds` (histogram,
Prometheus' default buckets as go-grpc-prometheus uses), all labelled
`grpc_type`, `grpc_service`, `grpc_method`; plus `platform_server_in_flight`,
`platform_server_throttled_total`, `platform_server_shed_total` and
`platform_server_concurrency_limit`.

The labelled children are looked up once per method (`MethodMetrics`), not
per call: a `.labels()` lookup costs more than the increment it feeds.
Registered on an injected registry (one per process, served on `/metrics`).
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from interceptors.call import ServerCall
from interceptors.codes import GO_NAMES
from interceptors.policy import MethodPolicy

_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class ServerMetrics:
    """The server's metric families, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            _LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            _LABELS,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            _LABELS,
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            _LABELS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "platform_server_in_flight",
            "RPCs being handled right now.",
            ("grpc_service", "grpc_method"),
            registry=registry,
        )
        self.throttled = Counter(
            "platform_server_throttled_total",
            "RPCs rejected by the rate limiter (RESOURCE_EXHAUSTED).",
            ("grpc_service", "grpc_method"),
            registry=registry,
        )
        self.shed = Counter(
            "platform_server_shed_total",
            "RPCs shed by the adaptive concurrency limit (UNAVAILABLE).",
            ("grpc_service", "grpc_method"),
            registry=registry,
        )
        self.concurrency_limit = Gauge(
            "platform_server_concurrency_limit",
            "Current adaptive concurrency limit of the load shedder.",
            registry=registry,
        )

    def for_method(self, policy: MethodPolicy) -> MethodMetrics:
        return MethodMetrics(self, policy)


class MethodMetrics:
    """The children of one method, resolved once."""

    def __init__(self, families: ServerMetrics, policy: MethodPolicy) -> None:
        labels = (policy.arity.value, policy.service, policy.method)
        self._families = families
        self._labels = labels
        self.started = families.started.labels(*labels)
        self.received = families.received.labels(*labels)
        self.sent = families.sent.labels(*labels)
        self.handling = families.handling.labels(*labels)
        self.in_flight = families.in_flight.labels(policy.service, policy.method)
        self.throttled = families.throttled.labels(policy.service, policy.method)
        self.shed = families.shed.labels(policy.service, policy.method)
        self._handled = {
            grpc.StatusCode.OK: families.handled.labels(*labels, GO_NAMES[grpc.StatusCode.OK])
        }

    def handled(self, code: grpc.StatusCode) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._families.handled.labels(*self._labels, GO_NAMES[code])
            self._handled[code] = child
        return child


class MetricsLayer:
    def __init__(self, metrics: MethodMetrics) -> None:
        self.metrics = metrics

    def begin(self, call: ServerCall) -> None:
        self.metrics.started.inc()
        self.metrics.in_flight.inc()

    def end(self, call: ServerCall) -> None:
        metrics = self.metrics
        metrics.in_flight.dec()
        metrics.handled(call.code).inc()
        metrics.handling.observe(call.elapsed)
        if call.received:
            metrics.received.inc(call.received)
        if call.sent:
            metrics.sent.inc(call.sent)
