"""`make bench`, server chain: a bare grpc.aio server against the full default chain.

All servers run the same Echo servicer and are driven, in one run and in
turn, by the same load generator: h2load (nghttp2-client) speaking gRPC over
HTTP/2 with a length-prefixed EchoRequest.

- bare: bench.bare_server, methods registered as grpcio's generated code
  registers them, on asyncio's loop: what a hand-rolled service is. The
  target's baseline.
- chain: `python -m server` with every default layer on (correlation,
  tracing context, metrics, access log of failures, deadline, shedding with
  its queue-delay probe, validation), health, reflection and the admin port,
  on its default loop, uvloop (server.event_loop).
- table: the bare server on uvloop serving its methods from the platform's
  one generic handler (server.dispatch), no chain: chain / table is the
  chain's own cost.
- bare_uvloop: the bare server on uvloop: table / bare_uvloop is what the
  dispatch saves, and bare_uvloop / bare what the loop saves.
- logged: the chain with LOG_CALLS=ALL (a JSON line per call), to show what
  that costs.
- rejecting: the chain with a rate limit of 1 call/s, so it answers nearly
  every call RESOURCE_EXHAUSTED with its rich details: what a rejection costs
  beside a served call (issue 3: rejections cost almost nothing).

1. Saturation: closed loop, 4 connections x 16 streams, ROUNDS rounds of
   DURATION seconds per server; each round runs every server once (bare,
   chain, table, bare_uvloop, logged, reversed every other round). The
   machine is shared and its speed drifts, so a ratio is taken within each
   round between runs back to back, and the median of those is reported
   with its range (rejecting runs last, four runs after the chain it is
   compared with). The server's CPU time per call (all its threads) is
   reported beside calls/s: its ratio moves less when the machine slows
   down.
2. Latency under load: open loop at half of the bare server's saturation
   throughput, the same rate for bare, chain and bare_uvloop, LATENCY_PAIRS
   sets run back to back in alternating order; p50 and p99 from h2load's
   per-request logs, and the median of the sets' p99 ratios (one run's p99 is
   at the mercy of a single stall of the shared machine). Beside them, the
   share of the time the server's event loop thread ran: how close to its
   capacity the rate puts each server, which is what p99 follows.
   h2load's `--rps` sends on a 10 ms tick, all its connections together: one
   h2load at 4000/s sends bursts of 40 every 10 ms, and its p99 is the time
   to drain a burst, not latency at that load. So the rate is split over
   SENDERS h2load processes of one connection each, started a fraction of a
   tick apart: arrivals come in twos at scattered moments, close to the
   independent arrivals of many clients.

Targets (issue 3): chain throughput >= 85% of bare; chain p99 at that rate
<= 1.3x bare's. Both are also given against bare_uvloop. Results go to
stdout and build/bench/server.json. After the chain runs, /metrics is
scraped to prove every call was answered OK (h2load counts HTTP 200, and
gRPC errors are HTTP 200 too).
"""

from __future__ import annotations

import functools
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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.cpu import cpu_seconds, main_thread_seconds
from grpcplatform.testing.v1 import echo_pb2
from tests.support.net import PYTHON, ROOT, free_port, poll, port_open, ready_status, service_env

OUT = ROOT / "build" / "bench"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "8"))
DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
LATENCY_PAIRS = int(os.environ.get("BENCH_LATENCY_PAIRS", "5"))
CLIENTS, STREAMS = 4, 16
SENDERS = 20  # open-loop h2load processes, one connection each
WARM_UP = 2  # seconds of each h2load run before it measures
TICK = 0.01  # h2load's --rps timer
PATH = "/grpcplatform.testing.v1.EchoService/Echo"


@dataclass
class Run:
    rps: float
    succeeded: int
    failed: int
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float = 0.0  # the server's, all threads (closed loop only)
    loop_busy: float = 0.0  # share of the time its event loop thread ran (open loop only)


@functools.cache
def payload_file() -> Path:
    """Written once: the open-loop senders map it while others start."""
    message = echo_pb2.EchoRequest(message="hello").SerializeToString()
    path = OUT / "echo-request.bin"
    path.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    return path


def h2load_command(port: int, log: Path, connections: int, rps: float | None) -> list[str]:
    command = [
        "h2load",
        f"-c{connections}",
        f"-m{STREAMS}",
        "-t1",
        "-D",
        str(DURATION),
        "--warm-up-time",
        str(WARM_UP),
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
    if rps is not None:
        command.append(f"--rps={rps:.2f}")
    log.unlink(missing_ok=True)
    return command


def outcome(output: str) -> tuple[float, int, int]:
    """Calls/s, succeeded and failed from h2load's summary (warm-up excluded)."""
    finished = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", output
    )
    if finished is None or counts is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    return float(finished.group(1)), int(counts.group(1)), int(counts.group(2))


