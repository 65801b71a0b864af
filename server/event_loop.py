"""The event loop of a service process (uvloop unless `EVENT_LOOP=asyncio`), and its load.

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

`EventLoopCpu` exports `platform_server_event_loop_cpu_seconds_total`, the
CPU time of the loop's thread: its rate is the share of the time the loop
is busy. Every handler, the chain and grpc.aio's own Python work share that
one thread; past about 80% busy, calls wait to start, in grpc's queue where
no layer of the chain sees them (so the concurrency limit does not move;
README, the server chain). `make bench` found this share is what p99
follows. It costs nothing per call: the thread's CPU clock is read when
`/metrics` is scraped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import uvloop
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

EVENT_LOOPS = ("UVLOOP", "ASYNCIO")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(name: str) -> LoopFactory | None:
    """For `asyncio.Runner`; `name` is a validated `EVENT_LOOP` value (server.config).
    None for ASYNCIO: the Runner then does exactly what `asyncio.run` does."""
    return uvloop.new_event_loop if name == "UVLOOP" else None


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What the process runs on, for its start-up log line."""
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"


class EventLoopCpu(Collector):
    """The CPU time of the thread that creates it, which must be the event loop's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._clock = time.pthread_getcpuclockid(threading.get_ident())
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "platform_server_event_loop_cpu_seconds",
            "CPU time of the event loop's thread; its rate is the share of the time "
            "the loop is busy.",
            value=time.clock_gettime(self._clock),
        )
