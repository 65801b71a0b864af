"""In-memory replay of idempotent writes by `request_id` (AIP-155), for the
in-memory ledger. The first call of a (method, request_id) records its
response; a repeat with the same request gets that response back without a
second effect; a repeat with another request body is refused.

The durable, shared version (DynamoDB, TTL, in-progress markers) belongs to
the ledger-on-DynamoDB issue; this one keeps the contract honest meanwhile.
"""

from __future__ import annotations

import hashlib
from typing import TypeVar

from google.protobuf.message import Message

Response = TypeVar("Response", bound=Message)


class RequestIdReused(Exception):
    """The request_id was used before with a different request."""


class ReplayLog:
    def __init__(self) -> None:
        self._outcomes: dict[tuple[str, str], tuple[bytes, Message]] = {}

    @staticmethod
    def _digest(request: Message) -> bytes:
        return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()

    def recorded(self, method: str, request_id: str, request: Message) -> Message | None:
        """The recorded response of an earlier identical call, if any."""
        outcome = self._outcomes.get((method, request_id))
        if outcome is None:
            return None
        digest, response = outcome
        if digest != self._digest(request):
            raise RequestIdReused(request_id)
        return response

    def record(
        self, method: str, request_id: str, request: Message, response: Response
    ) -> Response:
        self._outcomes[(method, request_id)] = (self._digest(request), response)
        return response