def measured_durations(log_lines: list[str]) -> list[float]:
    """Milliseconds of the calls in h2load's request log (start in microseconds,
    status, duration in microseconds: the main duration's calls only), sorted."""
    return sorted(int(line.split("\t")[2]) / 1000 for line in log_lines if line.strip())


def percentile(durations: list[float], fraction: float) -> float:
    return durations[min(len(durations) - 1, int(len(durations) * fraction))]


def run_from(output: str, durations: list[float]) -> Run:
    rps, succeeded, failed = outcome(output)
    return Run(rps, succeeded, failed, percentile(durations, 0.5), percentile(durations, 0.99))


def h2load(port: int, label: str, server: psutil.Process) -> Run:
    """Closed loop: CLIENTS connections keep STREAMS calls each in flight. The server's
    CPU time per call is steadier than calls/s when the shared machine slows down."""
    log = OUT / f"h2load-{label}.log"
    command = h2load_command(port, log, CLIENTS, None)
    load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(WARM_UP)  # h2load counts and logs the calls after its warm-up only
    cpu_before = cpu_seconds(server)
    output = load.communicate()[0]
    cpu = cpu_seconds(server) - cpu_before
    if load.returncode != 0:
        raise RuntimeError(f"h2load failed:\n{output}")
    durations = measured_durations(log.read_text().splitlines())
    run = run_from(output, durations)
    run.cpu_us_per_call = 1e6 * cpu / len(durations)
    return run


