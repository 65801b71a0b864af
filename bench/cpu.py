"""CPU time of a benchmarked process: all its threads, or its main thread alone.

A grpc.aio server's main thread is its event loop's: its share of the wall
time is how busy the loop is, the resource a Python handler and the chain
compete for (grpc's core threads run beside it).
"""

from __future__ import annotations

import psutil


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main_thread_seconds(process: psutil.Process) -> float:
    for thread in process.threads():
        if thread.id == process.pid:
            return float(thread.user_time + thread.system_time)
    raise RuntimeError(f"process {process.pid} has no main thread")
