"""Runtime configuration: the one place that reads the environment."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.domain import Tier

OPUS = "claude-opus-4-20250514"
SONNET = "claude-sonnet-4-20250514"


class ModelPriceBand(BaseModel):
    """The rates of every token of a call whose prompt (input + cache writes + cache
    reads) has more than ``threshold_tokens``, in microdollars per million tokens. A
    cache class left out is the base price's rate for it scaled like the input rate."""

    model_config = {"frozen": True}

    threshold_tokens: PositiveInt
    input_per_mtok: NonNegativeInt
    output_per_mtok: NonNegativeInt
    cache_write_5m_per_mtok: NonNegativeInt | None = None
    cache_write_1h_per_mtok: NonNegativeInt | None = None
    cache_read_per_mtok: NonNegativeInt | None = None


_CACHE_CLASSES = ("cache_write_5m_per_mtok", "cache_write_1h_per_mtok", "cache_read_per_mtok")


class ModelPrice(BaseModel):
    """Price of one model in microdollars per million tokens, one figure per token class,
    with optional bands by prompt size and a web search price per 1,000 requests.

    The prompt-cache classes default to Anthropic's multipliers of the input price
    (DESIGN.md §6b): 5-minute writes 1.25x, 1-hour writes 2x, reads 0.1x.
    """

    model_config = {"frozen": True}

    input_per_mtok: NonNegativeInt
    output_per_mtok: NonNegativeInt
    cache_write_5m_per_mtok: NonNegativeInt | None = None
    cache_write_1h_per_mtok: NonNegativeInt | None = None
    cache_read_per_mtok: NonNegativeInt | None = None
    bands: tuple[ModelPriceBand, ...] = ()
    web_search_per_1k: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _derive_cache_prices(self) -> ModelPrice:
        # Frozen: fill the derived classes once, here, so equal prices compare equal.
        derived = {
            "cache_write_5m_per_mtok": self.input_per_mtok * 5 // 4,
            "cache_write_1h_per_mtok": self.input_per_mtok * 2,
            "cache_read_per_mtok": self.input_per_mtok // 10,
        }
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        thresholds = [b.threshold_tokens for b in self.bands]
        if len(set(thresholds)) != len(thresholds):
            raise ValueError(f"two bands share a threshold: {thresholds}")
        bands = []
        for each in sorted(self.bands, key=lambda b: b.threshold_tokens):
            filled = {}
            for name in _CACHE_CLASSES:
                if getattr(each, name) is not None:
                    continue
                if self.input_per_mtok == 0:
                    raise ValueError(f"band {name} must be given when input_per_mtok is 0")
                base: int = getattr(self, name)
                filled[name] = base * each.input_per_mtok // self.input_per_mtok
            bands.append(each.model_copy(update=filled) if filled else each)
        object.__setattr__(self, "bands", tuple(bands))
        return self


#: Web search on Anthropic's API: $10 per 1,000 requests, in µ$ per 1,000.
WEB_SEARCH_PER_1K = 10_000_000


def default_prices() -> dict[str, ModelPrice]:
    """The built-in price list (DESIGN.md §6): the fallback for a model the ``prices``
    table has no row for at the charge's time. Flat, as DESIGN.md §6 gives it: the
    table's seeded rows carry the bands (Sonnet 4 above 200k prompt tokens at $6 /
    $22.50, docs/pricing.md), and MODEL_PRICES may carry them too."""
    return {
        OPUS: ModelPrice(
            input_per_mtok=15_000_000,
            output_per_mtok=75_000_000,
            web_search_per_1k=WEB_SEARCH_PER_1K,
        ),
        SONNET: ModelPrice(
            input_per_mtok=3_000_000,
            output_per_mtok=15_000_000,
            web_search_per_1k=WEB_SEARCH_PER_1K,
        ),
    }


#: Money that fits PostgreSQL's BIGINT, where budgets are stored.
Microdollars = Annotated[int, Field(ge=0, le=2**63 - 1)]

#: Bounds of operator input (DESIGN.md §6c): beyond them a value is a mistake, and would
#: otherwise fail later, in SQL or in the calendar, instead of where it was given.
MAX_SECONDS: Final = 10**9  # about 31 years
MAX_BATCH: Final = 100_000
MAX_COUNT: Final = 10**7
MAX_RETENTION_DAYS: Final = 36_500  # a century
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
GraceSeconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
WholeSeconds = Annotated[int, Field(ge=1, le=MAX_SECONDS)]
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]


