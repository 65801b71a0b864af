"""TLS on the gRPC port, and mutual TLS when client certificates are required.

`TLS_CERT_FILE` and `TLS_KEY_FILE` (PEM) turn TLS on; `TLS_CLIENT_CA_FILE`
makes every caller present a certificate that CA signed (mTLS), which gives
the server chain an authenticated caller identity (interceptors.authorization).
The files are checked at start-up with the standard library's `ssl` (the
certificate matches its key, the CA file parses), so a bad file stops the
process with one line naming its variable, not a failed handshake later.

Rotation without a restart: grpc's dynamic server credentials ask
`ServerTls.refresh` before each new handshake; it reads the files (a few KB,
once per connection) and, when their bytes changed (cert-manager renews the
certificate, and the kubelet swaps the mounted Secret's files), checks and
serves them. Connections already open keep the session they made. Files
that do not load are skipped with one warning, and the previous certificate
stays served; files that change while being checked are looked at again at
the next handshake, so a half-written set is never served.

The runtime's own queue-delay probe (server.queue_probe) can present no
client certificate; with TLS on, it reaches the server on a plaintext
listener of its own, bound to loopback whatever GRPC_HOST is. Health and
reflection answer there (to processes of the pod only); every chained method
refuses a call that did not come over TLS (interceptors.authorization).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

_log = logging.getLogger(__name__)


class TlsFileError(ValueError):
    """A TLS file is missing or does not load; `variable` names its setting. `lasting`:
    its content is at fault (not a missing file or a failed read, which may pass)."""

    def __init__(self, variable: str, message: str, lasting: bool = True) -> None:
        super().__init__(f"{variable} {message}")
        self.variable = variable
        self.lasting = lasting


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None  # None: callers are not asked for a certificate

    @classmethod
    def checked(cls, cert: str, key: str, client_ca: str) -> TlsFiles | None:
        """The files named by TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE, loaded
        once to prove they work; None when TLS is off (all three empty)."""
        if not cert and not key:
            if client_ca:
                raise TlsFileError(
                    "TLS_CLIENT_CA_FILE", "needs TLS_CERT_FILE and TLS_KEY_FILE (mTLS is TLS)"
                )
            return None
        if not cert:
            raise TlsFileError("TLS_CERT_FILE", "is required when TLS_KEY_FILE is set")
        if not key:
            raise TlsFileError("TLS_KEY_FILE", "is required when TLS_CERT_FILE is set")
        files = cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)
        files.verify()
        return files

    def verify(self) -> None:
        for variable, path in self._named():
            if not path.is_file():
                raise TlsFileError(
                    variable, f"names no readable file: {str(path)!r}", lasting=False
                )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except OSError as error:  # ssl.SSLError is one: the content is at fault
            raise TlsFileError(
                "TLS_KEY_FILE",
                f"does not load with TLS_CERT_FILE as a PEM pair: {error}",
                lasting=isinstance(error, ssl.SSLError),
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except OSError as error:
                raise TlsFileError(
                    "TLS_CLIENT_CA_FILE",
                    f"is not a PEM CA certificate: {error}",
                    lasting=isinstance(error, ssl.SSLError),
                ) from None

    def _named(self) -> list[tuple[str, Path]]:
        named = [("TLS_CERT_FILE", self.cert), ("TLS_KEY_FILE", self.key)]
        if self.client_ca is not None:
            named.append(("TLS_CLIENT_CA_FILE", self.client_ca))
        return named

    def contents(self) -> tuple[bytes, ...]:
        """The files' bytes, b"" for one that cannot be read. Reloads compare these, not
        modification times, which a coarse clock can repeat for a rewrite."""
        read = []
        for _, path in self._named():
            try:
                read.append(path.read_bytes())
            except OSError:
                read.append(b"")
        return tuple(read)


class ServerTls:
    """The gRPC port's credentials, reloaded when the files change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.loaded = self._checked()
        self.rejected: tuple[bytes, ...] | None = None  # files whose content does not load
        self.warned: tuple[bytes, ...] | None = None  # files last warned about
        self.reloads = 0

    @property
    def mode(self) -> str:
        return "tls" if self.files.client_ca is None else "mtls"

    def _checked(self) -> tuple[bytes, ...]:
        """The files' bytes, as read before and after they were verified: what is
        served is what was checked. Raises TlsFileError."""
        for _ in range(3):
            seen = self.files.contents()
            self.files.verify()
            if self.files.contents() == seen:
                return seen
        raise TlsFileError("TLS_CERT_FILE", "kept changing while it was checked", lasting=False)

    @staticmethod
    def _configuration(contents: tuple[bytes, ...]) -> grpc.ServerCertificateConfiguration:
        cert, key, *client_ca = contents
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=client_ca[0] if client_ca else None
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self.loaded),
            self.refresh,  # type: ignore[arg-type]  # grpc documents None as "no change"
            require_client_authentication=self.files.client_ca is not None,
        )

    def refresh(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before a handshake: a new configuration, or None for no change.
        grpc would log an exception and keep the previous credentials; this does the
        same without one. Files whose content does not load are not looked at again
        until they change; a missing file or a failed read is tried again at the next
        handshake. Either is warned about once per content of the files."""
        seen = self.files.contents()
        if seen in (self.loaded, self.rejected):
            return None
        try:
            checked = self._checked()
        except TlsFileError as error:
            if error.lasting and self.files.contents() == seen:
                self.rejected = seen
            if self.warned != seen:
                self.warned = seen
                _log.warning("TLS files changed but do not load; keeping the previous: %s", error)
            return None
        self.loaded = checked
        self.reloads += 1
        _log.info("TLS certificate reloaded", extra={"tls_cert_file": str(self.files.cert)})
        return self._configuration(checked)
