"""`make bench`, TLS: what TLS and mTLS with authorization cost the server chain per call.

Three `python -m server` processes serve the test Echo service with every
default layer: plaintext, TLS (server certificate only) and mTLS with an
`AUTHZ_RULES` rule for Echo (client certificates, the caller's identity read
per call and checked). Certificates are made for the run (tests.support.certs).
h2load cannot present a client certificate, so the load is grpcio's generated
stub in this process: CONCURRENCY tasks on one channel per server, paced to
RATE calls/s in all. The client pays for TLS too: driven as fast as it could,
it sent fewer calls to the TLS servers, and a server that gets fewer calls
gets fewer of them per event loop wake-up and spends more per call (a first
version, driven that way, measured 1.13x and 1.28x in one run and 1.02x in
another). At the same offered rate the three are compared alike.

What is compared is each server's CPU time per call (all its threads, from
/proc); calls/s is printed to show the rate was met. Rounds run the three
servers back to back, the order reversed every other round
(bench.server_bench.round_order); the ratios to plaintext are taken within
each round, and their median is reported with their range.
Connections are made once and kept, as a service's clients keep theirs
(`GRPC_MAX_CONNECTION_AGE_SECONDS` 300), so the handshakes are not part of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from bench.cpu import cpu_seconds
from bench.server_bench import OUT, machine, round_order
from grpcplatform.testing.v1 import echo_pb2, echo_pb2_grpc
from tests.support.certs import Authority, Pair
from tests.support.net import PYTHON, ROOT, free_port, poll, ready_status, service_env

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
DURATION = float(os.environ.get("BENCH_SECONDS", "5"))
CONCURRENCY = 32
# Calls/s offered to each server, below what the one client reaches against any of them
# (about 4200/s against mTLS): all three serve the same rate, so their CPU per call is
# compared at the same batching of calls per event loop wake-up.
RATE = float(os.environ.get("BENCH_TLS_RATE", "2500"))
REQUEST = echo_pb2.EchoRequest(message="hello")
ECHO = "grpcplatform.testing.v1.EchoService/Echo"
MODES = ("plaintext", "tls", "mtls")


@dataclass
class Server:
    mode: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    channel: grpc.aio.Channel | None = None
    calls_per_second: list[float] = field(default_factory=list)
    cpu_us_per_call: list[float] = field(default_factory=list)


def settings(mode: str, server: Pair, ca: Path) -> dict[str, str]:
    if mode == "plaintext":
        return {}
    tls = {"TLS_CERT_FILE": str(server.cert), "TLS_KEY_FILE": str(server.key)}
    if mode == "mtls":
        tls |= {"TLS_CLIENT_CA_FILE": str(ca), "AUTHZ_RULES": f"{ECHO}=bench"}
    return tls


def channel_to(server: Server, ca: Authority, client: Pair) -> grpc.aio.Channel:
    target = f"127.0.0.1:{server.grpc_port}"
    if server.mode == "plaintext":
        return grpc.aio.insecure_channel(target)
    identity = (client.key.read_bytes(), client.cert.read_bytes()) if server.mode == "mtls" else ()
    credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes(), *identity)
    return grpc.aio.secure_channel(target, credentials)


async def drive(server: Server, seconds: float) -> None:
    """CONCURRENCY tasks calling Echo at RATE calls/s in all for `seconds`; the server's
    CPU per call recorded."""
    assert server.channel is not None
    stub = echo_pb2_grpc.EchoServiceStub(server.channel)
    process = psutil.Process(server.process.pid)
    start = time.monotonic()
    stop = start + seconds
    counts = [0] * CONCURRENCY
    interval = CONCURRENCY / RATE  # each task's time between calls

    async def worker(index: int) -> None:
        due = start + interval * index / CONCURRENCY  # the tasks' calls interleave
        while due < stop:
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            await stub.Echo(REQUEST, timeout=5)
            counts[index] += 1
            due += interval

    cpu, started = cpu_seconds(process), time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    calls = sum(counts)
    server.calls_per_second.append(calls / (time.monotonic() - started))
    server.cpu_us_per_call.append((cpu_seconds(process) - cpu) / calls * 1e6)


async def measure(servers: list[Server], ca: Authority, client: Pair) -> None:
    for server in servers:
        server.channel = channel_to(server, ca, client)
        await drive(server, 1)  # connect and warm up
        server.calls_per_second.clear()
        server.cpu_us_per_call.clear()
    for index in range(ROUNDS):
        for mode in round_order(list(MODES), index):
            server = next(s for s in servers if s.mode == mode)
            await drive(server, DURATION)
            print(
                f"  round {index + 1} {mode:9}: {server.calls_per_second[-1]:7.0f} calls/s, "
                f"{server.cpu_us_per_call[-1]:6.0f} us of server CPU per call",
                flush=True,
            )
    for server in servers:
        assert server.channel is not None
        await server.channel.close(None)


def start(mode: str, server: Pair, ca: Path) -> Server:
    grpc_port, admin_port = free_port(), free_port()
    env = service_env(
        "tests.support.echo:build", grpc_port, admin_port, **settings(mode, server, ca)
    )
    with (OUT / f"tls-{mode}.log").open("wb") as log:
        process = subprocess.Popen(
            [PYTHON, "-m", "server"], cwd=ROOT, env=env, stdout=log, stderr=log
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the {mode} server exited: see {OUT / f'tls-{mode}.log'}")
        return (ready_status(admin_port) or (0,))[0] == 200

    try:
        poll(ready, 30, f"the {mode} server")
    except BaseException:
        stop(process)
        raise
    return Server(mode, process, grpc_port)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as scratch:
        ca = Authority(Path(scratch), "bench-ca")
        server_pair, client = ca.issue("echo", server=True), ca.issue("bench")
        try:
            for mode in MODES:
                servers.append(start(mode, server_pair, ca.cert))
            asyncio.run(measure(servers, ca, client))
        finally:
            for server in servers:
                stop(server.process)
    result: dict[str, object] = {
        s.mode: {"calls_per_second": s.calls_per_second, "cpu_us_per_call": s.cpu_us_per_call}
        for s in servers
    }
    cpu = {s.mode: s.cpu_us_per_call for s in servers}
    rps = {s.mode: statistics.median(s.calls_per_second) for s in servers}

    def against_plaintext(mode: str) -> str:
        """The median of the per-round ratios to plaintext, with their range."""
        ratios = [a / b for a, b in zip(cpu[mode], cpu["plaintext"], strict=True)]
        return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"

    result["machine"] = machine()
    result["load"] = (
        f"{RATE:g} calls/s from {CONCURRENCY} tasks on one connection, {ROUNDS} x {DURATION:g} s"
    )
    (OUT / "tls.json").write_text(json.dumps(result, indent=2))
    print()
    print(f"TLS benchmark, the full chain ({result['load']}; {result['machine']})")
    print("| | plaintext | TLS | mTLS + authorization |")
    print("| --- | --- | --- | --- |")
    print(f"| calls/s | {rps['plaintext']:.0f} | {rps['tls']:.0f} | {rps['mtls']:.0f} |")
    print(
        "| server CPU per call | "
        + " | ".join(f"{statistics.median(cpu[mode]):.0f} us" for mode in MODES)
        + " |"
    )
    tls, mtls = against_plaintext("tls"), against_plaintext("mtls")
    print(f"| the same, / plaintext, per round | 1 | {tls} | {mtls} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
