"""Server reflection, so `grpcurl list`, `describe` and calls need no proto files.

grpcio-reflection (the official servicer) resolves symbols through
`DescriptorPool.FindFileContainingSymbol`, which in the upb protobuf runtime
does not find method names (`ledger.v1.Accounts.Deposit`), so
`grpcurl describe <Service>.<Method>` failed. `MethodAwarePool` falls back to
the method's service for those; everything else goes to the default pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from google.protobuf import descriptor, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer  # what `reflection.aio` names

from server.dispatch import MethodTable

SERVICE_NAME: str = reflection.SERVICE_NAME


class MethodAwarePool:
    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(service_names: Sequence[str], table: MethodTable) -> None:
    pool = cast(descriptor_pool.DescriptorPool, MethodAwarePool())  # duck-typed delegate
    servicer = ReflectionServicer([*service_names, SERVICE_NAME], pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, table)
