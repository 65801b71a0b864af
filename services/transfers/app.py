"""Composition root of the Transfers service (entry point `transfers`).

Settings (besides services.resources'):
- `ACCOUNTS_TARGET`: the gRPC target of the Accounts service (default
  `127.0.0.1:50051`; in Kubernetes `dns:///accounts-headless:50051`), with
  its client policies from `CLIENT_ACCOUNTS_*` (clients.settings);
- `SAGA_DEADLINE_SECONDS` (30): how long a transfer may keep retrying
  transient failures before it compensates;
- `SAGA_LEASE_SECONDS` (10): how long a crashed process's transfers wait
  before another process resumes them; `SAGA_RECOVERY_INTERVAL_SECONDS` (1);
- `EVENTS_CONSUMER` (true): run the activity-feed consumer in this process;
  `EVENTS_MAX_IN_FLIGHT` (10) messages handled at once;
  `EVENTS_VISIBILITY_TIMEOUT_SECONDS` (30): how long a received message stays
  hidden (extended while it is handled) before another consumer may get it;
  `EVENTS_MAX_RETRY_DELAY_SECONDS` (900): the longest a failed message is
  hidden before its next attempt (the delay doubles with each receive,
  durable.consumer).
"""

from __future__ import annotations

from durable.consumer import SqsConsumer
from durable.events import SqsPublisher
from durable.page_tokens import PageTokens
from durable.saga import SagaEngine
from ledger.v1.accounts_platform import AccountsClient
from server.application import Application, RuntimeContext
from services.resources import LedgerAws
from services.transfers.activity import ActivityFeed
from services.transfers.saga import TransferSaga
from services.transfers.service import TransfersService


async def build(context: RuntimeContext) -> Application:
    env = context.env
    target = env.string("ACCOUNTS_TARGET", "127.0.0.1:50051")
    saga_deadline = env.seconds("SAGA_DEADLINE_SECONDS", "30")
    lease = env.seconds("SAGA_LEASE_SECONDS", "10")
    recovery_interval = env.seconds("SAGA_RECOVERY_INTERVAL_SECONDS", "1")
    consume = env.boolean("EVENTS_CONSUMER", "true")
    in_flight = env.integer("EVENTS_MAX_IN_FLIGHT", "10", minimum=1, maximum=1000)
    visibility = env.integer("EVENTS_VISIBILITY_TIMEOUT_SECONDS", "30", minimum=1, maximum=43200)
    max_retry_delay = env.integer("EVENTS_MAX_RETRY_DELAY_SECONDS", "900", minimum=1, maximum=43200)
    aws = LedgerAws(context)
    # Every setting is read before the first AWS call: a bad one stops start-up first.
    accounts = AccountsClient(context.channels.connect(target, dependency="accounts"))
    await aws.open()
    sqs = await aws.sqs()
    queue_url = await aws.events_queue_url()
    engine = SagaEngine(
        aws.dynamodb,
        aws.names.transfers,
        [TransferSaga(accounts)],
        SqsPublisher(sqs, queue_url),
        lease_seconds=lease,
        registry=context.registry,
    )
    feed = ActivityFeed(aws.dynamodb, aws.names.activity)
    workers = {"saga-recovery": lambda: engine.recover_forever(recovery_interval)}
    if consume:
        consumer = SqsConsumer(
            sqs,
            queue_url,
            feed.record,
            max_in_flight=in_flight,
            wait_seconds=aws.wait_seconds,
            visibility_timeout=visibility,
            max_retry_delay=max_retry_delay,
            registry=context.registry,
        )
        workers["events-consumer"] = consumer.run_forever
    return Application(
        servicers=[
            TransfersService(
                engine,
                feed,
                PageTokens(aws.secrets.values, "ledger.v1.Transfers/ListAccountActivity"),
                saga_deadline,
            )
        ],
        readiness_checks=aws.readiness(aws.names.transfers),
        workers=workers,
        on_shutdown=[engine.close, aws.close],
        error_domain="transfers.ledger.internal",
    )
