"""`make bench`, ledger: transfers per second end to end against moto, and whose CPU it is.

Starts moto (tools/moto_server.py), Accounts and Transfers as separate
processes on loopback, opens ACCOUNTS accounts with large balances, then runs
TRANSFERS CreateTransfer calls, CONCURRENCY at a time, from this process.
Each process's CPU time (user + system) over the transfer phase is read with
psutil, and py-spy samples the two service processes (`--gil`: only the
thread running Python) to split their time between our code (the platform's
packages, the services and generated code: a sample counts as ours when its
innermost Python frame is in one of them, including C calls made from there,
e.g. protobuf serialization) and the libraries under it (botocore, aiohttp,
grpcio, asyncio). The report gives CPU ms per transfer for moto (standing in
for DynamoDB and SQS), for the service processes, and for our code, and both
shares of the end-to-end CPU. The load generator's own CPU is reported apart.
Also the Accounts process's CPU per call it answered (calls counted on its
/metrics), beside what a rejection costs in the server bench's rate-limited
server (build/bench/server.json, the same `make bench`): issue 3 asks that
rejections cost almost nothing, and a real ledger call is the measure.
Target (issue 5): our code under 30% of the end-to-end CPU time per transfer.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil

from bench.cpu import cpu_seconds
from bench.server_bench import OUT, handled_calls, machine, process
from clients.channel import ChannelFactory
from ledger.v1 import accounts_pb2, money_pb2, transfers_pb2
from ledger.v1.accounts_platform import AccountsClient
from ledger.v1.transfers_platform import TransfersClient
from tests.support.moto import Moto
from tests.support.net import PYTHON, free_port, ready_status, service_env

ACCOUNTS = int(os.environ.get("BENCH_LEDGER_ACCOUNTS", "20"))
TRANSFERS = int(os.environ.get("BENCH_LEDGER_TRANSFERS", "400"))
CONCURRENCY = int(os.environ.get("BENCH_LEDGER_CONCURRENCY", "16"))


@contextmanager
def service(name: str, env: dict[str, str], log: Path) -> Iterator[tuple[psutil.Process, str, int]]:
    """The service's process, its gRPC target and its admin port."""
    grpc_port, admin_port = free_port(), free_port()
    with process(
        [PYTHON, "-m", "server"],
        service_env(name, grpc_port, admin_port, **env),
        log,
        lambda: (ready_status(admin_port) or (0,))[0] == 200,
    ) as started:
        yield psutil.Process(started.pid), f"127.0.0.1:{grpc_port}", admin_port


# py-spy names frames by path relative to their sys.path entry: the top package.
OUR_PACKAGES = frozenset(
    {"server", "clients", "interceptors", "durable", "services", "ledger", "grpcplatform", "buf"}
)


