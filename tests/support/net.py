"""Ports, polling and processes for tests: no sleeps, poll with a deadline."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
HOST = "127.0.0.1"
T = TypeVar("T")


def _lowest_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


LOWEST_EPHEMERAL_PORT = _lowest_ephemeral_port()


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range: the port the kernel hands out
    for `bind(0)` is also where it puts outgoing connections, and a service that opens
    AWS connections before it binds could find its own port taken by one of them."""
    while True:
        port = random.randrange(10000, LOWEST_EPHEMERAL_PORT)
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((HOST, port)) == 0


def poll(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first truthy result of `check`, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - loopback http only
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def ready_status(admin_port: int) -> tuple[int, dict[str, object]] | None:
    try:
        status, body = http_get(f"http://{HOST}:{admin_port}/ready")
    except OSError:
        return None
    return status, json.loads(body)


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    grpc_port: int
    admin_port: int
    stderr_path: Path

    @property
    def target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def service_env(service: str, grpc_port: int, admin_port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SERVICE": service,
        "GRPC_HOST": HOST,
        "GRPC_PORT": str(grpc_port),
        "ADMIN_HOST": HOST,
        "ADMIN_PORT": str(admin_port),
        **extra,
    }


@contextmanager
def running_service(
    service: str, tmp_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[ServiceProcess]:
    """`python -m server` as a real process, ready (`/ready` 200) when yielded."""
    grpc_port, admin_port = free_port(), free_port()
    stderr_path = tmp_path / f"{service.replace(':', '_')}-{grpc_port}.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [PYTHON, "-m", "server"],
            cwd=ROOT,
            env=service_env(service, grpc_port, admin_port, **(env or {})),
            stderr=stderr,
        )
    running = ServiceProcess(process, grpc_port, admin_port, stderr_path)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{service} exited: {running.stderr()}")
            answer = ready_status(admin_port)
            return answer is not None and answer[0] == 200

        poll(ready, 30, f"{service} to be ready")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
