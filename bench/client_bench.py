"""`make bench`, client chain: a generated client with the full chain against a bare stub.

One server process (bench.bare_server, so the server costs the same for both)
and, in this process, CONCURRENCY tasks calling Echo for DURATION seconds:
- bare: grpcio's generated stub (`EchoServiceStub.Echo`) on a plain channel;
- chain: the generated `EchoServiceClient` through `ClientChain` with every
  default on (deadline, propagation, retries and budget, breaker, bulkhead,
  metrics), as a service gets it from the platform.
Rounds alternate and the median is kept. Then the breaker-open fast path:
calls/s of a client whose circuit is open (they fail without a network
call), against the bare client's real calls/s.

Targets (issue 4): chain >= 85% of bare; breaker-open path >= 10x a real call.
The server shares the 2 cores, so calls/s can hide the client's own cost:
the client process's CPU time per call is reported too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
from prometheus_client import CollectorRegistry

from bench.server_bench import OUT, machine
from clients.chain import ClientChain
from clients.channel import ChannelFactory
from clients.resilience import Resilience
from grpcplatform.testing.v1 import echo_pb2, echo_pb2_grpc
from grpcplatform.testing.v1.echo_platform import EchoServiceClient
from interceptors.breaker import BreakerSettings
from interceptors.metrics import RpcMetrics
from tests.support.net import PYTHON, ROOT, free_port, poll, port_open

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = float(os.environ.get("BENCH_SECONDS", "8"))
CONCURRENCY = 32
REQUEST = echo_pb2.EchoRequest(message="hello")


CPU_PER_CALL: dict[str, list[float]] = {"bare": [], "chain": []}


async def rate(
    call: Callable[[], Awaitable[object]], seconds: float, name: str | None = None
) -> float:
    """Calls per second of CONCURRENCY tasks calling `call` for `seconds`
    (and, under `name`, this process's CPU microseconds per call)."""
    cpu = time.process_time()
    stop = time.monotonic() + seconds
    counts = [0] * CONCURRENCY

    async def worker(index: int) -> None:
        while time.monotonic() < stop:
            await call()
            counts[index] += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    if name is not None:
        CPU_PER_CALL[name].append((time.process_time() - cpu) / sum(counts) * 1e6)
    return sum(counts) / (time.monotonic() - started)


async def measure(target: str) -> dict[str, object]:
    bare_channel = grpc.aio.insecure_channel(target)
    stub = echo_pb2_grpc.EchoServiceStub(bare_channel)
    channels = ChannelFactory(chain=ClientChain(metrics=RpcMetrics(CollectorRegistry(), "client")))
    client = EchoServiceClient(channels.connect(target))

    async def bare() -> object:
        return await stub.Echo(REQUEST, timeout=5)

    async def chain() -> object:
        return await client.echo(REQUEST)

    await rate(bare, 1)  # warm both up
    await rate(chain, 1)
    rounds: dict[str, list[float]] = {"bare": [], "chain": []}
    for index in range(ROUNDS):
        order = [("bare", bare), ("chain", chain)]
        if index % 2:
            order.reverse()
        for name, call in order:
            rounds[name].append(await rate(call, DURATION, name))
            print(f"  round {index + 1} {name:5}: {rounds[name][-1]:8.0f} calls/s", flush=True)

    dead = f"127.0.0.1:{free_port()}"
    open_settings = BreakerSettings(minimum_calls=1, open_seconds=3600)
    open_chain = ClientChain(resilience=Resilience(breaker=open_settings))
    open_client = EchoServiceClient(ChannelFactory(chain=open_chain).connect(dead))

    async def rejected() -> object:
        try:
            await open_client.echo(REQUEST, timeout=1)
        except grpc.aio.AioRpcError as error:
            return error
        raise AssertionError("the call to a dead target succeeded")

    await rejected()  # UNAVAILABLE from the network: the breaker opens
    open_rate = await rate(rejected, 2)
    await bare_channel.close(None)
    await channels.close()
    bare_rps, chain_rps = statistics.median(rounds["bare"]), statistics.median(rounds["chain"])
    return {
        "bare_rps": bare_rps,
        "chain_rps": chain_rps,
        "ratio": chain_rps / bare_rps,
        "breaker_open_rps": open_rate,
        "breaker_open_speedup": open_rate / bare_rps,
        "client_cpu_us_per_call": {k: statistics.median(v) for k, v in CPU_PER_CALL.items()},
        "rounds": rounds,
    }


def main() -> int:
    logging.getLogger("clients.resilience").setLevel(logging.ERROR)  # the breaker opens on purpose
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (OUT / "client-server.log").open("wb") as log:
        server = subprocess.Popen(
            [PYTHON, "-m", "bench.bare_server", str(port)], cwd=ROOT, stdout=log, stderr=log
        )
    try:
        poll(lambda: port_open(port), 30, "the bench server")
        result = asyncio.run(measure(f"127.0.0.1:{port}"))
    finally:
        server.terminate()
        server.wait(30)
    result["machine"] = machine()
    result["load"] = f"{CONCURRENCY} concurrent tasks, {ROUNDS} x {DURATION:g} s"
    (OUT / "client.json").write_text(json.dumps(result, indent=2))
    print()
    print(f"client chain benchmark ({result['load']}; {result['machine']})")
    print("| | bare generated stub | generated client, full chain | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| calls/s | {result['bare_rps']:.0f} | {result['chain_rps']:.0f} | "
        f"{result['ratio']:.2f} | >= 0.85 |"
    )
    cpu = result["client_cpu_us_per_call"]
    assert isinstance(cpu, dict)
    print(
        f"| client CPU per call | {cpu['bare']:.0f} us | {cpu['chain']:.0f} us | "
        f"{cpu['chain'] / cpu['bare']:.2f} | |"
    )
    print(
        f"| breaker open (fails fast) | {result['bare_rps']:.0f} real calls/s | "
        f"{result['breaker_open_rps']:.0f} rejections/s | {result['breaker_open_speedup']:.1f}x | "
        ">= 10x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
