"""moto in server mode, with the atomicity DynamoDB guarantees and moto 5 lacks.

`python tools/moto_server.py -H HOST -p PORT`: the same server as
`moto_server`, used by `make run`, the tests and the benchmarks. Two changes,
both to the DynamoDB emulation only, both making it behave like DynamoDB:

- **Requests are serialized.** moto serves each request on its own thread
  with no lock, so two conditional writes can both pass their condition, and
  a transaction is not isolated. DynamoDB evaluates a condition and applies
  the write atomically. One lock around every DynamoDB request restores
  that (the ledger's money-conservation test loses money without it). SQS
  and Secrets Manager requests do not take it, so long polls block nothing.
- **A cancelled TransactWriteItems undoes only its own items.** moto deep-copies
  every table a transaction touches and, when a condition fails, puts those
  copies back: O(table size) per transaction, and, without the lock, it
  erased other writers' commits. Here the touched items are remembered and
  restored instead, which, under the lock, is the same outcome at O(items).

With `MOTO_REQUEST_LOG=false` (as `make run` sets it) the line werkzeug
writes per request is left out: several a second from the consumer's long
polls alone, which would bury the services' own logs. The tests keep them,
in each test's moto log.

Nothing here runs in production: there the code talks to DynamoDB itself.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

from moto import server
from moto.dynamodb import models
from moto.dynamodb.models.table import Table

_DYNAMODB_LOCK = threading.Lock()
_copying_tables = True


def _deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
    if not _copying_tables and isinstance(value, Table):
        return value  # the transaction wrapper below keeps its own undo record
    return copy.deepcopy(value, memo)


def _transact_write_items(
    original: Callable[..., None],
) -> Callable[[models.DynamoDBBackend, list[dict[str, Any]]], None]:
    def transact(backend: models.DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        global _copying_tables
        undo = []
        for entry in transact_items:
            ((kind, operation),) = entry.items()
            table = backend.tables.get(operation.get("TableName", ""))
            if table is None:
                continue
            if kind == "Put":
                attributes = operation["Item"]
                key = {table.hash_key_attr: attributes[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attributes[table.range_key_attr]
            else:
                key = operation["Key"]
            before = backend.get_item(operation["TableName"], key)
            undo.append((operation["TableName"], key, copy.deepcopy(before)))
        _copying_tables = False
        try:
            original(backend, transact_items)
        except Exception:
            _restore(backend, undo)
            raise
        finally:
            _copying_tables = True

    return transact


def _restore(backend: models.DynamoDBBackend, undo: Iterable[tuple[str, Any, Any]]) -> None:
    for table_name, key, before in reversed(list(undo)):
        if before is None:
            if backend.get_item(table_name, key) is not None:
                backend.delete_item(table_name, key)
        else:
            backend.put_item(table_name, before.to_json()["Attributes"], overwrite=True)


class _SerializeDynamoDB:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with _DYNAMODB_LOCK:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def main() -> None:
    # moto's module calls `copy.deepcopy(table)` for its rollback copies.
    setattr(models, "copy", types.SimpleNamespace(deepcopy=_deepcopy))  # noqa: B010
    backend_type = models.DynamoDBBackend
    transact = _transact_write_items(backend_type.transact_write_items)
    setattr(backend_type, "transact_write_items", transact)  # noqa: B010
    dispatcher = server.DomainDispatcherApplication  # type: ignore[attr-defined]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return _SerializeDynamoDB(dispatcher(*args, **kwargs))

    setattr(server, "DomainDispatcherApplication", wrapped)  # noqa: B010 - read by server.main
    if os.environ.get("MOTO_REQUEST_LOG", "true") == "false":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # requests log at INFO
    server.main()


if __name__ == "__main__":
    main()
