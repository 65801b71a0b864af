"""The activity-feed consumer of the Transfers service, and its own composition root.

The consumer (durable.consumer) turns the transfers' end events into the
activity feed (services.transfers.activity). By default it runs inside each
Transfers process (`EVENTS_CONSUMER`, true), which is what `make run` does.
In Kubernetes it runs as a Deployment of its own, `transfers-events`
(entry point `transfers-events`), with Transfers' `EVENTS_CONSUMER` false:
it scales apart from the gRPC traffic, a backlog of events does not compete
with calls for the Transfers pods' event loops, and its IAM role holds only
what it needs (receive from the events queue, write the activity table; no
secret, no saga table). It serves no gRPC service of its own: health,
`/ready` and `/metrics` only.

Settings: `EVENTS_MAX_IN_FLIGHT` (10) messages handled at once;
`EVENTS_VISIBILITY_TIMEOUT_SECONDS` (30): how long a received message stays
hidden (extended while it is handled) before another consumer may get it;
`EVENTS_MAX_RETRY_DELAY_SECONDS` (900): the longest a failed message is
hidden before its next attempt (the delay doubles with each receive,
durable.consumer); `EVENTS_DRAIN_SECONDS` (10): on shutdown, how long the
handlers in flight may take to finish (after the gRPC drain; count it in the
pod's grace period); and services.resources' AWS settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from durable.consumer import SqsConsumer
from server.application import Application, RuntimeContext
from server.config import EnvReader
from services.resources import LedgerAws
from services.transfers.activity import ActivityFeed

ERROR_DOMAIN = "transfers.ledger.internal"


@dataclass(frozen=True)
class ConsumerSettings:
    max_in_flight: int
    visibility_timeout: int
    max_retry_delay: int
    drain_seconds: float

    @classmethod
    def from_env(cls, env: EnvReader) -> ConsumerSettings:
        return cls(
            max_in_flight=env.integer("EVENTS_MAX_IN_FLIGHT", "10", minimum=1, maximum=1000),
            visibility_timeout=env.integer(
                "EVENTS_VISIBILITY_TIMEOUT_SECONDS", "30", minimum=1, maximum=43200
            ),
            max_retry_delay=env.integer(
                "EVENTS_MAX_RETRY_DELAY_SECONDS", "900", minimum=1, maximum=43200
            ),
            drain_seconds=env.seconds("EVENTS_DRAIN_SECONDS", "10"),
        )

    async def consumer(self, aws: LedgerAws, registry: CollectorRegistry) -> SqsConsumer:
        """The activity feed's consumer of the events queue (`aws` opened with it)."""
        feed = ActivityFeed(aws.dynamodb, aws.names.activity)
        return SqsConsumer(
            await aws.sqs(),
            aws.events_queue_url,
            feed.record,
            max_in_flight=self.max_in_flight,
            wait_seconds=aws.wait_seconds,
            visibility_timeout=self.visibility_timeout,
            max_retry_delay=self.max_retry_delay,
            drain_seconds=self.drain_seconds,
            registry=registry,
        )


async def build(context: RuntimeContext) -> Application:
    settings = ConsumerSettings.from_env(context.env)
    aws = LedgerAws(context)
    # Every setting is read before the first AWS call: a bad one stops start-up first.
    await aws.open(page_tokens=False, events_queue=True)
    consumer = await settings.consumer(aws, context.registry)
    return Application(
        servicers=[],
        readiness_checks=aws.readiness(aws.names.activity),
        workers={"events-consumer": consumer.run_forever},
        on_shutdown=[aws.close],
        error_domain=ERROR_DOMAIN,
    )
