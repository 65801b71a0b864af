"""moto in server mode on loopback: a real HTTP endpoint speaking the AWS protocols."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.support.net import HOST, PYTHON, ROOT, free_port, poll, port_open

# moto accepts any credentials; these are not real and reach nothing real.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class Moto:
    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [PYTHON, str(ROOT / "tools" / "moto_server.py"), "-H", HOST, "-p", str(self.port)],
                stdout=sink,
                stderr=sink,
            )
        poll(lambda: port_open(self.port), 30, "moto to listen")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
        poll(lambda: not port_open(self.port), 10, "moto to stop")

    def ledger_env(self, **extra: str) -> dict[str, str]:
        """Settings for a ledger service on this moto, in tables of its own."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_REGION": "us-east-1",
            "AWS_BOOTSTRAP": "true",
            "LEDGER_NAME": f"test-{uuid.uuid4().hex[:12]}",
            "EVENTS_WAIT_SECONDS": "1",
            **extra,
        }


async def queue_depth(sqs: Any, url: str) -> int:
    """Messages in an SQS queue, visible or being handled. moto reads the visible count
    and then the hidden one, each at its own moment, so a message whose visibility ends in
    between is in neither: a 0 is read again (a message is hidden for a second at least,
    so it cannot slip between both readings)."""
    depth = await _depth_once(sqs, url)
    return depth if depth else await _depth_once(sqs, url)


async def _depth_once(sqs: Any, url: str) -> int:
    answer = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(value) for value in answer["Attributes"].values())
