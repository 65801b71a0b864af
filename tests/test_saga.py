"""The saga engine on DynamoDB (moto): compensation, deadlines, crash recovery, outbox."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from clients.aws import AwsClients, AwsSettings
from durable.dynamo import ensure_tables
from durable.saga import (
    COMPLETED,
    FAILED,
    KeyReused,
    Saga,
    SagaEngine,
    SettleRefused,
    Step,
    saga_table,
)
from interceptors.correlation import current_correlation_id
from interceptors.deadline import remaining_budget
from interceptors.inbound import InboundWork, inbound_var
from interceptors.retry import RetryPolicy
from tests.support.moto import Moto


class Permanent(Exception):
    pass


class Reused(Exception):
    """The step's request was used before with other content: its repeat cannot tell."""


class Effects:
    """Steps that count their effects; `fail` / `block` script what happens."""

    def __init__(self) -> None:
        self.applied: dict[str, int] = {}
        self.calls: list[str] = []
        self.fail: dict[str, list[Exception]] = {}
        self.block: set[str] = set()
        self.down_until: dict[str, float] = {}
        self.refused: set[str] = set()
        self.entered = asyncio.Event()

    def action(self, name: str) -> Any:
        async def run(saga: Saga) -> None:
            self.calls.append(name)
            if name in self.block:
                self.entered.set()
                await asyncio.Event().wait()
            if time.monotonic() < self.down_until.get(name, 0.0):
                raise ConnectionError(f"{name} is down")
            if name in self.refused:
                raise Reused(name)
            scripted = self.fail.get(name)
            if scripted:
                raise scripted.pop(0)
            self.applied[name] = 1  # idempotent: repeating it changes nothing

        return run


class Definition:
    kind = "test.Saga"

    def __init__(self, effects: Effects) -> None:
        self.steps: Sequence[Step] = (
            Step("ONE", effects.action("ONE"), effects.action("UNDO_ONE"), "UNDO_ONE"),
            Step("TWO", effects.action("TWO"), effects.action("UNDO_TWO"), "UNDO_TWO"),
            Step("THREE", effects.action("THREE")),
        )

    def permanent(self, error: BaseException) -> str | None:
        return str(error) if isinstance(error, Permanent) else None

    def unknowable(self, error: BaseException) -> bool:
        return isinstance(error, Reused)

    def event(self, saga: Saga) -> dict[str, Any]:
        return {"event_id": saga.saga_id, "type": saga.status}


