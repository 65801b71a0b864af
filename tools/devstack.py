"""`make run`: the local stack in the foreground, on loopback, no cloud, no Docker.

Starts, as separate processes: moto in server mode (the AWS emulation), the
Accounts service and the Transfers service (each with its admin port; the
Transfers process also runs the saga recovery loop and the events consumer
that keeps the activity feed), and waits until each is ready. The services
bootstrap their tables, queues and page-token key in moto (`AWS_BOOTSTRAP`).
Ctrl-C (SIGINT) or SIGTERM stops them all: each
child runs in its own session, so the terminal's SIGINT reaches only this
supervisor, which sends SIGTERM to the services (they drain, see
server.shutdown), then to moto, and SIGKILLs whatever outlives the grace.
If any child dies on its own, the rest are stopped and the exit code is 1.

Ports, from DEVSTACK_BASE_PORT (default 50051): accounts gRPC +0, admin +1;
transfers gRPC +2, admin +3; moto +4.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_SECONDS = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env={**os.environ, **self.env}, start_new_session=True
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)


class Stopping(Exception):
    pass


def _wait_until(ready: Callable[[], bool], children: list[Child], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not ready():
        dead = [child.name for child in children if not child.alive()]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {STARTUP_TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((HOST, port)) == 0


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin_port}/ready", timeout=0.5) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    base = int(os.environ.get("DEVSTACK_BASE_PORT", "50051"))
    grace = os.environ.get("SHUTDOWN_GRACE_SECONDS", "5")
    moto_port = base + 4
    aws = {
        "AWS_ENDPOINT_URL": f"http://{HOST}:{moto_port}",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",  # moto accepts any key; nothing real
        # moto starts empty: the services create their tables, queues and key.
        "AWS_BOOTSTRAP": "true",
        "LEDGER_NAME": os.environ.get("LEDGER_NAME", "ledger-local"),
    }

    def service(name: str, grpc_port: int, **extra: str) -> Child:
        env = {
            "SERVICE": name,
            "GRPC_HOST": HOST,
            "GRPC_PORT": str(grpc_port),
            "ADMIN_HOST": HOST,
            "ADMIN_PORT": str(grpc_port + 1),
            "SHUTDOWN_GRACE_SECONDS": grace,
            **aws,
            **extra,
        }
        return Child(name, [str(BIN / "python"), "-m", "server"], env)

    emulator = str(Path(__file__).resolve().parent / "moto_server.py")
    moto = Child(
        "moto",
        [str(BIN / "python"), emulator, "-H", HOST, "-p", str(moto_port)],
        {"MOTO_REQUEST_LOG": "false"},  # the services' logs are what the terminal is for
    )
    accounts = service("accounts", base)
    transfers = service("transfers", base + 2, ACCOUNTS_TARGET=f"{HOST}:{base}")
    children = [moto, accounts, transfers]

    def on_signal(signum: int, _: FrameType | None) -> None:
        raise Stopping(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        moto.start()
        _wait_until(lambda: _port_open(moto_port), children[:1], "moto")
        accounts.start()
        _wait_until(lambda: _ready(base + 1), children[:2], "accounts")
        transfers.start()
        _wait_until(lambda: _ready(base + 3), children, "transfers")
        print(
            f"local stack ready: accounts {HOST}:{base} (admin :{base + 1}), "
            f"transfers {HOST}:{base + 2} (admin :{base + 3}), moto {HOST}:{moto_port}. "
            "Ctrl-C stops it.",
            flush=True,
        )
        while all(child.alive() for child in children):
            time.sleep(0.2)
        dead = [child.name for child in children if not child.alive()]
        print(f"devstack: {', '.join(dead)} exited; stopping the rest", file=sys.stderr)
        code = 1
    except Stopping as stop:
        print(f"devstack: {stop}; stopping", file=sys.stderr, flush=True)
    except RuntimeError as error:
        print(f"devstack: {error}; stopping", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all([transfers, accounts, moto], float(grace) + 5.0)
    return code


def _stop_all(children: list[Child], deadline_seconds: float) -> None:
    for child in children:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + deadline_seconds
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"devstack: {child.name} outlived the grace; killing it", file=sys.stderr)
            child.process.kill()
            child.process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
