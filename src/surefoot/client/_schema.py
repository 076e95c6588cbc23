"""The schema of ``[integrations.NAME]`` tables: plain pydantic models (``surefoot._config``).

Imported only when integrations are read from configuration (``load_integrations``), so
``surefoot.client`` works without pydantic. ``BreakerTable`` is public
(``surefoot.client.BreakerTable``): every configuration file with a circuit breaker (the
gateway's ``[upstream.breaker]`` too) validates it with this one model.

Rule 1: a table configuring a class takes its defaults from that class's constructor
        (``_defaults``), never a second copy of the numbers; a configuration that wants
        another default overrides the field in a subclass, with a comment saying why.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from surefoot._config import described
from surefoot._masking import masked_url, shown
from surefoot.client._base_url import url_problem
from surefoot.client._breaker import CircuitBreaker
from surefoot.errors import ConfigurationError
from surefoot.ratelimit import parse_limit

__all__ = ["BreakerTable", "Root", "Table"]

_SECONDS = "a finite number of seconds > 0"
_SECONDS0 = "a finite number of seconds >= 0"
_WHOLE = "a whole number >= 1"
_SHARE = "a share in (0, 1], such as 0.5"
_STORE = "a store URL, such as 'redis://127.0.0.1:6379/0' or 'sqlite:///cache.db'"
#: The URL schemes a cache's ``store`` may name (PostgresStore keeps no cache entries); a
#: throttle's may name any of ``surefoot.storage.STORES``.
_CACHE_SCHEMES = ("memory", "redis", "redis+cluster", "rediss", "sqlite")


def _defaults(cls: Callable[..., Any]) -> dict[str, Any]:
    """The defaults of ``cls``'s keyword arguments (Rule 1)."""
    parameters = inspect.signature(cls).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


_BREAKER = _defaults(CircuitBreaker)


