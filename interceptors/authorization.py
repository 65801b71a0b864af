"""Who is calling, proven by mTLS, and which callers may call which method.

Identity: grpc has verified the caller's certificate against the server's
client CA during the TLS handshake (server.tls); this layer reads the
result from the call's auth context. The identity is the certificate's
SPIFFE ID (its one `spiffe://` URI SAN, as service meshes and SPIRE issue
them), else its subject common name (`caller_identity` says what is
refused). It is kept on the call (`call.caller`): the access log writes it
and the rate limit counts per identity, so a caller cannot escape its limit
by sending a new `x-client-id`.

Policy (`AUTHZ_RULES`): entries `pattern=caller|caller...`, where a pattern
is `package.Service/Method`, `package.Service/*` or `*`, and a caller `*`
admits any authenticated caller. The most specific pattern that matches a
method decides; a method no pattern matches is denied: once rules exist,
access is granted, never assumed (as Istio's AuthorizationPolicy with an
ALLOW rule, and gRFC A43's authorization policy, behave). Without rules every
authenticated caller is admitted. Each method's allowed set is resolved once
when the chain is built; per call the layer does one auth-context read
(about 5 us: grpc copies every property, the PEM certificate among them)
and one set lookup. It is not cached per connection: grpc.aio shows no
connection identity but the peer address, which a later connection with
another certificate can reuse.

Rejections: a call that did not come over TLS (through the runtime's
plaintext loopback listener for its own probe, server.tls), or whose
certificate proves no identity, is UNAUTHENTICATED, reason
CALLER_UNAUTHENTICATED; an identity the rule does not list is
PERMISSION_DENIED, reason CALLER_NOT_ALLOWED, with the caller and method in
the ErrorInfo metadata (the caller's own identity: nothing internal).
Departure: grpc's C-core authorization engine (gRFC A43) is not exposed to
Python, so the rules are evaluated here, in the chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from interceptors.call import ServerCall
from interceptors.errors import PermissionDenied, Unauthenticated

ANY_CALLER = "*"
SPIFFE_PREFIX = b"spiffe://"
TLS = b"ssl"  # grpc's transport_security_type of a TLS connection


class PolicyError(ValueError):
    """An `AUTHZ_RULES` entry does not parse."""


def caller_identity(auth: Mapping[str, Iterable[bytes]]) -> str | None:
    """The identity a verified peer certificate proves, from grpc's auth context, or None.

    grpc sets `peer_spiffe_id` only for a certificate whose URI SANs are exactly one
    SPIFFE ID. A certificate with SPIFFE URIs that do not make one proves nothing, and
    a common name with `://` is refused, so that no DNS name, e-mail address or common
    name can pass for a SPIFFE ID (all SPIFFE IDs contain `://`, no accepted name does).
    """
    spiffe_id = next(iter(auth.get("peer_spiffe_id", ())), None)
    if spiffe_id is not None:
        return spiffe_id.decode("utf-8", "replace")
    if any(uri.startswith(SPIFFE_PREFIX) for uri in auth.get("peer_uri", ())):
        return None
    name = next(iter(auth.get("x509_common_name", ())), None)
    if name is None or b"://" in name:
        return None
    return name.decode("utf-8", "replace")


class AuthorizationPolicy:
    """Allowed callers per method pattern (pure logic)."""

    def __init__(self, rules: Mapping[str, frozenset[str]]) -> None:
        self.rules = dict(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AuthorizationPolicy:
        rules: dict[str, frozenset[str]] = {}
        for entry in entries:
            pattern, _, callers = entry.partition("=")
            pattern = pattern.strip().lstrip("/")
            names = frozenset(name.strip() for name in callers.split("|") if name.strip())
            service, slash, method = pattern.partition("/")
            well_formed = pattern == "*" or bool(slash and service and method and "/" not in method)
            if not well_formed or not names or pattern in rules:
                raise PolicyError(
                    "AUTHZ_RULES entries must look like package.Service/Method=caller|caller "
                    f"(or package.Service/*, or *; each pattern once), got {entry!r}"
                )
            rules[pattern] = names
        return cls(rules)

    def callers_for(self, full_method: str) -> frozenset[str] | None:
        """Who may call `/package.Service/Method`: a set (may be empty: nobody), or
        None when every authenticated caller may."""
        if not self.rules:
            return None
        method = full_method.lstrip("/")
        service = method.partition("/")[0]
        for pattern in (method, f"{service}/*", ANY_CALLER):
            callers = self.rules.get(pattern)
            if callers is not None:
                return None if ANY_CALLER in callers else callers
        return frozenset()

    def unmatched(self, full_methods: Iterable[str]) -> list[str]:
        """The patterns that match none of `full_methods` (a misspelt rule grants nothing)."""
        served = {method.lstrip("/") for method in full_methods}
        services = {method.partition("/")[0] for method in served}
        return sorted(
            pattern
            for pattern in self.rules
            if pattern != ANY_CALLER
            and pattern not in served
            and not (pattern.endswith("/*") and pattern[:-2] in services)
        )


class AuthorizationLayer:
    """One method's check; `begin` only (nothing to undo at the end of a call).

    With TLS on, every call must have come over TLS: the runtime's plaintext
    loopback listener for its own probe (server.tls) serves no chained method.
    With mTLS (`identify`), the call's certificate identity must be one
    `allowed` names (None: any)."""

    def __init__(self, full_method: str, allowed: frozenset[str] | None, identify: bool) -> None:
        self.full_method = full_method
        self.allowed = allowed
        self.identify = identify

    def begin(self, call: ServerCall) -> None:
        auth = call.context.auth_context()
        if TLS not in auth.get("transport_security_type", ()):
            raise Unauthenticated("calls must use TLS", reason="CALLER_UNAUTHENTICATED")
        if not self.identify:
            return
        caller = caller_identity(auth)
        if caller is None:
            raise Unauthenticated(
                "the client certificate names no identity", reason="CALLER_UNAUTHENTICATED"
            )
        call.caller = caller
        if self.allowed is not None and caller not in self.allowed:
            raise PermissionDenied(
                f"{caller} may not call {self.full_method}",
                reason="CALLER_NOT_ALLOWED",
                metadata={"caller": caller, "method": self.full_method},
            )

    def end(self, call: ServerCall) -> None:
        return None