@contextmanager
def sampled(process: psutil.Process, out: Path) -> Iterator[Path]:
    """py-spy samples `process` (GIL holder only) until the block ends."""
    options = ["--gil", "--nonblocking", "-r", "200", "--format", "raw", "-o", str(out)]
    spy = subprocess.Popen(
        [str(Path(PYTHON).parent / "py-spy"), "record", *options, "-p", str(process.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield out
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def ours_fraction(samples: Path) -> float:
    """Share of the samples whose innermost frame is in our code."""
    counts: collections.Counter[bool] = collections.Counter()
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        path = leaf[leaf.find("(") + 1 :].rsplit(":", 1)[0]
        counts[path.split("/", 1)[0] in OUR_PACKAGES] += int(count)
    total = counts[True] + counts[False]
    return counts[True] / total if total else 0.0


def eur(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", minor_units=minor_units)


async def drive(accounts_target: str, transfers_target: str) -> tuple[float, dict[str, int]]:
    channels = ChannelFactory()
    accounts = AccountsClient(channels.connect(accounts_target))
    transfers = TransfersClient(channels.connect(transfers_target))
    ids = []
    for n in range(ACCOUNTS):
        opened = await accounts.open_account(
            accounts_pb2.OpenAccountRequest(
                request_id=str(uuid.uuid4()), owner=f"bench {n}", currency_code="EUR"
            )
        )
        ids.append(opened.account.account_id)
        await accounts.deposit(
            accounts_pb2.DepositRequest(
                request_id=str(uuid.uuid4()), account_id=ids[-1], amount=eur(10**12)
            )
        )
    queue = asyncio.Queue[transfers_pb2.CreateTransferRequest]()
    for n in range(TRANSFERS):
        queue.put_nowait(
            transfers_pb2.CreateTransferRequest(
                request_id=str(uuid.uuid4()),
                source_account_id=ids[n % ACCOUNTS],
                destination_account_id=ids[(n * 7 + 1) % ACCOUNTS],
                amount=eur(1 + n % 100),
            )
        )
    states: dict[str, int] = {}

    async def worker() -> None:
        while not queue.empty():
            request = queue.get_nowait()
            answer = await transfers.create_transfer(request, timeout=30)
            name = transfers_pb2.TransferState.Name(answer.transfer.state)
            states[name] = states.get(name, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    await channels.close()
    return elapsed, states


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "ledger-logs"
    logs.mkdir(exist_ok=True)
    moto = Moto(logs / "moto.log")
    moto.start()
    assert moto.process is not None
    env = moto.ledger_env(LOG_LEVEL="WARNING")
    try:
        with ExitStack() as stack:
            accounts, accounts_target, accounts_admin = stack.enter_context(
                service("accounts", env, logs / "accounts.log")
            )
            transfers, transfers_target, _ = stack.enter_context(
                service("transfers", {**env, "ACCOUNTS_TARGET": accounts_target}, logs / "t.log")
            )
            emulator = psutil.Process(moto.process.pid)
            processes = {"moto": emulator, "accounts": accounts, "transfers": transfers}
            samples = {name: logs / f"{name}.spy" for name in ("accounts", "transfers")}
            for name, path in samples.items():
                stack.enter_context(sampled(processes[name], path))
            time.sleep(1)  # py-spy attaches
            before = {name: cpu_seconds(p) for name, p in processes.items()}
            accounts_calls = -sum(handled_calls(accounts_admin))
            client_before = time.process_time()
            elapsed, states = asyncio.run(drive(accounts_target, transfers_target))
            client_cpu = time.process_time() - client_before
            # The consumer finishes the activity feed just after the last answer.
            time.sleep(2)
            used = {name: cpu_seconds(p) - before[name] for name, p in processes.items()}
            accounts_calls += sum(handled_calls(accounts_admin))
        code = sum(used[name] * ours_fraction(path) for name, path in samples.items())
    finally:
        moto.stop()
    total = sum(used.values())
    services = used["accounts"] + used["transfers"]
    # Setup (opening accounts) is inside the window too; it is ACCOUNTS * 2 calls.
    per_transfer_ms = {name: round(1000 * cpu / TRANSFERS, 2) for name, cpu in used.items()}
    share = code / total
    accounts_call_us = 1e6 * used["accounts"] / max(accounts_calls, 1)
    result: dict[str, object] = {
        "machine": machine(),
        "transfers": TRANSFERS,
        "accounts": ACCOUNTS,
        "concurrency": CONCURRENCY,
        "states": states,
        "transfers_per_second": round(TRANSFERS / elapsed, 1),
        "cpu_ms_per_transfer": per_transfer_ms,
        "our_code_cpu_ms_per_transfer": round(1000 * code / TRANSFERS, 2),
        "load_generator_cpu_ms_per_transfer": round(1000 * client_cpu / TRANSFERS, 2),
        "our_code_share_of_cpu": round(share, 3),
        "service_processes_share_of_cpu": round(services / total, 3),
        "accounts_calls": accounts_calls,
        "accounts_cpu_us_per_call": round(accounts_call_us),
    }
    print(
        f"ledger: {result['transfers_per_second']} transfers/s "
        f"({TRANSFERS} transfers, {CONCURRENCY} at a time, {ACCOUNTS} accounts); "
        f"CPU ms per transfer: {per_transfer_ms}, of which our code "
        f"{result['our_code_cpu_ms_per_transfer']}; our code {100 * share:.0f}% of the "
        f"end-to-end CPU (target < 30%); the service processes with their libraries "
        f"{100 * services / total:.0f}%"
    )
    line = f"ledger: Accounts spent {accounts_call_us:.0f} us of CPU per call it answered"
    rejection = rejection_cost()
    if rejection is not None:
        rejection_us, measured = rejection
        result["rejection_vs_accounts_call"] = round(rejection_us / accounts_call_us, 4)
        line += (
            f"; a rejection costs {rejection_us:.0f} us, "
            f"{100 * rejection_us / accounts_call_us:.1f}% of that (server bench of {measured})"
        )
    (OUT / "ledger.json").write_text(json.dumps(result, indent=2))
    print(line)


def rejection_cost() -> tuple[float, str] | None:
    """A rejection's CPU (all threads) and when it was measured, from the server bench's
    rate-limited echo server: issue 3 asks that rejections cost almost nothing, and a
    real ledger call is what to compare them with."""
    try:
        server = json.loads((OUT / "server.json").read_text())
        return float(server["cpu_us_per_call"]["rejecting"]), str(server.get("when"))
    except (OSError, KeyError, TypeError, ValueError):
        return None  # the server bench has not run here


if __name__ == "__main__":
    main()
