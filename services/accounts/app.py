"""Composition root of the Accounts service (entry point `accounts`)."""

from __future__ import annotations

from server.application import Application, RuntimeContext
from services.accounts.service import AccountsService


async def build(context: RuntimeContext) -> Application:
    del context  # in-memory for now: nothing to configure
    return Application(servicers=[AccountsService()], error_domain="accounts.ledger.internal")