class Events:
    def __init__(self) -> None:
        self.published: list[Mapping[str, Any]] = []
        self.failures = 0

    async def publish(self, event: Mapping[str, Any], context: Mapping[str, str]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("queue down")
        self.published.append(event)


@pytest.fixture
async def dynamodb(shared_moto: Moto) -> AsyncIterator[tuple[Any, str]]:
    clients = AwsClients(AwsSettings(endpoint_url=shared_moto.url))
    client = await clients.client("dynamodb")
    table = f"sagas-{uuid.uuid4().hex[:8]}"
    await ensure_tables(client, [saga_table(table)])
    yield client, table
    await clients.close()


def engine(
    dynamodb: tuple[Any, str], effects: Effects, events: Events, **options: Any
) -> SagaEngine:
    client, table = dynamodb
    return SagaEngine(
        client,
        table,
        [Definition(effects)],
        events,
        retry=RetryPolicy(max_attempts=1_000_000, initial_backoff=0.01, max_backoff=0.02),
        **options,
    )


async def start(saga_engine: SagaEngine, deadline: float = 30.0) -> str:
    """A new saga, left for `run` or recovery to take (as after a crash right after start)."""
    saga_id = str(uuid.uuid4())
    _, created = await saga_engine.start(saga_id, Definition.kind, "digest", {"n": 1}, deadline, {})
    assert created
    return saga_id


def steps(saga: Saga) -> list[tuple[str, str]]:
    return [(entry["name"], entry["outcome"]) for entry in saga.history]


async def test_all_steps_done_completes_and_publishes_once(dynamodb: tuple[Any, str]) -> None:
    effects, events = Effects(), Events()
    saga_engine = engine(dynamodb, effects, events)
    saga_id = await start(saga_engine)
    saga = await saga_engine.run(saga_id, 10)
    assert saga.status == COMPLETED
    assert steps(saga) == [("ONE", "DONE"), ("TWO", "DONE"), ("THREE", "DONE")]
    assert events.published == [{"event_id": saga_id, "type": COMPLETED}]
    assert await saga_engine.recover_once() == 0  # finished and published: nothing is due
    with pytest.raises(KeyReused):
        await saga_engine.start(saga_id, Definition.kind, "other digest", {}, 1, {})


async def test_a_permanent_failure_compensates_in_reverse(dynamodb: tuple[Any, str]) -> None:
    effects, events = Effects(), Events()
    effects.fail["THREE"] = [Permanent("CLOSED")]
    saga_engine = engine(dynamodb, effects, events)
    saga = await saga_engine.run(await start(saga_engine), 10)
    assert saga.status == FAILED
    assert saga.failure_reason == "CLOSED"
    assert steps(saga) == [
        ("ONE", "DONE"),
        ("TWO", "DONE"),
        ("THREE", "FAILED"),
        ("UNDO_TWO", "DONE"),
        ("UNDO_ONE", "DONE"),
    ]
    assert [event["type"] for event in events.published] == [FAILED]


async def test_past_its_deadline_an_uncertain_step_is_settled_then_undone(
    dynamodb: tuple[Any, str],
) -> None:
    effects, events = Effects(), Events()
    effects.down_until["TWO"] = time.monotonic() + 0.6  # down past the deadline, then back
    saga_engine = engine(dynamodb, effects, events)
    saga = await saga_engine.run(await start(saga_engine, deadline=0.3), 10)
    assert saga.status == FAILED
    assert saga.failure_reason == "DEADLINE_EXCEEDED"
    # TWO may have taken effect before its answer was lost: it is repeated (idempotent) to
    # know, then compensated, so nothing is left half-done.
    assert steps(saga)[:2] == [("ONE", "DONE"), ("TWO", "TIMED_OUT")]
    assert steps(saga)[2:] == [("TWO", "DONE"), ("UNDO_TWO", "DONE"), ("UNDO_ONE", "DONE")]


async def test_the_pivot_step_is_retried_past_the_deadline(dynamodb: tuple[Any, str]) -> None:
    effects, events = Effects(), Events()
    effects.fail["THREE"] = [ConnectionError("down")] * 20
    saga_engine = engine(dynamodb, effects, events)
    saga = await saga_engine.run(await start(saga_engine, deadline=0.05), 10)
    assert saga.status == COMPLETED  # THREE has no compensation: it is never abandoned
    assert effects.calls.count("THREE") == 21


async def test_a_crashed_drivers_saga_is_resumed_by_another_after_its_lease(
    dynamodb: tuple[Any, str],
) -> None:
    effects, events = Effects(), Events()
    effects.block.add("TWO")
    first = engine(dynamodb, effects, events, lease_seconds=0.5)
    saga_id = await start(first)
    waiting = asyncio.create_task(first.run(saga_id, 10))
    await asyncio.wait_for(effects.entered.wait(), 5)
    # A second process cannot take the saga while the lease is held...
    second = engine(dynamodb, effects, events, lease_seconds=0.5)
    assert await second.recover_once() == 0
    # ...and the first dies mid-step, its lease left behind.
    await first.close()
    waiting.cancel()
    effects.block.clear()
    for _ in range(100):
        if await second.recover_once():
            break
        await asyncio.sleep(0.05)
    for _ in range(100):
        found = await second.get(saga_id)
        assert found is not None
        saga = found
        if saga.finished and events.published:
            break
        await asyncio.sleep(0.05)
    assert saga.status == COMPLETED
    assert effects.calls.count("TWO") == 2  # repeated after the crash: idempotent
    assert steps(saga) == [("ONE", "DONE"), ("TWO", "DONE"), ("THREE", "DONE")]
    assert len(events.published) == 1


async def test_an_event_not_published_is_published_by_recovery(
    dynamodb: tuple[Any, str],
) -> None:
    effects, events = Effects(), Events()
    events.failures = 1
    saga_engine = engine(dynamodb, effects, events, lease_seconds=0.3)
    saga_id = await start(saga_engine)
    saga = await saga_engine.run(saga_id, 10)
    assert saga.status == COMPLETED
    assert events.published == []
    stored = await saga_engine.get(saga_id)
    assert stored is not None
    assert stored.outbox == {"event_id": saga_id, "type": COMPLETED}
    for _ in range(100):
        await saga_engine.recover_once()
        if events.published:
            break
        await asyncio.sleep(0.05)
    assert events.published == [{"event_id": saga_id, "type": COMPLETED}]
    for _ in range(100):
        stored = await saga_engine.get(saga_id)
        assert stored is not None
        if stored.outbox is None:
            break
        await asyncio.sleep(0.02)
    assert stored.outbox is None
    assert await saga_engine.recover_once() == 0


async def test_a_saga_outlives_the_deadline_of_the_call_that_started_it(
    dynamodb: tuple[Any, str],
) -> None:
    effects, events = Effects(), Events()
    budgets: list[float | None] = []
    correlations: list[str | None] = []

    async def slow_step(saga: Saga) -> None:
        await asyncio.sleep(0.8)  # longer than the starting call had left
        budgets.append(remaining_budget())
        correlations.append(current_correlation_id())

    saga_engine = engine(dynamodb, effects, events)
    definition = saga_engine.definitions[Definition.kind]
    definition.steps = (Step("SLOW", slow_step), *definition.steps)
    saga_id = await start(saga_engine)
    # As inside a handler with half a second left: enough for run()'s own read of the
    # saga on a slow machine (it stays within the caller's budget), not for the step.
    token = inbound_var.set(InboundWork("saga-caller", deadline=time.monotonic() + 0.5))
    try:
        pending = await saga_engine.run(saga_id, 0.05)
    finally:
        inbound_var.reset(token)
    assert not pending.finished
    for _ in range(100):
        found = await saga_engine.get(saga_id)
        assert found is not None
        saga = found
        if saga.finished:
            break
        await asyncio.sleep(0.05)
    assert saga.status == COMPLETED  # driven on, not starved by the caller's deadline
    assert budgets == [None]
    assert correlations == ["saga-caller"]  # the starting call's id stays with its saga


async def test_every_kind_has_its_counters_at_zero_before_its_first_saga(
    dynamodb: tuple[Any, str],
) -> None:
    registry = CollectorRegistry()
    engine(dynamodb, Effects(), Events(), registry=registry)
    kind = {"kind": Definition.kind}
    sample = registry.get_sample_value
    assert sample("platform_saga_compensation_failed_total", kind) == 0.0
    assert sample("platform_saga_finished_total", {**kind, "status": COMPLETED}) == 0.0
    assert sample("platform_saga_finished_total", {**kind, "status": FAILED}) == 0.0


async def test_a_saga_stuck_on_a_step_shows_on_its_age_gauge(dynamodb: tuple[Any, str]) -> None:
    effects, events = Effects(), Events()
    effects.block.add("THREE")  # a pivot that never answers
    registry = CollectorRegistry()
    saga_engine = engine(dynamodb, effects, events, registry=registry)

    def oldest() -> float | None:
        return registry.get_sample_value("platform_saga_oldest_running_seconds")

    assert oldest() == 0.0
    started = time.time()
    running = asyncio.create_task(saga_engine.run(await start(saga_engine), 30))
    await asyncio.wait_for(effects.entered.wait(), 10)
    await asyncio.sleep(0.3)
    age = oldest()
    assert age is not None
    assert 0.3 <= age <= time.time() - started + 0.01
    await saga_engine.close()  # the driver stops (another process would take over)
    running.cancel()
    assert oldest() == 0.0


async def test_a_step_still_failing_is_logged_at_each_doubling_of_its_retries(
    dynamodb: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    effects, events = Effects(), Events()
    effects.fail["THREE"] = [ConnectionError("accounts are down")] * 20
    saga_engine = engine(dynamodb, effects, events)
    with caplog.at_level(logging.WARNING, logger="durable.saga"):
        saga = await saga_engine.run(await start(saga_engine, deadline=0.05), 20)
    assert saga.status == COMPLETED
    logged = [r for r in caplog.records if r.getMessage() == "saga step still failing"]
    assert [(r.step, r.retries, r.error_type) for r in logged] == [  # type: ignore[attr-defined]
        ("THREE", 8, "ConnectionError"),
        ("THREE", 16, "ConnectionError"),
    ]
    assert logged[0].error_message == "accounts are down"  # type: ignore[attr-defined]


async def settled_end(saga_engine: SagaEngine, saga_id: str) -> Saga:
    """Recovery (this engine) resumes the saga once the settled driver's lease has passed,
    and drives it to its end."""
    for _ in range(200):
        await saga_engine.recover_once()
        found = await saga_engine.get(saga_id)
        assert found is not None
        if found.finished:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("the settled saga did not end")


async def stuck(saga_engine: SagaEngine, effects: Effects, step: str, *, refused: bool) -> str:
    """A saga past its deadline retrying `step`, which is refused as reused (its repeat
    cannot tell) or down."""
    if refused:
        effects.refused.add(step)
    else:
        effects.down_until[step] = float("inf")
    saga_id = await start(saga_engine, deadline=0.2)
    saga = await saga_engine.run(saga_id, 1.0)
    assert saga.status != COMPLETED
    assert saga_engine.stuck_on(saga) == step
    return saga_id


@pytest.mark.parametrize(
    ("took_effect", "status", "reason", "after"),
    [
        (True, COMPLETED, "", [("THREE", "SETTLED"), ("THREE", "DONE")]),
        (
            False,
            FAILED,
            "SETTLED: refused as a reused request",
            [("THREE", "SETTLED"), ("THREE", "FAILED"), ("UNDO_TWO", "DONE"), ("UNDO_ONE", "DONE")],
        ),
    ],
)
async def test_a_pivot_whose_repeat_cannot_tell_ends_as_an_operator_settles_it(
    dynamodb: tuple[Any, str],
    took_effect: bool,
    status: str,
    reason: str,
    after: list[tuple[str, str]],
) -> None:
    effects, events = Effects(), Events()
    saga_engine = engine(dynamodb, effects, events, lease_seconds=0.3)
    saga_id = await stuck(saga_engine, effects, "THREE", refused=True)
    with pytest.raises(SettleRefused, match="is on THREE, not TWO"):
        await saga_engine.settle(saga_id, "TWO", took_effect, "wrong step")
    await saga_engine.settle(saga_id, "THREE", took_effect, "refused as a reused request")
    with pytest.raises(SettleRefused, match="has a verdict pending on THREE"):
        await saga_engine.settle(saga_id, "THREE", not took_effect, "a second opinion")
    saga = await settled_end(saga_engine, saga_id)
    assert saga.status == status
    assert saga.failure_reason == reason
    assert steps(saga)[:2] == [("ONE", "DONE"), ("TWO", "DONE")]
    assert steps(saga)[-len(after) :] == after
    assert "THREE" not in effects.applied
    assert [event["type"] for event in events.published] == [status]
    assert saga.settlement is None


async def test_a_verdict_waits_while_the_step_is_down_and_yields_to_its_success(
    dynamodb: tuple[Any, str],
) -> None:
    """Settled as not taken effect while its dependency is down: the verdict cannot be
    checked, so it waits; the step then succeeds when repeated, and that decides (as it
    must if an attempt in flight when the verdict landed had taken effect)."""
    effects, events = Effects(), Events()
    saga_engine = engine(dynamodb, effects, events, lease_seconds=0.3)
    saga_id = await stuck(saga_engine, effects, "THREE", refused=False)
    await saga_engine.settle(saga_id, "THREE", False, "believed not done")
    for _ in range(20):  # the lease passes, recovery resumes it: still retrying
        await saga_engine.recover_once()
        await asyncio.sleep(0.05)
    waiting = await saga_engine.get(saga_id)
    assert waiting is not None
    assert waiting.status == "RUNNING"
    assert waiting.settlement is not None
    effects.down_until.clear()
    saga = await settled_end(saga_engine, saga_id)
    assert saga.status == COMPLETED
    assert steps(saga)[-2:] == [("THREE", "SETTLED"), ("THREE", "DONE")]
    assert saga.history[-2]["detail"] == "verdict not applied: the step succeeded when repeated"
    assert "UNDO_TWO" not in effects.calls


@pytest.mark.parametrize(
    ("took_effect", "reason", "last"),
    [
        (True, "BROKEN", ("UNDO_ONE", "DONE")),
        (False, "COMPENSATION_FAILED: SETTLED: by hand", ("UNDO_ONE", "FAILED")),
    ],
)
async def test_a_compensation_whose_repeat_cannot_tell_ends_as_an_operator_settles_it(
    dynamodb: tuple[Any, str], took_effect: bool, reason: str, last: tuple[str, str]
) -> None:
    effects, events = Effects(), Events()
    effects.fail["TWO"] = [Permanent("BROKEN")]
    saga_engine = engine(dynamodb, effects, events, lease_seconds=0.3)
    saga_id = await stuck(saga_engine, effects, "UNDO_ONE", refused=True)
    await saga_engine.settle(saga_id, "UNDO_ONE", took_effect, "by hand")
    saga = await settled_end(saga_engine, saga_id)
    assert saga.status == FAILED
    assert saga.failure_reason == reason
    assert steps(saga)[-2:] == [("UNDO_ONE", "SETTLED"), last]


async def test_an_uncertain_step_settled_as_not_done_is_not_undone(
    dynamodb: tuple[Any, str],
) -> None:
    """TWO timed out (it may have taken effect), and its repeat cannot tell: settled as
    not done, only ONE is undone."""
    effects, events = Effects(), Events()
    saga_engine = engine(dynamodb, effects, events, lease_seconds=0.3)
    saga_id = await stuck(saga_engine, effects, "TWO", refused=True)
    await saga_engine.settle(saga_id, "TWO", False, "not in Accounts' records")
    saga = await settled_end(saga_engine, saga_id)
    assert saga.status == FAILED
    assert saga.failure_reason == "DEADLINE_EXCEEDED"
    assert steps(saga)[-4:] == [
        ("TWO", "TIMED_OUT"),
        ("TWO", "SETTLED"),
        ("TWO", "FAILED"),
        ("UNDO_ONE", "DONE"),
    ]
    assert "UNDO_TWO" not in effects.calls


async def test_settling_is_refused_where_the_saga_can_still_end_by_itself(
    dynamodb: tuple[Any, str],
) -> None:
    effects, events = Effects(), Events()
    saga_engine = engine(dynamodb, effects, events)
    with pytest.raises(SettleRefused, match="no saga"):
        await saga_engine.settle(str(uuid.uuid4()), "ONE", True, "-")
    effects.down_until["TWO"] = float("inf")
    early = await start(saga_engine, deadline=30)
    assert (await saga_engine.run(early, 0.3)).status == "RUNNING"
    with pytest.raises(SettleRefused, match="not past its deadline"):
        await saga_engine.settle(early, "TWO", True, "-")
    await saga_engine.close()
    effects.down_until.clear()
    done = await saga_engine.run(await start(saga_engine), 10)
    assert done.status == COMPLETED
    with pytest.raises(SettleRefused, match="has ended"):
        await saga_engine.settle(done.saga_id, "THREE", True, "-")
