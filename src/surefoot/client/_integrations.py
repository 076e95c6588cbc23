"""Integrations from configuration: one named, fully equipped client per third-party API.

A TOML file declares each partner once::

    [integrations.shipping]
    base_url = "https://api.shipping.example"
    timeout = 10.0
    auto_idempotency_key = true
    [integrations.shipping.retry]
    max_attempts = 4
    [integrations.shipping.breaker]
    failure_rate_threshold = 0.5
    [integrations.shipping.throttle]
    limit = "100/minute"

``load_integrations`` reads it (stdlib ``tomllib``), validates it (pydantic, strict, unknown
fields refused) and returns one ``Integration`` per table; ``Integration.client()`` and
``async_client()`` build httpx clients around ``ResilientTransport`` /
``AsyncResilientTransport``.

Rule 1: one ``Integration`` owns one ``RetryBudget`` and, when configured, one
``CircuitBreaker``, ``Throttle``, ``Bulkhead`` and ``StaleCache``; every transport and client
it builds (sync or async) shares them, so the partner sees one budget, one breaker, one rate.
Rule 2: each integration logs on its own loggers, ``surefoot.integration.<name>.client`` and
``surefoot.integration.<name>.breaker``, so one partner's trouble can be filtered or routed.
Rule 3: an invalid file is refused as a whole with one ``ConfigurationError`` listing every
problem as ``file:line: field.path: expected ..., got ...``; nothing is half-built.
Rule 4: a ``store`` URL of a throttle or a cache table (``surefoot.storage.store_from_url``)
makes a store object for that table alone: the sync transport runs a throttle's store on the
throttle's event loop thread, the async one on the caller's loop, and a cache runs its store
on a loop thread of its own, while a store object serves one event loop at a time. Several
objects on one Redis or one SQLite file share their data: that is the point.
Rule 5: pydantic is imported only when a configuration is validated (the schema is
``_schema.py``), so ``surefoot.client`` works without it (``pip install 'surefoot[client]'``
brings it).
"""

from __future__ import annotations

import asyncio
import os
import random as _random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from surefoot._config import Problems, read_toml, require_pydantic
from surefoot._masking import shown
from surefoot.client._base_url import url_problem
from surefoot.client._breaker import CircuitBreaker
from surefoot.client._breaker_protocol import Breaker
from surefoot.client._budget import RetryBudget
from surefoot.client._bulkhead import Bulkhead
from surefoot.client._cache import StaleCache
from surefoot.client._policy import RetryPolicy
from surefoot.client._throttle import Throttle
from surefoot.client.transport import AsyncResilientTransport, ResilientTransport
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.events import EventHook, LoggingHook
from surefoot.storage import store_from_url

__all__ = ["Integration", "integrations_from_dict", "load_integrations"]

_NAME = re.compile(r"[A-Za-z0-9_-]+")


