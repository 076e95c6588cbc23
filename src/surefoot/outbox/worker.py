"""``OutboxWorker``: claims due deliveries, signs and POSTs them, records what happened.

One worker is one asyncio task with its own database connection; run as many as you
like, in as many processes and hosts as share the database. A pass::

    claim (Outbox.claim: a short transaction, Rule 3 of outbox)
      └─ per delivery, concurrently: resolve and check the address (SSRF) ─► breaker
         ─► rate limit ─► POST with Standard Webhooks headers ─► judge (_core.judge)
    record (Outbox.record: only where the claim's token still holds)

Rule 1: no transaction is open while a request is in flight; a worker killed between
        the POST and the record leaves its deliveries ``sending`` until their lease runs
        out, then another worker sends them again under the same message id.
Rule 2: the per-endpoint rate limit is a sliding log in a shared store (by default the
        outbox's own database), checked just before each request, so it holds across
        every worker. It counts the moments requests leave: an admission older than a
        margin (2% of the window, at most 50 ms) when its request would leave goes back
        unsent, and the log's window is longer by that margin. A refused delivery goes
        back unsent, due when the limit has room, and so does one whose limit cannot be
        checked (the store is down): never sent unchecked.
Rule 3: the circuit breaker is per endpoint and per worker (surefoot's ``CircuitBreaker``,
        or what ``breaker`` makes): while it is open, deliveries go back unsent, due when
        it half-opens.
Rule 4: the destination's host is resolved before each attempt and every address it
        resolves to (or the IPv4 address an IPv6 one embeds) must be public (``ipaddress``'
        ``is_global``, not multicast) unless ``allow_private`` says otherwise; the request
        then goes to the checked address (TLS still checks the host name), so a DNS answer
        that changes in between cannot redirect it. Redirects are never followed (a 3xx is
        a failed attempt). The timeout bounds the whole attempt, resolving included, and
        the response's body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import NamedTuple

import httpx

from surefoot._version import __version__
from surefoot.client import Breaker, CircuitBreaker
from surefoot.errors import CircuitOpen, ConfigurationError, StoreUnavailable, SurefootError
from surefoot.events import EventHook, LoggingHook, emit, wanted
from surefoot.outbox._core import DeliveryState, Result, judge
from surefoot.outbox._events import (
    OutboxBacklog,
    WebhookAttempted,
    WebhookDeferred,
    WebhookEndpointDisabled,
)
from surefoot.outbox._senders import HttpxSender, Sender, SendError, default_sender
from surefoot.outbox._signing import sign
from surefoot.outbox.outbox import Claimed, Outbox, Outcome
from surefoot.ratelimit import Item, Limit, RateLimitStore, parse_limit

__all__ = ["OutboxWorker"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_RATE_KEY = "surefoot:outbox:{}"
_MAX_BACKOFF = 30.0
#: Seconds a worker waits after a request ends for others to end, to record them together.
_COALESCE = 0.005
_log = logging.getLogger("surefoot.outbox")
#: How long an admission may age before its request leaves: a fraction of the limit's
#: window, at most 50 ms; the window counted is longer by as much (Rule 2).
_MARGIN = 0.02
_MAX_MARGIN = 0.05
_MAX_ERROR = 200
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class _Target(NamedTuple):
    """Where an attempt goes: the checked address's URL, and the host name it stands for
    (the ``Host`` header and TLS's server name; None when the URL names an address)."""

    url: httpx.URL
    host: str | None
    server_hostname: str | None


class _Refused(Exception):
    """The destination resolved to an address the worker may not call."""


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for (a number, or an HTTP date), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


class OutboxWorker:
    """Delivers an ``Outbox``'s messages until stopped.

    Example:
        >>> worker = OutboxWorker(Outbox("sqlite:///app.db"))
        >>> await worker.run()  # until worker.stop() or cancellation

    Args:
        outbox: the outbox (its database, schedule and clock).
        rate_store: where the per-endpoint rate limits count (any surefoot store that
            runs ``sliding_log``); None: the outbox's own database, opened on first use.
        timeout: seconds an attempt may take, connecting included (default 15).
        lease: seconds a claimed delivery stays with this worker before another may
            take it over (default: twice the timeout plus 30 s; at least the timeout).
        max_in_flight: requests this worker has in flight at most, across endpoints.
        batch: deliveries claimed per claim at most.
        poll_interval: seconds between claims when nothing was due.
        allow_private: True, or networks (``"10.0.0.0/8"``) endpoints may resolve to
            besides public addresses (Rule 4).
        breaker: True: a ``CircuitBreaker`` per endpoint (open after 10 calls with half
            of the last 20 failed, probe after 30 s); False: none; or a function of the
            endpoint's name that makes one (any ``surefoot.client.Breaker``).
        transport: the httpx transport (tests hand in one; default: a plain one).
        resolver: ``async (host, port) -> addresses`` (default: the system's resolver).
        hooks: event hooks (``WebhookAttempted``...); default: logging.
        report_every: seconds between ``OutboxBacklog`` events, and between purges of
            what is past the outbox's ``retention``.
        rng: the jitter's source of uniform draws in [0, 1).
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        rate_store: RateLimitStore | None = None,
        timeout: float = 15.0,
        lease: float | None = None,
        max_in_flight: int = 100,
        batch: int = 100,
        poll_interval: float = 0.25,
        allow_private: bool | Iterable[str] = False,
        breaker: bool | Callable[[str], Breaker] = True,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
        hooks: Sequence[EventHook] | None = None,
        report_every: float = 15.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not isinstance(outbox, Outbox):
            raise ConfigurationError(f"outbox: expected an Outbox, got {outbox!r}")
        for name, value, low, high in (
            ("timeout", timeout, 0.1, 300.0),
            ("poll_interval", poll_interval, 0.001, 60.0),
            ("report_every", report_every, 0.1, 3600.0),
        ):
            if not _is_number(value) or not low <= value <= high:
                raise ConfigurationError(
                    f"{name}: expected seconds between {low} and {high}, got {value!r}"
                )
        for name, count in (("max_in_flight", max_in_flight), ("batch", batch)):
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10000:
                raise ConfigurationError(
                    f"{name}: expected a number between 1 and 10000, got {count!r}"
                )
        self.outbox = outbox
        self.timeout = float(timeout)
        if lease is not None and (not _is_number(lease) or not timeout < lease <= 3600):
            raise ConfigurationError(
                f"lease: expected seconds longer than the timeout ({timeout:g}) and at most 3600, "
                f"got {lease!r}"
            )
        self.lease = 2 * self.timeout + 30.0 if lease is None else float(lease)
        self.max_in_flight = max_in_flight
        self.batch = batch
        self.poll_interval = float(poll_interval)
        self.report_every = float(report_every)
        self.allow_all, self.allowed = _allowed_networks(allow_private)
        self.hooks: tuple[EventHook, ...] = (LoggingHook(),) if hooks is None else tuple(hooks)
        self._rate_store = rate_store
        self._owns_rate_store = rate_store is None
        if not (isinstance(breaker, bool) or callable(breaker)):
            raise ConfigurationError(
                "breaker: expected True, False or a function of the endpoint's name, "
                f"got {breaker!r}"
            )
        self._make_breaker = self._default_breaker if breaker is True else breaker or None
        self._breakers: dict[str, Breaker] = {}
        self._sender: Sender = (
            default_sender(max_in_flight, self.timeout)
            if transport is None
            else HttpxSender(transport, self.timeout)
        )
        self._timed_out = f"timed out after {self.timeout:g} s"
        self._headers = {
            "user-agent": f"surefoot-webhooks/{__version__}",
            "content-type": "application/json",
        }
        self._limits: dict[str, tuple[Limit, float]] = {}
        self._resolve: Resolver = resolver or _resolve
        self._rng = rng
        self._conn = outbox.connect()
        self._stopping = asyncio.Event()
        self._next_report = 0.0
        self._next_claim = 0.0  # the loop's time of the next claim after one that found nothing
        self._found = False

    # -- running ---------------------------------------------------------------------------

    async def run_once(self) -> int:
        """One claim, every claimed delivery attempted, every outcome recorded; returns how
        many deliveries were claimed (0: nothing was due)."""
        claimed = await self._claim(self.max_in_flight)
        if claimed:
            outcomes = await asyncio.gather(*(self._deliver(c) for c in claimed))
            await self._record(outcomes)
        await self._report()
        return len(claimed)

    async def run(self) -> None:
        """Deliver until ``stop()``: claims whenever a request slot is free, so one slow
        endpoint never holds back the others (each holds at most its ``concurrency``).

        While the database fails, the worker waits (0.5 s, doubling up to 30 s) and tries
        again, keeping the outcomes it could not record yet; deliveries it never records
        go to another worker when their lease runs out.
        """
        in_flight: set[asyncio.Task[Outcome]] = set()
        done: list[Outcome] = []
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self._turn(in_flight, done)
                    failures = 0
                except StoreUnavailable as exc:
                    failures += 1
                    wait = min(_MAX_BACKOFF, 0.25 * 2**failures)
                    _log.warning(
                        "outbox worker: the database failed (%s); trying again in %.1f s",
                        _cause(exc),
                        wait,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), wait)
        finally:
            if in_flight:
                # Let what is in flight end (each is bounded by the timeout) and record it.
                results = await asyncio.gather(*in_flight, return_exceptions=True)
                done.extend(r for r in results if isinstance(r, Outcome))
            if done:
                try:
                    await self._record(done)
                except StoreUnavailable as exc:
                    _log.warning(
                        "outbox worker: %d outcomes not recorded (%s); their deliveries go "
                        "out again when their lease runs out",
                        len(done),
                        _cause(exc),
                    )

    async def _turn(self, in_flight: set[asyncio.Task[Outcome]], done: list[Outcome]) -> None:
        """Claim what fits, wait for requests to end (or poll), record what ended.

        A claim that filled its batch is followed by another at once (a backlog); one that
        found something, by another when a request ends; one that found nothing, by
        another after the poll interval. Requests that end within a few milliseconds of
        each other are recorded together, and their slots claimed for together.
        """
        loop = asyncio.get_running_loop()
        room = self.max_in_flight - len(in_flight)
        if room > 0 and (self._found or loop.time() >= self._next_claim):
            claimed = await self._claim(room)
            self._found = bool(claimed)
            self._next_claim = loop.time() + self.poll_interval
            for c in claimed:
                in_flight.add(asyncio.create_task(self._deliver(c)))
            full = len(claimed) == min(room, self.batch)
        else:
            full = False
        if full and len(in_flight) < self.max_in_flight:
            wait = 0.0  # a backlog: claim again at once
        elif self._found:
            wait = self.poll_interval  # until a request ends
        else:
            wait = max(0.0, self._next_claim - loop.time())
        if in_flight:
            finished, _ = await asyncio.wait(
                in_flight, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if finished and wait > 0:
                await asyncio.sleep(_COALESCE)
                finished = {t for t in in_flight if t.done()}
            in_flight -= finished
            done.extend(t.result() for t in finished)
        else:  # nothing claimed, nothing in flight
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
        if done:
            await self._record(done)
            done.clear()
        await self._report()

    def stop(self) -> None:
        """Ask ``run`` to return once what is in flight has been recorded."""
        self._stopping.set()

    async def aclose(self) -> None:
        """Close the sender, the database connection and an owned rate-limit store."""
        await self._sender.aclose()
        if self._owns_rate_store and self._rate_store is not None:
            await self._rate_store.aclose()
        await asyncio.to_thread(self._conn.close)

    # -- one delivery --------------------------------------------------------------------

    async def _claim(self, room: int) -> list[Claimed]:
        limit = min(room, self.batch)
        return await asyncio.to_thread(self.outbox.claim, self._conn, limit=limit, lease=self.lease)

    async def _record(self, outcomes: Sequence[Outcome]) -> None:
        kept = await asyncio.to_thread(self.outbox.record, self._conn, outcomes)
        disabled: set[str] = set()
        for o in kept:
            c = o.claimed
            if not o.attempted:
                emit(
                    self.hooks,
                    WebhookDeferred(
                        at=o.at,
                        request_id="",
                        endpoint=c.endpoint,
                        message_id=c.message_id,
                        reason=o.error or "",
                        retry_after=(o.next_at or o.at) - o.at,
                    ),
                )
                continue
            outcome = {
                DeliveryState.DELIVERED: "delivered",
                DeliveryState.PENDING: "retrying",
            }.get(o.state, "failed")
            emit(
                self.hooks,
                WebhookAttempted(
                    at=o.at,
                    request_id="",
                    endpoint=c.endpoint,
                    message_id=c.message_id,
                    event_type=c.event_type,
                    attempt=c.attempt,
                    outcome=outcome,
                    status=o.status,
                    error=o.error,
                    latency=o.latency,
                ),
            )
            if o.disable is not None and c.endpoint not in disabled:
                # The first disable of a pass is the one the database keeps (Outbox.record).
                disabled.add(c.endpoint)
                emit(
                    self.hooks,
                    WebhookEndpointDisabled(
                        at=o.at, request_id="", endpoint=c.endpoint, reason=o.disable
                    ),
                )

    async def _deliver(self, c: Claimed) -> Outcome:
        clock = self.outbox.clock
        # One deadline for the whole attempt, resolving included (Rule 4), so the lease,
        # longer than the timeout, outlives it (Rule 2 of _core).
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                target = await self._checked(httpx.URL(c.url))
        except _Refused as exc:
            return self._judged(c, clock.now(), Result(None, str(exc)), 0.0)
        except TimeoutError:
            return self._judged(c, clock.now(), Result(None, self._timed_out), 0.0)
        breaker = self._breaker(c.endpoint)
        permit: object = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except CircuitOpen as exc:
                wait = float(exc.fields.get("retry_after", 1))
                return _deferred(c, clock.now(), wait, "breaker_open")
        deferred = await self._rate_limited(c)
        if deferred is not None:
            if breaker is not None:
                breaker.release(permit)
            return deferred
        now = clock.now()
        started = time.perf_counter()
        result = await self._send(c, now, deadline, target)
        latency = time.perf_counter() - started
        if breaker is not None:
            failed = not result.delivered
            breaker.on_result(
                permit, failed=failed, duration=latency, status=result.status, error=None
            )
        return self._judged(c, now, result, latency)

    def _judged(self, c: Claimed, now: float, result: Result, latency: float) -> Outcome:
        j = judge(
            result,
            attempts=c.attempt,
            now=now,
            schedule=self.outbox.schedule,
            rnd=self._rng(),
            failing_since=c.failing_since,
            disable_after=self.outbox.disable_after,
        )
        return Outcome(
            c, j.state, j.next_at, True, now, result.status, result.error, latency,
            j.paused_until, j.disable,
        )  # fmt: skip

    async def _send(self, c: Claimed, now: float, deadline: float, target: _Target) -> Result:
        headers = {
            **self._headers,
            **sign(c.secrets, c.body, message_id=c.message_id, timestamp=int(now)),
        }
        if target.host is not None:
            headers["host"] = target.host
        try:
            async with asyncio.timeout_at(deadline):
                status, retry_after = await self._sender.post(
                    target.url, headers, c.body, target.server_hostname
                )
        except TimeoutError:
            return Result(None, self._timed_out)
        except SendError as exc:
            return Result(None, _short(str(exc)))
        return Result(status, None, _retry_after(retry_after, now))

    async def _checked(self, url: httpx.URL) -> _Target:
        """``url`` pointed at a checked address of its host (Rule 4), with the host name
        kept for HTTP and TLS."""
        host = url.raw_host.decode("ascii")  # url.host is the Unicode form of an IDN
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self._check(host, literal)
            return _Target(url, None, None)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
            checked = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
        except OSError as exc:
            raise _Refused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        except ValueError as exc:  # UnicodeError (a label too long), or not an address
            raise _Refused(_short(f"cannot resolve {host}: {exc}")) from None
        if not checked:
            raise _Refused(f"cannot resolve {host}")
        for address in checked:
            self._check(host, address)
        netloc = host if url.port is None else f"{host}:{url.port}"
        sni = host if url.scheme == "https" else None
        return _Target(url.copy_with(host=str(checked[0])), netloc, sni)

    def _check(self, host: str, address: Address) -> None:
        if self.allow_all:
            return
        target = _embedded(address)
        if target.is_global and not target.is_multicast:
            return
        if any(target in network for network in self.allowed):
            return
        raise _Refused(
            f"{host} resolves to {target}, a private or reserved address "
            "(allow it with allow_private)"
        )

    async def _rate_limited(self, c: Claimed) -> Outcome | None:
        """None when ``c`` may leave now; else the deferral (Rule 2)."""
        if c.rate_limit is None:
            return None
        store = self._rate_store
        if store is None:
            from surefoot.storage import store_from_url

            store = self._rate_store = store_from_url(self.outbox.database)
        limit, margin = self._limit(c.rate_limit)
        clock = self.outbox.clock
        now = clock.now()
        try:
            item = Item(_RATE_KEY.format(c.endpoint), "sliding_log", limit)
            admitted, decisions = await store.acquire([item], now)
        except SurefootError as exc:
            # Never sent unchecked (the limit is the consumer's), never failing the pass.
            back = float(exc.fields.get("retry_after") or 1)
            return _deferred(c, now, back, "rate_limit_unavailable")
        if not admitted:
            return _deferred(c, now, max(decisions[0].retry_after, 0.001), "rate_limited")
        late = clock.now() - now
        if late > margin:  # admitted too long ago to leave now: its slot stays used
            return _deferred(c, now + late, late, "rate_limited")
        return None

    def _limit(self, spec: str) -> tuple[Limit, float]:
        """The sliding log's limit for an endpoint's ``rate_limit``: its window grown by
        the margin an admission may age before the request leaves (Rule 2)."""
        found = self._limits.get(spec)
        if found is None:
            limit = parse_limit(spec)
            margin = min(_MAX_MARGIN, limit.window * _MARGIN)
            found = self._limits[spec] = (
                dataclasses.replace(limit, window=limit.window + margin),
                margin,
            )
        return found

    def _breaker(self, endpoint: str) -> Breaker | None:
        if self._make_breaker is None:
            return None
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            breaker = self._breakers[endpoint] = self._make_breaker(endpoint)
        return breaker

    def _default_breaker(self, endpoint: str) -> Breaker:
        return CircuitBreaker(
            name=f"webhook:{endpoint}",
            minimum_calls=10,
            window_size=20,
            open_wait=30.0,
            half_open_calls=1,
            clock=self.outbox.clock,
            hooks=self.hooks,
        )

    async def _report(self) -> None:
        now = self.outbox.clock.now()
        if now < self._next_report:
            return
        self._next_report = now + self.report_every
        await asyncio.to_thread(self.outbox.purge)  # what is past its retention
        if not wanted(self.hooks, OutboxBacklog):
            return
        stats = await asyncio.to_thread(self.outbox.stats)
        rows = tuple(
            (s.endpoint, s.enabled, s.pending, s.sending, s.failed, s.oldest_undelivered)
            for s in stats
        )
        emit(self.hooks, OutboxBacklog(at=now, request_id="", endpoints=rows))


def _embedded(address: Address) -> Address:
    """The IPv4 address an IPv6 one stands for (mapped ``::ffff:a.b.c.d``, 6to4, NAT64's
    ``64:ff9b::/96``, the old compatible ``::a.b.c.d``), which is the one to check:
    ``ipaddress`` calls ``::127.0.0.1`` and ``2002:7f00:1::`` global; else ``address``."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is not None:
        return embedded
    value = int(address)
    if address in _NAT64 or (value >> 32 == 0 and value > 1):  # not "::" nor "::1"
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return address


def _cause(exc: BaseException) -> str:
    """The first line of what the driver said (``StoreUnavailable`` keeps it as its cause)."""
    cause = exc.__cause__ or exc
    return str(cause).split("\n", 1)[0] or type(cause).__name__


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _deferred(c: Claimed, now: float, wait: float, reason: str) -> Outcome:
    return Outcome(c, DeliveryState.PENDING, now + wait, False, now, error=reason)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def _allowed_networks(allow: bool | Iterable[str]) -> tuple[bool, tuple[Network, ...]]:
    if isinstance(allow, bool):
        return allow, ()
    if isinstance(allow, str):
        allow = [allow]
    networks = []
    for index, text in enumerate(allow):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"allow_private[{index}]: expected a network such as '10.0.0.0/8', got {text!r}"
            ) from None
    return False, tuple(networks)
