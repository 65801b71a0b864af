"""`make run` starts the whole local stack; SIGINT to its process group stops all of it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.support.net import HOST, LOWEST_EPHEMERAL_PORT, ROOT, poll, port_open, ready_status

GRACE_SECONDS = 3.0


def _free_block(size: int) -> int:
    # Below the kernel's ephemeral range (see tests.support.net.free_port).
    for _ in range(50):
        base = random.randrange(10000, LOWEST_EPHEMERAL_PORT - size)
        if not any(port_open(base + offset) for offset in range(size)):
            return base
    raise AssertionError("no free block of ports")


def readme_walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- walkthrough -->\n```sh\n", 1)[1]
    return block.split("```", 1)[0]


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

        # The README's walkthrough, exactly (ports moved to this stack's): it works, and
        # the events consumer fills the activity feed. Repeating it changes nothing.
        walkthrough = readme_walkthrough().replace("127.0.0.1:50051", f"{HOST}:{base}")
        walkthrough = walkthrough.replace("127.0.0.1:50053", f"{HOST}:{base + 2}")

        def walk() -> str | None:
            result = subprocess.run(
                ["bash", "-c", walkthrough],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            output = result.stdout + result.stderr
            return output if '"direction": "CREDIT"' in output else None

        output = poll(walk, 30, "the walkthrough's activity feed", interval=0.5)
        assert '"state": "TRANSFER_STATE_COMPLETED"' in output
        assert '"name": "CREDIT_DESTINATION"' in output
        assert "Code: FailedPrecondition" in output
        assert '"reason":"INSUFFICIENT_FUNDS"' in output  # error details print compact
        assert '"balanceMinorUnits":"70"' in output
        assert '"amountMinorUnits":"500"' in output
        assert output.count('"event_id"') == 1  # one transfer, one entry in Bob's feed

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
