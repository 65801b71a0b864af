"""OpenTelemetry server spans, on the OpenTelemetry API directly.

Extracts W3C `traceparent`/`tracestate` and `baggage` from the call's
metadata, starts a SERVER span named `package.Service/Method` with the
semantic-convention attributes (`rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`), makes it current for the handler (so logs and
outbound calls carry it), and ends it with the call's status; server errors
mark the span as an error.

Departure: `opentelemetry-instrumentation-grpc`'s aio server interceptor is
not used on the hot path. It adds a grpc.aio interceptor (an extra coroutine
and handler lookup per call) and a per-call wrapper of the servicer context;
a chain built on it was reported (issue 3) at about 70% of a bare server's
throughput on this kind of machine, against the 85% target. This layer is
two synchronous hooks in our chain (see `make bench` for its cost); with no
exporter configured, `PropagationLayer` only carries a caller's context on.
The package stays a dependency for services that want its client-side
instrumentation.

Hostile context: a caller's `baggage` is parsed before any protection runs
(authorization, rate limit, shedding), and OpenTelemetry's parser splits it
with a regex that takes quadratic time on a run of blanks (63 ms a call for
7,500 spaces, measured on a real server). `carrier` drops a `baggage` holding
a run of 16 blanks (no real list member has one), or longer than the 8192
characters W3C bounds it to, before the parser sees it, as a propagator drops
any invalid header: unparsed, not an error. Shorter runs keep the split
linear.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from interceptors.call import ServerCall
from interceptors.codes import SERVER_ERRORS
from interceptors.policy import MethodPolicy

PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
MAX_BAGGAGE = 8192  # W3C's and OpenTelemetry's own bound; the blank runs are what cost
_BLANKS = re.compile(r"[ \t]{16}")


def carrier(metadata: Mapping[str, str | bytes]) -> Mapping[str, str | bytes]:
    """`metadata` to extract trace context from, without a `baggage` unsafe to parse."""
    baggage = metadata.get("baggage")
    if baggage is None or (
        isinstance(baggage, str) and len(baggage) <= MAX_BAGGAGE and not _BLANKS.search(baggage)
    ):
        return metadata
    return {key: value for key, value in metadata.items() if key != "baggage"}


class PropagationLayer:
    """When no span is exported (TRACING_EXPORTER=NONE): no spans, but a caller's
    trace context and baggage are still made current for logs and outbound calls.
    Creating a non-recording SDK span per call would cost as much as a recording
    one's bookkeeping for nothing."""

    def begin(self, call: ServerCall) -> None:
        metadata = call.metadata
        if "traceparent" not in metadata and "baggage" not in metadata:
            return
        parent = PROPAGATOR.extract(carrier(metadata))
        call.span_token = otel_context.attach(parent)
        span_context = trace.get_current_span(parent).get_span_context()
        if span_context.is_valid:
            call.trace_id = format(span_context.trace_id, "032x")
            call.span_id = format(span_context.span_id, "016x")

    def end(self, call: ServerCall) -> None:
        if call.span_token is not None:
            otel_context.detach(call.span_token)


class TracingLayer:
    def __init__(self, tracer: trace.Tracer, policy: MethodPolicy) -> None:
        self.tracer = tracer
        self.name = policy.full_method[1:]
        self.attributes = {
            "rpc.system": "grpc",
            "rpc.service": policy.service,
            "rpc.method": policy.method,
        }

    def begin(self, call: ServerCall) -> None:
        parent = PROPAGATOR.extract(carrier(call.metadata))
        span = self.tracer.start_span(
            self.name, context=parent, kind=trace.SpanKind.SERVER, attributes=self.attributes
        )
        call.span = span
        call.span_token = otel_context.attach(trace.set_span_in_context(span, parent))
        span_context = span.get_span_context()
        call.trace_id = format(span_context.trace_id, "032x")
        call.span_id = format(span_context.span_id, "016x")

    def end(self, call: ServerCall) -> None:
        span = call.span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", call.code.value[0])
            if call.code in SERVER_ERRORS:
                span.set_status(Status(StatusCode.ERROR, call.code.name))
            if call.error is not None and call.code is grpc.StatusCode.INTERNAL:
                span.record_exception(call.error)
        span.end()
        otel_context.detach(call.span_token)
