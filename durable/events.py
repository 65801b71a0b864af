"""Events on SQS: the publisher side, and the context an event carries.

`trace_context()` captures, while a call is being served, its correlation
id and W3C trace context (`traceparent`, `tracestate`, `baggage`); a saga
stores it when it starts, so the event published when it ends, possibly by
another process after a crash, still carries the original call's ids.
`SqsPublisher` sends one JSON event per message, with those ids and the
event's id and type as message attributes (string values), so a consumer
can log and trace without parsing the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from interceptors.correlation import HEADER as CORRELATION_HEADER
from interceptors.correlation import current_correlation_id
from interceptors.tracing import PROPAGATOR


def trace_context() -> dict[str, str]:
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    correlation_id = current_correlation_id()
    if correlation_id:
        carrier[CORRELATION_HEADER] = correlation_id
    return carrier


class SqsPublisher:
    """`sqs` is a `clients.aws.ResilientAwsClient`; `queue_url` the events queue."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url

    async def publish(self, event: Mapping[str, Any], context: Mapping[str, str]) -> None:
        attributes = {
            name: {"DataType": "String", "StringValue": value}
            for name, value in {
                **context,
                "event-id": str(event["event_id"]),
                "event-type": str(event.get("type", "")),
            }.items()
            if value
        }
        await self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=json.dumps(event, sort_keys=True),
            MessageAttributes=attributes,
        )
