"""Any provider's usage is priced to the µ$: an OpenAI Chat Completions usage with cached
tokens, the Responses API's, and LangChain's ``usage_metadata``, through ``charge_usage``
on real PostgreSQL (the worked examples of docs/pricing.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app import lifecycle
from app.budget.pricing import rates
from app.db.models import AgentCostEvent
from app.domain import InvalidInput
from app.lifecycle import Runtime
from app.session_store import RedisSessionStore
from app.settings import Settings
from tests.integration.helpers import Factory, make_session

NOW = datetime(2031, 3, 4, 12, 0, tzinfo=UTC)
GPT = "gpt-4.1"
SONNET_45 = "claude-sonnet-4-5"

#: OpenAI Chat Completions: 10,000 prompt tokens, 4,000 of them read from the cache.
CHAT: dict[str, Any] = {
    "prompt_tokens": 10_000,
    "completion_tokens": 1_000,
    "total_tokens": 11_000,
    "prompt_tokens_details": {"cached_tokens": 4_000, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": 0},
}
#: The same call through the Responses API.
RESPONSES: dict[str, Any] = {
    "input_tokens": 10_000,
    "output_tokens": 1_000,
    "total_tokens": 11_000,
    "input_tokens_details": {"cached_tokens": 4_000},
    "output_tokens_details": {"reasoning_tokens": 200},
}
#: LangChain's usage_metadata of a Claude call: input_tokens count cache reads and writes.
LANGCHAIN: dict[str, Any] = {
    "input_tokens": 12_000,
    "output_tokens": 500,
    "total_tokens": 12_500,
    "input_token_details": {"cache_read": 10_000, "cache_creation": 1_000},
}


@pytest.fixture
async def rt(session_factory: Factory, store: RedisSessionStore) -> Runtime:
    runtime = Runtime(
        session_factory,
        store,
        Settings(_env_file=None, tier_allowance_partner=3_000_000_000),
        lambda: NOW,
    )
    # GPT-4.1 as OpenAI lists it: $2 input, $0.50 cached input, $8 output per Mtok. The
    # prices table outlives a test (it holds the seed), so the row is added once.
    if await lifecycle.list_prices(runtime, model=GPT):
        return runtime
    await lifecycle.set_price(
        runtime,
        model=GPT,
        rates=rates(2_000_000, 8_000_000, cache_read=500_000),
        effective_from=NOW - timedelta(days=1),
        source="test: OpenAI's price page",
        now=NOW - timedelta(days=2),
    )
    return runtime


async def charged(rt: Runtime, request_id: str, model: str, usage: dict[str, Any]) -> int:
    result = await lifecycle.charge_usage(
        rt, session_id="s-1", request_id=request_id, model=model, usage=usage
    )
    return result.cost_microdollars


async def test_openai_chat_completions_with_cached_tokens(
    rt: Runtime, session_factory: Factory
) -> None:
    await make_session(session_factory, model=GPT)
    # 6,000 uncached at $2 + 4,000 cached at $0.50 + 1,000 output at $8 (reasoning included)
    assert await charged(rt, "chat-1", GPT, CHAT) == 12_000 + 2_000 + 8_000 == 22_000
    assert await charged(rt, "resp-1", GPT, RESPONSES) == 22_000
    async with session_factory() as s:
        rows = list(await s.scalars(select(AgentCostEvent).order_by(AgentCostEvent.id)))
    assert [(r.input_tokens, r.cache_read_input_tokens, r.output_tokens) for r in rows] == [
        (6_000, 4_000, 1_000),
        (6_000, 4_000, 1_000),
    ]


async def test_langchain_usage_metadata(rt: Runtime, session_factory: Factory) -> None:
    await make_session(session_factory, model=SONNET_45)
    # 1,000 input at $3 + 1,000 cache writes at $3.75 + 10,000 reads at $0.30 + 500 at $15
    cost = await charged(rt, "lc-1", SONNET_45, LANGCHAIN)
    assert cost == 3_000 + 3_750 + 3_000 + 7_500 == 17_250


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({**CHAT, "prompt_tokens_details": {"cached_tokens": 20_000}}, "cached_tokens"),
        ({**CHAT, "prompt_tokens_details": {"audio_tokens": 30}}, "audio_tokens"),
        ({"completion_tokens": 5, "total_tokens": 5}, "prompt_tokens"),
        ({**LANGCHAIN, "input_token_details": {"cache_read": 20_000}}, "cache_read"),
        ({**LANGCHAIN, "input_token_details": {"audio": 7}}, "audio"),
        ({**RESPONSES, "input_tokens_details": "lots"}, "input_tokens_details"),
    ],
)
async def test_a_usage_that_cannot_be_priced_is_refused_and_nothing_written(
    rt: Runtime, session_factory: Factory, usage: dict[str, Any], field: str
) -> None:
    await make_session(session_factory, model=GPT)
    with pytest.raises(InvalidInput) as caught:
        await charged(rt, "bad-1", GPT, usage)
    assert caught.value.field is not None
    assert caught.value.field.endswith(field)
    async with session_factory() as s:
        assert await s.scalar(select(func.count()).select_from(AgentCostEvent)) == 0