class Integration:
    """One third-party API: its base URL, timeouts and resilience, ready to build clients.

    Example:
        >>> shipping = load_integrations("integrations.toml")["shipping"]
        >>> with shipping.client() as client:
        ...     client.post("/v1/shipments", json={"parcel": "P-1"})
        >>> async with shipping.async_client() as client:
        ...     await client.get("/v1/shipments/P-1")

    Usually made by ``load_integrations`` or ``integrations_from_dict``; it can also be
    built in code with the same objects the transports take.

    Args:
        name: the integration's name (letters, digits, ``_`` and ``-``): it names the
            breaker, throttle and bulkhead in errors and events, and the loggers.
        base_url: the API's absolute ``http://`` or ``https://`` URL.
        timeout: httpx timeouts of the clients (seconds, or an ``httpx.Timeout``).
        headers: headers every client of this integration sends.
        retry: the retry policy; default ``RetryPolicy()``.
        budget: the retry budget shared by every transport of this integration; default
            a ``RetryBudget()`` of its own.
        breaker, throttle, bulkhead, cache: shared by every transport; default none.
        auto_idempotency_key, idempotency_header: as for ``ResilientTransport``.
        hooks: event hooks of the transports; default one ``LoggingHook`` on the
            ``surefoot.integration.<name>`` loggers.
        clock: the transports' clock (use the breaker's own, if you pass a breaker).
        source: where the configuration came from (a file name), for messages.

    Warning:
        The shared objects are the point: build every client of one partner from one
        ``Integration``. Two ``Integration`` objects for the same API get two breakers
        and two rate caps, which together let twice the traffic through.
    """

    __slots__ = (
        "auto_idempotency_key",
        "base_url",
        "breaker",
        "budget",
        "bulkhead",
        "cache",
        "clock",
        "headers",
        "hooks",
        "idempotency_header",
        "name",
        "retry",
        "source",
        "throttle",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        timeout: float | httpx.Timeout = 5.0,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        breaker: Breaker | None = None,
        throttle: Throttle | None = None,
        bulkhead: Bulkhead | None = None,
        cache: StaleCache | None = None,
        auto_idempotency_key: bool = False,
        idempotency_header: str = "Idempotency-Key",
        hooks: Sequence[EventHook] | None = None,
        clock: Clock | None = None,
        source: str = "<code>",
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"Integration.name: expected letters, digits, '_' and '-', got {name!r}"
            )
        problem = url_problem(base_url)
        if problem is not None:
            raise ConfigurationError(f"Integration.base_url: {problem}")
        self.name = name
        self.base_url = base_url
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.headers = dict(headers or {})
        self.retry = retry if retry is not None else RetryPolicy()
        self.budget = budget if budget is not None else RetryBudget()
        self.breaker = breaker
        self.throttle = throttle
        self.bulkhead = bulkhead
        self.cache = cache
        self.auto_idempotency_key = auto_idempotency_key
        self.idempotency_header = idempotency_header
        self.hooks: tuple[EventHook, ...] = (
            (LoggingHook(logger_prefix=_logger_prefix(name)),) if hooks is None else tuple(hooks)
        )
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.source = source

    def _options(self, random: _random.Random | None) -> dict[str, Any]:
        return {
            "retry": self.retry,
            "budget": self.budget,
            "breaker": self.breaker,
            "throttle": self.throttle,
            "bulkhead": self.bulkhead,
            "cache": self.cache,
            "auto_idempotency_key": self.auto_idempotency_key,
            "idempotency_header": self.idempotency_header,
            "clock": self.clock,
            "hooks": self.hooks,
            "random": random,
        }

    def transport(
        self,
        inner: httpx.BaseTransport | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        random: _random.Random | None = None,
    ) -> ResilientTransport:
        """A ``ResilientTransport`` around ``inner`` (default ``httpx.HTTPTransport()``).

        ``sleep`` and ``random`` are for tests (``RecordingSleep``, a seeded ``Random``).
        """
        return ResilientTransport(inner, sleep=sleep, **self._options(random))

    def async_transport(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        random: _random.Random | None = None,
    ) -> AsyncResilientTransport:
        """An ``AsyncResilientTransport`` around ``inner`` (default: a new
        ``httpx.AsyncHTTPTransport()``)."""
        return AsyncResilientTransport(inner, sleep=sleep, **self._options(random))

    def client(
        self,
        *,
        inner: httpx.BaseTransport | None = None,
        sleep: Callable[[float], object] = time.sleep,
        random: _random.Random | None = None,
        **httpx_kwargs: Any,
    ) -> httpx.Client:
        """An ``httpx.Client`` with this integration's base URL, timeouts, headers and transport.

        ``httpx_kwargs`` go to ``httpx.Client`` (``auth=``, ``event_hooks=``...); they may
        override ``base_url`` and ``timeout``, and ``headers`` are added to the configured
        ones. Pass the I/O transport as ``inner=`` (``transport=`` is refused: the
        integration makes the transport).
        """
        transport = self.transport(inner, sleep=sleep, random=random)
        return httpx.Client(transport=transport, **self._client_options(httpx_kwargs))

    def async_client(
        self,
        *,
        inner: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        random: _random.Random | None = None,
        **httpx_kwargs: Any,
    ) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` twin of ``client()``."""
        transport = self.async_transport(inner, sleep=sleep, random=random)
        return httpx.AsyncClient(transport=transport, **self._client_options(httpx_kwargs))

    def _client_options(self, httpx_kwargs: dict[str, Any]) -> dict[str, Any]:
        if "transport" in httpx_kwargs or "mounts" in httpx_kwargs:
            raise TypeError(
                f"Integration {self.name!r}: pass the transport that does the I/O as inner=; "
                "the integration wraps it in its resilient transport"
            )
        headers = httpx.Headers(self.headers)
        headers.update(httpx.Headers(httpx_kwargs.pop("headers", None)))
        return {
            "base_url": self.base_url,
            "timeout": self.timeout,
            "headers": headers,
            **httpx_kwargs,
        }

    def __repr__(self) -> str:
        parts = [f"{self.name!r}", f"base_url={self.base_url!r}"]
        for section in ("breaker", "throttle", "bulkhead", "cache"):
            if getattr(self, section) is not None:
                parts.append(section)
        return f"Integration({', '.join(parts)})"


def _logger_prefix(name: str) -> str:
    """The prefix of an integration's loggers: ``surefoot.integration.<name>``."""
    return f"surefoot.integration.{name}"


def load_integrations(
    path: str | os.PathLike[str],
    *,
    clock: Clock | None = None,
    extra_hooks: Sequence[EventHook] = (),
) -> dict[str, Integration]:
    """The integrations declared in the TOML file at ``path``, by name.

    Example:
        >>> integrations = load_integrations("integrations.toml")
        >>> client = integrations["shipping"].client()

    Only the ``[integrations]`` table is read, so the file may hold other sections (a
    gateway policy...). Each ``[integrations.NAME]`` table is validated strictly: unknown
    fields, wrong types and out-of-range values are all refused.

    Args:
        path: the TOML file.
        clock: the clock of every breaker and transport (a ``ManualClock`` in tests).
        extra_hooks: hooks added after each integration's own ``LoggingHook``
            (a ``surefoot.testing.CapturedEvents``, a metrics hook...).

    Raises:
        ConfigurationError: the file cannot be read, is not TOML (with its line and
            column) or is invalid; the message lists every problem as
            ``file:line: integrations.NAME.section.field: expected ..., got ...``.
    """
    data, source, lines = read_toml(path)
    return _integrations(data, source, lines, clock, extra_hooks)


def integrations_from_dict(
    data: Mapping[str, Any],
    source: str = "<dict>",
    *,
    clock: Clock | None = None,
    extra_hooks: Sequence[EventHook] = (),
) -> dict[str, Integration]:
    """The integrations declared in ``data`` (a parsed TOML document), by name.

    Example:
        >>> integrations_from_dict({"integrations": {"shipping": {"base_url": "https://s.example"}}})
        {'shipping': Integration('shipping', base_url='https://s.example')}

    The same validation as ``load_integrations``; ``source`` names the data in messages.
    """
    return _integrations(data, source, None, clock, extra_hooks)


# -- validation ----------------------------------------------------------------------------


def _integrations(
    data: Mapping[str, Any],
    source: str,
    lines: Sequence[str] | None,
    clock: Clock | None,
    extra_hooks: Sequence[EventHook],
) -> dict[str, Integration]:
    problems = Problems(source, lines, "integrations")
    tables = data.get("integrations") if isinstance(data, Mapping) else None
    if not isinstance(tables, Mapping):
        got = "" if tables is None else f", got {shown(tables)}"
        problems.add(
            ("integrations",),
            "expected an [integrations] table with one [integrations.NAME] table per API" + got,
        )
        problems.raise_if_any()
    assert isinstance(tables, Mapping)
    for name in tables:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.add(
                ("integrations", str(name)),
                "expected a name of letters, digits, '_' and '-' (it names loggers)",
            )
    require_pydantic("integrations from configuration")
    from surefoot.client._schema import Root

    root = problems.validated(Root, {"integrations": dict(tables)})
    problems.raise_if_any()
    # Constructors check what spans fields (backoff_max >= backoff_base...): their errors
    # join the others, and nothing built is returned unless every table is valid.
    built = {
        name: _build(name, table, source, clock, extra_hooks, problems)
        for name, table in root.integrations.items()
    }
    problems.raise_if_any()
    return built


def _build(
    name: str,
    table: Any,
    source: str,
    clock: Clock | None,
    extra_hooks: Sequence[EventHook],
    problems: Problems,
) -> Integration:
    """The ``Integration`` of one validated table; constructor errors become problems."""
    hooks = (LoggingHook(logger_prefix=_logger_prefix(name)), *extra_hooks)
    clock = clock if clock is not None else SystemClock()
    base = ("integrations", name)

    def made(section: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        model = getattr(table, section)
        if model is None:
            return None
        options = {key: getattr(model, key) for key in model.model_fields_set}
        options.update(kwargs)
        if options.get("store") is not None:
            try:
                options["store"] = store_from_url(options["store"])
            except ConfigurationError as exc:
                problems.add((*base, section, "store"), f"cannot make the store: {exc}")
                return None
        try:
            return factory(*args, **options)
        except ConfigurationError as exc:
            problems.refused((*base, section), exc, type(model).model_fields)
            return None

    timeout = httpx.Timeout(
        table.timeout,
        connect=_or(table.connect_timeout, table.timeout),
        read=_or(table.read_timeout, table.timeout),
        write=_or(table.write_timeout, table.timeout),
        pool=_or(table.pool_timeout, table.timeout),
    )
    retry = made("retry", RetryPolicy)  # None: the default policy
    budget = made("budget", RetryBudget)
    breaker = made("breaker", CircuitBreaker, name=name, clock=clock, hooks=hooks)
    throttle = made("throttle", Throttle, name=name)
    bulkhead = made("bulkhead", Bulkhead, name=name)
    cache = made("cache", StaleCache)
    return Integration(
        name,
        base_url=table.base_url,
        timeout=timeout,
        headers=table.headers,
        retry=retry,
        budget=budget,
        breaker=breaker,
        throttle=throttle,
        bulkhead=bulkhead,
        cache=cache,
        auto_idempotency_key=table.auto_idempotency_key,
        idempotency_header=table.idempotency_header,
        hooks=hooks,
        clock=clock,
        source=source,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
