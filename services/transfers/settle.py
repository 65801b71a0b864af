"""`python -m services.transfers.settle`: an operator settles a transfer stuck on a step.

A transfer whose step Accounts refuses as `IDEMPOTENCY_KEY_REUSED` (its
request_id went out before with other content, from another version of
Transfers) is retried for ever, and `SagaStuck` fires: no repeat can tell
whether the step took effect. A person looks at it, run where the Transfers
service runs (its settings and IAM role):

    kubectl -n ledger exec deploy/transfers -- python -m services.transfers.settle <transfer_id>

prints its state (and failure reason), the step it is retrying and that
step's request_id, to look up in Accounts' idempotency records, or, for a
transfer that has ended, whether its hold is still on the source; then tells
the transfer:

    ... settle <transfer_id> CREDIT_DESTINATION did-not-take-effect --reason "<what was found>"

`took-effect` goes on as if the step had succeeded; `did-not-take-effect` fails
the step (reason SETTLED: <reason>), so the debit is refunded, or, for the
refund itself, the transfer ends FAILED with COMPENSATION_FAILED. Transfers
repeats the step once more first: the verdict decides only if Accounts still
refuses it as reused (durable.saga.settle); the history shows which
(outcome SETTLED, with the reason). Every Transfers pod must run a version
that knows verdicts.

A transfer that has ended can leave its hold on the source: a credit settled
as taken effect whose earlier request did not release it, or a refund that
failed (COMPENSATION_FAILED). Then

    ... settle <transfer_id> release-hold --reason "<why>"

asks Accounts to release it (ReleaseHold, as Transfers: its certificate and
channel settings). Refused while the transfer is still running, since its
credit or refund releases the hold and the hold keeps a refund's account
open; and, after a failed refund, until the person says the source has its
money back (`--money-restored`): until then the hold keeps it open for that
money. The reason goes to Accounts' log: no customer's personal data in it.

Exit codes: 0 done, 1 refused (ended, not past its deadline, not stuck on that
step, a verdict already pending; for release-hold, still running, a failed
refund without --money-restored, or no hold placed), 2 bad arguments or
settings, 3 AWS or Accounts failed; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from clients.aws import AwsClients, AwsSettings
from clients.chain import ClientChain
from clients.channel import ChannelFactory, ChannelSettings
from clients.settings import ClientSettings, SettingsError
from durable.saga import COMPENSATION_FAILED, SagaEngine, SettleRefused
from ledger.v1 import accounts_pb2
from ledger.v1.accounts_platform import AccountsClient
from server.config import ConfigError, EnvReader
from services.resources import LedgerNames
from services.transfers.saga import TransferSaga, step_request_id

OUTCOMES = {"took-effect": True, "did-not-take-effect": False}
RELEASE_HOLD = "release-hold"
EXIT_REFUSED, EXIT_CONFIG, EXIT_FAILED = 1, 2, 3


class NoPublishing:
    """Settling publishes nothing: the Transfers process that resumes the saga does."""

    async def publish(self, event: Mapping[str, Any], context: Mapping[str, str]) -> None:
        raise RuntimeError("the settle command publishes no event")


async def run(
    env: EnvReader,
    transfer_id: str,
    step: str | None,
    took_effect: bool,
    reason: str,
    money_restored: bool = False,
) -> str:
    """Shows the transfer (no `step`), settles `step`, or releases the transfer's hold
    (`release-hold`); the line to print."""
    names = LedgerNames(env.string("LEDGER_NAME", "ledger-local"))
    clients = AwsClients(AwsSettings.from_env(env, "dynamodb"))
    # As the Transfers service calls Accounts: its TLS identity and client policies.
    channels = ChannelFactory(
        ChannelSettings.from_env(env), ClientChain(settings=ClientSettings(env))
    )
    try:
        target = env.string("ACCOUNTS_TARGET", "127.0.0.1:50051")
        accounts = AccountsClient(channels.connect(target, dependency="accounts"))
        engine = SagaEngine(
            await clients.client("dynamodb"),
            names.transfers,
            [TransferSaga(accounts)],  # its steps are named, never run, here
            NoPublishing(),
        )
        if step is None:
            return await show(engine, accounts, transfer_id)
        if step == RELEASE_HOLD:
            return await release_hold(engine, accounts, transfer_id, reason, money_restored)
        await engine.settle(transfer_id, step, took_effect, reason)
    finally:
        await channels.close()
        await clients.close()
    verdict = "took effect" if took_effect else "did not take effect"
    return (
        f"settled: transfer {transfer_id}, step {step} (request_id "
        f"{step_request_id(transfer_id, step)}) {verdict}; a Transfers process repeats the "
        "step once more and applies the verdict if it is refused as reused, within "
        "SAGA_LEASE_SECONDS and a recovery sweep"
    )


async def show(engine: SagaEngine, accounts: AccountsClient, transfer_id: str) -> str:
    saga = await engine.get(transfer_id)
    if saga is None:
        raise SettleRefused(f"no saga {transfer_id}")
    line = f"transfer {transfer_id}: {saga.status}"
    if saga.failure_reason:
        line += f" ({saga.failure_reason})"
    hold = TransferSaga.source_hold(saga)
    if saga.finished and hold is not None:
        line += await _left_hold(accounts, hold)
    step = engine.stuck_on(saga)
    if step is not None:
        line += f", retrying {step} (request_id {step_request_id(transfer_id, step)})"
    if saga.settlement is not None:
        line += f", a verdict pending on {saga.settlement['step']}"
    return line


async def release_hold(
    engine: SagaEngine,
    accounts: AccountsClient,
    transfer_id: str,
    reason: str,
    money_restored: bool,
) -> str:
    saga = await engine.get(transfer_id)
    if saga is None:
        raise SettleRefused(f"no saga {transfer_id}")
    if not saga.finished:
        raise SettleRefused(
            f"transfer {transfer_id} is {saga.status}: its credit or its refund releases the hold"
        )
    if saga.failure_reason.startswith(COMPENSATION_FAILED) and not money_restored:
        raise SettleRefused(
            f"transfer {transfer_id} ended {saga.failure_reason}: the hold keeps its source "
            "open for the refund it is owed; give the source its money back, then add "
            "--money-restored"
        )
    hold = TransferSaga.source_hold(saga)
    if hold is None:
        raise SettleRefused(f"transfer {transfer_id} placed no hold (started before holds)")
    # A request of its own each time: a second run with another reason is a new request.
    answer = await accounts.release_hold(
        accounts_pb2.ReleaseHoldRequest(request_id=str(uuid.uuid4()), hold=hold, reason=reason)
    )
    where = f"hold {hold.hold_id} on account {hold.account_id}"
    return f"released: {where}" if answer.released else f"nothing to release: no {where}"


async def _left_hold(accounts: AccountsClient, hold: accounts_pb2.Hold) -> str:
    """What an ended transfer's hold is: normally released by its credit or refund."""
    try:
        answer = await accounts.get_account(
            accounts_pb2.GetAccountRequest(account_id=hold.account_id)
        )
    except grpc.aio.AioRpcError as error:  # the saga's state is still worth showing
        return f", its hold unknown (Accounts answered {error.code().name})"
    if hold.hold_id in answer.account.hold_ids:
        return f", its hold still on account {hold.account_id} (see release-hold)"
    return ""


