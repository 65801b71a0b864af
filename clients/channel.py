"""The one place that builds outbound `grpc.aio` channels.

Channels are shared per target (a channel multiplexes calls over HTTP/2, and
one per call would defeat that) and closed together on shutdown. Options
follow gRPC's guidance for a client behind Kubernetes: round_robin over the
addresses DNS returns for a headless Service (`dns:///name:port`),
keepalive pings that the server's policy permits, and explicit message sizes.

TLS when `CLIENT_TLS_ROOT_CA` is set, and mTLS with `CLIENT_TLS_CERT` and
`CLIENT_TLS_KEY` (server.tls, interceptors.authorization). The files are read
when a channel is made: grpc's Python channels cannot swap credentials, so a
renewed client certificate is used from the process's next start (README,
Deploy: a Secret change rolls the Deployment).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from clients.chain import ClientChain
from clients.invoker import Connection
from clients.settings import Reader, SettingsError

MIB = 1024 * 1024


@dataclass(frozen=True)
class ChannelSettings:
    max_message_bytes: int = 4 * MIB
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    load_balancing: str = "round_robin"
    # PEM file of the CA that signs the servers' certificates; None: plaintext.
    tls_root_ca: Path | None = None
    # PEM certificate and key this process presents to servers that require one (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    extra_options: tuple[tuple[str, str | int], ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, read: Reader) -> ChannelSettings:
        """`CLIENT_TLS_ROOT_CA` (PEM file; empty: plaintext), `CLIENT_TLS_CERT` and
        `CLIENT_TLS_KEY` (this process's certificate, for mTLS), `CLIENT_MAX_MESSAGE_BYTES`,
        `CLIENT_KEEPALIVE_TIME_SECONDS`, `CLIENT_KEEPALIVE_TIMEOUT_SECONDS`,
        `CLIENT_LOAD_BALANCING` (round_robin or pick_first)."""
        defaults = cls()
        ca = read.string("CLIENT_TLS_ROOT_CA", "")
        if ca and not Path(ca).is_file():
            raise SettingsError(f"CLIENT_TLS_ROOT_CA names no readable file: {ca!r}")
        cert, key = read.string("CLIENT_TLS_CERT", ""), read.string("CLIENT_TLS_KEY", "")
        if cert or key:
            _check_client_pair(ca, cert, key)
        balancing = read.string("CLIENT_LOAD_BALANCING", defaults.load_balancing)
        if balancing not in ("round_robin", "pick_first"):
            raise SettingsError(
                f"CLIENT_LOAD_BALANCING must be round_robin or pick_first, got {balancing!r}"
            )
        keepalive = {
            name: read.seconds(name, str(default))
            for name, default in (
                ("CLIENT_KEEPALIVE_TIME_SECONDS", defaults.keepalive_time_s),
                ("CLIENT_KEEPALIVE_TIMEOUT_SECONDS", defaults.keepalive_timeout_s),
            )
        }
        for name, seconds in keepalive.items():
            if seconds < 0.001:  # grpc takes milliseconds: 0 would ping without pause
                raise SettingsError(f"{name} must be at least 0.001 seconds, got {seconds:g}")
        return cls(
            max_message_bytes=read.integer(
                "CLIENT_MAX_MESSAGE_BYTES", str(defaults.max_message_bytes), minimum=1024
            ),
            keepalive_time_s=keepalive["CLIENT_KEEPALIVE_TIME_SECONDS"],
            keepalive_timeout_s=keepalive["CLIENT_KEEPALIVE_TIMEOUT_SECONDS"],
            load_balancing=balancing,
            tls_root_ca=Path(ca) if ca else None,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
        )

    def grpc_options(self) -> list[tuple[str, str | int]]:
        service_config: dict[str, object] = {"loadBalancingConfig": [{self.load_balancing: {}}]}
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.service_config", json.dumps(service_config)),
            ("grpc.enable_retries", 0),  # retries belong to our chain, not to gRPC core
            *self.extra_options,
        ]


def _check_client_pair(ca: str, cert: str, key: str) -> None:
    """Both files, a pair that loads, and a CA to verify servers with: else one line."""
    for variable, value in (("CLIENT_TLS_CERT", cert), ("CLIENT_TLS_KEY", key)):
        if not value:
            raise SettingsError(f"{variable} is required: CLIENT_TLS_CERT and _KEY go together")
        if not Path(value).is_file():
            raise SettingsError(f"{variable} names no readable file: {value!r}")
    if not ca:
        raise SettingsError("CLIENT_TLS_CERT needs CLIENT_TLS_ROOT_CA: it is sent over TLS only")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise SettingsError(
            f"CLIENT_TLS_KEY does not load with CLIENT_TLS_CERT as a PEM pair: {error}"
        ) from None


class ChannelFactory:
    """Builds and shares channels per target; `close()` closes them all."""

    def __init__(self, settings: ChannelSettings | None = None, chain: ClientChain | None = None):
        self._settings = settings or ChannelSettings()
        self._chain = chain or ClientChain()
        self._connections: dict[str, Connection] = {}

    def connect(self, target: str, dependency: str | None = None) -> Connection:
        """The shared connection to `target`; `dependency` names it for its settings
        (`CLIENT_<DEPENDENCY>_*`, see clients.settings)."""
        connection = self._connections.get(target)
        if connection is None:
            connection = Connection(
                target, self._new_channel(target), self._chain.for_target(target, dependency)
            )
            self._connections[target] = connection
        return connection

    def _new_channel(self, target: str) -> grpc.aio.Channel:
        settings = self._settings
        options = settings.grpc_options()
        if settings.tls_root_ca is None:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            settings.tls_root_ca.read_bytes(),
            settings.tls_key.read_bytes() if settings.tls_key else None,
            settings.tls_cert.read_bytes() if settings.tls_cert else None,
        )
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def close(self, grace: float | None = None) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.channel.close(grace)
