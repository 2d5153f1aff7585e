"""Budget events: written in the transaction of the change they report, once per
user-day and threshold (raced for real), and delivered as signed webhooks at least once
to a real HTTP server that fails now and then."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks
from sqlalchemy import select, text

from app.db.models import AgentCheckpoint, AgentEvent, UserSettings
from app.domain import EventType, SessionStatus
from app.lifecycle import (
    Runtime,
    charge,
    deliver_due,
    emit,
    enforce_budgets,
    record_top_up,
    sleep_session,
    stop_session,
    top_up,
    wake_session,
)
from app.repositories import ClaimedEvent, NewEvent
from app.session_store import RedisSessionStore
from app.settings import ModelPrice, Settings
from app.webhooks import sign, verify
from app.workers import metrics
from app.workers.events import EventDeliverer
from tests.integration.helpers import Factory, eventually, make_session
from tests.integration.money import ONE_PER_TOKEN
from tests.webhook_server import WebhookServer

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SECRET = "whsec-test"


def make_settings(url: str | None = None) -> Settings:
    # 1 µ$ per token and a 10,000 µ$ day (300,000 / 30) for a partner without billing row.
    return Settings(
        _env_file=None,
        model_prices={
            ONE_PER_TOKEN: ModelPrice(input_per_mtok=1_000_000, output_per_mtok=1_000_000)
        },
        tier_allowance_partner=300_000,
        webhook_url=url,
        webhook_secret=SECRET,
        webhook_backoff_base_seconds=0.01,
        webhook_backoff_max_seconds=0.05,
        webhook_timeout_seconds=5,
        webhook_batch_size=20,
    )


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore) -> Runtime:
    return Runtime(session_factory, store, make_settings(), lambda: NOW)


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    srv = WebhookServer(SECRET).start()
    yield srv
    srv.stop()


async def events(factory: Factory, type: EventType | None = None) -> list[AgentEvent]:
    async with factory() as s:
        stmt = select(AgentEvent).order_by(AgentEvent.id)
        if type is not None:
            stmt = stmt.where(AgentEvent.type == type.value)
        return list(await s.scalars(stmt))


async def spend(rt: Runtime, session_id: str, request_id: str, tokens: int) -> None:
    await charge(
        rt,
        session_id=session_id,
        request_id=request_id,
        model=ONE_PER_TOKEN,
        input_tokens=tokens,
        output_tokens=0,
        now=NOW,
    )


async def test_thresholds_are_reported_once_each_as_the_day_fills(
    rt: Runtime, session_factory: Factory
) -> None:
    await make_session(session_factory, "s-1", user="u-1")
    await spend(rt, "s-1", "r-1", 4_500)  # 45 %: nothing to report
    assert await events(session_factory) == []
    await spend(rt, "s-1", "r-2", 5_000)  # 95 %
    await spend(rt, "s-1", "r-2", 5_000)  # the same request again: charged once
    await spend(rt, "s-1", "r-3", 100)  # 96 %: 90 % was reported already
    found = await events(session_factory, EventType.THRESHOLD)
    assert [e.payload["threshold_percent"] for e in found] == [90]
    assert found[0].payload["spent_microdollars"] == 9_500
    assert found[0].clerk_user_id == "u-1"
    await spend(rt, "s-1", "r-4", 500)  # 101 %
    await spend(rt, "s-1", "r-5", 1_000)  # 111 %: stopped
    found = await events(session_factory, EventType.THRESHOLD)
    assert [e.payload["threshold_percent"] for e in found] == [90, 100, 110]
    assert {e.payload["day"] for e in found} == {"2026-03-10"}
    stopped = await events(session_factory, EventType.STOPPED)
    assert [(e.session_id, e.payload["by"]) for e in stopped] == [("s-1", "charge")]
    # Stopping it again by hand reports nothing new: the same stop, the same version.
    await stop_session(rt, "s-1")
    assert len(await events(session_factory, EventType.STOPPED)) == 1


async def test_concurrent_charges_report_each_threshold_once(
    rt: Runtime, session_factory: Factory
) -> None:
    await make_session(session_factory, "s-0", user="u-1")
    await spend(rt, "s-0", "r-0", 8_900)
    sessions = [f"s-{i}" for i in range(1, 21)]
    for sid in sessions:
        await make_session(session_factory, sid, user="u-1")
    # 20 charges at once take the day from 89 % to 109 %: every one of them sees 90 %
    # and 100 % reached, and the unique key lets one event of each through.
    await asyncio.gather(*(spend(rt, sid, f"r-{sid}", 100) for sid in sessions))
    found = await events(session_factory, EventType.THRESHOLD)
    assert sorted(e.payload["threshold_percent"] for e in found) == [90, 100]


async def test_an_event_commits_or_vanishes_with_its_change(
    rt: Runtime, session_factory: Factory
) -> None:
    new = NewEvent(EventType.TOPPED_UP, "k-1", {"amount_microdollars": 5})

    async def failing_change() -> None:
        async with session_factory.begin() as s:
            await emit(s, new)
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert await events(session_factory) == []
    async with session_factory.begin() as s:
        assert await record_top_up(
            s, clerk_user_id="u-1", amount_microdollars=5_000_000, top_up_id="t-1"
        )
        assert not await record_top_up(
            s, clerk_user_id="u-1", amount_microdollars=5_000_000, top_up_id="t-1"
        )
    [event] = await events(session_factory)
    assert event.type == EventType.TOPPED_UP
    assert event.payload["amount_microdollars"] == 5_000_000


async def test_sleep_wake_stop_are_reported(rt: Runtime, session_factory: Factory) -> None:

    await make_session(session_factory, "s-1", user="u-1")
    await sleep_session(rt, AgentCheckpoint(session_id="s-1", job_id="job-s-1"), now=NOW)
    await wake_session(rt, "s-1", reason="top-up")
    await stop_session(rt, "s-1")
    found = await events(session_factory)
    assert [(e.type, e.payload["status"]) for e in found] == [
        (EventType.SLEPT, SessionStatus.SLEEPING),
        (EventType.WOKEN, SessionStatus.WORKING),
        (EventType.STOPPED, SessionStatus.BUDGET_EXCEEDED),
    ]
    assert found[1].payload["reason"] == "top-up"
    assert len({e.event_id for e in found}) == 3


def test_signatures_verify_and_refuse_tampering_and_replays() -> None:
    body = b'{"id": "e-1"}'
    headers = sign("k", "e-1", 1_700_000_000, body)
    assert verify("k", headers, body, now=1_700_000_010)
    assert not verify("other", headers, body, now=1_700_000_010)
    assert not verify("k", headers, body + b" ", now=1_700_000_010)
    assert not verify("k", {**headers, "webhook-id": "e-2"}, body, now=1_700_000_010)
    assert not verify("k", headers, body, now=1_700_001_000)  # older than 5 minutes
    assert not verify("k", {"webhook-signature": "garbage"}, body, now=1_700_000_010)


async def test_every_event_arrives_signed_through_a_flaky_receiver(
    session_factory: Factory, store: RedisSessionStore, server: WebhookServer
) -> None:
    settings = make_settings(server.url)
    async with session_factory.begin() as s:
        await emit(
            s,
            *(
                NewEvent(EventType.TOPPED_UP, f"k-{i}", {"n": i}, clerk_user_id="u-1")
                for i in range(120)
            ),
        )
    expected = {str(e.event_id) for e in await events(session_factory)}
    failed_before = metrics.WEBHOOK_DELIVERIES.labels("failed")._value.get()
    deliverer = EventDeliverer(session_factory, store, settings)

    async def all_delivered() -> bool:
        await deliverer.run_once()
        return all(e.delivered_at is not None for e in await events(session_factory))

    await eventually(all_delivered)
    assert server.delivered_ids() == expected
    received = server.snapshot()
    assert all(r.signature_valid for r in received)
    assert all(r.header_id == r.event_id for r in received)
    assert {r.body["data"]["n"] for r in received} == set(range(120))
    # The receiver failed every third request and dropped every seventh: each failure
    # was retried, and counted.
    failures = sum(1 for r in received if r.answered != 204)
    assert failures > 0
    failed_now = metrics.WEBHOOK_DELIVERIES.labels("failed")._value.get()
    assert failed_now - failed_before >= failures
    retried = [e for e in await events(session_factory) if e.attempts > 1]
    assert retried


async def test_no_receiver_leaves_events_pending_and_due_again(
    session_factory: Factory, store: RedisSessionStore
) -> None:
    # A port nobody listens on: connection refused, the event stays and is retried.
    settings = make_settings("http://127.0.0.1:9/hooks")
    async with session_factory.begin() as s:
        await emit(s, NewEvent(EventType.TOPPED_UP, "k-1", {}))
    deliverer = EventDeliverer(session_factory, store, settings)
    report = await deliverer.run_once()
    assert (report.delivered, report.failed) == (0, 1)
    [event] = await events(session_factory)
    assert event.delivered_at is None
    assert event.last_error is not None
    assert event.attempts == 1

    async def retried() -> bool:
        await deliverer.run_once()
        [again] = await events(session_factory)
        return again.attempts >= 3

    await eventually(retried)


def test_the_body_is_json_with_the_event_id() -> None:

    event = ClaimedEvent(
        1, "uuid-1", "budget.threshold", "k", "u-1", "s-1", {"threshold_percent": 90}, 2, NOW
    )
    body = json.loads(json.dumps(event.body()))
    assert body["id"] == "uuid-1"
    assert body["data"]["threshold_percent"] == 90
    assert body["attempt"] == 2


async def test_a_first_charge_of_the_day_can_cross_a_threshold(
    rt: Runtime, session_factory: Factory
) -> None:
    await make_session(session_factory, "s-1", user="u-new")
    await spend(rt, "s-1", "r-1", 9_500)  # creates the day's row and reaches 95 % at once
    found = await events(session_factory, EventType.THRESHOLD)
    assert [(e.clerk_user_id, e.payload["threshold_percent"]) for e in found] == [("u-new", 90)]


async def test_the_daemon_reports_its_stops(rt: Runtime, session_factory: Factory) -> None:

    await make_session(session_factory, "quiet", user="u-1")
    await make_session(session_factory, "busy", user="u-1")
    await spend(rt, "busy", "r-1", 11_500)  # the user's day at 115 %: "busy" stops itself
    done = await enforce_budgets(rt, limit=10)  # and the daemon stops "quiet"
    assert [row.id for row in done.stopped] == ["quiet"]
    stopped = await events(session_factory, EventType.STOPPED)
    assert sorted((e.session_id, e.payload["by"]) for e in stopped) == [
        ("busy", "charge"),
        ("quiet", "daemon"),
    ]


async def test_parked_resumes_and_fenced_runners_are_reported(
    session_factory: Factory, store: RedisSessionStore
) -> None:

    settings = make_settings().model_copy(
        update={"resume_max_attempts": 2, "runner_timeout_seconds": 60.0}
    )
    rt = Runtime(session_factory, store, settings, lambda: NOW)
    await make_session(session_factory, "stuck", user="u-1")
    await make_session(session_factory, "silent", user="u-2")
    async with session_factory.begin() as s:
        # "stuck" is owed a resume that used up its attempts; "silent" has given no sign
        # of life for ten minutes.
        await s.execute(
            text(
                "UPDATE agent_sessions SET resume_due_at = now() - interval '1 s',"
                " resume_attempts = 2 WHERE id = 'stuck'"
            )
        )
        await s.execute(
            text(
                "UPDATE agent_sessions SET last_seen_at = now() - CAST(:by AS interval),"
                " started_at = now() - CAST(:by AS interval) WHERE id = 'silent'"
            ),
            {"by": timedelta(minutes=10)},
        )
    found = await deliver_due(rt, limit=10)
    assert (found.parked, found.orphans) == (["stuck"], ["silent"])
    await deliver_due(rt, limit=10)  # nothing new: nothing is reported twice
    parked = await events(session_factory, EventType.RESUME_PARKED)
    fenced = await events(session_factory, EventType.RUNNER_FENCED)
    assert [(e.session_id, e.payload["attempts"]) for e in parked] == [("stuck", 2)]
    assert [e.session_id for e in fenced] == ["silent"]


async def test_a_top_up_is_reported_with_the_sessions_it_resumed(
    rt: Runtime, session_factory: Factory
) -> None:
    async with session_factory.begin() as s:
        s.add(UserSettings(clerk_user_id="u-1", tier="partner"))
    await make_session(session_factory, "s-1", user="u-1")
    await spend(rt, "s-1", "r-1", 11_500)  # 115 %: stopped
    moved = await top_up(rt, clerk_user_id="u-1", amount_microdollars=20_000, now=NOW)
    assert moved == 1  # back under 100 %: resumed
    [bought] = await events(session_factory, EventType.TOPPED_UP)
    assert bought.clerk_user_id == "u-1"
    assert bought.payload["amount_microdollars"] == 20_000
    assert bought.payload["sessions_moved"] == 1
    woken = await events(session_factory, EventType.WOKEN)
    assert [(e.session_id, e.payload["reason"]) for e in woken] == [("s-1", "top-up")]


async def test_deliveries_verify_with_the_standard_webhooks_library_during_a_rotation(
    session_factory: Factory, store: RedisSessionStore
) -> None:
    """A receiver verifies with ``standardwebhooks.Webhook(secret).verify(body, headers)``:
    with the old key and with the new one while ``WEBHOOK_SECRET`` holds both."""
    old = "whsec_" + base64.b64encode(b"the old key, 32 bytes long......").decode()
    new = "whsec_" + base64.b64encode(b"the new key, also 32 bytes long.").decode()
    receiver = WebhookServer(f"{new} {old}").start()
    try:
        settings = make_settings(receiver.url).model_copy(update={"webhook_secret": f"{new} {old}"})
        async with session_factory.begin() as s:
            await emit(
                s,
                *(
                    NewEvent(EventType.TOPPED_UP, f"rot-{i}", {"n": i}, clerk_user_id="u-1")
                    for i in range(5)
                ),
            )
        deliverer = EventDeliverer(session_factory, store, settings)

        async def all_delivered() -> bool:
            await deliverer.run_once()
            return all(e.delivered_at is not None for e in await events(session_factory))

        await eventually(all_delivered)
        received = [r for r in receiver.snapshot() if r.answered == 204]
    finally:
        receiver.stop()
    assert len(received) == 5
    for each in received:
        for secret in (new, old):
            verified = standardwebhooks.Webhook(secret).verify(each.raw, each.headers)
            assert verified["id"] == each.event_id
        stranger = "whsec_" + base64.b64encode(b"not a key of ours, 32 bytes!!...").decode()
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(stranger).verify(each.raw, each.headers)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(new).verify(each.raw + b" ", each.headers)