def transfer_id_of(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a transfer id (a UUID): {text!r}") from None


def reason_of(text: str) -> str:
    if not text.strip() or len(text) > 500:
        raise argparse.ArgumentTypeError("say what was found, in 1 to 500 characters")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.transfers.settle",
        description="Settle a transfer stuck on a step that will not succeed by itself.",
    )
    parser.add_argument("transfer_id", type=transfer_id_of)
    parser.add_argument(
        "step",
        nargs="?",
        help="DEBIT_SOURCE, CREDIT_DESTINATION or REFUND_SOURCE, or release-hold; none: show",
    )
    parser.add_argument("outcome", nargs="?", choices=sorted(OUTCOMES))
    parser.add_argument(
        "--reason",
        type=reason_of,
        help="what was found: kept in the saga's history (a verdict) or in Accounts' log "
        "(release-hold); no customer's personal data",
    )
    parser.add_argument(
        "--money-restored",
        action="store_true",
        help="release-hold after a failed refund: the source has its money back",
    )
    args = parser.parse_args(argv)
    if args.step == RELEASE_HOLD and (args.outcome is not None or args.reason is None):
        parser.error("release-hold takes --reason and no outcome")
    if args.money_restored and args.step != RELEASE_HOLD:
        parser.error("--money-restored goes with release-hold")
    if args.step not in (None, RELEASE_HOLD) and (args.outcome is None or args.reason is None):
        parser.error("settling a step needs its outcome and --reason")
    try:
        message = asyncio.run(
            run(
                EnvReader(os.environ),
                args.transfer_id,
                args.step,
                OUTCOMES.get(args.outcome or "", False),
                args.reason or "",
                args.money_restored,
            )
        )
    except (ConfigError, SettingsError) as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except SettleRefused as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except grpc.aio.AioRpcError as error:  # Accounts refused or unreachable
        details = str(error.details())[:300]
        print(f"failed: Accounts answered {error.code().name}: {details}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # AWS unreachable or denied: one line, no traceback
        print(f"failed: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr)
        return EXIT_FAILED
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
