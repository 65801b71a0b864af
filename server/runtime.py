"""Assembles and runs one service process: gRPC server, health, reflection, admin.

`Runtime.start()` binds the gRPC listener with the configured options
(message sizes, keepalive, `max_connection_age` for L4 load balancers; TLS
or mTLS when configured, server.tls) and
serves, through one `MethodTable` (server.dispatch), the application's
servicers behind the chain, the standard health service and server
reflection (so `grpcurl list/describe` needs no proto files); then it
starts the admin HTTP port, exports its event loop's CPU time
(server.event_loop) and, unless turned off, the probe of its own queueing
delay (server.queue_probe). `Runtime.stop()` is the drain of server.shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from clients.channel import ChannelFactory
from interceptors.queue_delay import QueueDelayGate
from server.admin import AdminServer
from server.application import Application, default_error_domain
from server.chain import build_server_chain
from server.config import ConfigError, ServerConfig
from server.dispatch import MethodTable
from server.event_loop import EventLoopCpu, loop_name
from server.health import HealthState
from server.queue_probe import QueueProbe, loopback_host, loopback_of
from server.reflection import enable_reflection
from server.tls import ServerTls, TlsFileError
from server.tracing import exporting, tracer_provider

_log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The process could not start (e.g. a port is taken); the message says which part."""


def process_registry() -> CollectorRegistry:
    """The registry `/metrics` serves: process and platform metrics, then ours."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def release(application: Application) -> None:
    """Runs the application's shutdown hooks, in order; a failing one is logged."""
    for hook in application.on_shutdown:
        try:
            await hook()
        except Exception:
            _log.exception("shutdown hook failed")


class Runtime:
    def __init__(
        self,
        config: ServerConfig,
        application: Application,
        channels: ChannelFactory,
        registry: CollectorRegistry | None = None,
        tracing: TracerProvider | None = None,
    ) -> None:
        self.registry = registry = registry or process_registry()
        self.config = config
        self.application = application
        self.channels = channels
        names = [servicer.SERVICE_NAME for servicer in application.servicers]
        self.health = HealthState(names, application.readiness_checks)
        self.admin = AdminServer(self.health, registry, config.admin_host, config.admin_port)
        self.tracing = tracing or tracer_provider(config)
        self.queue_delay = QueueDelayGate(config.shed_queue_delay if config.shed_enabled else 0.0)
        self.chain = build_server_chain(
            config,
            registry,
            self.tracing.get_tracer("grpc-platform.server") if exporting(self.tracing) else None,
            config.error_domain or application.error_domain or default_error_domain(config.service),
            application.errors,
            self.queue_delay,
            application.interceptors,
        )
        table = MethodTable()
        for servicer in application.servicers:
            methods = servicer.METHODS
            table.add(
                servicer.SERVICE_NAME,
                {
                    name: self.chain.wrap(handler, methods[name])
                    for name, handler in servicer.rpc_method_handlers().items()
                },
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, table)
        health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection([*names, health_service], table)
        self.methods = table
        # A rule for a method not served is a typo or a stale setting: stop, naming it.
        served = [
            policy.full_method
            for servicer in application.servicers
            for policy in servicer.METHODS.values()
        ]
        if config.authorization is not None:
            unmatched = config.authorization.unmatched(served)
            if unmatched:
                raise ConfigError(
                    f"AUTHZ_RULES names methods this service does not serve: {', '.join(unmatched)}"
                )
        unserved = sorted(set(config.rate_limit_overrides) - set(served))
        if unserved:
            raise ConfigError(
                "RATE_LIMIT_OVERRIDES names methods this service does not serve: "
                + ", ".join(method.lstrip("/") for method in unserved)
            )
        try:  # checked again: the files may have changed since the configuration was read
            self.tls = None if config.tls is None else ServerTls(config.tls)
        except TlsFileError as error:
            raise ConfigError(str(error)) from None
        # One generic handler for every method, none registered (server.dispatch says why).
        self.server = grpc.aio.server(handlers=[table], options=config.grpc_options())
        self.grpc_port = 0
        self.probe_port = 0  # with TLS on, the queue-delay probe's plaintext loopback listener
        self.workers: list[asyncio.Task[None]] = []
        self.queue_probe: asyncio.Task[None] | None = None

    @staticmethod
    async def _supervised(name: str, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("worker stopped", extra={"worker": name})

    async def start(self) -> None:
        address = host_port(self.config.grpc_host, self.config.grpc_port)
        probe_host = loopback_host(self.config.grpc_host)  # where the probe reaches us
        try:
            if self.tls is None:
                self.grpc_port = self.server.add_insecure_port(address)
            else:
                self.grpc_port = self.server.add_secure_port(address, self.tls.credentials())
        except RuntimeError:
            raise StartupError(f"cannot listen for gRPC on {address} (GRPC_PORT)") from None
        if self.tls is not None and self.queue_delay.on:
            # The probe's own listener, plaintext: on loopback only, whatever GRPC_HOST is.
            probe_host = loopback_of(self.config.grpc_host)
            try:
                self.probe_port = self.server.add_insecure_port(host_port(probe_host, 0))
            except RuntimeError:
                raise StartupError(
                    f"cannot listen on {probe_host} for the queue-delay probe (GRPC_HOST, "
                    "or SHED_QUEUE_DELAY_SECONDS=0 for no probe)"
                ) from None
        await self.server.start()
        try:
            await self.admin.start()
        except OSError as error:
            await self.server.stop(None)
            admin = host_port(self.config.admin_host, self.config.admin_port)
            raise StartupError(
                f"cannot listen for admin HTTP on {admin} (ADMIN_PORT): {error.strerror}"
            ) from None
        await self.health.start()
        EventLoopCpu(self.registry)  # started here: on the loop's own thread
        if self.queue_delay.on:
            probe = QueueProbe(
                self.queue_delay, host_port(probe_host, self.probe_port or self.grpc_port)
            )
            self.queue_probe = asyncio.create_task(probe.run(), name="queue-probe")
        self.workers = [
            asyncio.create_task(self._supervised(name, work()), name=name)
            for name, work in self.application.workers.items()
        ]
        _log.info(
            "serving",
            extra={
                "services": [s.SERVICE_NAME for s in self.application.servicers],
                "grpc_port": self.grpc_port,
                "grpc_tls": "off" if self.tls is None else self.tls.mode,
                "admin_port": self.admin.port,
                "event_loop": loop_name(asyncio.get_running_loop()),
            },
        )

    async def stop(self) -> None:
        config = self.config
        _log.info(
            "draining", extra={"delay_s": config.shutdown_delay, "grace_s": config.shutdown_grace}
        )
        if self.queue_probe is not None:
            self.queue_probe.cancel()  # the drain would read as a queue
            await asyncio.gather(self.queue_probe, return_exceptions=True)
        await self.health.drain()
        await asyncio.sleep(config.shutdown_delay)
        await self.server.stop(config.shutdown_grace)
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        await release(self.application)
        await self.channels.close()
        self.tracing.shutdown()
        await self.health.close()
        await self.admin.stop()
        _log.info("stopped")
