"""Server reflection, so `grpcurl list`, `describe` and calls need no proto files.

grpcio-reflection (the official servicer) answers from a descriptor pool.
`ServedPool` is the pool it is given: the process's default pool, as far as
the served services' files reach (those files and everything they import).
Two departures from handing it the default pool:

- The default pool holds every contract the process imported, not only the
  ones it serves: Transfers imports Accounts' contract to call it, and would
  describe it to anyone who asks. Reflection shows what this server serves,
  and the `google.rpc` error details its failures carry: grpcurl decodes a
  status's details through reflection. A service whose errors carry detail
  types of its own declares them in the contracts it serves.
- In the upb protobuf runtime `FindFileContainingSymbol` does not find
  method names (`ledger.v1.Accounts.Deposit`), so `grpcurl describe
  <Service>.<Method>` failed; those fall back to the method's service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

from google.protobuf import descriptor, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer  # what `reflection.aio` names

from server.dispatch import MethodTable

SERVICE_NAME: str = reflection.SERVICE_NAME


# What every failure of the chain carries (interceptors.errors): google.rpc.Status details.
ERROR_FILES: tuple[descriptor.FileDescriptor, ...] = (
    status_pb2.DESCRIPTOR,
    error_details_pb2.DESCRIPTOR,
)


def files_reached(roots: Iterable[descriptor.FileDescriptor]) -> frozenset[str]:
    """The names of the files and of every file they import, transitively."""
    reached: set[str] = set()
    pending = list(roots)
    while pending:
        file = pending.pop()
        if file.name not in reached:
            reached.add(file.name)
            pending.extend(file.dependencies)
    return frozenset(reached)


class ServedPool:
    """The lookups grpcio-reflection makes, answered only from the served files
    (a KeyError otherwise, which it answers NOT_FOUND)."""

    def __init__(
        self, service_names: Sequence[str], pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        self._pool = pool or descriptor_pool.Default()
        services = [self._pool.FindServiceByName(name).file for name in service_names]
        self._files = files_reached([*services, *ERROR_FILES])

    def _served(self, file: descriptor.FileDescriptor) -> descriptor.FileDescriptor:
        if file.name not in self._files:
            raise KeyError(file.name)
        return file

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:
        return self._served(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            file = self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            file = self._pool.FindMethodByName(symbol).containing_service.file
        return self._served(file)

    def FindMessageTypeByName(self, name: str) -> descriptor.Descriptor:
        message = self._pool.FindMessageTypeByName(name)
        self._served(message.file)
        return message

    def FindExtensionByNumber(
        self, message: descriptor.Descriptor, number: int
    ) -> descriptor.FieldDescriptor:
        extension = self._pool.FindExtensionByNumber(message, number)
        self._served(self._file_of(extension))
        return extension

    def FindAllExtensions(self, message: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
        extensions = self._pool.FindAllExtensions(message)
        return [e for e in extensions if self._file_of(e).name in self._files]

    def _file_of(self, extension: descriptor.FieldDescriptor) -> descriptor.FileDescriptor:
        return self._pool.FindFileContainingSymbol(extension.full_name)


def enable_reflection(service_names: Sequence[str], table: MethodTable) -> None:
    served = [*service_names, SERVICE_NAME]
    pool = cast(descriptor_pool.DescriptorPool, ServedPool(served))  # duck-typed: what it uses
    servicer = ReflectionServicer(served, pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, table)
