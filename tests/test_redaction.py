"""Sanitising requests for logs (pure logic): names hidden by words, output bounded."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

from interceptors.redaction import MAX_ITEMS, MAX_TEXT, REDACTED, Redactor

F = descriptor_pb2.FieldDescriptorProto


def _record_type() -> Any:
    """A message type with the shapes a contract may have, built for this test only."""
    file = descriptor_pb2.FileDescriptorProto(name="redaction_test.proto", package="rt")
    record = file.message_type.add(name="Record")
    entry = record.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    for number, (name, kind, label) in enumerate(
        [
            ("client_secret", F.TYPE_STRING, F.LABEL_OPTIONAL),
            ("accessToken", F.TYPE_STRING, F.LABEL_OPTIONAL),
            ("keyboard", F.TYPE_STRING, F.LABEL_OPTIONAL),
            ("ssn", F.TYPE_STRING, F.LABEL_OPTIONAL),
            ("note", F.TYPE_STRING, F.LABEL_OPTIONAL),
            ("tags", F.TYPE_STRING, F.LABEL_REPEATED),
            ("blob", F.TYPE_BYTES, F.LABEL_OPTIONAL),
        ],
        start=1,
    ):
        record.field.add(name=name, number=number, type=kind, label=label)
    record.field.add(
        name="labels",
        number=8,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".rt.Record.LabelsEntry",
    )
    record.field.add(
        name="children",
        number=9,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".rt.Record",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("rt.Record"))


Record = _record_type()


def test_names_are_hidden_by_their_words_in_fields_and_map_keys() -> None:
    record = Record(
        client_secret="S1",
        accessToken="T1",
        keyboard="qwerty",
        ssn="123-45-6789",
        note="fine",
        labels={"Authorization": "Bearer XYZ", "x-api-key": "K1", "region": "eu"},
    )
    shown = Redactor(["ssn"]).sanitise(record)
    assert shown["client_secret"] == REDACTED
    assert shown["accessToken"] == REDACTED
    assert shown["ssn"] == REDACTED  # added by LOG_REDACT_FIELDS, beside the built-in names
    assert shown["keyboard"] == "qwerty"  # `key` alone is not a hidden name, nor a prefix
    assert shown["note"] == "fine"
    assert shown["labels"] == {"Authorization": REDACTED, "x-api-key": REDACTED, "region": "eu"}


def test_struct_keys_are_hidden_too() -> None:
    config = struct_pb2.Struct()
    config.update({"password": "P2", "nested": {"refresh_token": "R2", "size": 3}})
    text = json.dumps(Redactor().sanitise(config))
    assert "P2" not in text
    assert "R2" not in text
    assert '"size"' in text


def test_the_built_in_names_cannot_be_replaced() -> None:
    assert Redactor(["memo"]).sanitise(Record(client_secret="S1"))["client_secret"] == REDACTED


def test_a_hostile_request_gives_a_bounded_rendering() -> None:
    child = Record(note="x" * 10_000, tags=["t" * 1000] * 1000, blob=b"\x00" * 100_000)
    record = Record(
        note="\x01" * 4_000_000,
        tags=["tag"] * 100_000,
        labels={f"k{i}": "v" for i in range(1000)},
        children=[child] * 1000,
    )
    shown = Redactor().sanitise(record)
    assert shown["note"].startswith("\x01" * MAX_TEXT)
    assert shown["note"].endswith("...[4000000 chars]")
    assert len(shown["tags"]) == MAX_ITEMS + 1
    assert shown["tags"][-1] == "...[100000 items]"
    assert len(shown["labels"]) == MAX_ITEMS + 1
    assert shown["labels"]["..."] == "[1000 entries]"
    assert shown["children"][0]["blob"] == "<100000 bytes>"
    assert len(json.dumps(shown)) < 32_000  # the whole line stays small; it was 19 MB


def test_nested_maps_with_long_keys_stay_bounded_too() -> None:
    """Map keys count, and a spent budget stops every container: a nested Struct
    of long keys rendered 102 KB before."""
    level: dict[str, Any] = {f"{i}" + "k" * 300: "v" * 200 for i in range(8)}
    for _ in range(4):  # 8 ** 5 leaves
        level = {f"{i}" + "k" * 300: level for i in range(8)}
    config = struct_pb2.Struct()
    config.update(level)
    assert len(json.dumps(Redactor().sanitise(config))) < 32_000
