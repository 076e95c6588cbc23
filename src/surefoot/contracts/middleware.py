"""``ContractGuard``: the ASGI adapter of contract evolution (deprecations and versions).

Per request, before the rate limiter and the idempotency layer (nothing is counted or
reserved for a request this layer answers)::

    route deprecated for this client? ──► phase (Lifecycle) ──► BROWNOUT/RETIRED: 410
                                                   └──────────► headers on the response
    [versions]? ──► requested (header) + pin (file, store) ──► VersionSet.resolve
                       ├── unknown version: 400 version_unknown
                       └── effective version: forwarded to the upstream, and on the response

Rule 1: a retired or browned-out request is answered 410 ``route_retired`` (what replaces
        the route, the migration notes, the sunset) with the lifecycle's headers, and goes
        no further: the upstream never sees it.
Rule 2: every response to a request its route's lifecycle applies to carries the
        ``Deprecation``, ``Sunset`` and ``Link`` fields (``_lifecycle`` Rule 2), whoever
        answered it; ours replace the upstream's fields of the same names (two
        ``Deprecation`` values would make neither valid), but a ``Link`` of the upstream's
        is kept beside ours.
Rule 3: the effective version replaces any ``forward_header`` the client sent (the
        upstream must never branch on a version the gateway did not decide) and is sent
        back in the response's ``header`` field.
Rule 4: every request on a route deprecated for its client is reported
        (``DeprecatedCalled``, when a hook wants it): the usage lists and metrics are
        made from those events.
Rule 5: only clients the policy file names are pinned in the store (``VersionPins``),
        the file's version included; any other caller is served the initial version
        without a record: a pin per address or per made-up key would let anyone fill
        the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from surefoot._asgi import ASGIApp, Message, Receive, Scope, Send, request_id, send_problem
from surefoot.clock import Clock, SystemClock
from surefoot.contracts._events import DeprecatedCalled, VersionPinned
from surefoot.contracts._lifecycle import Lifecycle, Phase
from surefoot.contracts._pins import VersionPins
from surefoot.contracts._versions import VersionSet
from surefoot.errors import DEFAULT_PROBLEM_BASE, RouteRetired, SurefootError
from surefoot.events import EventHook, emit, wanted

__all__ = ["ContractGuard", "Versioning"]


class Versioning:
    """A ``[versions]`` table, ready for requests.

    Args:
        versions: the versions and how clients are pinned.
        header: the request (and response) header naming a version.
        forward_header: the header carrying the effective version to the upstream.
        pins: the recorded pins (None: with ``pin = "latest"``, nothing is recorded).
        file_pins: client name -> its version from the policy file.
    """

    def __init__(
        self,
        versions: VersionSet,
        *,
        header: str,
        forward_header: str,
        pins: VersionPins | None = None,
        file_pins: Mapping[str, str] | None = None,
    ) -> None:
        self.versions = versions
        self.header = header.lower().encode()
        self.forward_header = forward_header.lower().encode()
        self.pins = pins
        self.file_pins = dict(file_pins or {})


class ContractGuard:
    """Deprecation, sunset, brownouts and versions in front of an app (see the module).

    Args:
        app: the next layer.
        lifecycles: route template -> its lifecycle.
        route_of: the request's route template ("" for none).
        client_of: the request's ``[[clients]]`` name (None for another client).
        principal_of: the request's principal (pins of unnamed clients, usage lists).
        critical_of: True when the request's client is critical (never browned out).
        versioning: ``[versions]`` (None: the API has no versions).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycles: Mapping[str, Lifecycle],
        route_of: Callable[[Scope], str],
        client_of: Callable[[Scope], str | None],
        principal_of: Callable[[Scope], str],
        critical_of: Callable[[Scope], bool] = lambda scope: False,
        versioning: Versioning | None = None,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] = (),
        problem_base: str = DEFAULT_PROBLEM_BASE,
    ) -> None:
        self.app = app
        self.lifecycles = dict(lifecycles)
        self.route_of = route_of
        self.client_of = client_of
        self.principal_of = principal_of
        self.critical_of = critical_of
        self.versioning = versioning
        self.clock = clock if clock is not None else SystemClock()
        self.hooks = tuple(hooks)
        self.problem_base = problem_base
        self._called_wanted = wanted(self.hooks, DeprecatedCalled)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added: list[tuple[bytes, bytes]] = []
        life = self.lifecycles.get(self.route_of(scope)) if self.lifecycles else None
        if life is not None:
            client = self.client_of(scope)
            if life.applies_to(client):
                now = self.clock.now()
                phase = life.phase(now, client, critical=self.critical_of(scope))
                added.extend(life.headers(client))
                if self._called_wanted:
                    self._called(scope, client, phase, now)
                if phase.refused:
                    error = self._retired(scope, life, client, phase)
                    await self._refuse(scope, send, error, added)
                    return
        if self.versioning is not None:
            try:
                version = await self._version(scope, self.versioning)
            except SurefootError as exc:
                await self._refuse(scope, send, exc, added)
                return
            added.append((self.versioning.header, version.encode()))
        if not added:
            await self.app(scope, receive, send)
            return

        # Rule 2: ours replace the upstream's fields of the same names, but its Link.
        ours = {name for name, _ in added} - {b"link"}

        async def announced(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", ()) if h[0].lower() not in ours]
                message = {**message, "headers": [*kept, *added]}
            await send(message)

        await self.app(scope, receive, announced)

    async def _version(self, scope: Scope, versioning: Versioning) -> str:
        """The request's effective version, forwarded in its headers (Rule 3)."""
        header, forward = versioning.header, versioning.forward_header
        named = [v for k, v in scope["headers"] if k == header]
        requested = b",".join(named).decode("latin-1") if named else None
        client = self.client_of(scope)
        versions = versioning.versions
        fixed = versioning.file_pins.get(client) if client is not None else None
        resolved = versions.resolve(requested=requested, pinned=fixed)  # may refuse (Rule 2)
        pins = versioning.pins
        if client is not None and pins is not None and versions.pin == "first_used":
            # Rule 5: a named client's first version is recorded, the file's included, so
            # that removing its `version` from the file never moves it to the latest.
            first = fixed or versions.resolve(requested=requested, pinned=None).pin
            assert first is not None
            now = self.clock.now()
            recorded, made = await pins.pin(f"client:{client}", first, now)
            if made:
                emit(
                    self.hooks,
                    VersionPinned(
                        at=now, request_id=request_id(scope), client=client, version=first
                    ),
                )
            if fixed is None and recorded is not None:
                resolved = versions.resolve(requested=requested, pinned=recorded)
        scope["headers"] = [
            *(h for h in scope["headers"] if h[0] != forward),
            (forward, resolved.version.encode()),
        ]
        return resolved.version

    def _called(self, scope: Scope, client: str | None, phase: Phase, now: float) -> None:
        emit(
            self.hooks,
            DeprecatedCalled(
                at=now,
                request_id=request_id(scope),
                route=self.route_of(scope),
                principal=self.principal_of(scope),
                client=client or "",
                phase=phase.value,
            ),
        )

    def _retired(
        self, scope: Scope, life: Lifecycle, client: str | None, phase: Phase
    ) -> RouteRetired:
        sunset = life.sunset_for(client)
        day = _day(sunset) if sunset is not None else None
        if phase is Phase.RETIRED:
            state = f"was retired on {day}"
        elif day is not None:
            state = f"is in a brownout, a rehearsal of its retirement on {day}"
        else:
            state = "is in a brownout, a rehearsal of its retirement"
        advice = f"use {life.replacement} instead." if life.replacement else "stop calling it."
        link = life.sunset_link or life.link
        if link is not None:
            advice += f" The migration notes: {link}"
        fields: dict[str, Any] = {"brownout": phase is Phase.BROWNOUT}
        if sunset is not None:
            fields["sunset"] = day
        if life.replacement is not None:
            fields["replacement"] = life.replacement
        if link is not None:
            fields["link"] = link
        return RouteRetired(
            method=scope["method"],
            route=self.route_of(scope).partition(" ")[2] or scope["path"],
            state=state,
            advice=advice,
            **fields,
        )

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        error: SurefootError,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        await send_problem(
            send, error, request_id=request_id(scope), base=self.problem_base, headers=headers
        )


def _day(moment: float) -> str:
    """``moment`` as an RFC 3339 date and time in UTC, to the second."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
