"""Secrets from AWS Secrets Manager: read at start-up, cached, refreshed on a schedule.

`SecretCache.start()` reads the secret once (start-up fails if it cannot:
a service must not run without its keys) and then refreshes it every
`refresh_seconds` in the background. During a rotation both the current and
the previous value are kept (`values()`), so tokens signed just before the
rotation still verify. A failed refresh keeps the cached values and logs
the secret's *id* only: secret values never reach a log line, a repr or an
exception message. Anchor: AWS's Secrets Manager caching client (cache,
refresh interval); written here because that library is synchronous boto3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

_log = logging.getLogger(__name__)


class SecretUnavailable(RuntimeError):
    """The secret could not be read at start-up (its id is in the message, never its value)."""


class SecretCache:
    def __init__(self, secretsmanager: Any, secret_id: str, refresh_seconds: float = 300.0) -> None:
        self._client = secretsmanager
        self.secret_id = secret_id
        self.refresh_seconds = refresh_seconds
        self._current: bytes | None = None
        self._previous: bytes | None = None
        self._refresher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SecretCache({self.secret_id!r})"

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as error:
            raise SecretUnavailable(
                f"cannot read secret {self.secret_id!r}: {type(error).__name__}"
            ) from None
        await self.start_refreshing()

    async def start_refreshing(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_forever(), name="secret-refresh")

    async def refresh(self) -> None:
        answer = await self._client.get_secret_value(SecretId=self.secret_id)
        value = answer.get("SecretBinary") or str(answer.get("SecretString", "")).encode()
        if not value:
            raise SecretUnavailable(f"secret {self.secret_id!r} is empty")
        if value != self._current:
            self._previous, self._current = self._current, value

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception as error:
                _log.warning(
                    "secret refresh failed; keeping the cached value",
                    extra={"secret_id": self.secret_id, "error_type": type(error).__name__},
                )

    def current(self) -> bytes:
        if self._current is None:
            raise SecretUnavailable(f"secret {self.secret_id!r} was not loaded")
        return self._current

    def values(self) -> list[bytes]:
        """The current value first, then the previous one while a rotation settles."""
        return [value for value in (self._current, self._previous) if value is not None]

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
