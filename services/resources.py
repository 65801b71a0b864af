"""The ledger's AWS resources: their names, the local bootstrap, clients and readiness.

Names follow Terraform's (`terraform/environments/prod`): from `LEDGER_NAME`
(e.g. `ledger-prod`) come the tables `<name>-accounts`, `-transfers`,
`-idempotency` and `-activity`, the queues `<name>-events` and
`<name>-events-dlq`, and the secret `<name>/page-token-hmac-key`.

`AWS_BOOTSTRAP=true` (local runs and tests, against moto) creates whatever
is missing at start-up: the tables with their TTL and index, the queues with
the redrive policy (`EVENTS_MAX_RECEIVE_COUNT`), and a random page-token key.
In AWS it stays off: Terraform owns the resources and the services' IAM roles
cannot create them.

Readiness: DynamoDB answers through the resilient client, so an open breaker
reads as not ready (fast, no call), and the check's own call is the half-open
probe that closes the breaker again when the table is back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError as AwsClientError

from clients.aws import AwsBreakerStates, AwsClients, AwsSettings, ResilientAwsClient
from clients.secrets import SecretCache
from durable.dynamo import TableSpec, ensure_tables
from durable.saga import saga_table
from server.application import ReadinessCheck, RuntimeContext
from server.runtime import StartupError


@dataclass(frozen=True)
class LedgerNames:
    name: str

    @property
    def accounts(self) -> str:
        return f"{self.name}-accounts"

    @property
    def transfers(self) -> str:
        return f"{self.name}-transfers"

    @property
    def idempotency(self) -> str:
        return f"{self.name}-idempotency"

    @property
    def activity(self) -> str:
        return f"{self.name}-activity"

    @property
    def events_queue(self) -> str:
        return f"{self.name}-events"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}-events-dlq"

    @property
    def page_token_secret(self) -> str:
        return f"{self.name}/page-token-hmac-key"

    def tables(self) -> list[TableSpec]:
        return [
            TableSpec(self.accounts, "account_id"),
            saga_table(self.transfers),
            TableSpec(self.idempotency, "key", ttl_attribute="expires_at"),
            TableSpec(self.activity, "account_id", "sort_key"),
        ]


class LedgerAws:
    """The AWS side of one ledger process; `close()` on shutdown."""

    def __init__(self, context: RuntimeContext) -> None:
        env = context.env
        self.names = LedgerNames(env.string("LEDGER_NAME", "ledger-local"))
        self.bootstrap = env.boolean("AWS_BOOTSTRAP", "false")
        self.max_receive_count = env.integer("EVENTS_MAX_RECEIVE_COUNT", "5", minimum=1)
        self.wait_seconds = env.integer("EVENTS_WAIT_SECONDS", "20", minimum=0, maximum=20)
        self.secret_refresh = env.seconds("PAGE_TOKEN_KEY_REFRESH_SECONDS", "300")
        self.clients = AwsClients(AwsSettings.from_env(env, "dynamodb"))
        # Long polls outlast the usual socket read timeout (their deadline, clients.aws).
        polling = AwsSettings.from_env(env, "sqs")
        self.queue_clients = AwsClients(
            dataclasses.replace(polling, read_timeout=self.wait_seconds + polling.read_timeout)
        )
        AwsBreakerStates(context.registry, self.clients, self.queue_clients)
        self._dynamodb: ResilientAwsClient | None = None
        self._secrets: SecretCache | None = None
        self._events_queue_url: str | None = None

    @property
    def dynamodb(self) -> ResilientAwsClient:
        if self._dynamodb is None:
            raise RuntimeError("LedgerAws.open() has not run")
        return self._dynamodb

    @property
    def secrets(self) -> SecretCache:
        if self._secrets is None:
            raise RuntimeError("LedgerAws.open() has not run")
        return self._secrets

    @property
    def events_queue_url(self) -> str:
        if self._events_queue_url is None:
            raise RuntimeError("LedgerAws.open(events_queue=True) has not run")
        return self._events_queue_url

    async def open(self, page_tokens: bool = True, events_queue: bool = False) -> None:
        """Reads the page-token key unless the process signs no page token, finds the
        events queue if asked (and bootstraps, if configured to); start-up fails
        with one line without them."""
        try:
            await self._open(page_tokens, events_queue)
        except Exception as error:
            await self.close()
            raise StartupError(
                f"cannot open the ledger's AWS resources (LEDGER_NAME={self.names.name}, "
                f"AWS_ENDPOINT_URL): {type(error).__name__}: {error}"
            ) from None

    async def _open(self, page_tokens: bool, events_queue: bool) -> None:
        self._dynamodb = dynamodb = await self.clients.client("dynamodb")
        if self.bootstrap:
            secretsmanager = await self.clients.client("secretsmanager")
            sqs = await self.sqs()
            await bootstrap(dynamodb, sqs, secretsmanager, self.names, self.max_receive_count)
        if page_tokens:
            self._secrets = SecretCache(
                await self.clients.client("secretsmanager"),
                self.names.page_token_secret,
                self.secret_refresh,
            )
            await self._secrets.start()
        if events_queue:
            sqs = await self.sqs()
            answer = await sqs.get_queue_url(QueueName=self.names.events_queue)
            self._events_queue_url = str(answer["QueueUrl"])

    async def sqs(self) -> ResilientAwsClient:
        return await self.queue_clients.client("sqs")

    def readiness(self, table: str) -> dict[str, ReadinessCheck]:
        """The `dynamodb` check, on a table of the service's own (its role may read no other)."""

        async def dynamodb_reachable() -> bool:
            await self.dynamodb.describe_table(TableName=table)
            return True

        return {"dynamodb": dynamodb_reachable}

    async def close(self) -> None:
        if self._secrets is not None:
            await self._secrets.close()
        await self.queue_clients.close()
        await self.clients.close()


async def bootstrap(
    dynamodb: Any, sqs: Any, secretsmanager: Any, names: LedgerNames, max_receive_count: int
) -> None:
    """Creates what is missing (local runs and tests; in AWS, Terraform does): the
    tables, the events queue with its dead-letter queue, and a random page-token key."""
    await ensure_tables(dynamodb, names.tables())
    with contextlib.suppress(AwsClientError):  # ResourceExistsException: keep it
        await secretsmanager.create_secret(
            Name=names.page_token_secret, SecretBinary=os.urandom(32)
        )
    dead = await sqs.create_queue(QueueName=names.dead_letter_queue)
    attributes = await sqs.get_queue_attributes(
        QueueUrl=dead["QueueUrl"], AttributeNames=["QueueArn"]
    )
    redrive = json.dumps(
        {
            "deadLetterTargetArn": attributes["Attributes"]["QueueArn"],
            "maxReceiveCount": str(max_receive_count),
        }
    )
    await sqs.create_queue(QueueName=names.events_queue, Attributes={"RedrivePolicy": redrive})
