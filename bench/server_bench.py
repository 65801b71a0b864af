"""`make bench`, server chain: a bare grpc.aio server against the full default chain.

Both servers run the same Echo servicer (bench.bare_server and `python -m
server` with every default layer on: correlation, tracing, metrics, access
log to a file, deadline, shedding, validation). Both are driven, in one run
and alternately, by the same load generator: h2load (nghttp2-client)
speaking gRPC over HTTP/2 with a length-prefixed EchoRequest.

1. Saturation: closed loop, 4 connections x 16 streams, ROUNDS rounds of
   DURATION seconds each per server, alternating; median throughput.
   A third server, the chain with LOG_CALLS=ALL (a JSON line per call; the
   default logs failures only), is measured too, to show what that costs.
2. Latency under load: open loop at half of the bare server's saturation
   throughput, the same rate for both; p50 and p99 from h2load's per-request
   log.

Targets (issue 3): chain throughput >= 85% of bare; chain p99 at that rate
<= 1.3x bare's. Results go to stdout and build/bench/server.json. After the
chain runs, /metrics is scraped to prove every call was answered OK (h2load
counts HTTP 200, and gRPC errors are HTTP 200 too).
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from grpcplatform.testing.v1 import echo_pb2
from tests.support.net import PYTHON, ROOT, free_port, poll, port_open, ready_status, service_env

OUT = ROOT / "build" / "bench"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
CLIENTS, STREAMS = 4, 16
PATH = "/grpcplatform.testing.v1.EchoService/Echo"


@dataclass
class Run:
    rps: float
    succeeded: int
    failed: int
    p50_ms: float
    p99_ms: float


def payload_file() -> Path:
    message = echo_pb2.EchoRequest(message="hello").SerializeToString()
    path = OUT / "echo-request.bin"
    path.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    return path


def h2load(port: int, label: str, rps_per_client: float | None = None) -> Run:
    log = OUT / f"h2load-{label}.log"
    log.unlink(missing_ok=True)
    command = [
        "h2load",
        f"-c{CLIENTS}",
        f"-m{STREAMS}",
        "-t1",
        "-D",
        str(DURATION),
        "--warm-up-time",
        "2",
        "-d",
        str(payload_file()),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--log-file",
        str(log),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    if rps_per_client is not None:
        command.append(f"--rps={rps_per_client:.2f}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finished = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    assert finished, output
    rps = float(finished.group(1))
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", output
    )
    assert counts, output
    durations = sorted(
        int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line.strip()
    )
    return Run(
        rps=rps,
        succeeded=int(counts.group(1)),
        failed=int(counts.group(2)),
        p50_ms=durations[len(durations) // 2],
        p99_ms=durations[min(len(durations) - 1, int(len(durations) * 0.99))],
    )


@contextmanager
def process(
    argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=sink)
    try:
        poll(ready, 60, f"{argv} to start")
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def non_ok_calls(admin_port: int) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.net import http_get

    _, body = http_get(f"http://127.0.0.1:{admin_port}/metrics")
    total = 0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total" and sample.labels["grpc_code"] != "OK":
                total += int(sample.value)
    return total


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    bare_port, chain_port, admin_port = free_port(), free_port(), free_port()
    logged_port, logged_admin = free_port(), free_port()
    env = dict(os.environ)
    chain_env = service_env("tests.support.echo:build", chain_port, admin_port)
    logged_env = service_env("tests.support.echo:build", logged_port, logged_admin, LOG_CALLS="ALL")
    with (
        process(
            [PYTHON, "-m", "bench.bare_server", str(bare_port)],
            env,
            OUT / "bare.log",
            lambda: port_open(bare_port),
        ),
        process(
            [PYTHON, "-m", "server"],
            chain_env,
            OUT / "chain.log",
            lambda: (ready_status(admin_port) or (0,))[0] == 200,
        ),
        process(
            [PYTHON, "-m", "server"],
            logged_env,
            OUT / "chain-logged.log",
            lambda: (ready_status(logged_admin) or (0,))[0] == 200,
        ),
    ):
        saturation: dict[str, list[Run]] = {"bare": [], "chain": [], "logged": []}
        for round_index in range(ROUNDS):
            order = [("bare", bare_port), ("chain", chain_port), ("logged", logged_port)]
            if round_index % 2:
                order.reverse()
            for name, port in order:
                run = h2load(port, f"{name}-sat-{round_index}")
                saturation[name].append(run)
                print(f"  round {round_index + 1} {name:5}: {run.rps:8.0f} calls/s", flush=True)
        bare_rps = statistics.median(r.rps for r in saturation["bare"])
        chain_rps = statistics.median(r.rps for r in saturation["chain"])
        half = bare_rps / 2
        open_loop = {
            name: h2load(port, f"{name}-half", rps_per_client=half / CLIENTS)
            for name, port in (("bare", bare_port), ("chain", chain_port))
        }
        rejected = non_ok_calls(admin_port) + non_ok_calls(logged_admin)
    logged_rps = statistics.median(r.rps for r in saturation["logged"])
    result = {
        "machine": machine(),
        "load": f"h2load, {CLIENTS} connections x {STREAMS} streams, {ROUNDS} x {DURATION} s",
        "saturation_rps": {"bare": bare_rps, "chain": chain_rps, "chain_log_all": logged_rps},
        "throughput_ratio": chain_rps / bare_rps,
        "open_loop_rate": half,
        "open_loop": {name: asdict(run) for name, run in open_loop.items()},
        "p99_ratio": open_loop["chain"].p99_ms / open_loop["bare"].p99_ms,
        "chain_non_ok_calls": rejected,
        "rounds": {name: [asdict(r) for r in runs] for name, runs in saturation.items()},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (OUT / "server.json").write_text(json.dumps(result, indent=2))
    print()
    print(f"server chain benchmark ({result['load']}; {result['machine']})")
    print("| | bare grpc.aio | full default chain | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| saturation throughput | {bare_rps:.0f}/s | {chain_rps:.0f}/s | "
        f"{result['throughput_ratio']:.2f} | >= 0.85 |"
    )
    print(
        f"| same, with LOG_CALLS=ALL | {bare_rps:.0f}/s | {logged_rps:.0f}/s | "
        f"{logged_rps / bare_rps:.2f} | (not the default) |"
    )
    b, c = open_loop["bare"], open_loop["chain"]
    print(
        f"| p50 at {half:.0f}/s | {b.p50_ms:.2f} ms | {c.p50_ms:.2f} ms | "
        f"{c.p50_ms / b.p50_ms:.2f} | |"
    )
    print(
        f"| p99 at {half:.0f}/s | {b.p99_ms:.2f} ms | {c.p99_ms:.2f} ms | "
        f"{result['p99_ratio']:.2f} | <= 1.3 |"
    )
    print(
        f"chain calls answered other than OK: {rejected}; h2load failures: "
        f"bare {sum(r.failed for r in saturation['bare'])}, "
        f"chain {sum(r.failed for r in saturation['chain'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