MASK: Final = "***"
#: A webhook URL's query value at least this long is taken for a token even under an
#: innocent name (credential-like names are masked at any length).
MIN_TOKEN_LENGTH: Final = 6
#: Query parameters whose value is a credential, whatever the URL's scheme.
SECRET_QUERY_KEYS: Final = ("pass", "pwd", "secret", "token", "key", "auth", "sig", "cred")


def _secret_key(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_QUERY_KEYS)


def mask_url(url: str | None, *, every_query_value: bool = False) -> str:
    """``url`` safe to print or log: the password of its userinfo and the value of every
    credential-like query parameter (``password``, ``token``, ``sig``...; with
    ``every_query_value``, of every parameter, as a webhook URL's query is its own
    business) become ``***``. The one masking rule of the CLI, the errors and the logs."""
    if not url:
        return "(unset)"
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        user, at, host = netloc.rpartition("@")
        if at:
            name, colon, _ = user.partition(":")
            netloc = f"{name}{colon and ':' + MASK}@{host}"
        query = "&".join(
            f"{quote(k, safe='')}={MASK}"
            if every_query_value or _secret_key(k)
            else f"{quote(k, safe='')}={quote(v, safe='')}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<unparseable url>"


def url_secrets(url: str | None) -> set[str]:
    """The credentials inside ``url`` (its password, credential-like query values),
    as written and decoded, so that text carrying any of them can be masked."""
    found: set[str] = set()
    if not url:
        return found
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    user, at, _ = parts.netloc.rpartition("@")
    if at and ":" in user:
        found.add(user.partition(":")[2])
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if _secret_key(key):
            found.add(value)
    found |= {unquote(each) for each in found}
    return {each for each in found if each}


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***`` (longest first,
    so that a secret containing another is masked whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def is_secret_setting(name: str) -> bool:
    """Whether the value of the setting ``name`` may carry a secret, and is never shown
    (a URL can hold a password; WEBHOOK_SECRET is one)."""
    upper = name.upper()
    return "URL" in upper or "SECRET" in upper or "PASSWORD" in upper or "TOKEN" in upper


class Settings(BaseSettings):
    """Every knob of the library and its processes; ``Settings()`` works with no environment."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # NaN compares false with every bound, and inf passes "> 0": both refused.
        allow_inf_nan=False,
    )

    # Servers. None means "start embedded servers" for the CLI (see app.local_services).
    database_url: str | None = None
    redis_url: str | None = None
    # What sits in front of PostgreSQL: "pgbouncer" (transaction mode) turns off the
    # driver's prepared-statement caches; LISTEN then needs DATABASE_LISTEN_URL, a
    # direct (or session-mode) connection, or the worker polls.
    database_pooler: Literal["none", "pgbouncer"] = "none"
    database_listen_url: str | None = None
    # A Redis Cluster: also chosen by a redis+cluster:// REDIS_URL.
    redis_cluster: bool = False
    # Namespace of the session keys in Redis: f"{redis_prefix}:{session_id}".
    redis_prefix: str = "agent:session"

    # Period allowance per tier, in microdollars (1 USD = 1_000_000).
    tier_allowance_bootstrapper: Microdollars = 20_000_000
    tier_allowance_partner: Microdollars = 100_000_000
    tier_allowance_cto_scale: Microdollars = 500_000_000

    # Model per tier (BDGT-05); fixed on the session when it is created.
    tier_model_bootstrapper: str = SONNET
    tier_model_partner: str = SONNET
    tier_model_cto_scale: str = OPUS

    # Prices live in PostgreSQL's `prices` table, effective-dated (`python -m app prices`).
    # These are the fallback for a model that table has no price for at the charge's
    # time; JSON in the environment: {"model": {"input_per_mtok": .., "output_per_mtok":
    # .., "cache_write_5m_per_mtok": .., "cache_write_1h_per_mtok": ..,
    # "cache_read_per_mtok": .., "web_search_per_1k": .., "bands": [{"threshold_tokens":
    # 200000, "input_per_mtok": .., "output_per_mtok": ..}]}} (the cache classes default
    # to 1.25x / 2x / 0.1x input; a band's to the base's scaled like its input).
    model_prices: dict[str, ModelPrice] = Field(default_factory=default_prices)
    # An unsettled reservation (BudgetRepository.reserve) stops counting after this long.
    reservation_ttl_seconds: WholeSeconds = 600

    # Checkpoint storage.
    checkpoint_keep_last: Count = 5
    checkpoint_keyframe_every: Count = 50
    # Sessions whose last saved history each process remembers (LRU), so that a save
    # extending it costs O(new messages); 0 turns the cache off.
    checkpoint_cache_sessions: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 1024

    # Processes.
    wake_poll_interval: Seconds = 5.0
    daemon_interval: Seconds = 30.0
    sleep_grace_seconds: Annotated[int, Field(ge=0, le=MAX_SECONDS)] = 300
    batch_size: Batch = 100
    backoff_max_seconds: Seconds = 30.0
    store_timeout_seconds: Seconds = 2.0
    # Resume delivery (DESIGN.md §8): at least once, fenced by a token.
    resume_lease_seconds: Seconds = 30.0
    resume_max_attempts: Count = 5
    resume_concurrency: Batch = 32
    resume_grace_seconds: GraceSeconds = 30.0
    runner_timeout_seconds: Seconds = 900.0
    # The Redis mirror's reconciliation rescans changes this far back on every pass,
    # so a transaction that committed late is not missed.
    store_reconcile_margin_seconds: Seconds = 30.0
    # Completed sessions lose their checkpoints and Redis key this many days after
    # completion (the daemon, in batches of RETENTION_BATCH); the row and ledger stay.
    retention_days: Annotated[int, Field(ge=1, le=MAX_RETENTION_DAYS)] = 30
    retention_batch: Batch = 500
    # Budget events (DESIGN.md §8): the outbox's deliverer POSTs each one to WEBHOOK_URL,
    # signed with WEBHOOK_SECRET as Standard Webhooks define it (webhook-id,
    # webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256>); several
    # space-separated secrets all sign, for a key rotation.
    # No URL: events stay in the outbox, undelivered, until one is set.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_timeout_seconds: Seconds = 10.0
    # A claimed event is due again after the lease, should its deliverer die: keep it
    # above the timeout.
    webhook_lease_seconds: Seconds = 60.0
    webhook_backoff_base_seconds: Seconds = 1.0
    webhook_backoff_max_seconds: Seconds = 300.0
    webhook_batch_size: Batch = 50
    events_poll_interval: Seconds = 2.0
    on_resume: str | None = None
    metrics_port: Annotated[int, Field(ge=1, le=65_535)] | None = None
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"not a log level: {value!r}; one of {', '.join(LOG_LEVELS)}")
        return level

    def secrets(self) -> frozenset[str]:
        """Every secret these settings hold: the passwords and tokens of DATABASE_URL,
        DATABASE_LISTEN_URL, REDIS_URL and WEBHOOK_URL (and all of the webhook URL's
        query values), and WEBHOOK_SECRET. Nothing printed or logged may carry one."""
        found = set()
        for url in (self.database_url, self.database_listen_url, self.redis_url):
            found |= url_secrets(url)
        if self.webhook_url:
            found |= url_secrets(self.webhook_url)
            try:
                query = urlsplit(self.webhook_url).query
            except ValueError:
                query = ""
            # Any query value may be the receiver's token; short ones ("v=1") are not
            # worth masking every "1" of every log line for.
            found |= {v for _, v in parse_qsl(query) if len(v) >= MIN_TOKEN_LENGTH}
        if self.webhook_secret:
            found.add(self.webhook_secret)
        return frozenset(found)

    def allowance_for(self, tier: Tier) -> int:
        """The tier's allowance for one billing period, in microdollars."""
        return {
            Tier.BOOTSTRAPPER: self.tier_allowance_bootstrapper,
            Tier.PARTNER: self.tier_allowance_partner,
            Tier.CTO_SCALE: self.tier_allowance_cto_scale,
        }[Tier(tier)]

    def model_for(self, tier: Tier) -> str:
        """The model a new session of this tier runs on (BDGT-05)."""
        return {
            Tier.BOOTSTRAPPER: self.tier_model_bootstrapper,
            Tier.PARTNER: self.tier_model_partner,
            Tier.CTO_SCALE: self.tier_model_cto_scale,
        }[Tier(tier)]
