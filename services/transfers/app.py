"""Composition root of the Transfers service (entry point `transfers`).

Settings (besides services.resources'):
- `ACCOUNTS_TARGET`: the gRPC target of the Accounts service (default
  `127.0.0.1:50051`; in Kubernetes `dns:///accounts-headless:50051`), with
  its client policies from `CLIENT_ACCOUNTS_*` (clients.settings);
- `SAGA_DEADLINE_SECONDS` (30): how long a transfer may keep retrying
  transient failures before it compensates;
- `SAGA_LEASE_SECONDS` (10): how long a crashed process's transfers wait
  before another process resumes them; `SAGA_RECOVERY_INTERVAL_SECONDS` (1);
- `EVENTS_CONSUMER` (true): run the activity-feed consumer in this process,
  with its settings (services.transfers.events); false where it runs as a
  Deployment of its own (Kubernetes).
"""

from __future__ import annotations

from durable.events import SqsPublisher
from durable.page_tokens import PageTokens
from durable.saga import SagaEngine
from ledger.v1.accounts_platform import AccountsClient
from server.application import Application, RuntimeContext
from services.resources import LedgerAws
from services.transfers.activity import ActivityFeed
from services.transfers.events import ERROR_DOMAIN, ConsumerSettings
from services.transfers.saga import TransferSaga
from services.transfers.service import TransfersService


async def build(context: RuntimeContext) -> Application:
    env = context.env
    target = env.string("ACCOUNTS_TARGET", "127.0.0.1:50051")
    saga_deadline = env.seconds("SAGA_DEADLINE_SECONDS", "30")
    lease = env.seconds("SAGA_LEASE_SECONDS", "10")
    recovery_interval = env.seconds("SAGA_RECOVERY_INTERVAL_SECONDS", "1")
    consume = env.boolean("EVENTS_CONSUMER", "true")
    consumer_settings = ConsumerSettings.from_env(env)
    aws = LedgerAws(context)
    # Every setting is read before the first AWS call: a bad one stops start-up first.
    accounts = AccountsClient(context.channels.connect(target, dependency="accounts"))
    await aws.open(events_queue=True)
    engine = SagaEngine(
        aws.dynamodb,
        aws.names.transfers,
        [TransferSaga(accounts)],
        SqsPublisher(await aws.sqs(), aws.events_queue_url),
        lease_seconds=lease,
        registry=context.registry,
    )
    feed = ActivityFeed(aws.dynamodb, aws.names.activity)
    workers = {"saga-recovery": lambda: engine.recover_forever(recovery_interval)}
    if consume:
        consumer = await consumer_settings.consumer(aws, context.registry)
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
        error_domain=ERROR_DOMAIN,
    )
