"""Outbound propagation: what every call made while serving a call carries along.

The correlation id of the inbound call (interceptors.correlation), and the
current W3C trace context and baggage (`traceparent`, `tracestate`,
`baggage`, through the same propagator the server extracts with). A value
the caller set explicitly in `metadata` wins.
"""

from __future__ import annotations

from interceptors.call import Metadata
from interceptors.correlation import HEADER as CORRELATION_HEADER
from interceptors.correlation import current_correlation_id
from interceptors.tracing import PROPAGATOR


def outbound_metadata(metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
    outbound = list(metadata or ())
    present = {key for key, _ in outbound}
    correlation_id = current_correlation_id()
    if correlation_id is not None and CORRELATION_HEADER not in present:
        outbound.append((CORRELATION_HEADER, correlation_id))
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    outbound.extend((key, value) for key, value in carrier.items() if key not in present)
    return outbound
