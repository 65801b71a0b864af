"""`make run` starts the whole local stack; SIGINT to its process group stops all of it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.support.net import BIN, HOST, ROOT, poll, port_open, ready_status

GRACE_SECONDS = 3.0


def _free_block(size: int) -> int:
    for _ in range(50):
        base = random.randrange(20000, 40000)
        if not any(port_open(base + offset) for offset in range(size)):
            return base
    raise AssertionError("no free block of ports")


def test_make_run_serves_and_sigint_leaves_nothing_alive(tmp_path: Path) -> None:
    base = _free_block(5)
    log = (tmp_path / "make-run.log").open("wb")
    env = {
        **os.environ,
        "DEVSTACK_BASE_PORT": str(base),
        "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
    }
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal would give it
    )
    try:
        for admin_port in (base + 1, base + 3):

            def ready(port: int = admin_port) -> bool:
                answer = ready_status(port)
                return answer is not None and answer[0] == 200

            poll(ready, 120, f"service with admin port {admin_port}")
        assert port_open(base + 4), "moto is not listening"

        # The stack works end to end: a transfer through Transfers -> Accounts.
        def call(target: int, method: str, body: dict[str, object]) -> dict[str, object]:
            result = subprocess.run(
                [
                    str(BIN / "grpcurl"),
                    "-plaintext",
                    "-d",
                    json.dumps(body),
                    f"{HOST}:{target}",
                    method,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stderr
            parsed: dict[str, object] = json.loads(result.stdout)
            return parsed

        opened = call(
            base,
            "ledger.v1.Accounts/OpenAccount",
            {"request_id": "mr-1", "owner": "Ann", "currency_code": "EUR"},
        )
        assert opened["account"]

        stack = psutil.Process(make.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in stack)
        assert "moto_server" in names
        assert names.count("-m server") == 2

        sent = time.monotonic()
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=GRACE_SECONDS + 30)
        gone, alive = psutil.wait_procs(
            stack, timeout=max(0.1, GRACE_SECONDS + 10 - (time.monotonic() - sent))
        )
        assert not alive, [p.cmdline() for p in alive]
        assert len(gone) == len(stack)
        assert not any(port_open(base + offset) for offset in range(5))
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        log.close()
