"""DynamoDB helpers shared by the durable pieces: attribute values, tables, conflicts.

- `to_item` / `from_item` marshal plain Python values (str, int, bool, bytes,
  None, dict, list) to DynamoDB's typed JSON and back, so callers read
  `item["balance"]` as an int. Hand-written rather than boto3's
  `TypeSerializer`: boto3 is not a runtime dependency (aiobotocore ships
  botocore only), and these eight lines cover every type we store.
- `TableSpec` / `ensure_tables` create tables idempotently at start-up when
  configured to (local runs against moto); in AWS, Terraform owns them and
  `DYNAMODB_CREATE_TABLES` stays off.
- `cancellation_codes` reads why a `TransactWriteItems` was cancelled, one
  code per item, so a caller can tell which condition failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

Item = dict[str, Any]


def to_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, Mapping):
        return {"M": {key: to_value(inner) for key, inner in value.items()}}
    if isinstance(value, Sequence):
        return {"L": [to_value(inner) for inner in value]}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def from_value(value: Mapping[str, Any]) -> Any:
    ((kind, inner),) = value.items()
    if kind == "N":
        return int(inner)
    if kind == "M":
        return {key: from_value(v) for key, v in inner.items()}
    if kind == "L":
        return [from_value(v) for v in inner]
    if kind == "NULL":
        return None
    return inner  # S, B, BOOL


def to_item(values: Mapping[str, Any]) -> Item:
    return {key: to_value(value) for key, value in values.items()}


def from_item(item: Mapping[str, Any]) -> Item:
    return {key: from_value(value) for key, value in item.items()}


def error_code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def cancellation_codes(error: BaseException) -> list[str]:
    """Per item of a cancelled transaction: "None", "ConditionalCheckFailed", ..."""
    if error_code(error) != "TransactionCanceledException":
        return []
    assert isinstance(error, ClientError)
    reasons = error.response.get("CancellationReasons") or []
    if reasons:
        return [str(reason.get("Code", "None")) for reason in reasons]
    # Some endpoints only put the reasons in the message: "... [None, ConditionalCheckFailed]".
    message = str(error.response.get("Error", {}).get("Message", ""))
    listed = message.rpartition("[")[2].rstrip("]")
    return [code.strip() for code in listed.split(",")] if listed else []


@dataclass(frozen=True)
class Index:
    name: str
    hash_key: str
    range_key: str | None = None
    range_type: str = "S"


@dataclass(frozen=True)
class TableSpec:
    """One table: string keys, on-demand billing, an optional TTL attribute and GSIs."""

    name: str
    hash_key: str
    range_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = field(default_factory=tuple)

    def create_params(self) -> dict[str, Any]:
        attributes = {self.hash_key: "S"}
        schema = [{"AttributeName": self.hash_key, "KeyType": "HASH"}]
        if self.range_key:
            attributes[self.range_key] = "S"
            schema.append({"AttributeName": self.range_key, "KeyType": "RANGE"})
        indexes = []
        for index in self.indexes:
            attributes[index.hash_key] = "S"
            index_schema = [{"AttributeName": index.hash_key, "KeyType": "HASH"}]
            if index.range_key:
                attributes[index.range_key] = index.range_type
                index_schema.append({"AttributeName": index.range_key, "KeyType": "RANGE"})
            indexes.append(
                {
                    "IndexName": index.name,
                    "KeySchema": index_schema,
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            )
        params: dict[str, Any] = {
            "TableName": self.name,
            "AttributeDefinitions": [
                {"AttributeName": name, "AttributeType": kind} for name, kind in attributes.items()
            ],
            "KeySchema": schema,
            "BillingMode": "PAY_PER_REQUEST",
        }
        if indexes:
            params["GlobalSecondaryIndexes"] = indexes
        return params


async def ensure_tables(dynamodb: Any, specs: Sequence[TableSpec]) -> None:
    """Creates the tables that do not exist yet (and their TTL); existing ones are kept."""
    for spec in specs:
        try:
            await dynamodb.create_table(**spec.create_params())
        except ClientError as error:
            if error_code(error) != "ResourceInUseException":
                raise
            continue
        if spec.ttl_attribute:
            await dynamodb.update_time_to_live(
                TableName=spec.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
            )
