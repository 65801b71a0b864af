"""Sanitising messages for logs, driven by the contract.

A field marked `[debug_redact = true]` in its `.proto` (protobuf's own
option for secrets and personal data), or whose name is on the configured
deny-list, is replaced by `[REDACTED]` at any depth. Everything else is
rendered as protobuf JSON would be (field names as in the `.proto`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

REDACTED = "[REDACTED]"


class Redactor:
    def __init__(self, deny_fields: Iterable[str] = ()) -> None:
        self._deny = frozenset(name.lower() for name in deny_fields)
        self._hidden: dict[str, frozenset[str]] = {}

    def _hidden_fields(self, descriptor: Any) -> frozenset[str]:
        hidden = self._hidden.get(descriptor.full_name)
        if hidden is None:
            hidden = frozenset(
                field.name
                for field in descriptor.fields
                if field.GetOptions().debug_redact or field.name.lower() in self._deny
            )
            self._hidden[descriptor.full_name] = hidden
        return hidden

    def sanitise(self, message: Message) -> dict[str, Any]:
        hidden = self._hidden_fields(message.DESCRIPTOR)
        out: dict[str, Any] = {}
        for field, value in message.ListFields():
            if field.name in hidden:
                out[field.name] = REDACTED
            else:
                out[field.name] = self._value(field, value)
        return out

    def _value(self, field: Any, value: Any) -> Any:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                entry_value = field.message_type.fields_by_name["value"]
                return {key: self._value(entry_value, item) for key, item in value.items()}
            if field.is_repeated:
                return [self.sanitise(item) for item in value]
            return self.sanitise(value)
        if field.is_repeated:
            return [self._scalar(field, item) for item in value]
        return self._scalar(field, value)

    @staticmethod
    def _scalar(field: Any, value: Any) -> Any:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return f"<{len(value)} bytes>"
        if field.type == FieldDescriptor.TYPE_ENUM:
            named = field.enum_type.values_by_number.get(value)
            return named.name if named is not None else value
        return value
