"""bench.server_bench's reading of h2load's request logs (pure logic, no load)."""

from __future__ import annotations

from bench.server_bench import measured_durations, percentile, round_order


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
