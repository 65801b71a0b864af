"""What a service hands the runtime, and how the runtime finds the service.

A service is a factory `async def build(context: RuntimeContext) -> Application`
that reads its own settings (through `context.env`, so errors name the
variable), builds its stores and clients (through `context.channels`) and
returns its servicers, readiness checks and shutdown hooks: the service's
composition root. The runtime finds the factory by name in the
`grpcplatform.services` entry-point group, or as `module:attribute`, so the
platform never imports a service.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry

from clients.channel import ChannelFactory
from interceptors.call import Layer
from interceptors.errors import ErrorMapper
from interceptors.policy import MethodPolicy
from server.config import ConfigError, EnvReader, ServerConfig

ENTRY_POINT_GROUP = "grpcplatform.services"

ReadinessCheck = Callable[[], Awaitable[bool]]


class Servicer(Protocol):
    """What generated servicer bases provide (see codegen.plugin)."""

    @property
    def SERVICE_NAME(self) -> str: ...

    @property
    def METHODS(self) -> Mapping[str, MethodPolicy]: ...

    def rpc_method_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]: ...


@dataclass(frozen=True)
class Application:
    servicers: Sequence[Servicer]
    # Named checks behind `/ready` and gRPC health; a check that raises counts as failed.
    readiness_checks: Mapping[str, ReadinessCheck] = field(default_factory=dict)
    # Run after the gRPC server has drained, in order.
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = ()
    # Background loops (queue consumers, recovery sweeps): started once the server
    # serves, cancelled after it has drained and before `on_shutdown`.
    workers: Mapping[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    # The service's own chain layers, run after the platform's (see server.chain).
    interceptors: Sequence[Layer] = ()
    # ErrorInfo.domain of this service's errors, e.g. "accounts.ledger.internal".
    error_domain: str = ""
    # Maps the service's own exception types to platform errors (override `translate`).
    errors: ErrorMapper = field(default_factory=ErrorMapper)


@dataclass(frozen=True)
class RuntimeContext:
    config: ServerConfig
    env: EnvReader
    channels: ChannelFactory
    # The registry `/metrics` serves: a service's own metrics go here.
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)


AppFactory = Callable[[RuntimeContext], Awaitable[Application]]


def load_factory(spec: str) -> AppFactory:
    """The factory named by `spec`: an entry-point name or `module:attribute`."""
    try:
        if ":" in spec:
            module_name, _, attribute = spec.partition(":")
            factory: AppFactory = getattr(importlib.import_module(module_name), attribute)
            return factory
        found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
        if spec not in found:
            names = ", ".join(sorted(found)) or "none installed"
            raise ConfigError(f"SERVICE must be one of {names} or module:attribute, got {spec!r}")
        loaded: AppFactory = found[spec].load()  # an entry point names module:attribute too
        return loaded
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"SERVICE names {spec!r}, which cannot be loaded: {error}") from None


def default_error_domain(spec: str) -> str:
    """`ErrorInfo.domain` when neither ERROR_DOMAIN nor the application sets one: a
    DNS-like name from SERVICE (`accounts`, or the module of `module:attribute`)."""
    name = spec.partition(":")[0].replace("_", "-")
    return f"{name}.grpc-platform.internal"
