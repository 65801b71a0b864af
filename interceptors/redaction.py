"""Sanitising messages for logs, driven by the contract, and bounded.

Hidden (`[REDACTED]`) at any depth: a field marked `[debug_redact = true]`
in its `.proto` (protobuf's own option for secrets and personal data), and
a field or map entry whose name carries a deny-listed name as whole words,
in order, case aside: `secret` hides `client_secret` and a map key
`clientSecret`, `api_key` hides `x_api_key`, not `keyboard`. `ALWAYS_HIDDEN`
is always on; `LOG_REDACT_FIELDS` adds names to it (a list that replaced it
would let one setting un-hide passwords). Everything else is rendered as
protobuf JSON would be (field names as in the `.proto`; bytes as a length).

Bounded, because a failed call's request is logged and a hostile caller
chooses it: a string longer than `MAX_TEXT` characters is cut (its length
kept), a list or map shows its first `MAX_ITEMS` entries (its size kept),
and a request renders at most `MAX_VALUES` values in all (each field,
list item and map entry is one; past that, a container shows one marker and
stops). A 4 MB string made a 19 MB log line before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

REDACTED = "[REDACTED]"
ALWAYS_HIDDEN = (
    "password",
    "passphrase",
    "secret",
    "token",
    "authorization",
    "api_key",
    "private_key",
    "credential",
    "credentials",
    "cookie",
)
MAX_TEXT = 128
MAX_ITEMS = 20
MAX_VALUES = 100  # each at most a key and a value of MAX_TEXT: about 26 KB in all
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def words(name: str) -> tuple[str, ...]:
    """`clientSecret`, `client_secret` and `CLIENT-SECRET` all give ('client', 'secret')."""
    return tuple(word.lower() for word in _WORD.findall(name[:MAX_TEXT]))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}...[{len(text)} chars]"


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_VALUES

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0

    @property
    def spent(self) -> bool:
        return self.left <= 0


class Redactor:
    def __init__(self, deny_fields: Iterable[str] = ()) -> None:
        denied = (words(name) for name in (*ALWAYS_HIDDEN, *deny_fields))
        self._deny = tuple(sorted({named for named in denied if named}))
        self._hidden: dict[str, frozenset[str]] = {}

    def denies(self, name: str) -> bool:
        """Whether a field or map key of this name is hidden by name."""
        named = words(name)
        return any(
            named[start : start + len(denied)] == denied
            for denied in self._deny
            for start in range(len(named) - len(denied) + 1)
        )

    def _hidden_fields(self, descriptor: Any) -> frozenset[str]:
        hidden = self._hidden.get(descriptor.full_name)  # per type: the contract's, bounded
        if hidden is None:
            hidden = frozenset(
                field.name
                for field in descriptor.fields
                if field.GetOptions().debug_redact or self.denies(field.name)
            )
            self._hidden[descriptor.full_name] = hidden
        return hidden

    def sanitise(self, message: Message) -> dict[str, Any]:
        return self._message(message, _Budget())

    def _message(self, message: Message, budget: _Budget) -> dict[str, Any]:
        hidden = self._hidden_fields(message.DESCRIPTOR)
        out: dict[str, Any] = {}
        for field, value in message.ListFields():
            if budget.spent:
                out["..."] = "[truncated]"
                break
            out[field.name] = (
                REDACTED if field.name in hidden else self._value(field, value, budget)
            )
        return out

    def _value(self, field: Any, value: Any, budget: _Budget) -> Any:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            return self._map(field.message_type.fields_by_name["value"], value, budget)
        if field.is_repeated:
            shown = []
            for item in value[:MAX_ITEMS]:
                if budget.spent:
                    break
                shown.append(self._single(field, item, budget))
            if len(shown) < len(value):
                shown.append(f"...[{len(value)} items]")
            return shown
        return self._single(field, value, budget)

    def _map(self, entry_value: Any, entries: Any, budget: _Budget) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for index, (key, item) in enumerate(entries.items()):
            if index == MAX_ITEMS or budget.spent:
                out["..."] = f"[{len(entries)} entries]"
                break
            name = _cut(key) if isinstance(key, str) else key
            hidden = isinstance(key, str) and self.denies(key)
            out[name] = REDACTED if hidden else self._single(entry_value, item, budget)
        return out

    def _single(self, field: Any, value: Any, budget: _Budget) -> Any:
        if not budget.spend():
            return "[truncated]"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self._message(value, budget)
        if field.type == FieldDescriptor.TYPE_BYTES:
            return f"<{len(value)} bytes>"
        if field.type == FieldDescriptor.TYPE_ENUM:
            named = field.enum_type.values_by_number.get(value)
            return named.name if named is not None else value
        if isinstance(value, str):
            return _cut(value)
        return value
