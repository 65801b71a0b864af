"""The event loop a service process runs on: uvloop unless `EVENT_LOOP=asyncio`.

grpc.aio does its per-call work on the event loop's thread: each call's two
tasks, the futures its batches complete, the wake-ups from grpc's poller
thread. uvloop (MagicStack's libuv loop, in Cython; what uvicorn and many
grpc.aio services run on) does that scheduling for less. Measured here on
the Echo service, four servers driven at once by open loops at the same rate
so the shared host treats them alike: the event loop's CPU per call went
from 256 to 206 us for a bare grpc.aio server and from 293 to 246 us for the
full chain (README, Performance). Nothing else changes: the platform uses
only asyncio's public API, which uvloop implements.

`asyncio` stays a setting, for a library that misbehaves on uvloop or a
debugger that needs the pure-Python loop. The tests run in-process servers
on pytest's asyncio loop and service processes on uvloop, so both are
exercised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvloop

EVENT_LOOPS = ("UVLOOP", "ASYNCIO")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(name: str) -> LoopFactory:
    """`name` is a validated `EVENT_LOOP` value (server.config)."""
    return uvloop.new_event_loop if name == "UVLOOP" else asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What the process runs on, for its start-up log line."""
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"