class Table(BaseModel):
    """A table of a configuration file: strict types, unknown fields refused, no inf/nan."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class BreakerTable(Table):
    """A ``[...breaker]`` table: the fields of ``CircuitBreaker``, with its defaults.

    Example:
        >>> table = BreakerTable.model_validate({"failure_rate_threshold": 0.25})
        >>> breaker = CircuitBreaker(name="shipping", **table.model_dump())
    """

    failure_rate_threshold: Annotated[float, Field(gt=0, le=1)] = described(
        _SHARE, _BREAKER["failure_rate_threshold"]
    )
    slow_call_rate_threshold: Annotated[float, Field(gt=0, le=1)] = described(
        _SHARE, _BREAKER["slow_call_rate_threshold"]
    )
    slow_call_duration: Annotated[float, Field(gt=0)] = described(
        _SECONDS, _BREAKER["slow_call_duration"]
    )
    window: Literal["count", "time"] = described("'count' or 'time'", _BREAKER["window"])
    window_size: Annotated[int, Field(ge=1)] = described(_WHOLE, _BREAKER["window_size"])
    minimum_calls: Annotated[int, Field(ge=1)] = described(_WHOLE, _BREAKER["minimum_calls"])
    open_wait: Annotated[float, Field(gt=0)] = described(_SECONDS, _BREAKER["open_wait"])
    half_open_calls: Annotated[int, Field(ge=1)] = described(_WHOLE, _BREAKER["half_open_calls"])


# The other sections leave unset fields unset (None): the constructor's defaults apply.


class _Retry(Table):
    max_attempts: Annotated[int, Field(ge=1)] | None = described(_WHOLE, None)
    deadline: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    attempt_timeout: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    backoff_base: Annotated[float, Field(ge=0)] | None = described(_SECONDS0, None)
    backoff_max: Annotated[float, Field(ge=0)] | None = described(_SECONDS0, None)
    jitter: Literal["full", "equal", "decorrelated", "none"] | None = described(
        "one of 'full', 'equal', 'decorrelated', 'none'", None
    )
    retry_statuses: list[Annotated[int, Field(ge=100, le=599)]] | None = described(
        "a list of HTTP statuses (whole numbers 100-599)", None
    )
    idempotent_methods: list[Annotated[str, Field(min_length=1)]] | None = described(
        "a list of method names, such as ['GET', 'PUT']", None
    )
    retry_problem_codes: list[Annotated[str, Field(min_length=1)]] | None = described(
        "a list of problem codes (strings)", None
    )
    max_retry_after: Annotated[float, Field(ge=0)] | None = described(_SECONDS0, None)
    raise_on_exhausted: bool | None = described("true or false", None)


class _Budget(Table):
    ratio: Annotated[float, Field(ge=0)] | None = described("a finite number >= 0", None)
    min_retries_per_second: Annotated[float, Field(ge=0, allow_inf_nan=True)] | None = described(
        "a number >= 0 (inf: unlimited)", None
    )
    window: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)

    @field_validator("min_retries_per_second")
    @classmethod
    def _not_nan(cls, value: float | None) -> float | None:
        if value is not None and math.isnan(value):
            raise ValueError("expected a number >= 0 (inf: unlimited), got nan")
        return value


def _store_url(section: str, value: str | None) -> str | None:
    if value is None:
        return None
    schemes: tuple[str, ...]
    if section == "cache":
        schemes = _CACHE_SCHEMES
    else:
        # Imported here: the registry loads every store (and sqlite3), which the schema's
        # other users (the gateway's ``BreakerTable``) do not need.
        from surefoot.storage import STORES

        schemes = tuple(sorted(STORES))
    if value.partition("://")[0] not in schemes or "://" not in value:
        raise ValueError(
            f"expected a store URL ({', '.join(f'{s}://' for s in schemes)}), such as "
            "'redis://127.0.0.1:6379/0' or 'sqlite:///cache.db', "
            f"got {shown(masked_url(value))}"
        )
    return value


class _Throttle(Table):
    limit: str = described("a rate such as '100/minute' or '20/5 minutes'")
    burst: Annotated[int, Field(ge=1)] | None = described(_WHOLE, None)
    max_wait: Annotated[float, Field(ge=0)] | None = described(_SECONDS0, None)
    store: str | None = described(_STORE, None)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        return _store_url("throttle", value)

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: str) -> str:
        try:
            parse_limit(value)
        except ConfigurationError as exc:
            message = str(exc)
            rate, colon, reason = message.partition(": ")
            if rate.startswith("limit ") and colon:  # "limit '100/fortnight': unknown unit"
                raise ValueError(f"{reason}, got {rate[6:]}") from None
            # "Limit.amount: expected ..., got 0"
            raise ValueError(f"{message.partition('.')[2]} (in {value!r})") from None
        return value


class _Bulkhead(Table):
    max_concurrent: Annotated[int, Field(ge=1)] = described(_WHOLE)
    max_wait: Annotated[float, Field(ge=0)] | None = described(_SECONDS0, None)


class _Cache(Table):
    max_staleness: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    max_entries: Annotated[int, Field(ge=1)] | None = described(_WHOLE, None)
    max_bytes: Annotated[int, Field(ge=1)] | None = described(_WHOLE, None)
    max_entry_bytes: Annotated[int, Field(ge=1)] | None = described(_WHOLE, None)
    store: str | None = described(_STORE, None)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        return _store_url("cache", value)


class _Integration(Table):
    base_url: str = described("an absolute http:// or https:// URL")
    timeout: Annotated[float, Field(gt=0)] = described(_SECONDS, 5.0)
    connect_timeout: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    read_timeout: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    write_timeout: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    pool_timeout: Annotated[float, Field(gt=0)] | None = described(_SECONDS, None)
    headers: dict[str, str] = described(
        "a table of header names to text values", default_factory=dict
    )
    auto_idempotency_key: bool = described("true or false", False)
    idempotency_header: Annotated[str, Field(min_length=1)] = described(
        "a header name", "Idempotency-Key"
    )
    retry: _Retry | None = None
    budget: _Budget | None = None
    breaker: BreakerTable | None = None
    throttle: _Throttle | None = None
    bulkhead: _Bulkhead | None = None
    cache: _Cache | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class Root(BaseModel):
    """The ``[integrations]`` table of a file whose other tables are not read."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    integrations: dict[str, _Integration] = described("a table with one table per API")
