"""JSON logs on stderr through python-json-logger.

Field names follow PLATFORM.md (`timestamp` in RFC 3339 UTC, `log_level`,
`service_name`, `message`, ...); anything passed in `extra=` becomes a field.
The server chain's access log adds the per-call fields; every other line
logged while a call is handled gets its `correlation_id` and `trace_id`
from the context (`CallContextFilter`).
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from interceptors.correlation import current_correlation_id


class CallContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            correlation_id = current_correlation_id()
            if correlation_id is not None:
                record.correlation_id = correlation_id
                span_context = trace.get_current_span().get_span_context()
                if span_context.is_valid:
                    record.trace_id = format(span_context.trace_id, "032x")
                    record.span_id = format(span_context.span_id, "016x")
        return True


QUIET_AT_DEBUG = ("botocore", "aiobotocore", "urllib3", "s3transfer")
# They warn, quoting it, about every malformed traceparent, tracestate or baggage a
# caller sends (up to 8 KB a line, per call); such a header is ignored, as it should be.
CALLER_CONTEXT_WARNINGS = (
    "opentelemetry.trace.span",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.baggage.propagation",
)


def configure_logging(service_name: str, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "log_level", "name": "logger"},
            static_fields={"service_name": service_name},
            timestamp=True,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would print one line per probe and scrape.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # botocore's DEBUG lines hold whole request and response bodies: personal data
    # from our tables and the values of secrets. Never below INFO, whatever LOG_LEVEL.
    for name in QUIET_AT_DEBUG:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    for name in CALLER_CONTEXT_WARNINGS:
        logging.getLogger(name).setLevel(logging.ERROR)
