"""Correlation ids: one per call, from the caller or made here, everywhere after.

Taken from inbound metadata `x-correlation-id`, else the W3C trace id of
`traceparent`, else a new one; kept on the call, which the chain makes the
current inbound work (interceptors.inbound), so logs and outbound calls made
while handling it carry the id; echoed to the caller in trailing metadata.
A caller's id is only accepted if it is short and plain (letters, digits,
`-_.:`), so it cannot inject into logs.

A new id is 32 hex digits, like a trace id: a random 64-bit prefix per
process and a 64-bit counter. Ids only have to be unique, not secret, and
this costs a counter step where `random.getrandbits(128)` (or uuid4's
urandom syscall) cost microseconds per call, most of them cache misses under
load. A forked child draws its own prefix, so two workers never share ids.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections.abc import Mapping

from interceptors.call import ServerCall
from interceptors.inbound import inbound_var

HEADER = "x-correlation-id"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_INVALID_TRACE_ID = "0" * 32

_prefix = secrets.token_hex(8)
_sequence = itertools.count()


def _start_a_new_sequence() -> None:
    global _prefix, _sequence
    _prefix = secrets.token_hex(8)
    _sequence = itertools.count()


os.register_at_fork(after_in_child=_start_a_new_sequence)


def new_correlation_id() -> str:
    return f"{_prefix}{next(_sequence):016x}"


def current_correlation_id() -> str | None:
    """The id of the inbound work being served (interceptors.inbound), if any."""
    inbound = inbound_var.get()
    return (inbound.correlation_id or None) if inbound is not None else None


def correlation_id_from(metadata: Mapping[str, str | bytes]) -> str:
    offered = metadata.get(HEADER)
    if isinstance(offered, str) and _ACCEPTABLE.fullmatch(offered):
        return offered
    traceparent = metadata.get("traceparent")
    if isinstance(traceparent, str):
        match = _TRACEPARENT.fullmatch(traceparent.strip())
        if match and match.group(1) != _INVALID_TRACE_ID:
            return match.group(1)
    return new_correlation_id()


class CorrelationLayer:
    """A first step with nothing to end: the call, current inbound work since the
    chain began it, carries the id."""

    def begin(self, call: ServerCall) -> None:
        metadata = call.metadata
        if HEADER in metadata or "traceparent" in metadata:
            call.correlation_id = correlation_id_from(metadata)
        else:
            call.correlation_id = new_correlation_id()
        call.context.set_trailing_metadata(((HEADER, call.correlation_id),))
