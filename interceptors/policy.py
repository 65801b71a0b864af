"""Per-method call policy, as the contract declares it.

The code generator (codegen.plugin) writes one `MethodPolicy` per method into
each service's generated table; server and client chains read them instead of
parsing descriptors on the hot path. Idempotency is protobuf's own
`idempotency_level` (AIP-194: only NO_SIDE_EFFECTS and IDEMPOTENT methods are
ever retried); the default deadline is our `grpcplatform.v1.method_policy`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Arity(enum.Enum):
    UNARY_UNARY = "unary"
    UNARY_STREAM = "server_stream"
    STREAM_UNARY = "client_stream"
    STREAM_STREAM = "bidi_stream"


class Idempotency(enum.Enum):
    UNKNOWN = "UNKNOWN"
    NO_SIDE_EFFECTS = "NO_SIDE_EFFECTS"
    IDEMPOTENT = "IDEMPOTENT"


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    service: str
    method: str
    arity: Arity
    idempotency: Idempotency
    # Seconds; applies when the caller sets no deadline of its own.
    default_deadline: float

    @property
    def full_method(self) -> str:
        """The HTTP/2 path of the method, `/package.Service/Method`."""
        return f"/{self.service}/{self.method}"

    @property
    def safe_to_retry(self) -> bool:
        return self.idempotency is not Idempotency.UNKNOWN
