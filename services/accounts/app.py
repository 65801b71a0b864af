"""Composition root of the Accounts service (entry point `accounts`).

Builds the AWS side (services.resources: tables, the page-token key from
Secrets Manager), the accounts table, the idempotency store and the service.
"""

from __future__ import annotations

from durable.idempotency import DynamoIdempotencyStore
from durable.page_tokens import PageTokens
from server.application import Application, RuntimeContext
from services.accounts.service import AccountsService
from services.accounts.table import AccountsTable
from services.resources import LedgerAws


async def build(context: RuntimeContext) -> Application:
    aws = LedgerAws(context)
    await aws.open()
    service = AccountsService(
        AccountsTable(aws.dynamodb, aws.names.accounts),
        DynamoIdempotencyStore(aws.dynamodb, aws.names.idempotency),
        PageTokens(aws.secrets.values, "ledger.v1.Accounts/ListAccounts"),
    )
    return Application(
        servicers=[service],
        readiness_checks=aws.readiness(aws.names.accounts),
        on_shutdown=[aws.close],
        error_domain="accounts.ledger.internal",
    )
