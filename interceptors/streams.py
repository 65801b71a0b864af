"""Streaming calls as the chain serves them: each message counted, each request validated.

- `StreamContext`: the context every streaming handler is given. `read()`
  counts and validates each message, `write()` serializes it in the chain
  and counts it; the rest is grpc's context.
- `counted_requests`: the request iterator a stream-in handler is given,
  counting and validating like `read()`.
- `write_responses`: drives a handler that is an async generator: each
  response written through the `StreamContext`, and the generator closed in
  the call's own task whatever ends the call.

Why the chain writes a generator's responses rather than handing grpc the
generator, as grpc.aio's docs show: grpc iterates it in grpc's own code, so a
cancellation there (the deadline watch, while a write waits on a client that
stopped reading) never reaches the chain, and the caller got no status at
all instead of DEADLINE_EXCEEDED; and grpc never closes the generator, whose
`finally` then runs at garbage collection, outside the call (grpc/grpc#42295).
grpc's loop awaits `context.write` per message too, so that costs nothing.

Why the first write is shielded, and the chain waits for it before it
aborts (`StreamContext.settle`): it carries the initial metadata, which
grpc.aio marks sent only once the write completes. Cancelled while it waits
on a client that stopped reading (the deadline watch, or a handler's own
timeout), it would leave them unmarked though they went to grpc's core, and
the abort would send them again, which core refuses: the caller got no
status at all. The shield costs a one-message stream about 10%, paid once
per stream (callgrind, one call at a time: 448k instructions against 405k).
Sending the initial metadata in a batch of their own first cost 7% and had
the same hole while that batch was in flight; shielding only the first
writes a slow reader could hold up (those over a new stream's 64 KiB
window) would leave it for the others.

Sizes: the chain refuses a response over `GRPC_MAX_SEND_MESSAGE_BYTES`
before grpc sees it (interceptors.chain), as the service's error.

A message counts as sent once it is handed to grpc, as a unary response does:
one the client has not read when the call ends still reaches it if it reads
on, before the status. A write that fails because the caller's own deadline
passed (grpc's core enforces it and ends the call) raises
`CallerDeadlinePassed`: the chain counts the call DEADLINE_EXCEEDED and
sends nothing more. Any other failed write is the server's error, mapped and
logged as such.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs 1.53

from interceptors.call import ServerCall

Serializer = Callable[[Any], bytes]
Validate = Callable[[Any], None]


class CallerDeadlinePassed(Exception):
    """A write failed because the caller's own deadline passed: grpc's core ended the call."""


def counted_requests(
    call: ServerCall, requests: AsyncIterator[Any], validate: Validate
) -> AsyncIterator[Any]:
    async def counted() -> AsyncIterator[Any]:
        async for message in requests:
            call.received += 1
            validate(message)
            yield message

    return counted()


class StreamContext:
    """grpc's context, with the chain in the way of reads and writes."""

    __slots__ = ("_call", "_context", "_first_write", "_serialize", "_validate")

    def __init__(self, call: ServerCall, serialize: Serializer, validate: Validate) -> None:
        self._call = call
        self._context = call.context
        self._serialize = serialize
        self._validate = validate
        self._first_write: asyncio.Future[None] | None = None

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not EOF:
            self._call.received += 1
            self._validate(message)
        return message

    async def write(self, message: Any) -> None:
        encoded = self._serialize(message)  # not serializable: raises, mapped by the chain
        self._call.sent += 1
        try:
            if self._first_write is None:
                self._first_write = asyncio.ensure_future(self._context.write(encoded))
                await asyncio.shield(self._first_write)
            else:
                await self._context.write(encoded)
        except grpc.aio.InternalError as error:  # a batch grpc's core failed or refused
            if self._context.time_remaining() == 0:
                raise CallerDeadlinePassed("the caller's deadline passed") from error
            raise

    async def settle(self) -> bool:
        """Waits for a first write still in flight; False when it failed: the call is over
        in grpc, and no status can be sent."""
        first = self._first_write
        if first is None:
            return True
        try:
            await first
        except Exception:
            return False
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


async def write_responses(responses: AsyncGenerator[Any, None], context: StreamContext) -> None:
    try:
        async for response in responses:
            await context.write(response)
    finally:
        await responses.aclose()
