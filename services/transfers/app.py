"""Composition root of the Transfers service (entry point `transfers`).

Settings: `ACCOUNTS_TARGET`, the gRPC target of the Accounts service
(default `127.0.0.1:50051`; in Kubernetes `dns:///accounts-headless:50051`);
its client policies from `CLIENT_ACCOUNTS_*` (clients.settings).
"""

from __future__ import annotations

from ledger.v1.accounts_platform import AccountsClient
from server.application import Application, RuntimeContext
from services.transfers.service import TransfersService


async def build(context: RuntimeContext) -> Application:
    target = context.env.string("ACCOUNTS_TARGET", "127.0.0.1:50051")
    accounts = AccountsClient(context.channels.connect(target, dependency="accounts"))
    return Application(
        servicers=[TransfersService(accounts)], error_domain="transfers.ledger.internal"
    )
