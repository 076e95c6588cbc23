"""``HttpProbeClient``: the one door of every request a probe sends (``_model.ProbeClient``).

It sends over an ``httpx.AsyncClient`` and keeps the probe's promises (``_model`` Rules 1
and 2): a request to a host the plan does not list raises ``HostRefused`` before anything
is sent; one beyond ``max_requests``, or once ``max_duration`` has passed since the client
was made, raises ``BudgetExhausted``; each answer is awaited at most ``timeout`` seconds,
and never past the deadline. Each ``Exchange`` is redacted before a check sees it.

A lost response (``send(..., cut=True)``) is the chaos transport's ``FailAfter`` fault
(``surefoot.chaos``): the request reaches the partner, its whole answer is read, then it is
dropped and the exchange says ``"cut by the probe"``. Only requests marked with the
``surefoot.probe.cut`` extension go through the chaos transport.

Rule 1: every wait (``wait``) goes through the injected ``sleep`` and is refused when it
        would end past the deadline; the clock is the injected ``clock``.
Rule 2: credential headers (``_plan.CREDENTIAL_HEADERS``, the plan's own, and those whose
        value came from the environment) read ``***`` in the evidence, requests and
        responses alike; every secret value, and every credential header's value sent
        (4 characters or more), is ``***`` wherever it appears (URL, bodies, errors); a
        body is cut to ``MAX_EVIDENCE`` characters.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpx

from surefoot.chaos import AsyncChaosTransport, FailAfter, FaultPlan, Rule
from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.probe._model import MAX_EVIDENCE, BudgetExhausted, Exchange
from surefoot.probe._plan import CREDENTIAL_HEADERS, Plan, host_port, redacted

__all__ = ["CUT_ERROR", "HostRefused", "HttpProbeClient"]

#: The ``error`` of an exchange whose answer the probe cut on purpose.
CUT_ERROR = "cut by the probe"
_CUT = "surefoot.probe.cut"
_TEMPLATE = re.compile(r"\{\{(run|n|uuid)\}\}")
#: The shortest credential value ``send`` learns as a secret (Rule 2).
_SHORTEST = 4


class HostRefused(Exception):
    """A request to a host the probe file does not list (never sent)."""


class _Cutting(httpx.AsyncBaseTransport):
    """Sends a request marked ``surefoot.probe.cut`` through a ``FailAfter`` fault."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        plan = FaultPlan([Rule(name="probe-cut", fault=FailAfter(lose="reset"))], seed=0)
        self._chaos = AsyncChaosTransport(inner, plan, hooks=())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.extensions.get(_CUT):
            return await self._chaos.handle_async_request(request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class HttpProbeClient:
    """The probe's client over httpx, within the plan's bounds.

    Example:
        >>> async with HttpProbeClient.for_plan(plan) as client:
        ...     exchange = await client.send("GET", "http://127.0.0.1:8000/charges")

    Args:
        hosts: the ``host:port`` it may send to.
        max_requests: requests it sends at most.
        max_duration: seconds after its creation past which it sends and waits no more.
        timeout: seconds each answer is awaited, unless ``send`` says otherwise.
        credential_headers: header names whose values are redacted (case-insensitive);
            the usual ones (``Authorization``, ``Cookie``...) always are.
        secrets: values redacted wherever they appear.
        run: this run's id (``{{run}}``); default a fresh random one.
        transport: the httpx transport that really sends (an ``httpx.ASGITransport`` in
            tests); default ``httpx.AsyncHTTPTransport()``.
        clock: measures the deadline and each exchange; default ``SystemClock()``.
        sleep: every ``wait``; default ``asyncio.sleep``.

    Warning:
        Redirects are not followed: a partner's 3xx is evidence, and following it could
        leave the hosts the file lists.
    """

    def __init__(
        self,
        *,
        hosts: Iterable[str],
        max_requests: int,
        max_duration: float,
        timeout: float = 10.0,
        credential_headers: Iterable[str] = (),
        secrets: Iterable[str] = (),
        run: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 0:
            raise ConfigurationError(
                f"HttpProbeClient.max_requests: expected a whole number >= 0, got {max_requests!r}"
            )
        for name, value in (("max_duration", max_duration), ("timeout", timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(
                    f"HttpProbeClient.{name}: expected seconds > 0, got {value!r}"
                )
        self.hosts = frozenset(host.lower() for host in hosts)
        self.max_requests = max_requests
        self.timeout = float(timeout)
        self.credential_headers = CREDENTIAL_HEADERS | {h.lower() for h in credential_headers}
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        self.run = run if run is not None else uuid.uuid4().hex[:12]
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._sleep = sleep
        self.sent = 0
        self.deadline = self.clock.now() + float(max_duration)
        inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._client = httpx.AsyncClient(transport=_Cutting(inner), follow_redirects=False)

    @classmethod
    def for_plan(
        cls,
        plan: Plan,
        *,
        run: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> HttpProbeClient:
        """A client with ``plan``'s hosts, budget, timeout and secrets."""
        return cls(
            hosts=plan.hosts,
            max_requests=plan.max_requests,
            max_duration=plan.max_duration,
            timeout=plan.timeout,
            credential_headers=plan.credential_headers,
            secrets=plan.secrets,
            run=run,
            transport=transport,
            clock=clock,
            sleep=sleep,
        )

    async def __aenter__(self) -> HttpProbeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def remaining(self) -> int:
        """Requests still allowed (0 once the deadline has passed)."""
        if self.clock.now() >= self.deadline:
            return 0
        return max(0, self.max_requests - self.sent)

    def render(self, template: str, n: int) -> str:
        """``template`` with ``{{run}}``, ``{{n}}`` and ``{{uuid}}`` (fresh each) filled in."""

        def one(match: re.Match[str]) -> str:
            what = match.group(1)
            if what == "run":
                return self.run
            if what == "n":
                return str(n)
            return str(uuid.uuid4())

        return _TEMPLATE.sub(one, template)

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (Rule 1).

        Raises:
            BudgetExhausted: the wait would end past the deadline (nothing is waited).
        """
        if self.clock.now() + max(0.0, seconds) > self.deadline:
            raise BudgetExhausted(
                f"waiting {seconds:g} s would pass the probe's deadline (max_duration)"
            )
        await self._sleep(max(0.0, seconds))

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        cut: bool = False,
        read_timeout: float | None = None,
    ) -> Exchange:
        """Send one request and return the redacted exchange (``_model.ProbeClient``).

        Raises:
            HostRefused: ``url``'s host is not one the client may send to.
            BudgetExhausted: ``max_requests`` sent already, or the deadline has passed.
        """
        found = host_port(url)
        if found is None or found.lower() not in self.hosts:
            raise HostRefused(
                f"the probe may not send to {redacted(found or url, self._secrets)!r}: "
                f"not in probe.hosts ({', '.join(sorted(self.hosts))})"
            )
        started = self.clock.now()
        if self.sent >= self.max_requests:
            raise BudgetExhausted(f"the probe's cap of {self.max_requests} requests is reached")
        if started >= self.deadline:
            raise BudgetExhausted("the probe's deadline (max_duration) has passed")
        self.sent += 1
        self._learn(headers or {})
        wait = self.timeout if read_timeout is None else read_timeout
        wait = max(0.001, min(wait, self.deadline - started))
        request = self._client.build_request(
            method,
            url,
            headers=dict(headers or {}),
            content=None if body is None else body.encode(),
            timeout=httpx.Timeout(wait),
            extensions={_CUT: True} if cut else None,
        )
        status: int | None = None
        response_headers: tuple[tuple[str, str], ...] = ()
        response_body = ""
        error: str | None = None
        try:
            response = await self._client.send(request)
        except httpx.ReadError as exc:
            error = CUT_ERROR if cut else f"ReadError: {exc}"
        except httpx.TimeoutException as exc:
            error = f"{type(exc).__name__}: no answer within {wait:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            status = response.status_code
            response_headers = tuple(response.headers.multi_items())
            response_body = response.text
        return Exchange(
            method=method,
            url=self._scrub(url),
            request_headers=self._headers(request.headers.multi_items()),
            request_body=self._body(body or ""),
            status=status,
            response_headers=self._headers(response_headers),
            response_body=self._body(response_body),
            seconds=max(0.0, self.clock.now() - started),
            error=None if error is None else self._scrub(error),
        )

    def _learn(self, headers: Mapping[str, str]) -> None:
        """Keep the value of each credential header sent as a secret (an echo of it in a
        body is redacted too); a value shorter than ``_SHORTEST`` would hide too much."""
        found = {
            value
            for name, value in headers.items()
            if name.lower() in self.credential_headers and len(value) >= _SHORTEST
        }
        if not found.issubset(self._secrets):
            merged = {*self._secrets, *found}
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def _scrub(self, text: str) -> str:
        return redacted(text, self._secrets)

    def _headers(self, items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name, "***" if name.lower() in self.credential_headers else self._scrub(value))
            for name, value in items
        )

    def _body(self, text: str) -> str:
        text = self._scrub(text)
        if len(text) <= MAX_EVIDENCE:
            return text
        return text[:MAX_EVIDENCE]
