"""The Anthropic adapter with objects built from the SDK's own types (no network): a
``Message`` is charged in full under its id, and a history built from SDK content blocks
saves and loads back exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from anthropic.types import (
    CacheCreation,
    Message,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    Usage,
)
from sqlalchemy import select

from app.db.models import AgentCheckpoint, AgentCostEvent
from app.domain import CheckpointPayloadError, InvalidInput
from app.integrations.anthropic import charge_message, history, history_entry, to_json
from app.lifecycle import Runtime, reserve
from app.repositories import CheckpointRepository
from app.session_store import RedisSessionStore
from app.settings import SONNET, Settings
from tests.integration.helpers import Factory, ManualClock, make_session

NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)


def response(message_id: str = "msg_01XFDUDYJgAACzvnptvVoYEL", **usage: Any) -> Message:
    """A response as the SDK builds it from the API's JSON."""
    return Message(
        id=message_id,
        type="message",
        role="assistant",
        model=SONNET,
        content=[
            ThinkingBlock(type="thinking", thinking="Run the tests first.", signature="EqQBCg=="),
            TextBlock(type="text", text="I'll run the test suite."),
            ToolUseBlock(
                type="tool_use",
                id="toolu_01A09q90qw90lq917835lq9",
                name="bash",
                input={"command": "pytest -q", "timeout": 120, "env": {"CI": "1"}, "ratio": 0.5},
            ),
        ],
        stop_reason="tool_use",
        stop_sequence=None,
        usage=Usage(
            input_tokens=usage.get("input_tokens", 1_000),
            output_tokens=usage.get("output_tokens", 500),
            cache_creation_input_tokens=10_000,
            cache_read_input_tokens=100_000,
            cache_creation=CacheCreation(
                ephemeral_5m_input_tokens=6_000, ephemeral_1h_input_tokens=4_000
            ),
            service_tier=usage.get("service_tier", "standard"),
        ),
    )


@pytest.fixture
def rt(session_factory: Factory, store: RedisSessionStore) -> Runtime:
    return Runtime(
        session_factory,
        store,
        Settings(_env_file=None, model_prices={}),
        ManualClock(NOW),
    )


async def test_a_message_is_charged_in_full_under_its_id(
    rt: Runtime, session_factory: Factory
) -> None:
    await make_session(session_factory)
    message = response()
    result = await charge_message(rt, session_id="s-1", message=message)
    assert result.cost_microdollars == 87_000
    batch = await charge_message(
        rt, session_id="s-1", message=response("msg_batch", service_tier="batch")
    )
    assert batch.cost_microdollars == 43_500
    again = await charge_message(rt, session_id="s-1", message=message)  # a retry
    assert again.duplicate
    async with session_factory() as s:
        rows = list(await s.scalars(select(AgentCostEvent).order_by(AgentCostEvent.id)))
    assert [(r.request_id, r.model, r.cost_microdollars) for r in rows] == [
        ("msg_01XFDUDYJgAACzvnptvVoYEL", SONNET, 87_000),
        ("msg_batch", SONNET, 43_500),
    ]


async def test_a_message_settles_the_reservation_booked_under_the_callers_id(
    rt: Runtime, session_factory: Factory
) -> None:
    await make_session(session_factory)
    booked = await reserve(
        rt,
        session_id="s-1",
        request_id="call-7",
        model=SONNET,
        max_input_tokens=200_000,
        max_output_tokens=8_000,
    )
    assert booked.granted
    result = await charge_message(rt, session_id="s-1", message=response(), request_id="call-7")
    assert result.cost_microdollars == 87_000
    async with session_factory() as s:
        ids = list(await s.scalars(select(AgentCostEvent.request_id)))
    assert ids == ["call-7"]


async def test_a_message_without_an_id_is_refused(rt: Runtime, session_factory: Factory) -> None:
    await make_session(session_factory)
    bad = response().model_dump()
    bad["id"] = ""
    with pytest.raises(InvalidInput) as caught:
        await charge_message(rt, session_id="s-1", message=bad)
    assert caught.value.field == "message.id"


def conversation() -> list[Any]:
    """An agent loop's history as agents write it: SDK objects mixed into plain dicts."""
    reply = response()
    tool_use = reply.content[2]
    assert isinstance(tool_use, ToolUseBlock)
    return [
        {"role": "user", "content": "Fix the failing test."},
        reply,  # the response object itself
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use.id,
                    "content": [TextBlock(type="text", text="1 failed, 41 passed")],
                    "is_error": False,
                }
            ],
        },
        {"role": "assistant", "content": reply.content},  # the blocks sent back as-is
    ]


async def test_a_history_built_from_sdk_objects_saves_exactly(session_factory: Factory) -> None:
    await make_session(session_factory)
    entries = history(conversation())
    async with session_factory.begin() as s:
        await CheckpointRepository(s).save(
            AgentCheckpoint(
                session_id="s-1", job_id="job-s-1", message_history=entries, iteration_number=1
            )
        )
    async with session_factory() as s:
        loaded = await CheckpointRepository(s).load_latest("s-1")
    assert loaded is not None
    assert loaded.message_history == entries
    # The loaded JSON turns back into the very blocks the SDK returned.
    blocks = Message.model_validate(
        {**response().model_dump(), "content": loaded.message_history[1]["content"]}
    ).content
    assert blocks == response().content


async def test_sdk_objects_left_in_a_history_are_refused_not_stored(
    session_factory: Factory,
) -> None:
    """Why the adapter exists: the checkpoint codec never stores an object it cannot
    load back as it was."""
    await make_session(session_factory)
    raw = [{"role": "assistant", "content": response().content}]
    with pytest.raises(CheckpointPayloadError):
        async with session_factory.begin() as s:
            await CheckpointRepository(s).save(
                AgentCheckpoint(
                    session_id="s-1", job_id="job-s-1", message_history=raw, iteration_number=1
                )
            )


def test_blocks_become_what_the_sdk_would_send() -> None:
    block = TextBlock(type="text", text="hi")
    assert to_json(block) == {"type": "text", "text": "hi"}
    assert history_entry(response())["content"][2] == {
        "type": "tool_use",
        "id": "toolu_01A09q90qw90lq917835lq9",
        "name": "bash",
        "input": {"command": "pytest -q", "timeout": 120, "env": {"CI": "1"}, "ratio": 0.5},
    }
    with pytest.raises(InvalidInput):
        history_entry({"role": "system", "content": "x"})
