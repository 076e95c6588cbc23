"""``HttpProbeClient``: the one door of every request a probe sends (``_model.ProbeClient``).

It sends over an ``httpx.AsyncClient`` and keeps the probe's promises (``_model`` Rules 1
and 2): a request to a host the plan does not list raises ``HostRefused`` before anything
is sent; one beyond ``max_requests``, or once ``max_duration`` has passed since the client
was made, raises ``BudgetExhausted``; each answer (status line, headers and the whole body)
is awaited at most ``timeout`` seconds in all, and never past the deadline: a partner that
streams its answer slowly is cut off too. Of a body, at most ``MAX_BODY`` bytes are read
(the evidence says when it was cut). Each ``Exchange`` is redacted before a check sees it.

A lost response (``send(..., cut=True)``) is what the chaos transport's ``FailAfter``
fault does (``surefoot.chaos``), done here to keep the status: the request reaches the
partner, its answer is read (its status recorded as ``Exchange.cut_status``), then it is
dropped and the exchange says ``"cut by the probe"``. A request that never reached the
partner (a connect error) is no cut: its error says so and ``cut_status`` is None. Only
requests marked with the ``surefoot.probe.cut`` extension are cut.

Rule 1: every wait (``wait``) goes through the injected ``sleep`` and is refused when it
        would end past the deadline; the clock is the injected ``clock``.
Rule 2: credential headers (``_plan.CREDENTIAL_HEADERS``, the plan's own, and those whose
        value came from the environment) read ``***`` in the evidence, requests and
        responses alike; every secret value, and every credential header's value sent
        and its last word (4 characters or more), is ``***`` wherever it appears (URL,
        bodies, errors), stripped or escaped forms too; a body is cut to
        ``MAX_EVIDENCE`` characters.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import httpx

from surefoot.clock import Clock, SystemClock
from surefoot.errors import ConfigurationError
from surefoot.probe._model import MAX_EVIDENCE, BudgetExhausted, Exchange
from surefoot.probe._plan import CREDENTIAL_HEADERS, Plan, host_port, redacted

__all__ = ["CUT_ERROR", "MAX_BODY", "HostRefused", "HttpProbeClient"]

#: The ``error`` of an exchange whose answer the probe cut on purpose.
CUT_ERROR = "cut by the probe"
#: Bytes of an answer's body the client reads at most (the rest is never read).
MAX_BODY = MAX_EVIDENCE * 4
#: What the evidence says of a body longer than ``MAX_BODY``.
BODY_CUT = f"[body cut by the probe after {MAX_BODY} bytes]"
_CUT = "surefoot.probe.cut"
_TEMPLATE = re.compile(r"\{\{(run|n|uuid)\}\}")
#: The shortest credential value ``send`` learns as a secret (Rule 2).
_SHORTEST = 4


class HostRefused(Exception):
    """A request to a host the probe file does not list (never sent)."""


class _Cut(httpx.ReadError):
    """The answer the probe dropped on purpose; ``status`` is what the partner answered."""

    def __init__(self, status: int, request: httpx.Request) -> None:
        super().__init__(CUT_ERROR, request=request)
        self.status = status


class _Cutting(httpx.AsyncBaseTransport):
    """Forwards a request marked ``surefoot.probe.cut``, reads its answer (``MAX_BODY``
    bytes at most), then drops it (``surefoot.chaos``'s ``FailAfter``, status recorded)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not request.extensions.get(_CUT):
            return response
        try:
            read = 0
            async for chunk in response.stream:  # type: ignore[union-attr]
                read += len(chunk)
                if read >= MAX_BODY:
                    break
        finally:
            await response.aclose()
        raise _Cut(response.status_code, request)

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
        # The secrets the client was given: kept also when a header echoes one (Rule 2).
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
        cut_status: int | None = None
        response_headers: tuple[tuple[str, str], ...] = ()
        response_body = ""
        error: str | None = None
        try:
            async with asyncio.timeout(wait):
                status, response_headers, response_body = await self._exchange(request)
        except _Cut as exc:
            error, cut_status = CUT_ERROR, exc.status
        except TimeoutError:
            status, response_headers, response_body = None, (), ""
            error = f"TimeoutError: no whole answer within {wait:g} s"
        except httpx.TimeoutException as exc:
            error = f"{type(exc).__name__}: no answer within {wait:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if cut and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                error = f"not cut: the request never reached the partner ({error})"
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
            cut_status=cut_status,
        )

    async def _exchange(
        self, request: httpx.Request
    ) -> tuple[int, tuple[tuple[str, str], ...], str]:
        """The answer's status, headers and body (``MAX_BODY`` bytes at most, the cut noted)."""
        response = await self._client.send(request, stream=True)
        try:
            body = bytearray()
            cut = False
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    cut = True
                    break
        finally:
            await response.aclose()
        encoding = response.encoding or "utf-8"
        text = bytes(body[:MAX_BODY]).decode(encoding, errors="replace")
        if cut:
            text = f"{text}\n{BODY_CUT}"
        return response.status_code, tuple(response.headers.multi_items()), text

    def _learn(self, headers: Mapping[str, str]) -> None:
        """Keep the value of each credential header sent as a secret (an echo of it in a
        body is redacted too); a value shorter than ``_SHORTEST`` would hide too much."""
        values = [v for name, v in headers.items() if name.lower() in self.credential_headers]
        words = [value.split()[-1] for value in values if value.split()]
        found = {value for value in (*values, *words) if len(value) >= _SHORTEST}
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
        return text[:MAX_EVIDENCE] + ("\n" + BODY_CUT if BODY_CUT in text else "")
