"""The Accounts service with injected faults (`SERVICE=tests.support.faults:accounts`).

- `FAULT_UNAVAILABLE_RATE`: share of Deposit and Withdraw calls answered
  UNAVAILABLE before anything happens;
- `FAULT_DROP_RATE`: share answered UNAVAILABLE *after* the effect committed:
  the answer is lost, so the caller retries a write that already happened.
"""

from __future__ import annotations

import random
from typing import Any

from interceptors.errors import Unavailable
from server.application import Application, RuntimeContext
from services.accounts.app import build


async def accounts(context: RuntimeContext) -> Application:
    before = context.env.ratio("FAULT_UNAVAILABLE_RATE", "0")
    after = context.env.ratio("FAULT_DROP_RATE", "0")
    application = await build(context)
    (service,) = application.servicers
    for name in ("deposit", "withdraw"):
        handler = getattr(service, name)

        async def faulty(request: Any, call: Any, handler: Any = handler) -> Any:
            if random.random() < before:
                raise Unavailable("injected fault", reason="INJECTED_FAULT", retry_after=0.01)
            response = await handler(request, call)
            if random.random() < after:
                raise Unavailable("injected: answer lost", reason="INJECTED_FAULT")
            return response

        setattr(service, name, faulty)
    return application
