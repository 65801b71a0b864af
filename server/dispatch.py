"""One generic handler routes every method the process serves: services, health, reflection.

Why not grpc's registered methods (`add_registered_method_handlers`, what
generated `add_*Servicer_to_server` functions call): grpc.aio's server keeps
one pending request future per registered method, plus one for all other
methods, and on every arrival runs `asyncio.wait` over all of them
(`_server_main_loop` in grpc's `aio/server.pyx.pxi`, grpcio 1.85). That is
Python work on the event loop per call, linear in the number of methods the
process serves: each future costs isinstance checks, a set insert and two
done-callbacks per wait. Echo's six methods with health's three and
reflection's one made eleven futures; served through one generic handler
there is one, and finding the method is a dict lookup (`MethodTable.service`).
Measured with callgrind on the Echo server, one call at a time: 45k fewer
instructions per call (about 8%); for a bare server of six methods, about 4%
fewer, and at saturation `make bench` puts it level with grpcio's
registration (median ratio 0.92-1.17 across runs on a noisy machine; see
README, Performance).

Methods behind the chain (`interceptors.chain.ChainedMethod`) are served per
call: the table hands them the metadata grpc decoded to find the method, so
the chain does not pay for decoding it a second time.

`MethodTable` also accepts the two registration calls that generated
`add_*Servicer_to_server` functions make, so the standard health and
reflection servicers register into it unchanged. Handlers added only as
generic handlers (code generated before grpcio 1.62) are asked, in order, for
the paths the table does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from interceptors.chain import ChainedMethod

if TYPE_CHECKING:  # the stubs' generic types are not subscriptable at run time
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    GenericHandler = grpc.GenericRpcHandler


class MethodTable(GenericHandler):
    def __init__(self) -> None:
        self._chained: dict[str, ChainedMethod] = {}
        self._handlers: dict[str, MethodHandler] = {}
        self._fallbacks: list[GenericHandler] = []

    def add(self, service: str, handlers: Mapping[str, MethodHandler | ChainedMethod]) -> None:
        for name, handler in handlers.items():
            path = f"/{service}/{name}"
            if path in self._chained or path in self._handlers:
                raise ValueError(f"{path} is served twice")
            if isinstance(handler, ChainedMethod):
                self._chained[path] = handler
            else:
                self._handlers[path] = handler

    @property
    def paths(self) -> list[str]:
        return sorted([*self._chained, *self._handlers])

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        chained = self._chained.get(handler_call_details.method)
        if chained is not None:
            return chained.for_call(handler_call_details.invocation_metadata)
        handler = self._handlers.get(handler_call_details.method)
        if handler is not None:
            return handler
        for fallback in self._fallbacks:
            handler = fallback.service(handler_call_details)
            if handler is not None:
                return handler
        return None

    # -- the registration calls of grpc.Server that generated code makes -------------------

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, MethodHandler | ChainedMethod]
    ) -> None:
        self.add(service, handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[GenericHandler]) -> None:
        # Generated code registers each method both ways; the table's entry wins.
        self._fallbacks.extend(handlers)
