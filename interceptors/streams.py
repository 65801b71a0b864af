"""Streaming calls as the chain serves them: each message counted, each request validated.

- `counted_requests`: the request iterator a stream-in handler is given;
  each message is counted and validated before the handler sees it.
- `StreamContext`: the context a handler is given when it may use grpc.aio's
  reader/writer API (every stream-in handler, and a server-streaming handler
  that is a coroutine): `read()` counts and validates like the iterator,
  `write()` serializes in the chain and counts; the rest is grpc's context.
- `write_responses`: drives a handler that is an async generator: each
  response serialized, written and counted, and the generator closed in the
  call's own task whatever ends the call.

Why the chain writes a generator's responses rather than handing grpc the
generator, as grpc.aio's docs show: grpc iterates it in grpc's own code, so a
cancellation there (the deadline watch, while a write waits on a client that
stopped reading) never reaches the chain, and the caller got no status at
all instead of DEADLINE_EXCEEDED; and grpc never closes the generator, whose
`finally` then runs at garbage collection, outside the call (grpc/grpc#42295).
It costs what grpc's loop costs: that loop awaits `context.write` per message
too. The chain serializes what is written, so grpc is given no response
serializer for any method (`ServerChain.wrap`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs 1.53

from interceptors.call import ServerCall

Serializer = Callable[[Any], bytes]
Validate = Callable[[Any], None]


def counted_requests(
    call: ServerCall, requests: AsyncIterator[Any], validate: Validate
) -> AsyncIterator[Any]:
    async def counted() -> AsyncIterator[Any]:
        async for message in requests:
            call.received += 1
            validate(message)
            yield message

    return counted()


async def write_responses(
    call: ServerCall, responses: AsyncGenerator[Any, None], serialize: Serializer
) -> None:
    write = call.context.write
    try:
        async for response in responses:
            await write(serialize(response))  # not serializable: raises, mapped by the chain
            call.sent += 1
    finally:
        await responses.aclose()


class StreamContext:
    """grpc's context, with the chain in the way of `read()` and `write()`."""

    __slots__ = ("_call", "_context", "_serialize", "_validate")

    def __init__(self, call: ServerCall, serialize: Serializer, validate: Validate) -> None:
        self._call = call
        self._context = call.context
        self._serialize = serialize
        self._validate = validate

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not EOF:
            self._call.received += 1
            self._validate(message)
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(self._serialize(message))
        self._call.sent += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
