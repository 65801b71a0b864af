"""Opaque, signed page tokens over DynamoDB's `ExclusiveStartKey` (AIP-158).

A token is `base64url(json(key)) "." base64url(hmac_sha256(json(key)))`:
callers cannot read or forge a position in our tables, and a token that was
tampered with, truncated or signed with an unknown key is INVALID_ARGUMENT
naming the field. The HMAC keys come from a `clients.secrets.SecretCache`
(current and previous value, so tokens survive a key rotation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from interceptors.errors import FieldViolation, InvalidArgument


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    """`listing` names what the tokens page through (e.g. `ledger.v1.Accounts/ListAccounts`):
    it is signed with the position, so a token of one listing is refused by another."""

    def __init__(
        self, keys: Callable[[], list[bytes]], listing: str, field: str = "page_token"
    ) -> None:
        self._keys = keys
        self._listing = listing.encode() + b"\n"
        self.field = field

    def _sign(self, key: bytes, body: bytes) -> bytes:
        return hmac.new(key, self._listing + body, hashlib.sha256).digest()

    def encode(self, last_key: dict[str, Any]) -> str:
        body = json.dumps(last_key, sort_keys=True, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._sign(self._keys()[0], body))}"

    def decode(self, token: str) -> dict[str, Any]:
        body_part, _, signature_part = token.partition(".")
        try:
            body, signature = _unb64(body_part), _unb64(signature_part)
        except (binascii.Error, ValueError):
            raise self._invalid() from None
        if not any(hmac.compare_digest(self._sign(key, body), signature) for key in self._keys()):
            raise self._invalid()
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    def _invalid(self) -> InvalidArgument:
        return InvalidArgument(
            f"invalid {self.field}",
            [FieldViolation(self.field, "not a token from a previous page")],
        )
