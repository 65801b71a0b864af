"""Hypothesis strategies for protobuf messages of any type, biased to hostile and edge values.

Shared by the validation tests (hostile input through real servers) and the
differential tests of the compiled rules against protovalidate.
"""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

HOSTILE_TEXT = [
    "",
    " ",
    str(uuid.UUID(int=0)),
    str(uuid.uuid4()),
    "' OR 1=1 --",
    "\x00\x01\x02",
    "../../etc/passwd",
    "${jndi:ldap://127.0.0.1/a}",
    "\u202e\u0000\ud7ff",
    "A" * 5000,
    "EUR",
    "eur",
    "€",
    '{"json": true}',
]
INT_EDGES = [0, -1, 1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 10**15, 10**15 + 1]


def field_strategy(field: Any, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if depth > 2 or field.message_type.full_name.startswith("google.protobuf"):
            return st.none()
        inner = message_strategy(field.message_type, depth + 1)
        return st.lists(inner, max_size=3) if field.is_repeated else inner
    if field.type == FieldDescriptor.TYPE_STRING:
        value: st.SearchStrategy[Any] = st.one_of(
            st.sampled_from(HOSTILE_TEXT), st.text(max_size=64)
        )
    elif field.type == FieldDescriptor.TYPE_ENUM:
        value = st.integers(-5, 10)
    elif field.type == FieldDescriptor.TYPE_BOOL:
        value = st.booleans()
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        value = st.integers(-(2**31), 2**31 - 1)
    elif field.type in (FieldDescriptor.TYPE_UINT32,):
        value = st.integers(0, 2**32 - 1)
    elif field.type == FieldDescriptor.TYPE_BYTES:
        value = st.binary(max_size=64)
    else:
        value = st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**63 - 1))
    return st.lists(value, max_size=3) if field.is_repeated else value


def message_strategy(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    fields = {field.name: field_strategy(field, depth) for field in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target = getattr(message, name)
                if field.is_repeated:
                    target.extend(value)
                else:
                    target.CopyFrom(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)
