"""CPU time of a benchmarked process, all its threads, user and system."""

from __future__ import annotations

import psutil


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)