def open_loop_run(port: int, label: str, rate: float, server: psutil.Process) -> Run:
    """`rate` calls/s from SENDERS h2load processes started a fraction of a tick apart,
    and how busy the server's event loop thread was while they measured."""
    logs = [OUT / f"h2load-{label}-{sender}.log" for sender in range(SENDERS)]
    senders = []
    for log in logs:
        command = h2load_command(port, log, 1, rate / SENDERS)
        senders.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        time.sleep(TICK / SENDERS)
    time.sleep(WARM_UP)
    loop_before, started = main_thread_seconds(server), time.monotonic()
    outputs = [sender.communicate()[0] for sender in senders]
    loop_busy = (main_thread_seconds(server) - loop_before) / (time.monotonic() - started)
    if any(sender.returncode != 0 for sender in senders):
        raise RuntimeError(f"an h2load sender failed:\n{outputs}")
    durations = sorted(d for log in logs for d in measured_durations(log.read_text().splitlines()))
    parts = [outcome(output) for output in outputs]
    return Run(
        rps=sum(rps for rps, _, _ in parts),
        succeeded=sum(ok for _, ok, _ in parts),
        failed=sum(failed for _, _, failed in parts),
        p50_ms=percentile(durations, 0.5),
        p99_ms=percentile(durations, 0.99),
        loop_busy=loop_busy,
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


def platform_server(
    port: int, admin_port: int, log_name: str, **settings: str
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`python -m server` with the Echo service and `settings`, ready when entered."""
    return process(
        [PYTHON, "-m", "server"],
        service_env("tests.support.echo:build", port, admin_port, **settings),
        OUT / log_name,
        lambda: (ready_status(admin_port) or (0,))[0] == 200,
    )


def handled_calls(admin_port: int) -> tuple[int, int]:
    """Calls the server answered OK and otherwise, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.net import http_get

    _, body = http_get(f"http://127.0.0.1:{admin_port}/metrics")
    ok = other = 0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "grpc_server_handled_total":
                if sample.labels["grpc_code"] == "OK":
                    ok += int(sample.value)
                else:
                    other += int(sample.value)
    return ok, other


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def round_order(names: list[str], index: int) -> list[str]:
    """Every server once per round, in the given order on even rounds and reversed on
    odd ones: neighbours in the list always run back to back, so their ratio compares
    runs seconds apart, and no server always goes first."""
    return names[::-1] if index % 2 else list(names)


def paired_ratios(runs: dict[str, list[Run]], name: str, baseline: str) -> list[float]:
    return [a.rps / b.rps for a, b in zip(runs[name], runs[baseline], strict=True)]


def paired_cpu_ratios(runs: dict[str, list[Run]], name: str, baseline: str) -> list[float]:
    """Calls per CPU-second of `name` over `baseline`'s, round by round."""
    pairs = zip(runs[name], runs[baseline], strict=True)
    return [b.cpu_us_per_call / a.cpu_us_per_call for a, b in pairs]


def median_and_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    # The order of the runs in a round: the ratios that matter are of neighbours.
    names = ("bare", "chain", "table", "bare_uvloop", "logged", "rejecting")
    ports = {name: free_port() for name in names}
    admin_port, logged_admin, rejecting_admin = free_port(), free_port(), free_port()
    env = dict(os.environ)
    with (
        process(
            [PYTHON, "-m", "bench.bare_server", str(ports["bare"])],
            env,
            OUT / "bare.log",
            lambda: port_open(ports["bare"]),
        ) as bare,
        process(
            [PYTHON, "-m", "bench.bare_server", str(ports["bare_uvloop"]), "--uvloop"],
            env,
            OUT / "bare-uvloop.log",
            lambda: port_open(ports["bare_uvloop"]),
        ) as bare_uvloop,
        process(
            [PYTHON, "-m", "bench.bare_server", str(ports["table"]), "--table", "--uvloop"],
            env,
            OUT / "table.log",
            lambda: port_open(ports["table"]),
        ) as table,
        platform_server(ports["chain"], admin_port, "chain.log") as chain,
        platform_server(
            ports["logged"], logged_admin, "chain-logged.log", LOG_CALLS="ALL"
        ) as logged,
        platform_server(
            ports["rejecting"], rejecting_admin, "chain-rejecting.log", RATE_LIMIT_RPS="1"
        ) as rejecting,
    ):
        started_servers = (bare, chain, table, bare_uvloop, logged, rejecting)
        servers = {
            name: psutil.Process(started.pid)
            for name, started in zip(ports, started_servers, strict=True)
        }
        saturation: dict[str, list[Run]] = {name: [] for name in ports}
        for round_index in range(ROUNDS):
            for name in round_order(list(ports), round_index):
                run = h2load(ports[name], f"{name}-sat-{round_index}", servers[name])
                saturation[name].append(run)
                shown = f"{run.rps:8.0f} calls/s, {run.cpu_us_per_call:5.0f} us CPU per call"
                print(f"  round {round_index + 1} {name:11}: {shown}", flush=True)
        bare_rps = statistics.median(r.rps for r in saturation["bare"])
        half = bare_rps / 2
        latency_order = ["bare", "chain", "bare_uvloop"]
        open_loop: dict[str, list[Run]] = {name: [] for name in latency_order}
        for pair in range(LATENCY_PAIRS):
            for name in round_order(latency_order, pair):
                run = open_loop_run(ports[name], f"{name}-half-{pair}", half, servers[name])
                open_loop[name].append(run)
                latency = (
                    f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                    f"event loop busy {run.loop_busy:.0%}"
                )
                print(f"  set {pair + 1} {name:11}: {latency}", flush=True)
        rejected = handled_calls(admin_port)[1] + handled_calls(logged_admin)[1]
        let_through, turned_away = handled_calls(rejecting_admin)
    median_rps = {name: statistics.median(r.rps for r in runs) for name, runs in saturation.items()}
    ratios = {
        "chain": paired_ratios(saturation, "chain", "bare"),
        "table": paired_ratios(saturation, "table", "bare"),
        "chain_vs_table": paired_ratios(saturation, "chain", "table"),
        "table_vs_uvloop": paired_ratios(saturation, "table", "bare_uvloop"),
        "bare_uvloop": paired_ratios(saturation, "bare_uvloop", "bare"),
        "chain_vs_uvloop": paired_ratios(saturation, "chain", "bare_uvloop"),
        "logged": paired_ratios(saturation, "logged", "bare"),
        "rejecting_vs_chain": paired_ratios(saturation, "rejecting", "chain"),
    }
    for name in ("chain", "table", "logged", "bare_uvloop"):
        ratios[f"{name}_cpu"] = paired_cpu_ratios(saturation, name, "bare")
    ratios["chain_vs_table_cpu"] = paired_cpu_ratios(saturation, "chain", "table")
    ratios["table_vs_uvloop_cpu"] = paired_cpu_ratios(saturation, "table", "bare_uvloop")
    ratios["chain_vs_uvloop_cpu"] = paired_cpu_ratios(saturation, "chain", "bare_uvloop")
    ratios["rejecting_vs_chain_cpu"] = paired_cpu_ratios(saturation, "rejecting", "chain")
    ratio = {name: statistics.median(values) for name, values in ratios.items()}
    median_cpu = {
        name: statistics.median(run.cpu_us_per_call for run in runs)
        for name, runs in saturation.items()
    }

    def p99_ratios_to(baseline: str) -> list[float]:
        pairs = zip(open_loop[baseline], open_loop["chain"], strict=True)
        return [chain.p99_ms / base.p99_ms for base, chain in pairs]

    p99_ratios, p99_ratios_uvloop = p99_ratios_to("bare"), p99_ratios_to("bare_uvloop")
    result = {
        "machine": machine(),
        "load": f"h2load, {CLIENTS} connections x {STREAMS} streams, {ROUNDS} x {DURATION} s",
        "saturation_rps": median_rps,
        "cpu_us_per_call": median_cpu,
        "throughput_ratio": ratio["chain"],
        "ratios_per_round": ratios,
        "ratio_medians": ratio,
        "open_loop_rate": half,
        "open_loop": {name: [asdict(run) for run in runs] for name, runs in open_loop.items()},
        "p99_ratios": p99_ratios,
        "p99_ratio": statistics.median(p99_ratios),
        "p99_ratios_to_uvloop": p99_ratios_uvloop,
        "p99_ratio_to_uvloop": statistics.median(p99_ratios_uvloop),
        "chain_non_ok_calls": rejected,
        "rejecting_server_calls": {"ok": let_through, "rejected": turned_away},
        "rounds": {name: [asdict(r) for r in runs] for name, runs in saturation.items()},
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (OUT / "server.json").write_text(json.dumps(result, indent=2))

    def spread(name: str) -> str:
        return median_and_range(ratios[name])

    print()
    print(f"server chain benchmark ({result['load']}; {result['machine']})")
    print("ratios to bare: median of the per-round ratios (their range)")
    print("| saturation | calls/s | ratio | CPU per call | calls per CPU-second, ratio | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = (
        ("bare grpc.aio", "bare", ""),
        ("bare grpc.aio on uvloop", "bare_uvloop", ""),
        ("bare on uvloop, served from the platform's table", "table", ""),
        ("full default chain", "chain", ">= 0.85"),
        ("same, with LOG_CALLS=ALL", "logged", ""),
    )
    for label, name, target in rows:
        shown = "1 | " if name == "bare" else f"{spread(name)} | "
        cost = f"{median_cpu[name]:.0f} us | "
        shown += cost + ("1" if name == "bare" else spread(f"{name}_cpu"))
        print(f"| {label} | {median_rps[name]:.0f} | {shown} | {target} |")
    print("on uvloop, the platform's loop (calls/s; calls per CPU-second):")
    for label, name in (
        ("the chain's own cost, chain / table", "chain_vs_table"),
        ("the platform's dispatch, table / bare on uvloop", "table_vs_uvloop"),
        ("both, chain / bare on uvloop", "chain_vs_uvloop"),
    ):
        print(f"- {label}: {spread(name)}; {spread(f'{name}_cpu')}")
    print(
        "a rejection (rate limit, rich details) / a served call, both through the chain: "
        f"{spread('rejecting_vs_chain')} calls/s; {spread('rejecting_vs_chain_cpu')} calls per "
        f"CPU-second ({median_cpu['rejecting']:.0f} us CPU per rejection; "
        f"{turned_away} rejected, {let_through} let through)"
    )

    def median_of(name: str, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in open_loop[name]))

    print()
    print(
        f"open loop at {half:.0f}/s from {SENDERS} h2load senders, {LATENCY_PAIRS} sets: "
        "medians, and the sets' p99 ratios"
    )
    print("| latency | bare | bare on uvloop | chain | chain / bare | chain / bare on uvloop |")
    print("| --- | --- | --- | --- | --- | --- |")
    b, u, c = (median_of(name, "p50_ms") for name in ("bare", "bare_uvloop", "chain"))
    print(f"| p50 | {b:.2f} ms | {u:.2f} ms | {c:.2f} ms | {c / b:.2f} | {c / u:.2f} |")
    b, u, c = (median_of(name, "p99_ms") for name in ("bare", "bare_uvloop", "chain"))
    to_bare, to_uvloop = median_and_range(p99_ratios), median_and_range(p99_ratios_uvloop)
    print(f"| p99 | {b:.2f} ms | {u:.2f} ms | {c:.2f} ms | {to_bare} | {to_uvloop} |")
    b, u, c = (median_of(name, "loop_busy") for name in ("bare", "bare_uvloop", "chain"))
    print(f"| event loop busy | {b:.0%} | {u:.0%} | {c:.0%} | {c / b:.2f} | {c / u:.2f} |")
    print("targets: chain / bare calls/s >= 0.85, p99 <= 1.3")
    print(
        f"chain calls answered other than OK: {rejected}; h2load failures: "
        + ", ".join(f"{name} {sum(r.failed for r in runs)}" for name, runs in saturation.items())
        + "; open loop: "
        + ", ".join(f"{name} {sum(r.failed for r in runs)}" for name, runs in open_loop.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
