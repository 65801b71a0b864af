"""bench.server_bench's reading of h2load's request logs, and bench.tls_bench's server
settings (pure logic, no load)."""

from __future__ import annotations

from pathlib import Path

from bench.server_bench import measured_durations, percentile, round_order
from bench.tls_bench import ECHO, MODES, settings
from server.config import ServerConfig
from tests.support.certs import Authority


def log_line(start_us: int, duration_us: int) -> str:
    return f"{start_us}\t200\t{duration_us}"


def test_durations_in_milliseconds_sorted_blank_lines_skipped() -> None:
    first = 1_700_000_000_000_000
    lines = [log_line(first, 2_500), log_line(first + 10, 1_000), "", log_line(first + 20, 90_000)]
    assert measured_durations(lines) == [1.0, 2.5, 90.0]


def test_percentiles_of_sorted_durations() -> None:
    durations = [float(n) for n in range(1, 101)]
    assert percentile(durations, 0.5) == 51.0
    assert percentile(durations, 0.99) == 100.0
    assert percentile([3.0], 0.99) == 3.0


def test_neighbours_run_back_to_back_and_no_server_always_goes_first() -> None:
    names = ["bare", "chain", "table", "logged"]
    assert round_order(names, 0) == names
    assert round_order(names, 1) == names[::-1]
    assert round_order(names, 2) == names


def test_the_tls_bench_servers_differ_only_in_their_transport(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    server = ca.issue("echo", server=True)
    configs = {
        mode: ServerConfig.from_env({"SERVICE": "echo", **settings(mode, server, ca.cert)})
        for mode in MODES
    }
    assert configs["plaintext"].tls is None
    tls = configs["tls"].tls
    assert tls is not None
    assert tls.client_ca is None
    rules = configs["mtls"].authorization
    assert rules is not None
    assert rules.callers_for(f"/{ECHO}") == frozenset({"bench"})  # the bench's own identity
