"""Input validation against the contract's protovalidate (`buf.validate`) rules.

Runs before the handler: an invalid request never reaches it. Violations
become INVALID_ARGUMENT with one `BadRequest.FieldViolation` per violated
field (path such as `amount.minor_units`; several rules broken by one field
are joined in its description). Message-level (CEL) rules have no field;
they are reported under the rule's id. For client streams every inbound
message is checked as it is read. Bytes that do not decode at all become
INVALID_ARGUMENT too (`lenient`), not grpc's INTERNAL. Uses protovalidate (Rust core, ~5 us for a
small valid message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import protovalidate
from google.protobuf.message import Message

from interceptors.call import ServerCall
from interceptors.errors import FieldViolation, InvalidArgument


def _path(violation: Any) -> str:
    field = violation.proto.field  # None for message-level (CEL) rules
    if field is None:
        return ""
    return ".".join(element.field_name for element in field.elements)


class RequestValidator:
    def __init__(self) -> None:
        self._validator = protovalidate.Validator()

    def check(self, message: Message | Undecodable) -> None:
        if isinstance(message, Undecodable):
            raise InvalidArgument(
                "the request is not a valid protobuf message of the method's request type",
                [FieldViolation("", "malformed protobuf encoding")],
            )
        violations = self._validator.collect_violations(message)
        if not violations:
            return
        by_field: dict[str, list[str]] = {}
        for violation in violations:
            field = _path(violation) or violation.proto.rule_id
            by_field.setdefault(field, []).append(violation.proto.message)
        raise InvalidArgument(
            "the request is invalid: " + ", ".join(by_field),
            [FieldViolation(field, "; ".join(texts)) for field, texts in by_field.items()],
        )


class Undecodable:
    """Stands in for a request whose bytes are not a valid message of its type."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def lenient(deserialize: Callable[[bytes], Message]) -> Callable[[bytes], Message | Undecodable]:
    """A deserializer that marks bad bytes instead of raising (grpc would answer INTERNAL)."""

    def decode(data: bytes) -> Message | Undecodable:
        try:
            return deserialize(data)
        except Exception:
            return UNDECODABLE

    return decode


class ValidationLayer:
    def __init__(self, validator: RequestValidator) -> None:
        self.validator = validator

    def begin(self, call: ServerCall) -> None:
        if call.request is not None:
            self.validator.check(call.request)

    def end(self, call: ServerCall) -> None:
        return None
