"""Test PKI: a CA and the certificates it signs, written as PEM files (cryptography).

Certificates are made per test, valid for a day, ECDSA P-256 like
cert-manager's default for ECDSA issuers. A server certificate names
`localhost` and 127.0.0.1; a client certificate has a common name and, when
asked, a SPIFFE ID as its URI SAN. `SecretVolume` lays files out as a
mounted Kubernetes Secret and updates them as the kubelet does.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class Authority:
    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}.crt"
        self.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        client: bool | None = None,
        spiffe_id: str | None = None,
        names: Sequence[x509.GeneralName] = (),
        into: Pair | None = None,
    ) -> Pair:
        """A certificate for `common_name`, written to `into` (rotation) or new files:
        a server's, a client's (the default), or both (a service that also calls);
        `names` are more subject alternative names (hostile certificates)."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if client if client is not None else not server:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(self.name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans = list(names)
        if server:
            sans += [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
        if spiffe_id:
            sans.append(x509.UniformResourceIdentifier(spiffe_id))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        pair = into or Pair(
            self.directory / f"{common_name}.crt", self.directory / f"{common_name}.key"
        )
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return pair


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: each key a symlink through
    `..data` to a directory of the current version, which an update replaces with one
    atomic rename (the kubelet's AtomicWriter)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.pair = Pair(directory / "tls.crt", directory / "tls.key")
        self._versions = 0

    def publish(self, pair: Pair) -> None:
        self._versions += 1
        version = self.directory / f"..version-{self._versions}"
        version.mkdir()
        (version / "tls.crt").write_bytes(pair.cert.read_bytes())
        (version / "tls.key").write_bytes(pair.key.read_bytes())
        staged, current = self.directory / "..data_tmp", self.directory / "..data"
        previous = current.resolve() if current.is_symlink() else None
        staged.symlink_to(version.name)
        os.replace(staged, current)
        if previous is not None:
            shutil.rmtree(previous)  # the kubelet removes the old version once swapped
        for path in (self.pair.cert, self.pair.key):
            if not path.is_symlink():
                path.symlink_to(Path("..data") / path.name)
