"""The process's OpenTelemetry tracer provider, from configuration.

`TRACING_EXPORTER`: NONE (spans are not recorded, but trace context is still
extracted and propagated, and log lines still carry trace ids), CONSOLE
(spans printed as JSON, for local debugging) or OTLP (batched to a collector;
endpoint and headers from the standard `OTEL_EXPORTER_OTLP_*` variables).
Sampling is parent-based with `TRACING_SAMPLE_RATIO` for new traces. The
provider is injected into the chain, never set as a process global.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from server.config import ServerConfig


def exporting(provider: TracerProvider) -> bool:
    """False for TRACING_EXPORTER=NONE's provider: no span would ever be recorded."""
    return provider.sampler is not ALWAYS_OFF


def tracer_provider(config: ServerConfig) -> TracerProvider:
    resource = Resource.create({"service.name": config.service})
    if config.tracing_exporter == "NONE":
        return TracerProvider(sampler=ALWAYS_OFF, resource=resource)
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(config.tracing_sample_ratio)), resource=resource
    )
    if config.tracing_exporter == "CONSOLE":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,  # imported only when used: it pulls in the OTLP protos
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
